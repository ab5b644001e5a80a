"""On the phone: the caller's own number, the keypad, a person when needed, and a text to confirm.

Every call here is a Twilio call as Twilio makes it: the signed ``POST /telephone/incoming`` (with the
caller's ``From``), the TwiML's one-time stream token sent back in the media websocket's ``start``
(``customParameters``), the caller's audio as 20 ms mu-law ``media`` frames (espeak-ng speech), keys
as ``dtmf`` events, and the bot's audio played out in real time with its marks echoed once played.
Twilio's REST API (the transfer's call update, the texts) is :mod:`pipeline.sim.twilio_rest` on
loopback, reached by the twilio package's own client.

What the caller said is scripted (the recogniser reports the line the caller is saying): these tests
are about the phone, not about recognition. The bot speaks in short beeps to keep the calls short.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import time
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest
from audio_fixtures import ESPEAK, ESPEAK_MISSING, silence, speech
from test_app import FRAME, _Server, to_mulaw_frames
from test_twilio_auth import sign, twiml_stream

from pipeline.config import ServerConfig
from pipeline.sim.twilio_rest import TwilioRESTServer
from pipeline.speech.stt import Transcript
from pipeline.transport.twilio.rest import TwilioREST
from pipeline.voice.runtime import VoiceRuntime

pytestmark = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
ACCOUNT_SID = "AC" + "1f" * 16
CALLER = "+819012345678"  # a Japanese mobile: 090-1234-5678
CALLER_DIGITS = "09012345678"
TRANSFER_TO = "03-9876-5432"
SMS_FROM = "+815011112222"
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
BOOKING = ["12月24日の19時に3名で", "田中です"]


# ------------------------------------------------------------------------------------------ the parts
class Lines:
    """The recogniser: whatever the caller said, it reports the line the test says they are saying."""

    def __init__(self):
        self.text = ""

    def transcribe(self, audio, sample_rate, context=None):
        return Transcript(text=self.text, language="ja", duration_s=len(audio) / sample_rate, elapsed_s=0.0)

    def warmup(self):
        pass


class Beeps:
    """The bot's voice: 0.1 s of tone per piece of a reply."""

    sample_rate = 24000

    def synthesize(self, text, language):
        n = np.arange(self.sample_rate // 10)
        return (0.3 * np.sin(2 * np.pi * 1000 * n / self.sample_rate)).astype(np.float32)

    def stream(self, text, language):
        yield self.sample_rate, self.synthesize(text, language)

    def warmup(self):
        pass


@pytest.fixture(scope="module")
def vad(test_config):
    from pipeline.speech.vad import make_vad

    model = make_vad(test_config.vad)
    model.warmup()
    return model


@pytest.fixture
def rest():
    with TwilioRESTServer(ACCOUNT_SID, AUTH_TOKEN) as server:
        yield server


class Line:
    """The app on loopback with Twilio's checks on, its runtime, and the recogniser's script."""

    def __init__(self, server, runtime: VoiceRuntime, lines: Lines):
        self.server, self.runtime, self.lines = server, runtime, lines

    @property
    def port(self) -> int:
        return self.server.port

    def bookings(self, phone: str = CALLER_DIGITS) -> list:
        return self.runtime.services.store.find(phone)

    def call_log(self) -> list[dict]:
        path = self.runtime.call_log
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.fixture
def line(test_config, vad, rest, tmp_path):
    """``line(**settings)``: a served app; ``transfer_number``, ``sms`` (True: texts on) and ``rest``
    (False: no REST credentials) pick what the phone may do."""
    from pipeline.app import build_app

    made = []

    def make(*, transfer_number: str | None = None, sms: bool = False, rest_api: bool = True) -> Line:
        cfg = test_config.model_copy(deep=True)
        cfg.store.url = f"sqlite:///{tmp_path}/reservations.db"
        cfg.logging.call_log = str(tmp_path / "calls.jsonl")
        cfg.agent.kind = "rules"
        cfg.server = ServerConfig(**{**cfg.server.model_dump(), "silence_prompt_s": 0, "silence_hangup_s": 0,
                                     "max_call_s": 0})
        cfg.restaurant.transfer_number = transfer_number
        cfg.twilio.dtmf_pause_s = 1.0
        cfg.twilio.sms_from = SMS_FROM
        cfg.twilio.sms_confirmations = sms
        lines = Lines()
        client = TwilioREST(ACCOUNT_SID, AUTH_TOKEN, api_base=rest.base_url, timeout_s=5) if rest_api else None
        runtime = VoiceRuntime(cfg, stt=lines, tts=Beeps(), vad=vad, clock=lambda: NOW, twilio_rest=client)
        served = _Server(build_app(runtime, validate_twilio=True, twilio_auth_token=AUTH_TOKEN)).__enter__()
        made.append((served, runtime))
        return Line(served, runtime, lines)

    yield make
    for served, runtime in made:
        served.__exit__(None, None, None)
        runtime.close()


# ------------------------------------------------------------------------------------ Twilio's side
class Phone:
    """Twilio's side of one call's media stream. It carries the caller's audio and keys, plays the
    bot's audio in real time from its arrival (as Twilio's buffer does) and echoes each mark once
    the audio before it has played, or at once after a ``clear``."""

    def __init__(self, ws, stream_sid: str):
        self.ws, self.sid = ws, stream_sid
        self.received: list[tuple[float, dict]] = []
        self.echoed: list[tuple[float, str]] = []
        self.played_until = 0.0
        self.seq = 0
        self.reader = asyncio.create_task(self.read())

    async def read(self):
        from websockets.exceptions import ConnectionClosed

        try:
            async for text in self.ws:
                now = time.monotonic()
                msg = json.loads(text)
                self.received.append((now, msg))
                event = msg.get("event")
                if event == "media":
                    samples = len(base64.b64decode(msg["media"]["payload"]))
                    self.played_until = max(self.played_until, now) + samples / 8000
                elif event == "clear":
                    self.played_until = now
                elif event == "mark":
                    asyncio.get_running_loop().call_later(max(0.0, self.played_until - now), self.echo,
                                                          msg["mark"]["name"])
        except ConnectionClosed:
            pass

    def echo(self, name: str) -> None:
        self.echoed.append((time.monotonic(), name))
        asyncio.ensure_future(self.send("mark", streamSid=self.sid, mark={"name": name}))

    async def send(self, event: str, **body):
        from websockets.exceptions import ConnectionClosed

        self.seq += 1
        try:
            await self.ws.send(json.dumps({"event": event, "sequenceNumber": str(self.seq), **body}))
        except ConnectionClosed:
            pass

    async def start(self, parameters: dict, call_sid: str):
        await self.send("connected", protocol="Call", version="1.0.0")
        await self.send("start", streamSid=self.sid, start={
            "streamSid": self.sid, "callSid": call_sid, "accountSid": ACCOUNT_SID, "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}})

    async def audio(self, pcm16k: np.ndarray):
        """The caller's line in 20 ms frames, in real time."""
        t0 = time.monotonic()
        for i, payload in enumerate(to_mulaw_frames(pcm16k)):
            await self.send("media", streamSid=self.sid, media={"track": "inbound", "payload": payload})
            delay = t0 + (i + 1) * FRAME / 8000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def press(self, keys: str, gap_s: float = 0.15):
        for key in keys:
            await self.send("dtmf", streamSid=self.sid, dtmf={"track": "inbound_track", "digit": key})
            await self.audio(silence(gap_s))

    def media_since(self, since: float) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.received if m.get("event") == "media" and t >= since]

    async def heard_reply(self, since: float, timeout: float = 20.0) -> None:
        """Carry silence until the bot has answered (audio after ``since``) and it has all played."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            media = self.media_since(since)
            now = time.monotonic()
            if media and now - media[-1][0] > 0.6 and now > self.played_until + 0.2:
                return
            if self.reader.done():
                if media:
                    return  # it answered, then hung up
                raise AssertionError("the bot hung up without answering")
            await self.audio(silence(0.1))
        raise AssertionError(f"no whole reply within {timeout} s")

    async def stop(self, call_sid: str):
        await self.send("stop", streamSid=self.sid, stop={"accountSid": ACCOUNT_SID, "callSid": call_sid})

    async def closed(self, timeout: float = 15.0) -> None:
        """Carry silence until the server closes the socket."""
        deadline = time.monotonic() + timeout
        while not self.reader.done():
            assert time.monotonic() < deadline, f"the socket stayed open for {timeout} s"
            await self.audio(silence(0.1))
        await self.reader


class Caller:
    """One caller on the line: places the signed call and talks."""

    def __init__(self, line: Line, n: int, caller: str):
        self.line = line
        self.stream_sid = f"MZ{n:032x}"
        self.call_sid = f"CA{n:032x}"
        self.caller = caller
        self.phone: Phone | None = None

    async def __aenter__(self) -> Caller:
        import websockets

        base = f"http://127.0.0.1:{self.line.port}"
        form = {"CallSid": self.call_sid, "AccountSid": ACCOUNT_SID, "From": self.caller, "To": "+81312345678",
                "CallStatus": "ringing", "Direction": "inbound"}
        async with httpx.AsyncClient(base_url=base) as http:
            r = await http.post("/telephone/incoming", data=form,
                                headers={"X-Twilio-Signature": sign(f"{base}/telephone/incoming", form, AUTH_TOKEN)})
        assert r.status_code == 200, r.text
        _url, parameters = twiml_stream(r.text)
        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.line.port}/telephone/handler", open_timeout=10,
                                           close_timeout=5)
        self.phone = Phone(self.ws, self.stream_sid)
        t0 = time.monotonic()
        await self.phone.start(parameters, self.call_sid)
        await self.phone.heard_reply(t0)  # the greeting
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()

    async def say(self, text: str) -> None:
        """Say ``text`` (espeak-ng's voice, the recogniser reports ``text``) and hear the whole answer."""
        self.line.lines.text = text
        await self.phone.audio(speech(text, "ja"))
        said = time.monotonic()  # the answer may start within the silence that follows (a turn ends fast)
        await self.phone.audio(silence(0.2))
        await self.phone.heard_reply(said)

    async def press(self, keys: str) -> None:
        """Press ``keys`` on the keypad and hear the whole answer."""
        self.line.lines.text = ""  # nothing is said: only the keys can be answered
        t0 = time.monotonic()
        await self.phone.press(keys)
        await self.phone.heard_reply(t0)

    def turns(self) -> list[dict]:
        return [r for r in self.line.call_log() if r.get("event") == "turn" and r.get("call_id") == self.stream_sid]

    def ended(self) -> str | None:
        ends = [r for r in self.line.call_log() if r.get("event") == "call_end" and r.get("call_id") == self.stream_sid]
        return ends[-1]["reason"] if ends else None


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _replies(caller: Caller) -> list[str]:
    return [t["reply"] for t in caller.turns()]


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ------------------------------------------------------------------------------------------ caller ID
def test_a_call_from_a_caller_id_books_with_that_number_after_one_yes(line, rest, caplog):
    phone_line = line()

    async def call():
        async with Caller(phone_line, 1, CALLER) as caller:
            for text in BOOKING:
                await caller.say(text)
            offer = _replies(caller)[-1]
            await caller.say("はい")  # to 「…今おかけの末尾5678の番号でよろしいでしょうか」
            await caller.say("特にありません")
            await caller.say("はい")  # to the read-back
            await caller.phone.stop(caller.call_sid)
            await caller.phone.closed()
            return caller, offer

    with caplog.at_level(logging.INFO):
        caller, offer = run(call())
    assert "今おかけの末尾" in offer and "ゴー、ロク、ナナ、ハチ" in offer, offer
    booked = phone_line.bookings()
    assert len(booked) == 1 and booked[0].phone == CALLER_DIGITS
    assert (booked[0].date, booked[0].time, booked[0].party_size) == (dt.date(2026, 12, 24), dt.time(19), 3)
    assert len(caller.turns()) == 5, "the number took more than one yes"
    # the caller's number is in no log line, in any form
    for form in (CALLER, CALLER_DIGITS, "090-1234-5678"):
        assert form not in caplog.text
    assert not rest.of_kind("messages"), "a text was sent with texts off"


def test_the_caller_id_comes_from_the_signed_webhook_never_from_the_websocket(line):
    phone_line = line()
    guard = phone_line.server.server.config.app.state.twilio_guard

    async def stream(n: int, token: str, extra: dict) -> tuple:
        import websockets

        sid, call_sid = f"MZ{n:032x}", f"CA{n:032x}"
        async with websockets.connect(f"ws://127.0.0.1:{phone_line.port}/telephone/handler") as ws:
            phone = Phone(ws, sid)
            await phone.start({"token": token, **extra}, call_sid)
            await phone.heard_reply(time.monotonic() - 1)
            state = phone_line.runtime.find_call(sid).agent.state
            found = (state.caller_id, state.keypad)
            await phone.stop(call_sid)
            await phone.closed()
            return found

    async def calls():
        withheld = guard.issue(f"CA{2:032x}", caller="anonymous")
        posed = await stream(2, withheld, {"From": CALLER, "caller": CALLER, "callerId": CALLER})
        signed = guard.issue(f"CA{3:032x}", caller=CALLER)
        real = await stream(3, signed, {"From": "+819099998888"})
        return posed, real

    posed, real = run(calls())
    assert posed == (None, True), "a number the websocket sent was taken as the caller's"
    assert real == (CALLER_DIGITS, True)


# ------------------------------------------------------------------------------------------- keypad
def test_a_caller_who_types_the_number_on_the_keypad_gets_it_booked(line):
    phone_line = line()

    async def call():
        async with Caller(phone_line, 4, "anonymous") as caller:  # a withheld number: nothing to offer
            for text in BOOKING:
                await caller.say(text)
            asked = _replies(caller)[-1]
            await caller.press(CALLER_DIGITS + "#")
            await caller.say("特にありません")
            readback = _replies(caller)[-1]
            await caller.press("1")  # yes
            booked = _replies(caller)[-1]
            await caller.phone.stop(caller.call_sid)
            await caller.phone.closed()
            return caller, asked, readback, booked

    caller, asked, readback, booked = run(call())
    assert "お電話番号" in asked and "末尾" not in asked
    assert "ゼロ、キュウ、ゼロ、の、イチ、ニー、サン、ヨン、の、ゴー、ロク、ナナ、ハチ" in readback, readback
    assert "予約番号" in booked, booked
    found = phone_line.bookings()
    assert len(found) == 1 and found[0].phone == CALLER_DIGITS
    keyed = [t for t in caller.turns() if t["keypad"]]
    assert [t["transcript"] for t in keyed] == [CALLER_DIGITS, "はい"], "the keys were not answered as turns"
    assert all(t["reply"] and t["ms"]["first_audio_sent"] is not None for t in keyed)


def test_bad_keys_are_skipped_and_logged_once(line, caplog):
    phone_line = line()

    async def call():
        async with Caller(phone_line, 5, "anonymous") as caller:
            for body in ({"digit": "x"}, {"digit": "12"}, {}, "5", {"digit": "5", "track": "outbound_track"}):
                await caller.phone.send("dtmf", streamSid=caller.stream_sid, dtmf=body)
            await caller.phone.audio(silence(1.5))
            await caller.phone.stop(caller.call_sid)
            await caller.phone.closed()
            return caller

    with caplog.at_level(logging.WARNING):
        caller = run(call())
    warned = [r.getMessage() for r in caplog.records if "skipping dtmf" in r.getMessage()]
    assert len(warned) == 2 and all(caller.stream_sid in w for w in warned), warned
    assert not caller.turns(), "a bad key was answered"


# ------------------------------------------------------------------------------------------ a person
def test_asking_for_a_person_transfers_the_live_call_to_the_configured_number(line, rest):
    phone_line = line(transfer_number=TRANSFER_TO)

    async def call():
        async with Caller(phone_line, 6, CALLER) as caller:
            phone_line.lines.text = "お店の人と話したいです"
            t0 = time.monotonic()
            await caller.phone.audio(np.concatenate([speech("お店の人と話したいです", "ja"), silence(0.2)]))
            updates = await asyncio.to_thread(rest.wait_for, "calls", 1, 30)
            await asyncio.sleep(0.5)
            await caller.phone.stop(caller.call_sid)  # Twilio ends the stream to dial the number
            await caller.phone.closed()
            return caller, updates, t0

    caller, updates, t0 = run(call())
    assert "おつなぎいたします" in _replies(caller)[-1]
    (update,) = updates
    assert update.authorised and update.call_sid == caller.call_sid
    assert update.form["Twiml"].endswith("<Response><Dial>+81398765432</Dial></Response>"), update.form
    # the transfer came once Twilio had played the goodbye: the mark after its last audio was echoed
    phone = caller.phone
    last_media = max(t for t, _ in phone.media_since(t0))
    marks = [t for t, m in phone.received if m.get("event") == "mark" and m["mark"]["name"] == "handover"]
    assert marks and marks[0] >= last_media, "the mark went before the goodbye's audio"
    echoed = [t for t, name in phone.echoed if name == "handover"]
    assert echoed and update.at >= echoed[0], "transferred before the caller heard the goodbye"
    assert _wait(lambda: caller.ended() == "transferred")


def test_without_a_transfer_number_the_caller_is_given_the_restaurants_number(line, rest):
    phone_line = line()

    async def call():
        async with Caller(phone_line, 7, CALLER) as caller:
            await caller.say("お店の人と話したいです")
            await caller.phone.stop(caller.call_sid)
            await caller.phone.closed()
            return caller

    caller = run(call())
    assert "03-1234-5678" in _replies(caller)[-1]
    assert not rest.of_kind("calls")


def test_a_failed_transfer_gives_the_restaurants_number_and_hangs_up(line, rest):
    phone_line = line(transfer_number=TRANSFER_TO)
    rest.fail["calls"] = 500

    async def call():
        async with Caller(phone_line, 8, CALLER) as caller:
            phone_line.lines.text = "お店の人と話したいです"
            await caller.phone.audio(np.concatenate([speech("お店の人と話したいです", "ja"), silence(0.2)]))
            await caller.phone.closed(timeout=30)
            return caller

    caller = run(call())
    assert rest.of_kind("calls") and rest.of_kind("calls")[0].status == 500
    assert _wait(lambda: caller.ended() == "transfer_failed")


# -------------------------------------------------------------------------------------- a text to confirm
async def _book_by_caller_id(caller: Caller) -> None:
    for text in [*BOOKING, "はい", "特にありません", "はい"]:
        await caller.say(text)


def test_a_booking_and_its_cancellation_are_texted_to_the_caller_when_texts_are_on(line, rest):
    phone_line = line(sms=True)

    async def calls():
        async with Caller(phone_line, 9, CALLER) as first:
            await _book_by_caller_id(first)
            await first.say("以上です")
            await first.phone.closed()
        booked = await asyncio.to_thread(rest.wait_for, "messages", 1, 15)
        async with Caller(phone_line, 10, CALLER) as second:
            await second.say("予約をキャンセルしたいです")
            await second.say("はい")
            await second.say("以上です")
            await second.phone.closed()
        both = await asyncio.to_thread(rest.wait_for, "messages", 2, 15)
        return booked, both

    booked, both = run(calls(), timeout=180)
    (text,) = booked
    assert not phone_line.bookings(), "the booking was not cancelled"
    assert text.authorised and text.form["To"] == CALLER and text.form["From"] == SMS_FROM
    body = text.form["Body"]
    for part in ("ご予約を承りました", "12月24日(木) 19:00", "3名様", "田中様", "予約番号: R-"):
        assert part in body, body
    cancelled = both[1].form["Body"]
    assert "キャンセル" in cancelled and body.split("予約番号: ")[1][:8] in cancelled


def test_a_text_that_fails_leaves_the_booking_and_the_call_as_they_are(line, rest, caplog):
    phone_line = line(sms=True)
    rest.fail["messages"] = 500

    async def call():
        async with Caller(phone_line, 11, CALLER) as caller:
            await _book_by_caller_id(caller)
            await asyncio.to_thread(rest.wait_for, "messages", 1, 15)
            await caller.say("以上です")
            await caller.phone.closed()
            return caller

    with caplog.at_level(logging.INFO):
        caller = run(call())
    assert len(phone_line.bookings()) == 1, "the booking did not stand"
    assert "予約番号" in _replies(caller)[-2] and caller.ended() == "completed"
    failed = [r for r in caplog.records if "confirmation text" in r.getMessage() and r.levelno == logging.WARNING]
    assert failed and "500" in failed[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    for form in (CALLER, CALLER_DIGITS):
        assert form not in caplog.text


def test_the_confirmation_text_in_english_and_for_a_change(test_config):
    from pipeline.transport.twilio.rest import confirmation_text

    booking = {"id": "R-ABC123", "date": "2026-12-24", "time": "19:30", "party_size": 1, "name": "Smith"}
    text = confirmation_text("changed", booking, "en", test_config.restaurant)
    assert "your reservation has been changed" in text
    assert "Thu, Dec 24 at 7:30 PM" in text and "1 person" in text and "Smith" in text and "R-ABC123" in text


# ------------------------------------------------------------------------------------------- config
def test_the_phone_settings_are_checked_naming_the_key():
    from pipeline.config import PROJECT_ROOT, ConfigError, load_config

    def load(**env):
        return load_config(PROJECT_ROOT / "config.yaml", environ={f"VOICEBOT__{k}": v for k, v in env.items()})

    cfg = load()
    assert cfg.restaurant.transfer_number is None and not cfg.twilio.sms_confirmations
    assert cfg.twilio.dtmf_pause_s == 2.0
    assert load(RESTAURANT__TRANSFER_NUMBER="03-9876-5432").restaurant.transfer_number == "+81398765432"
    assert load(RESTAURANT__TRANSFER_NUMBER="+81398765432").restaurant.transfer_number == "+81398765432"
    for env, key in (({"RESTAURANT__TRANSFER_NUMBER": "call the chef"}, "restaurant.transfer_number"),
                     ({"TWILIO__SMS_CONFIRMATIONS": "true"}, "sms_from"),
                     ({"TWILIO__SMS_FROM": "me"}, "twilio.sms_from"),
                     ({"TWILIO__ACCOUNT_SID": "AC123"}, "twilio.account_sid"),
                     ({"TWILIO__DTMF_PAUSE_S": "0"}, "twilio.dtmf_pause_s")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(**env)


def test_rest_credentials_come_from_the_environment_or_the_account_sid_setting(test_config):
    cfg = test_config.model_copy(deep=True)
    assert TwilioREST.from_config(cfg, {}) is None
    assert TwilioREST.from_config(cfg, {"TWILIO_AUTH_TOKEN": AUTH_TOKEN}) is None  # no account SID
    client = TwilioREST.from_config(cfg, {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT_SID})
    assert client is not None and client.account_sid == ACCOUNT_SID
    cfg.twilio.account_sid = ACCOUNT_SID
    assert TwilioREST.from_config(cfg, {"TWILIO_AUTH_TOKEN": AUTH_TOKEN}).account_sid == ACCOUNT_SID
