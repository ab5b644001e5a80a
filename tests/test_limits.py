"""Phone-grade limits: call length, concurrent calls, silent callers, and bad input on the phone socket.

The real handler on the test models (random-weight whisper, fake kokoro, bundled silero) driven as
FastRTC drives it, and for the phone a real uvicorn server on loopback with a websockets client
sending Twilio-format frames (tests/test_app.py's helpers). Limits are set small (seconds) here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import logging
import time

import numpy as np
import pytest
from audio_fixtures import ESPEAK, ESPEAK_MISSING, silence, speech
from fastrtc import CloseStream
from fastrtc.utils import Context, current_context
from test_app import TwilioCall, _Server, decode_media

from pipeline.config import ConfigError, ServerConfig, load_config
from pipeline.dialog.rules import QUESTIONS
from pipeline.transport.fastrtc import CallHandler, make_handler
from pipeline.transport.twilio.media import FORMAT_REFUSED, UNSUPPORTED_DATA
from pipeline.voice.phrases import (
    APOLOGY,
    BUSY,
    CALL_AGAIN,
    KEPT,
    LIMIT_GOODBYE,
    SILENCE_GOODBYE,
    SILENCE_PROMPT,
)
from pipeline.voice.runtime import VoiceRuntime

pytestmark = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)

SR = 16000
FRAME = SR // 50  # 20 ms


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def parts(test_config):
    from pipeline.speech.models import model_resolver
    from pipeline.speech.stt import make_stt
    from pipeline.speech.tts import make_tts
    from pipeline.speech.vad import make_vad

    parts = {"stt": make_stt(test_config.stt, model_resolver(test_config)),
             "tts": make_tts(test_config.tts, model_resolver(test_config)),
             "vad": make_vad(test_config.vad)}
    for p in parts.values():
        p.warmup()
    return parts


def _runtime(test_config, parts, tmp_path, *, stt=None, tts=None, **server) -> VoiceRuntime:
    """A runtime with the rules agent and only the limits a test names switched on."""
    cfg = test_config.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{tmp_path}/reservations.db"
    cfg.logging.call_log = str(tmp_path / "calls.jsonl")
    cfg.agent.kind = "rules"
    limits = {"max_call_s": 0, "silence_prompt_s": 0, "silence_hangup_s": 0, "max_calls": 8, **server}
    cfg.server = ServerConfig(**{**cfg.server.model_dump(), **limits})
    return VoiceRuntime(cfg, stt=stt or parts["stt"], tts=tts or parts["tts"], vad=parts["vad"])


@pytest.fixture
def make_runtime(test_config, parts, tmp_path):
    made: list[VoiceRuntime] = []

    def make(**kw) -> VoiceRuntime:
        rt = _runtime(test_config, parts, tmp_path / f"rt{len(made)}", **kw)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


class Ears:
    """The real STT runs; it reports ``text`` as what it heard (random-weight whisper hears junk)."""

    def __init__(self, stt, text: str):
        self.stt, self.text = stt, text

    def transcribe(self, audio, sample_rate):
        result = self.stt.transcribe(audio, sample_rate)
        return type(result)(self.text, result.language, result.duration_s, result.elapsed_s)

    def warmup(self):
        self.stt.warmup()


class SlowTTS:
    """The real TTS taking as long per sentence as a real voice model on a small CPU."""

    def __init__(self, tts, delay_s: float = 0.4):
        self.tts, self.delay_s = tts, delay_s
        self.sample_rate = tts.sample_rate

    def synthesize(self, text, language):
        time.sleep(self.delay_s)
        return self.tts.synthesize(text, language)

    def warmup(self):
        pass


def call_ends(rt: VoiceRuntime) -> list[str]:
    lines = [json.loads(x) for x in rt.call_log.read_text(encoding="utf-8").splitlines()] if rt.call_log.exists() else []
    return [r["reason"] for r in lines if r["event"] == "call_end"]


def no_errors(caplog, capfd) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------ the handler, driven
def new_handler(rt: VoiceRuntime) -> CallHandler:
    h = make_handler(rt).copy()
    h.attach(None, lambda: None)
    return h


def greet(h: CallHandler) -> list:
    h.start_up()
    out = line(h, 30, until=lambda item: h.generator is None and not h.event.is_set(), play=True)
    return out


def line(h: CallHandler, seconds: float, *, talk: np.ndarray | None = None, until=None, play: bool = True) -> list:
    """FastRTC's two loops in one thread, in real time: the caller's audio (``talk``, then silence)
    into receive() 20 ms at a time, emit() in between. ``play``: what the bot hands out counts as
    heard at once (no waiting out its playback). Stops after CloseStream or when ``until(item)``."""
    out: list = []
    t0 = time.monotonic()
    fed = 0
    talk = np.zeros(0, np.int16) if talk is None else talk
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) / 0.02) + 1
        while fed < due:
            start = fed * FRAME
            chunk = talk[start : start + FRAME] if start < talk.size else np.zeros(0, np.int16)
            frame = np.pad(chunk, (0, FRAME - chunk.size))
            h.receive((SR, frame.reshape(1, -1)))
            fed += 1
        item = h.emit()
        if item is not None:
            out.append(item)
            if play and isinstance(item, tuple) and h.call_id is not None:
                h.call.assume_played(ago_s=0.0)  # as a transport that plays at once would
            if isinstance(item, CloseStream):
                return out
        if until is not None and until(item):
            return out
    return out


def audio_s(items: list) -> float:
    return sum(i[1].size / i[0] for i in items if isinstance(i, tuple))


def bot_lines(h: CallHandler) -> list[str]:
    return [e["text"] for e in h.call.transcript if e["role"] == "bot"]


# ----------------------------------------------------------------------------------- config
def test_limits_are_configurable_and_checked():
    server = ServerConfig()
    assert server.max_calls == server.concurrency_limit
    assert server.max_call_s > 0 and server.silence_prompt_s > 0 and server.silence_hangup_s > 0
    assert ServerConfig(concurrency_limit=2).max_calls == 2
    assert ServerConfig(max_calls=10).max_calls == 10


@pytest.mark.parametrize("env, key", [
    ({"VOICEBOT__SERVER__MAX_CALL_S": "900"}, "time_limit_s"),  # FastRTC would cut before the goodbye
    ({"VOICEBOT__SERVER__MAX_CALLS": "0"}, "server.max_calls"),
    ({"VOICEBOT__SERVER__SILENCE_PROMPT_S": "-1"}, "server.silence_prompt_s"),
    ({"VOICEBOT__SERVER__SILENCE_HANGUP_S": "soon"}, "server.silence_hangup_s"),
])
def test_bad_limits_are_refused_naming_the_key(env, key):
    from pipeline.config import PROJECT_ROOT

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PROJECT_ROOT / "config.yaml", environ=env)


# ------------------------------------------------------------------------------ maximum call length
def test_at_the_maximum_call_length_the_bot_says_goodbye_then_hangs_up(make_runtime):
    rt = make_runtime(max_call_s=2)
    h = new_handler(rt)
    greet(h)
    out = line(h, 10)
    assert out and isinstance(out[-1], CloseStream), "no hang-up at max_call_s"
    assert audio_s(out[:-1]) > 0.5, "hung up without a word"
    assert time.monotonic() - h.call.started >= 2
    assert bot_lines(h)[-1] == LIMIT_GOODBYE["ja"] + CALL_AGAIN["ja"]
    assert not rt.calls and call_ends(rt) == ["max_length"]


def test_the_call_length_goodbye_is_in_the_call_language_and_says_whether_the_booking_stands(make_runtime):
    rt = make_runtime(max_call_s=60)
    call = rt.get_call("c1")
    assert call.due_line(call.started + 59) is None
    due = call.due_line(call.started + 60, caller_talking=True)  # the hard limit waits for nobody
    assert due.kind == "max_length" and due.final and due.text == LIMIT_GOODBYE["ja"] + CALL_AGAIN["ja"]
    call.agent.state.reservation = {"id": "R-1"}
    call.agent.state.language = "en"
    due = call.due_line(call.started + 60)
    assert due.text == f"{LIMIT_GOODBYE['en']} {KEPT['en']}"


def test_a_goodbye_talked_over_is_said_again_and_the_call_still_ends(make_runtime, parts):
    rt = make_runtime(max_call_s=2, tts=SlowTTS(parts["tts"]))
    h = new_handler(rt)
    greet(h)
    wait = max(0.0, h.call.started + 2.2 - time.monotonic())
    # the caller starts talking just after the goodbye has begun: the barge-in cuts it short
    talk = np.concatenate([silence(wait), speech("すみません、もう少し話したいのですが", "ja"), silence(0.2)])
    out = line(h, 30, talk=talk, play=False)
    assert out and isinstance(out[-1], CloseStream)
    goodbye = LIMIT_GOODBYE["ja"] + CALL_AGAIN["ja"]
    said = [e for e in h.call.transcript if e["role"] == "bot" and e["text"] + e.get("unheard", "") == goodbye]
    assert len(said) >= 2 and said[0].get("interrupted"), h.call.transcript
    assert not said[-1].get("interrupted"), "the last goodbye was not said in full"
    assert not [e for e in h.call.transcript if e["role"] == "user"], "a turn was answered after the limit"
    assert not rt.calls and call_ends(rt) == ["max_length"]


# ------------------------------------------------------------------------------------- silent caller
def test_a_silent_caller_is_asked_once_then_told_goodbye_and_hung_up_on(make_runtime):
    rt = make_runtime(silence_prompt_s=1, silence_hangup_s=1)
    h = new_handler(rt)
    greet(h)
    t0 = time.monotonic()
    out = line(h, 15)
    assert out and isinstance(out[-1], CloseStream), "a silent call was never hung up"
    assert time.monotonic() - t0 >= 2
    lines = bot_lines(h)[1:]  # after the greeting
    assert len(lines) == 2, lines
    prompt, goodbye = lines
    assert prompt.startswith(SILENCE_PROMPT["ja"]) and prompt.endswith(QUESTIONS["ja"]["date"])
    assert goodbye == SILENCE_GOODBYE["ja"] + CALL_AGAIN["ja"]
    assert not rt.calls and call_ends(rt) == ["silence"]


def test_the_silence_prompt_waits_for_the_bot_to_finish_and_for_the_caller(make_runtime):
    rt = make_runtime(silence_prompt_s=5, silence_hangup_s=5)
    h = new_handler(rt)
    h.start_up()
    line(h, 30, until=lambda item: h.generator is None and not h.event.is_set(), play=False)
    call = h.call
    now = time.monotonic()
    assert call.playing(now), "the greeting's audio is still playing out"
    assert call.due_line(now + 4) is None  # counted from the end of the audio, not from its hand-out
    later = now + 60
    assert call.due_line(later, caller_talking=True) is None
    due = call.due_line(later)
    assert due.kind == "silence_prompt" and not due.final


def test_without_the_prompt_a_silent_caller_is_still_hung_up_on(make_runtime):
    rt = make_runtime(silence_prompt_s=0, silence_hangup_s=5)
    call = rt.get_call("c1")
    assert call.due_line(call.started + 4) is None
    due = call.due_line(call.started + 5)
    assert due.kind == "silence" and due.final and due.text == SILENCE_GOODBYE["ja"] + CALL_AGAIN["ja"]
    assert make_runtime().get_call("c2").due_line(time.monotonic() + 3600) is None  # all limits off


def test_speech_resets_the_silence_timers(make_runtime, parts):
    rt = make_runtime(stt=Ears(parts["stt"], "12月24日"), silence_prompt_s=1.0, silence_hangup_s=1.5)
    h = new_handler(rt)
    greet(h)
    prompted = lambda _item: len(bot_lines(h)) >= 2 and h.generator is None  # noqa: E731
    line(h, 10, until=prompted)
    assert bot_lines(h)[1].startswith(SILENCE_PROMPT["ja"])
    # the caller answers the prompt: the goodbye that was due 1.5 s later is off
    out = line(h, 20, talk=np.concatenate([speech("十二月二十四日", "ja"), silence(0.3)]),
               until=lambda _item: len(bot_lines(h)) >= 4 and h.generator is None)
    assert not any(isinstance(i, CloseStream) for i in out), bot_lines(h)
    reply, again = bot_lines(h)[2:4]
    assert again.startswith(SILENCE_PROMPT["ja"]), "after the answer the timer started over with a prompt"
    assert again.endswith(QUESTIONS["ja"]["time"])  # the question the bot is asking now
    assert not h.call.ended


def test_a_caller_heard_only_as_noise_is_asked_again_not_left_in_silence(make_runtime, parts):
    # Whisper's favourite hallucination: no turn has words, as with noise, or speech it cannot read
    rt = make_runtime(stt=Ears(parts["stt"], "ご視聴ありがとうございました"), silence_prompt_s=3)
    h = new_handler(rt)
    greet(h)
    mumble = np.concatenate([speech("あー、えーと", "ja"), silence(0.8)])  # never 3 s of quiet
    talk = np.tile(mumble, 12)
    seconds = talk.size / SR - 1.0  # the caller is still mumbling when the test gives up
    out = line(h, seconds, talk=talk, until=lambda _item: len(bot_lines(h)) >= 3)
    assert len(bot_lines(h)) >= 3, "the caller was left in silence"
    # the first wordless turn is asked about once; the noise that goes on meets the silence prompt
    assert bot_lines(h)[1] == APOLOGY["ja"]
    assert bot_lines(h)[2].startswith(SILENCE_PROMPT["ja"])
    assert not [e for e in h.call.transcript if e["role"] == "user"]  # the noise never reached the agent
    assert not any(isinstance(i, CloseStream) for i in out)


# ------------------------------------------------------------------------------ concurrent calls
def _in_context(webrtc_id: str) -> contextvars.Context:
    ctx = contextvars.copy_context()
    ctx.run(current_context.set, Context(webrtc_id=webrtc_id))
    return ctx


def _agents_made(rt: VoiceRuntime, monkeypatch) -> list[str]:
    made: list[str] = []
    real = rt.new_agent

    def counting(call_id, language=None, **kw):
        made.append(call_id)
        return real(call_id, language, **kw)

    monkeypatch.setattr(rt, "new_agent", counting)
    return made


def test_a_browser_call_over_max_calls_hears_busy_then_is_hung_up(make_runtime, monkeypatch):
    rt = make_runtime(max_calls=1)
    agents = _agents_made(rt, monkeypatch)
    first, second, third = new_handler(rt), new_handler(rt), new_handler(rt)
    c1, c2, c3 = _in_context("rtc-1"), _in_context("rtc-2"), _in_context("rtc-3")
    c1.run(greet, first)
    assert "rtc-1" in rt.calls

    out = c2.run(greet, second)
    assert out and isinstance(out[-1], CloseStream)
    busy = np.concatenate([i[1] for i in out if isinstance(i, tuple)])
    assert np.array_equal(busy, rt.busy_audio["ja"]), "not the pre-rendered busy message"
    c2.run(line, second, 2, talk=speech("もしもし", "ja"))  # nobody listens on a refused line
    assert "rtc-2" not in rt.calls and agents == ["rtc-1"]

    c1.run(first.shutdown)  # the first caller hangs up: the line is free again
    c3.run(greet, third)
    assert "rtc-3" in rt.calls and agents == ["rtc-1", "rtc-3"]
    assert rt.lines_in_use == 1


def test_the_busy_message_is_rendered_at_start_up(make_runtime):
    rt = make_runtime()
    assert set(rt.busy_audio) == {"ja", "en"} and all(a.size for a in rt.busy_audio.values())
    assert BUSY["ja"] == "ただいま大変混み合っております。恐れ入りますが、しばらくしてからおかけ直しください。"


# ------------------------------------------------------------------------------ odd browser frames
ODD_FRAMES = {
    "8 kHz int16": (8000, np.zeros(160, np.int16)),
    "48 kHz float32 (1, n)": (48000, np.full((1, 960), 0.01, np.float32)),
    "44.1 kHz float64 stereo": (44100, np.zeros((2, 882))),
    "int32": (16000, np.zeros(320, np.int32)),
    "uint8": (16000, np.zeros(320, np.uint8)),
    "empty": (16000, np.zeros(0, np.int16)),
    "empty (1, 0)": (16000, np.zeros((1, 0), np.int16)),
    "rate 0": (0, np.zeros(320, np.float32)),
    "negative rate": (-8000, np.zeros(320, np.float32)),
    "rate not a number": ("fast", np.zeros(320, np.int16)),
    "NaN rate": (float("nan"), np.zeros(320, np.float32)),
    "no frame": None,
    "no array": (16000, None),
    "objects": (16000, np.array([object()] * 320)),
    "strings": (16000, np.array(["a"] * 320)),
    "NaN samples": (16000, np.full(320, np.nan, np.float32)),
    "3-D": (16000, np.zeros((1, 2, 320), np.float32)),
    "complex": (16000, np.zeros(320, np.complex64)),
    "scalar": (16000, np.int16(3)),
    "(n, 2)": (16000, np.zeros((320, 2), np.int16)),
    "six channels": (16000, np.zeros((6, 320), np.int16)),
    "a list": (16000, [0] * 320),
}


def test_odd_audio_frames_never_raise_out_of_receive_and_the_call_goes_on(make_runtime, parts, caplog):
    rt = make_runtime(stt=Ears(parts["stt"], "12月24日"))
    h = new_handler(rt)
    greet(h)
    with caplog.at_level(logging.WARNING):
        for name, frame in ODD_FRAMES.items():
            for _ in range(3):
                try:
                    h.receive(frame)
                except Exception as e:  # the assertion names the frame
                    pytest.fail(f"receive() raised {type(e).__name__} on a {name} frame: {e}")
    assert any("dropping malformed audio frames" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    out = line(h, 20, talk=np.concatenate([speech("十二月二十四日", "ja"), silence(1.0)]),
               until=lambda _item: len(bot_lines(h)) >= 2 and h.generator is None)
    assert audio_s(out) > 0 and bot_lines(h)[1], "the call stopped answering"


# ================================================================================== the phone
def _sid(n: int | str) -> str:
    return f"MZ{str(n).rjust(32, '0')}"


async def _connect(server):
    import websockets

    return await websockets.connect(f"ws://127.0.0.1:{server.port}/telephone/handler", open_timeout=10,
                                    close_timeout=5, max_size=None)


async def _start(tw: TwilioCall, sid: str, fmt: dict | None = None, custom: dict | None = None) -> None:
    await tw.send("connected", protocol="Call", version="1.0.0")
    await tw.send("start", streamSid=sid, start={
        "streamSid": sid, "callSid": "CA" + sid[2:], "accountSid": "AC0", "tracks": ["inbound"],
        "customParameters": custom or {},
        "mediaFormat": fmt or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}})


async def _until_closed(tw: TwilioCall, timeout: float) -> None:
    """Carry silence, as Twilio does, until the server closes the socket."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + timeout
    while not tw.closed:
        if time.monotonic() > deadline:
            raise AssertionError(f"the socket stayed open for {timeout} s")
        try:
            await tw.audio(silence(0.1))
        except ConnectionClosed:
            break
    assert await tw.wait_closed(5)


