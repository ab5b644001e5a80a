"""The Twilio media websocket as FastRTC's loop should see it: Twilio's messages, well formed, in order.

FastRTC's ``WebSocketHandler`` trusts every frame: a message that is not JSON, has no ``event``, a
``media`` without a payload or with bad base64 raises out of its read loop and ends the call with a
traceback; a second ``start`` restarts the greeting; ``media`` before ``start`` is answered under no
call id. :class:`PhoneSocket` wraps the socket it reads: a bad message is skipped and logged once per
kind and call, a ``start`` that cannot be served (no usable ``streamSid``, an audio format other
than 8 kHz mu-law) closes the socket with the reason, and the rest reaches FastRTC unchanged. Sends
to a caller who has hung up are dropped instead of raising in FastRTC's emit loop.

Twilio sends 20 ms of audio (160 bytes of mu-law) per ``media`` message, about 50 a second; a
message over :data:`MAX_MESSAGE_BYTES` is not Twilio's and is skipped, and a peer that has sent
:data:`MAX_BAD_MESSAGES` bad ones is not Twilio at all and is hung up on.

Two of Twilio's events are the call's business rather than FastRTC's (which ignores both): a key the
caller pressed (``dtmf``, one of 0-9 * #) goes to ``on_dtmf``, and the ``mark`` Twilio echoes once it
has played the audio sent before it sets the event :meth:`PhoneSocket.played` handed out for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

log = logging.getLogger(__name__)

#: the largest message read as Twilio's (a media message is ~300 bytes)
MAX_MESSAGE_BYTES = 64 * 1024
#: bad messages after which the peer is hung up on
MAX_BAD_MESSAGES = 1000
#: RFC 6455 close codes
NORMAL_CLOSURE = 1000
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
#: what Twilio Media Streams send, and all the pipeline decodes
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
FORMAT_REFUSED = "unsupported media format: audio/x-mulaw 8000 Hz mono only"
#: Twilio's ids are short ASCII (MZ + 32 hex); a call id also lands in logs and the call log
_SID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: Twilio's events that need nothing from the call but are passed on as they are
_PASSED = frozenset({"connected", "mark"})
#: the keys of a phone's keypad, as Twilio names them in ``dtmf`` events
KEYS = frozenset("0123456789*#")
#: the names of marks the bot may wait on (its own, short ASCII)
_MARK_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class Mark:
    """Ask for a Twilio ``mark`` after the audio before it (a reply yields it as an additional
    output, so that it leaves in order after that audio); Twilio echoes it once that has played."""

    name: str
#: a message read after FastRTC's loop was told to stop: it ends the loop as Twilio's "stop" does
_QUIT = {"event": "stop"}


class PhoneSocket:
    """A Twilio media websocket, checked message by message; everything else is the socket's.

    ``early`` are messages already read and parsed (the stream-token gate's). Set ``quit`` to
    FastRTC's quit event: a read waiting on a silent peer then ends when the call is hung up. Set
    ``on_dtmf`` to take the keys the caller presses (a function of the key, sync or async).
    """

    def __init__(self, websocket: WebSocket, early: Iterable[dict[str, Any]] = ()):
        self._ws = websocket
        self._early: list[Any] = list(early)
        self.stream_sid: str | None = None
        self.stopped = False
        self.quit: asyncio.Event | None = None
        self._quit_wait: asyncio.Future | None = None
        self._start: dict[str, Any] | None = None  # read by read_start(), to hand to FastRTC
        self.bad: Counter[str] = Counter()
        self.on_dtmf: Callable[[str], Awaitable[None] | None] | None = None
        #: marks someone waits on, by name: set when Twilio echoes them
        self._marks: dict[str, threading.Event] = {}
        self._marks_lock = threading.Lock()
        self._sending: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ what FastRTC calls
    async def accept(self, *args: Any, **kwargs: Any) -> None:
        if self._ws.application_state == WebSocketState.CONNECTING:
            await self._ws.accept(*args, **kwargs)

    async def receive_json(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The next message worth FastRTC's loop; raises ``WebSocketDisconnect`` when the line is gone."""
        if self._start is not None:
            start, self._start = self._start, None
            return start
        while True:
            message = await self._next()
            if message is not None:
                return message

    async def send_json(self, data: Any, mode: str = "text") -> None:
        try:
            await self._ws.send_json(data, mode)
        except (TypeError, ValueError):
            raise
        except Exception as e:
            # The caller hung up while the bot was talking: the audio has nowhere to go, and
            # raising would print a traceback from FastRTC's emit loop.
            log.debug("call %s: not sent, the socket is gone (%s)", self.stream_sid, type(e).__name__)

    async def close(self, code: int = NORMAL_CLOSURE, reason: str | None = None) -> None:
        with contextlib.suppress(Exception):  # the peer may be gone already
            await self._ws.close(code=code, reason=reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    # ------------------------------------------------------------------ the route's
    async def read_start(self, timeout_s: float) -> dict[str, Any] | None:
        """Read up to a valid ``start`` (kept for FastRTC's loop); None when the socket was
        refused or closed instead."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await self._next()
                    if message is None:
                        continue
                    if message.get("event") == "start":
                        self._start = message
                        return message
                    if message.get("event") == "stop":
                        await self.close()
                        return None
        except TimeoutError:
            await self.refuse(POLICY_VIOLATION, f"no start event within {timeout_s:g} s")
            return None
        except WebSocketDisconnect:
            return None

    async def wait_for_mark(self, name: str, timeout_s: float) -> bool:
        """Until Twilio reports having played up to mark ``name`` (or stop, hang-up, timeout)."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await self._next()
                    if message is None:
                        continue
                    if message.get("event") == "stop":
                        return False
                    mark = message.get("mark")
                    if message.get("event") == "mark" and isinstance(mark, dict) and mark.get("name") == name:
                        return True
        except (TimeoutError, WebSocketDisconnect):
            return False

    def played(self, name: str) -> threading.Event:
        """An event set once Twilio echoes mark ``name`` (or the call stops): the audio sent before
        the mark has been played. Ask before the mark is sent; waitable from any thread."""
        if not _MARK_NAME.fullmatch(name):
            raise ValueError(f"not a mark name: {name!r}")
        with self._marks_lock:
            event = self._marks.setdefault(name, threading.Event())
            if self.stopped:
                event.set()
            return event

    def send_mark(self, name: str) -> None:
        """Send mark ``name`` now, from the event loop (FastRTC's additional-outputs callback, which it
        calls after sending the audio before)."""
        task = asyncio.get_running_loop().create_task(
            self.send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}))
        self._sending.add(task)  # a running task needs a reference, or it may be collected
        task.add_done_callback(self._sending.discard)

    def _echoed(self, name: Any) -> None:
        with self._marks_lock:
            event = self._marks.get(name) if isinstance(name, str) else None
        if event is not None:
            event.set()

    def _stopped(self) -> None:
        self.stopped = True
        with self._marks_lock:
            for event in self._marks.values():  # nothing more will be played: nobody waits on
                event.set()

    async def refuse(self, code: int, reason: str) -> None:
        log.warning("call %s: phone stream closed: %s", self.stream_sid or "(no start yet)", reason)
        await self.close(code=code, reason=reason)

    def finish(self) -> None:
        """At the end of the call: stop waiting on ``quit``, and sum up what was skipped."""
        if self._quit_wait is not None:
            self._quit_wait.cancel()
        if self.bad:
            log.info("call %s: skipped %d bad messages (%s)", self.stream_sid, sum(self.bad.values()),
                     ", ".join(f"{k}: {n}" for k, n in sorted(self.bad.items())))

    # ------------------------------------------------------------------ reading
    async def _raw(self) -> Any:
        """The next ASGI message (or a message the gate read), or ``_QUIT`` once ``quit`` is set."""
        if self._early:
            return self._early.pop(0)
        if self.quit is None:
            return await self._ws.receive()
        if self.quit.is_set():
            return _QUIT
        if self._quit_wait is None:
            self._quit_wait = asyncio.ensure_future(self.quit.wait())
        receiving = asyncio.ensure_future(self._ws.receive())
        await asyncio.wait({receiving, self._quit_wait}, return_when=asyncio.FIRST_COMPLETED)
        if receiving.done():
            return receiving.result()
        receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        return _QUIT

    async def _next(self) -> dict[str, Any] | None:
        """One message read and checked: the message to act on, or None when it was skipped."""
        raw = await self._raw()
        if raw is _QUIT:
            return dict(_QUIT)
        if isinstance(raw, dict) and raw.get("type") in ("websocket.receive", "websocket.disconnect"):
            if raw["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(raw.get("code", NORMAL_CLOSURE), raw.get("reason"))
            message = await self._parse(raw)
        else:
            message = raw  # already parsed by the gate
        if message is None:
            return None
        return await self._check(message)

    async def _parse(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        text = raw.get("text")
        if text is None:
            return await self._skip("binary frames")
        if len(text) > MAX_MESSAGE_BYTES:
            return await self._skip(f"messages over {MAX_MESSAGE_BYTES // 1024} KiB")
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            return await self._skip("messages that are not JSON")
        if not isinstance(message, dict):
            return await self._skip("JSON messages that are not objects")
        return message

    async def _check(self, message: dict[str, Any]) -> dict[str, Any] | None:
        event = message.get("event")
        if not isinstance(event, str):
            return await self._skip("messages without an event")
        if event == "media":
            return await self._media(message)
        if event == "start":
            return await self._start_event(message)
        if event == "stop":
            if self.stopped:
                return await self._skip("events after stop")
            self._stopped()
            return {"event": "stop"}
        if self.stopped:
            return await self._skip("events after stop")
        if event == "dtmf":
            return await self._dtmf(message)
        if event == "mark":
            mark = message.get("mark")
            self._echoed(mark.get("name") if isinstance(mark, dict) else None)
        if event in _PASSED:
            return message
        # Only Twilio's own event names reach the log, never text a client chose.
        return await self._skip("messages of unknown events")

    async def _media(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self.stream_sid is None:
            return await self._skip("media before start")
        if self.stopped:
            return await self._skip("media after stop")
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            return await self._skip("media without a payload")
        if media.get("track") not in (None, "inbound", "inbound_track"):
            return await self._skip("media of the outbound track")  # the bot's own voice, echoed
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return await self._skip("media payloads that are not base64")
        if not audio:
            return await self._skip("empty media payloads")
        # Every byte is one mu-law sample: any length decodes, an odd one included.
        return {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}

    async def _dtmf(self, message: dict[str, Any]) -> None:
        """A key the caller pressed, handed to ``on_dtmf``; FastRTC never sees it."""
        if self.stream_sid is None:
            return await self._skip("dtmf before start")
        dtmf = message.get("dtmf")
        key = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(key, str) or key not in KEYS:
            return await self._skip("dtmf events without a key")
        if dtmf.get("track") not in (None, "inbound", "inbound_track"):
            return await self._skip("dtmf of the outbound track")
        if self.on_dtmf is not None:
            try:
                taken = self.on_dtmf(key)
                if inspect.isawaitable(taken):
                    await taken
            except Exception:
                # a key the call could not take must not end the call's read loop
                log.exception("call %s: a pressed key could not be taken", self.stream_sid)
        return None

    async def _start_event(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if self.stopped:
            return await self._skip("events after stop")
        if self.stream_sid is not None:
            return await self._skip("repeated start events")
        start = message.get("start") if isinstance(message.get("start"), dict) else {}
        sid = message.get("streamSid") or start.get("streamSid")
        if not isinstance(sid, str) or not _SID.fullmatch(sid):
            await self.refuse(POLICY_VIOLATION, "start without a usable streamSid")
            raise WebSocketDisconnect(POLICY_VIOLATION)
        fmt = start.get("mediaFormat")
        if fmt is None:
            self._warn_once("start events without a mediaFormat (taken as 8 kHz mu-law)", sid)
        elif not _is_twilio_format(fmt):
            self.stream_sid = sid  # named in the refusal's log line
            await self.refuse(UNSUPPORTED_DATA, FORMAT_REFUSED)
            raise WebSocketDisconnect(UNSUPPORTED_DATA)
        self.stream_sid = sid
        return {**message, "event": "start", "streamSid": sid}

    async def _skip(self, what: str) -> None:
        self._warn_once(what, self.stream_sid)
        if sum(self.bad.values()) >= MAX_BAD_MESSAGES:
            await self.refuse(POLICY_VIOLATION, f"{MAX_BAD_MESSAGES} bad messages: not a Twilio media stream")
            raise WebSocketDisconnect(POLICY_VIOLATION)
        return None

    def _warn_once(self, what: str, sid: str | None) -> None:
        if not self.bad[what]:
            log.warning("call %s: skipping %s (logged once per call)", sid or "(no start yet)", what)
        self.bad[what] += 1


def _is_twilio_format(fmt: Any) -> bool:
    if not isinstance(fmt, dict):
        return False
    try:
        return (str(fmt.get("encoding", "")).lower() == MEDIA_FORMAT["encoding"]
                and int(fmt.get("sampleRate", 0)) == MEDIA_FORMAT["sampleRate"]
                and int(fmt.get("channels", 1)) == MEDIA_FORMAT["channels"])
    except (TypeError, ValueError):
        return False
