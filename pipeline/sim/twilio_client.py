"""The Twilio side of a call: the incoming-call webhook, signed as Twilio signs it, and the Media
Streams websocket, with Twilio's JSON frames.

Twilio POSTs ``/telephone/incoming`` with the call's form and an ``X-Twilio-Signature``; the TwiML it
gets back names the stream's websocket and its ``<Parameter>`` values, which it sends back in the
``start`` message. On the socket Twilio sends ``connected``, ``start``, then one ``media`` message per
20 ms of the caller's audio (8 kHz mu-law, base64), ``mark`` when it has played the bot's audio up to a
mark the bot sent, and ``stop``. The bot sends ``media``, ``mark`` and ``clear`` (drop what is
buffered and not yet played). :class:`TwilioCaller` does all of that and keeps every message it gets
with its arrival time, and when the bot's audio plays out at the caller's end (in real time from
its arrival, as Twilio's buffer plays it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.audio import PHONE_RATE
from pipeline.sim.phone import FRAME_S, decode_payload, frames, payload, to_phone_rate

MULAW_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": PHONE_RATE, "channels": 1}


def new_sids() -> tuple[str, str]:
    """A ``(streamSid, callSid)`` pair in Twilio's shape."""
    return "MZ" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex


@dataclass
class Answer:
    """What the webhook answered: the websocket to stream to and the parameters to send in ``start``."""

    stream_url: str
    parameters: dict[str, str] = field(default_factory=dict)