def _wait_gone(rt: VoiceRuntime, sid: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while sid in rt.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sid not in rt.calls


@contextlib.contextmanager
def _serving(rt: VoiceRuntime, **build):
    from pipeline.app import build_app

    app = build_app(rt, validate_twilio=build.pop("validate_twilio", False), **build)
    with _Server(app) as srv:
        yield srv
    assert not srv.thread.is_alive()


def test_a_phone_call_at_the_maximum_length_hears_goodbye_then_the_socket_closes(make_runtime, caplog, capfd):
    rt = make_runtime(max_call_s=3)
    sid = _sid(1)

    async def call(server):
        async with await _connect(server) as ws:
            tw = TwilioCall(ws)
            t0 = time.monotonic()
            await _start(tw, sid)
            await tw.wait_for("media", t0, timeout=20)
            await _until_closed(tw, 20)
            return tw, t0

    with caplog.at_level(logging.WARNING), _serving(rt) as server:
        tw, t0 = asyncio.run(asyncio.wait_for(call(server), 60))
        _wait_gone(rt, sid)
    late = [m for t, m in tw.received if m.get("event") == "media" and t - t0 >= 3]
    assert late, "nothing was said at the limit"
    pcm = np.concatenate([decode_media(m) for m in late])
    assert np.abs(pcm.astype(np.int32)).max() > 1000 and pcm.size > 8000 * 1.0, "the goodbye is missing"
    assert tw.ws.close_code == 1000
    assert call_ends(rt) == ["max_length"]
    no_errors(caplog, capfd)


def test_a_phone_call_over_max_calls_hears_busy_then_is_hung_up_without_a_call(make_runtime, monkeypatch,
                                                                             caplog, capfd):
    rt = make_runtime(max_calls=1)
    agents = _agents_made(rt, monkeypatch)
    first, second, third = _sid("a1"), _sid("b2"), _sid("c3")

    async def calls(server):
        async with await _connect(server) as ws1:
            one = TwilioCall(ws1)
            t0 = time.monotonic()
            await _start(one, first)
            await one.wait_for("media", t0, timeout=20)
            async with await _connect(server) as ws2:
                two = TwilioCall(ws2)
                await _start(two, second)
                mark = await two.wait_for("mark", t0, timeout=20)
                assert mark["mark"]["name"] == "busy" and mark["streamSid"] == second
                assert second not in rt.calls
                await two.send("mark", streamSid=second, mark={"name": "busy"})  # Twilio: played it
                await _until_closed(two, 10)
            await one.send("stop", streamSid=first, stop={})
            assert await one.wait_closed(10)
        _wait_gone(rt, first)
        async with await _connect(server) as ws3:  # the line is free again
            three = TwilioCall(ws3)
            t3 = time.monotonic()
            await _start(three, third)
            await three.wait_for("media", t3, timeout=20)
            await three.send("stop", streamSid=third, stop={})
            assert await three.wait_closed(10)
        return two

    with caplog.at_level(logging.WARNING), _serving(rt) as server:
        two = asyncio.run(asyncio.wait_for(calls(server), 90))
        _wait_gone(rt, third)
    busy = np.concatenate([decode_media(m) for m in two.events("media")])
    assert abs(busy.size / 8000 - rt.busy_audio["ja"].size / rt.tts.sample_rate) < 0.05
    assert all(m["streamSid"] == second for m in two.events("media"))
    assert two.ws.close_code == 1000 and "busy" in (two.ws.close_reason or "")
    assert agents == [first, third], "the refused call got an agent"
    assert rt.lines_in_use == 0
    assert any("lines are taken" in r.getMessage() for r in caplog.records)
    no_errors(caplog, capfd)


# ------------------------------------------------------------------------------ bad phone input
@pytest.fixture(scope="module")
def phone(test_config, parts, tmp_path_factory):
    rt = _runtime(test_config, parts, tmp_path_factory.mktemp("phone"), stt=Ears(parts["stt"], "12月24日"))
    with _serving(rt) as server:
        yield rt, server
    rt.close()


def _media(payload) -> dict:
    return {"event": "media", "streamSid": _sid(0), "media": {"track": "inbound", "payload": payload}}


_B64 = base64.b64encode(bytes(range(256))[:161]).decode()  # 161 mu-law bytes: an odd length

#: kind -> (what is sent, the warning logged once; None: accepted as it is)
BAD_INPUT = {
    "not JSON": ("{not json", "not JSON"),
    "deeply nested JSON": ("[" * 50_000, "not JSON"),
    "a JSON array": ("[1, 2, 3]", "not objects"),
    "a JSON number": ("42", "not objects"),
    "no event": ({"sequenceNumber": "7"}, "without an event"),
    "an event that is not a string": ({"event": ["media"]}, "without an event"),
    "an unknown event": ({"event": "hello", "x": 1}, "unknown events"),
    "a key that is not a key": ({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "X"}},
                                "dtmf events without a key"),
    "media without media": ({"event": "media"}, "without a payload"),
    "a payload that is not a string": (_media(12345), "without a payload"),
    "a payload that is not base64": (_media("this is *not* base64!"), "not base64"),
    "an empty payload": (_media(""), "empty media payloads"),
    "an odd-length payload": (_media(_B64), None),
    "a second start": ("START", "repeated start events"),
    "an oversized message": (_media("A" * 70_000), "over 64 KiB"),
    "a binary frame": (b"\x00\x01\x02", "binary frames"),
}


async def _send_raw(tw: TwilioCall, what, sid: str) -> None:
    if what == "START":
        await _start(tw, _sid("f" + sid[-4:]))
    elif isinstance(what, bytes | str):
        await tw.ws.send(what)
    else:
        await tw.ws.send(json.dumps(what))


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_bad_phone_messages_are_skipped_and_the_call_goes_on(phone, kind, caplog, capfd):
    rt, server = phone
    what, warning = BAD_INPUT[kind]
    sid = _sid(list(BAD_INPUT).index(kind) + 100)

    async def call():
        async with await _connect(server) as ws:
            tw = TwilioCall(ws)
            t0 = time.monotonic()
            await _start(tw, sid)
            await tw.wait_for("media", t0, timeout=20)  # the greeting
            for _ in range(3):
                await _send_raw(tw, what, sid)
                await tw.audio(silence(0.1))
            t_bad = time.monotonic()
            await tw.wait_for("media", t_bad, timeout=10)  # still talking: the loop did not die
            assert not tw.closed, "the server closed the call"
            await tw.send("stop", streamSid=sid, stop={})
            assert await tw.wait_closed(10)

    with caplog.at_level(logging.INFO):
        asyncio.run(asyncio.wait_for(call(), 60))
        _wait_gone(rt, sid)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipping" in r.getMessage()]
    if warning is None:
        assert not warned, warned
    else:
        assert len([w for w in warned if warning in w]) == 1, warned  # once per kind and call, not per message
        assert all(sid in w for w in warned), "the log line does not name the call"
    assert set(rt.calls) == set() and not any(s.startswith("MZf") for s in rt.calls)
    no_errors(caplog, capfd)