def place_call(base_url: str, auth_token: str | None, call_sid: str, *, caller: str = "+815012345678",
               timeout_s: float = 10) -> Answer:
    """POST the incoming-call webhook as Twilio does (signed with ``auth_token`` when given) and
    read the ``<Stream>`` out of the TwiML. Raises RuntimeError when the app refuses."""
    url = base_url.rstrip("/") + "/telephone/incoming"
    form = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": caller, "To": "+815098765432",
            "CallStatus": "ringing", "Direction": "inbound"}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token:
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, form)
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            twiml = response.read().decode("utf-8", errors="replace")
    except OSError as e:
        raise RuntimeError(f"the incoming-call webhook {url} failed: {e}") from None
    try:
        stream = ET.fromstring(twiml).find(".//Stream")
    except ET.ParseError:
        stream = None
    if stream is None or not stream.get("url"):
        raise RuntimeError(f"the incoming-call webhook answered no <Stream>: {twiml[:200]!r}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return Answer(stream.get("url", ""), params)


def local_socket_url(stream_url: str, base_url: str) -> str:
    """The stream's websocket on this app: Twilio's ``wss://public-host/path`` reached as
    ``ws://127.0.0.1:port/path`` (TLS ends at a proxy in front of a real deployment)."""
    path = urllib.parse.urlsplit(stream_url).path or "/telephone/handler"
    base = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit(("wss" if base.scheme == "https" else "ws", base.netloc, path, "", ""))


class TwilioCaller:
    """One media stream, from Twilio's side, over an open websocket ``ws`` (the ``websockets`` client)."""

    def __init__(self, ws: Any, stream_sid: str | None = None, call_sid: str | None = None):
        sids = new_sids()
        self.ws = ws
        self.stream_sid = stream_sid or sids[0]
        self.call_sid = call_sid or sids[1]
        #: every message from the bot, with its arrival time (``time.monotonic()``)
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.seq = 0
        self.chunk = 0
        #: when the bot's audio received so far will have played out at the caller's end
        self.play_end = 0.0
        self.last_media = 0.0
        self._gone = False
        self._echoes: set[asyncio.Task] = set()
        self._reader = asyncio.create_task(self._read())

    # ------------------------------------------------------------------ the bot's side
    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for text in self.ws:
                now = time.monotonic()
                message = json.loads(text)
                self.received.append((now, message))
                event = message.get("event") if isinstance(message, dict) else None
                if event == "media":
                    seconds = len(decode_payload(message["media"]["payload"])) / PHONE_RATE
                    self.play_end = max(self.play_end, now) + seconds
                    self.last_media = now
                elif event == "clear":
                    self.play_end = now  # Twilio drops what it still held
                elif event == "mark":
                    self._echo_mark(message, self.play_end - now)
        except ConnectionClosed:
            pass

    def _echo_mark(self, message: dict[str, Any], delay: float) -> None:
        """Twilio answers a mark once the audio before it has played."""
        name = (message.get("mark") or {}).get("name")

        async def echo() -> None:
            await asyncio.sleep(max(0.0, delay))
            with contextlib.suppress(Exception):
                await self.send("mark", streamSid=self.stream_sid, mark={"name": name})

        task = asyncio.create_task(echo())
        self._echoes.add(task)
        task.add_done_callback(self._echoes.discard)

    @property
    def closed(self) -> bool:
        """The server closed the socket (or the caller hung up)."""
        return self._gone or self._reader.done()

    def events(self, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [m for t, m in self.received if m.get("event") == kind and t >= since]

    def first_media_after(self, since: float, before: float | None = None) -> float | None:
        for t, m in self.received:
            if t >= since and m.get("event") == "media":
                return t if before is None or t < before else None
        return None

    def bot_audio(self, since: float, until: float | None = None) -> np.ndarray:
        """The bot's audio (8 kHz int16) that arrived between ``since`` and ``until``."""
        parts = [decode_payload(m["media"]["payload"]) for t, m in self.received
                 if m.get("event") == "media" and t >= since and (until is None or t < until)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def playing(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.play_end

    # ------------------------------------------------------------------ the caller's side
    async def send(self, event: str, **body: Any) -> None:
        self.seq += 1
        await self.ws.send(json.dumps({"event": event, "sequenceNumber": str(self.seq), **body}))

    async def start(self, custom: dict[str, str] | None = None) -> None:
        await self.send("connected", protocol="Call", version="1.0.0")
        await self.send("start", streamSid=self.stream_sid, start={
            "streamSid": self.stream_sid, "callSid": self.call_sid, "accountSid": "AC" + "0" * 32,
            "tracks": ["inbound"], "customParameters": custom or {}, "mediaFormat": MULAW_FORMAT,
        })

    async def media(self, frame8k: np.ndarray) -> bool:
        """One 20 ms frame of the caller's audio; False once the line is closed."""
        from websockets.exceptions import ConnectionClosed

        if self.closed:
            return False
        self.chunk += 1
        try:
            await self.send("media", streamSid=self.stream_sid, media={
                "track": "inbound", "chunk": str(self.chunk), "timestamp": str(self.chunk * 20),
                "payload": payload(frame8k)})
        except ConnectionClosed:
            self._gone = True
        return not self._gone

    async def audio(self, pcm: np.ndarray, rate: int = 16000, realtime: float = 1.0) -> bool:
        """Send audio as Twilio does, one 20 ms frame at a time; ``realtime`` < 1 sends faster.
        False once the line is closed."""
        t0 = time.monotonic()
        for i, frame in enumerate(frames(to_phone_rate(rate, pcm))):
            if not await self.media(frame):
                return False
            if realtime:
                delay = t0 + (i + 1) * FRAME_S * realtime - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        return True

    async def silence(self, seconds: float) -> bool:
        return await self.audio(np.zeros(int(seconds * PHONE_RATE), np.int16), PHONE_RATE)

    async def wait_for(self, kind: str, since: float, timeout: float, keep_talking: bool = True) -> dict[str, Any]:
        """The first ``kind`` message after ``since``; meanwhile the line carries silence, like a real call."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(kind, since)
            if found:
                return found[0]
            if keep_talking:
                await self.silence(0.1)
            else:
                await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind!r} within {timeout} s; got {[m.get('event') for _, m in self.received]}")

    async def wait_answer(self, since: float, timeout: float, keep_talking: bool = True) -> float | None:
        """The arrival time of the bot's first audio after ``since`` (None if none came within
        ``timeout``), meanwhile carrying silence (``keep_talking``) or leaving the line to a sender of
        its own."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            t = self.first_media_after(since)
            if t is not None:
                return t
            if keep_talking:
                await self.silence(0.1)
            else:
                await asyncio.sleep(0.02)
        return self.first_media_after(since)

    async def wait_played(self, limit: float, quiet: float = 0.8, after: float = 0.35) -> bool:
        """Until the bot's audio has played out here (so speaking next is no barge-in) and none has
        come for ``quiet`` seconds, carrying silence; False if it was still coming after ``limit`` s."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self.closed:
            now = time.monotonic()
            if now >= self.play_end + after and now >= self.last_media + quiet:
                return True
            await self.silence(0.1)
        return self.closed

    async def stop(self) -> bool:
        """Twilio's ``stop``: the caller hung up. False when the line was already closed."""
        if self.closed:
            return False
        with contextlib.suppress(Exception):
            await self.send("stop", streamSid=self.stream_sid, stop={"accountSid": "AC" + "0" * 32,
                                                                     "callSid": self.call_sid})
            return True
        return False

    async def hang_up(self, mode: str = "abort") -> None:
        """Gone without ``stop``: a reset connection (``abort``) or a bare close frame."""
        self._reader.cancel()
        self._gone = True
        if mode == "abort":
            self.ws.transport.abort()
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)

    async def wait_closed(self, timeout: float) -> bool:
        """Until the server has closed the socket; False if it had not after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._reader.cancel()
        for task in list(self._echoes):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