def test_a_flood_of_every_bad_kind_leaves_the_call_answering(phone, caplog, capfd):
    rt, server = phone
    sid = _sid("f100d")
    reply = np.concatenate([silence(0.3), speech("十二月二十四日でお願いします", "ja"), silence(1.0)])

    async def call():
        async with await _connect(server) as ws:
            tw = TwilioCall(ws)
            t0 = time.monotonic()
            await _start(tw, sid)
            await tw.wait_for("media", t0, timeout=20)
            await tw.wait_quiet(quiet=1.0, timeout=30)
            for i in range(30):
                for what, _warning in BAD_INPUT.values():
                    await _send_raw(tw, what, sid)
                if i % 5 == 0:
                    await tw.audio(silence(0.02), realtime=0)
            await tw.audio(reply)
            t_said = time.monotonic()
            answer = await tw.wait_for("media", t_said - 0.5, timeout=20)
            await tw.send("stop", streamSid=sid, stop={})
            assert await tw.wait_closed(10)
            return answer

    with caplog.at_level(logging.INFO):  # held while the summary is awaited: INFO lines after it are dropped
        answer = asyncio.run(asyncio.wait_for(call(), 90))
        _wait_gone(rt, sid)
        # an earlier test's call may be summed up while this one runs: look for this call's line
        # the summary is written as the socket winds down, which may be just after the call is gone
        deadline = time.monotonic() + 20
        while True:
            summary = [r.getMessage() for r in caplog.records if "bad messages" in r.getMessage() and sid in r.getMessage()]
            if summary or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert decode_media(answer).size > 0
    assert rt.find_call(sid) is None
    assert len(summary) == 1, summary
    no_errors(caplog, capfd)


def test_a_stream_in_another_audio_format_is_refused_with_the_reason(phone, caplog, capfd):
    rt, server = phone
    sid = _sid("f0f0")

    async def call():
        async with await _connect(server) as ws:
            tw = TwilioCall(ws)
            await _start(tw, sid, fmt={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})
            assert await tw.wait_closed(10)
            return tw

    with caplog.at_level(logging.WARNING):
        tw = asyncio.run(asyncio.wait_for(call(), 30))
    assert tw.ws.close_code == UNSUPPORTED_DATA and tw.ws.close_reason == FORMAT_REFUSED
    assert not tw.received and sid not in rt.calls
    assert any(FORMAT_REFUSED in r.getMessage() and sid in r.getMessage() for r in caplog.records)
    no_errors(caplog, capfd)


def test_media_before_start_is_ignored_without_validation(phone, caplog, capfd):
    from websockets.exceptions import ConnectionClosed

    rt, server = phone
    sid = _sid("be40")

    async def call():
        async with await _connect(server) as ws:
            tw = TwilioCall(ws)
            await tw.audio(np.concatenate([speech("もしもし", "ja"), silence(1.0)]), realtime=0)
            await asyncio.sleep(1.0)
            assert not tw.received and not rt.calls, "audio before start was answered"
            t0 = time.monotonic()
            await _start(tw, sid)
            await tw.wait_for("media", t0, timeout=20)
            await tw.send("stop", streamSid=sid, stop={})
            with contextlib.suppress(ConnectionClosed):  # the server may have closed already
                await tw.audio(silence(0.1), realtime=0)  # media after stop
            assert await tw.wait_closed(10)

    with caplog.at_level(logging.WARNING):
        asyncio.run(asyncio.wait_for(call(), 60))
        _wait_gone(rt, sid)
    assert any("media before start" in r.getMessage() for r in caplog.records)
    assert not rt.calls
    no_errors(caplog, capfd)


def test_a_socket_that_never_starts_is_closed(phone, monkeypatch, caplog, capfd):
    import pipeline.app

    rt, server = phone
    monkeypatch.setattr(pipeline.app, "START_TIMEOUT_S", 0.5)

    async def call():
        async with await _connect(server) as ws:
            tw = TwilioCall(ws)
            await tw.send("connected", protocol="Call", version="1.0.0")
            assert await tw.wait_closed(10)
            return tw

    with caplog.at_level(logging.WARNING):
        tw = asyncio.run(asyncio.wait_for(call(), 30))
    assert tw.ws.close_code == 1008
    assert any("no start event" in r.getMessage() for r in caplog.records)
    no_errors(caplog, capfd)


def test_bad_messages_after_a_gated_start_are_skipped_too(test_config, parts, tmp_path, caplog, capfd):
    token = "test-auth-token-0123456789abcdef"
    rt = _runtime(test_config, parts, tmp_path)
    sid = _sid("9a7ed")
    try:
        with _serving(rt, validate_twilio=True, twilio_auth_token=token) as server:
            from pipeline.transport.twilio.auth import TwilioGuard

            guard: TwilioGuard = server.server.config.app.state.twilio_guard

            async def call():
                async with await _connect(server) as ws:
                    tw = TwilioCall(ws)
                    t0 = time.monotonic()
                    await _start(tw, sid, custom={"token": guard.issue("CA" + sid[2:])})
                    await tw.wait_for("media", t0, timeout=20)
                    for what, _warning in BAD_INPUT.values():
                        await _send_raw(tw, what, sid)
                    t_bad = time.monotonic()
                    await tw.wait_for("media", t_bad, timeout=10)
                    await tw.send("stop", streamSid=sid, stop={})
                    assert await tw.wait_closed(10)

            with caplog.at_level(logging.WARNING):
                asyncio.run(asyncio.wait_for(call(), 60))
                _wait_gone(rt, sid)
    finally:
        rt.close()
    assert any("not JSON" in r.getMessage() for r in caplog.records)
    no_errors(caplog, capfd)
