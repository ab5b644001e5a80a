"""The real CallHandler driven the way FastRTC drives it: 20 ms frames into receive(), emit() until
nothing is left. Real silero VAD on espeak-ng speech, real faster-whisper and kokoro-onnx on the
test models, and the LLM agent talking to a scripted OpenAI-protocol server on loopback.

The random-weight Whisper hears any audio as junk letters, so where a test needs the caller's
words (a booking needs a real "yes"), ``ScriptedEars`` runs the real Whisper and then reports the
line the caller is scripted to have said.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import logging
import os
import threading
import time
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from audio_fixtures import ESPEAK, ESPEAK_MISSING, silence, speech
from fastrtc import AdditionalOutputs, CloseStream

from pipeline.agents.factory import make_clock
from pipeline.sim.openai_server import ScriptedOpenAI, Step, booking_policy, text, tool
from pipeline.speech.stt import make_stt
from pipeline.speech.tts import SentenceSplitter, make_tts
from pipeline.speech.vad import make_vad
from pipeline.store import ReservationStore
from pipeline.transport.fastrtc import CallHandler, make_handler
from pipeline.voice.phrases import APOLOGY
from pipeline.voice.runtime import VoiceRuntime
from pipeline.voice.timeline import TurnTimeline

pytestmark = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
SR = 16000


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def parts(test_config):
    """The real models, loaded and warmed once for the module."""
    from pipeline.speech.models import model_resolver

    stt = make_stt(test_config.stt, model_resolver(test_config))
    tts = make_tts(test_config.tts, model_resolver(test_config))
    vad = make_vad(test_config.vad)
    for p in (stt, tts, vad):
        p.warmup()
    return {"stt": stt, "tts": tts, "vad": vad}


@pytest.fixture(scope="module")
def loop():
    """A running event loop, as the transports give the handler (FastRTC posts messages to it)."""
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever, daemon=True)
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(timeout=5)


@pytest.fixture
def server():
    with ScriptedOpenAI() as s:
        yield s


@pytest.fixture
def runtime_factory(test_config, parts, tmp_path):
    made: list[VoiceRuntime] = []

    def make(server=None, *, stt=None, tts=None, kind="llm", ack_after_s=0.0) -> VoiceRuntime:
        cfg = test_config.model_copy(deep=True)
        cfg.tts.ack_after_s = ack_after_s
        cfg.store.url = f"sqlite:///{tmp_path}/r.db"
        cfg.logging.call_log = str(tmp_path / "calls.jsonl")
        cfg.agent.kind = kind
        if server is not None:
            cfg.llm.base_url = server.base_url
            cfg.llm.timeout_s = 5.0
        rt = VoiceRuntime(cfg, stt=stt or parts["stt"], tts=tts or parts["tts"], vad=parts["vad"],
                          clock=make_clock(NOW))
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


class Recorder:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


def start(rt: VoiceRuntime, loop) -> tuple[CallHandler, Recorder]:
    h = make_handler(rt).copy()  # FastRTC copies the handler per connection
    cleared = Recorder()
    h.attach(loop, cleared)  # as FastRTC's stream does: its event loop and its queue-clearing
    return h, cleared


def feed(h: CallHandler, audio: np.ndarray, frame_ms: int = 20) -> None:
    n = SR * frame_ms // 1000
    for i in range(0, len(audio), n):
        h.receive((SR, audio[i : i + n].reshape(1, -1)))


def drain(h: CallHandler, limit: int = 2000) -> list:
    """emit() until the reply is over, like FastRTC's loop (None while idle)."""
    out = []
    for _ in range(limit):
        item = h.emit()
        if item is None:
            if h.generator is None and not h.event.is_set():
                break
            continue
        out.append(item)
    return out


def audio_of(items: list) -> list[np.ndarray]:
    return [i[1] for i in items if isinstance(i, tuple)]


def greet(h: CallHandler) -> list:
    h.start_up()
    out = drain(h)
    h.call.assume_played()  # as if the caller had listened to all of it
    return out


def wait_until(done, limit_s: float = 30.0) -> None:
    """Until ``done()``; a test that waits longer than ``limit_s`` fails rather than hangs."""
    deadline = time.monotonic() + limit_s
    while not done():
        assert time.monotonic() < deadline, f"still waiting after {limit_s} s"
        time.sleep(0.01)


def first_audio(h: CallHandler, limit_s: float = 30.0):
    """emit() until the reply's first audio (bounded)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        item = h.emit()
        if isinstance(item, tuple):
            return item
    pytest.fail(f"no audio within {limit_s} s")


def utterance(words: str, lang: str = "ja") -> np.ndarray:
    return np.concatenate([silence(0.3), speech(words, lang), silence(1.3)])


def say(h: CallHandler, words: str, lang: str = "ja", played: bool = True) -> list:
    feed(h, utterance(words, lang))
    out = drain(h)
    if played:
        h.call.assume_played()
    return out


class ScriptedEars:
    """The real STT runs; the caller's current scripted line is reported as what it heard.

    The test moves on to the next line (``next_line()``): an early transcription discarded
    because the caller went on talking must not use up a line.
    """

    def __init__(self, stt, lines: list[str]):
        self.stt, self.lines = stt, list(lines)
        self.calls = 0

    def transcribe(self, audio, sample_rate):
        result = self.stt.transcribe(audio, sample_rate)
        self.calls += 1
        return type(result)(self.lines[0], result.language, result.duration_s, result.elapsed_s)

    def next_line(self):
        self.lines.pop(0)

    def warmup(self):
        self.stt.warmup()


class SlowEars:
    """The real STT, taking ``delay_s`` longer (a name weighed against every common surname, a busy
    CPU)."""

    def __init__(self, stt, delay_s: float):
        self.stt, self.delay_s = stt, delay_s

    def transcribe(self, audio, sample_rate):
        time.sleep(self.delay_s)
        return self.stt.transcribe(audio, sample_rate)

    def warmup(self):
        self.stt.warmup()


class DeafOnce:
    """An STT that fails (a crashed decoder) until ``deaf`` is cleared: every transcription of a
    turn fails, early ones at the caller's short pauses included."""

    def __init__(self, stt):
        self.stt, self.deaf = stt, True

    def transcribe(self, audio, sample_rate):
        if self.deaf:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.stt.transcribe(audio, sample_rate)

    def warmup(self):
        pass


class BreakableTTS:
    """The real TTS until ``broken`` is set (start-up worked, then the TTS died)."""

    def __init__(self, tts):
        self.tts, self.broken = tts, False
        self.sample_rate = tts.sample_rate

    def synthesize(self, text, language):
        if self.broken:
            raise RuntimeError("onnxruntime: session is gone")
        return self.tts.synthesize(text, language)

    def stream(self, text, language):
        yield self.sample_rate, self.synthesize(text, language)

    def warmup(self):
        pass


def log_lines(rt: VoiceRuntime) -> list[dict]:
    return [json.loads(line) for line in rt.call_log.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------- tests
def test_handler_is_configured_for_the_phone_and_the_browser(runtime_factory):
    rt = runtime_factory(kind="rules")
    h = make_handler(rt)
    c = h.copy()
    assert type(c) is CallHandler and c is not h and c.runtime is rt
    assert c.can_interrupt and c.output_sample_rate == rt.tts.sample_rate == 24000
    assert c.input_sample_rate == 16000
    assert c.model.model is rt.vad  # the bundled silero, never FastRTC's hub download
    assert c.algo_options.audio_chunk_duration == rt.cfg.vad.audio_chunk_duration
    assert c.model_options.threshold == rt.cfg.vad.threshold


def test_greeting_is_spoken_first_when_the_call_starts(runtime_factory, loop):
    rt = runtime_factory(kind="rules")
    h, _ = start(rt, loop)
    h.start_up()
    first = h.emit()
    assert isinstance(first, tuple) and first[0] == 24000 and first[1].size > 0
    rest = drain(h)
    assert isinstance(rest[-1], AdditionalOutputs)
    snap = rest[-1].args[0]
    assert snap["transcript"][0]["role"] == "bot" and snap["transcript"][0]["text"]
    assert h.call.id in rt.calls


def test_spoken_turn_changes_the_reservation_as_the_tools_say(runtime_factory, server, loop):
    server.add(
        tool("update_reservation", {"date": "12月24日", "time": "19時", "party_size": 2}),
        text("12月24日の19時、2名様ですね。お名前をお願いします。"),
    )
    rt = runtime_factory(server)
    h, _ = start(rt, loop)
    greet(h)
    out = say(h, "十二月二十四日の十九時に二名でお願いします")
    assert audio_of(out), out
    assert isinstance(out[0], AdditionalOutputs)  # the caller's words reach the UI before the reply
    slots = h.call.agent.state.slots.to_json()
    assert (slots["date"], slots["time"], slots["party_size"]) == ("2026-12-24", "19:00", 2)
    assert slots["name"] is None
    final = out[-1].args[0]
    assert final["slots"]["date"] == "2026-12-24" and final["transcript"][-1]["text"].startswith("12月24日")
    tl = h.call.timelines[-1]
    assert tl.speech_end <= tl.turn_detected <= tl.transcript_ready <= tl.first_text
    assert tl.first_text <= tl.first_audio_synth <= tl.first_audio_sent and tl.gap_ms > 0
    turns = [r for r in log_lines(rt) if r["event"] == "turn"]
    assert turns and turns[-1]["gap_ms"] == tl.gap_ms and turns[-1]["reply"].startswith("12月24日")
    assert not server.errors


def test_whole_booking_by_voice_ends_in_the_database_and_hangs_up(runtime_factory, parts, tmp_path, loop):
    lines = ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "特にありません", "はい", "以上です"]
    with ScriptedOpenAI(responder=booking_policy("ja")) as server:
        ears = ScriptedEars(parts["stt"], lines)
        rt = runtime_factory(server, stt=ears)
        h, _ = start(rt, loop)
        greet(h)
        outs = []
        for _ in lines:
            outs.append(say(h, "はい、お願いします"))
            ears.next_line()
        assert not server.errors
    assert all(audio_of(o) for o in outs)
    assert isinstance(outs[-1][-1], CloseStream)  # the goodbye is followed by hanging up
    store = ReservationStore(rt.cfg.store_url())
    try:
        booked = store.all()
    finally:
        store.close()
    assert len(booked) == 1
    r = booked[0].to_json()
    assert (r["date"], r["time"], r["party_size"], r["name"], r["phone"]) == (
        "2026-12-24", "19:00", 2, "田中", "09012345678")
    assert h.call.id not in rt.calls  # ended in the runtime
    feed(h, utterance("もしもし"))  # an ended call answers nothing more
    assert drain(h) == []
    ends = [r for r in log_lines(rt) if r["event"] == "call_end"]
    assert len(ends) == 1 and ends[0]["reservation"]["id"] == r["id"] and ends[0]["reason"] == "completed"


def test_barge_in_stops_the_reply_and_the_agent_keeps_only_what_was_heard(runtime_factory, server, loop):
    s1 = "かしこまりました、12月24日ですね。"
    s2 = "その日は19時と20時にお席がございます。"
    s3 = "ご希望のお時間をお知らせください。"
    server.add(
        tool("update_reservation", {"date": "12月24日"}),
        text(s1 + s2 + s3),
        text("19時ですね。"),
    )
    rt = runtime_factory(server)
    h, cleared = start(rt, loop)
    greet(h)
    feed(h, utterance("十二月二十四日でお願いします"))
    first_audio(h)
    reply = h.generator
    assert reply is not None and h.state.responding
    cleared.calls = 0
    # the caller talks over the bot: stopped at speech onset, not at the caller's next pause
    words = speech("いや、十九時で", "ja")
    n = 0
    while h.generator is reply and n < len(words):
        h.receive((SR, words[n : n + 320].reshape(1, -1)))
        n += 320
    assert h.generator is None and n < len(words)  # before the utterance was even over
    assert reply.gi_frame is None  # closed
    assert cleared.calls >= 1  # FastRTC's queued audio dropped
    history = h.call.agent.history
    spoken = [m for m in history if m["role"] == "assistant" and m.get("content")]
    heard = "かしこまりました、"  # the reply's first piece ends at its first clause (tts.first_clause_chars)
    assert spoken[-1]["content"] == heard
    said = json.dumps(history, ensure_ascii=False)
    assert "12月24日ですね" not in said and s2 not in said
    bot = [m for m in h.call.transcript if m["role"] == "bot"][-1]
    assert bot["interrupted"] and bot["text"] == heard
    # the interrupting utterance is answered once it ends
    feed(h, np.concatenate([words[n:], silence(1.3)]))
    out = drain(h)
    assert audio_of(out) and h.call.agent.history[-1]["content"] == "19時ですね。"
    assert not server.errors


def test_idle_handler_does_not_spin_yet_answers_at_once(runtime_factory, loop):
    rt = runtime_factory(kind="rules")
    h, _ = start(rt, loop)
    greet(h)
    # Idle, emit() gives FastRTC's loop a None about once a second, not 20 times: on the phone FastRTC
    # queues each None behind the audio it still has to send and pays 20 ms for each, which held up
    # the reply after a long read-back by seconds.
    calls, nones = 0, 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        calls += 1
        nones += h.emit() is None
    assert nones == calls and calls <= 4, calls

    # FastRTC's emit loop runs in its own thread; a slow idle wait must not delay the reply.
    h.idle_wait_s = 2.0
    got: list = []
    stop = threading.Event()

    def emit_loop():
        while not stop.is_set():
            item = h.emit()
            if item is not None:
                got.append((time.monotonic(), item))

    t = threading.Thread(target=emit_loop, daemon=True)
    t.start()
    try:
        time.sleep(0.1)  # the loop is now parked in its idle wait
        feed(h, utterance("こんにちは"))
        deadline = time.monotonic() + 10
        while not any(isinstance(i, tuple) for _, i in got) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        h.event.set()
        t.join(timeout=5)
    tl = h.call.timelines[-1]
    woke = tl.transcript_ready - tl.turn_detected - (tl.stt_s or 0)
    assert woke < 0.15, woke
    assert tl.first_audio_sent is not None and tl.first_audio_sent - tl.turn_detected < 1.5


def test_stt_fault_is_answered_with_an_apology_and_the_call_goes_on(runtime_factory, parts, loop):
    stt = DeafOnce(parts["stt"])
    rt = runtime_factory(kind="rules", stt=stt)
    h, _ = start(rt, loop)
    greet(h)
    out = say(h, "十二月二十四日でお願いします")
    spoken = np.concatenate(audio_of(out))
    # said as the call says a reply: its first clause, then the rest
    clause = SentenceSplitter(first_clause_chars=rt.cfg.tts.first_clause_chars)
    pieces = [*clause.feed(APOLOGY["ja"]), clause.flush()]
    assert pieces == ["申し訳ございません、", "もう一度お願いできますか。"]
    assert spoken.size == sum(rt.tts.synthesize(p, "ja").size for p in pieces)
    assert h.call.transcript[-1] == {"role": "bot", "text": APOLOGY["ja"]}
    assert "stt" in h.call.timelines[-1].error and not h.call.ended
    stt.deaf = False
    out = say(h, "十二月二十四日でお願いします")
    assert audio_of(out) and h.call.transcript[-2]["role"] == "user"


def test_tts_fault_plays_the_fallback_phrase_rendered_at_start_up(runtime_factory, parts, loop):
    tts = BreakableTTS(parts["tts"])
    rt = runtime_factory(kind="rules", tts=tts)
    assert rt.fallback_audio["ja"].size > 0
    h, _ = start(rt, loop)
    greet(h)
    tts.broken = True
    out = say(h, "十二月二十四日でお願いします")
    spoken = np.concatenate(audio_of(out))
    # (the junk the random Whisper hears may switch the call to English: the apology follows)
    assert np.array_equal(spoken, np.clip(rt.fallback_audio[h.call.language], -1, 1))
    tl = h.call.timelines[-1]
    assert "tts" in tl.error and tl.first_audio_sent is not None
    bot = h.call.transcript[-1]
    assert bot["role"] == "bot" and bot["text"] == "" and bot["unheard"]  # nothing the agent wrote was heard


def test_timeline_reports_offsets_from_the_end_of_speech():
    tl = TurnTimeline(call_id="c", turn=1, speech_end=10.0, turn_detected=10.5, transcript_ready=10.6,
                      first_text=10.7, first_audio_synth=10.8, first_audio_sent=10.81, transcript="はい", reply="x")
    j = tl.to_json()
    assert j["ms"]["turn_detected"] == 500.0 and j["ms"]["first_audio_sent"] == 810.0
    assert j["gap_ms"] == 810.0 and j["transcript"] == "はい" and j["reply"] == "x"
    tl.stamp("first_audio_sent", 99.0)
    assert tl.first_audio_sent == 10.81  # first means first


def _receive_within(ws, timeout: float) -> dict:
    """The test client's next message, or a failure after ``timeout`` s (its own receive never times out)."""
    import threading

    box: list = []
    reader = threading.Thread(target=lambda: box.append(ws.receive_json()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        pytest.fail(f"no message from the phone websocket within {timeout} s")
    return box[0]


def test_phone_call_over_twilio_protocol_greets_clears_on_barge_in_and_ends(runtime_factory, loop):
    """The real FastRTC Stream and its /telephone/handler websocket, in-process (no network)."""
    import audioop
    import base64

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from fastrtc import Stream

    rt = runtime_factory(kind="rules")
    stream = Stream(make_handler(rt), modality="audio", mode="send-receive", concurrency_limit=2)
    app = FastAPI()
    stream.mount(app)

    def media(pcm8k: np.ndarray):
        for i in range(0, len(pcm8k), 160):  # 20 ms of 8 kHz mu-law, like Twilio
            payload = base64.b64encode(audioop.lin2ulaw(pcm8k[i : i + 160].tobytes(), 2)).decode()
            yield {"event": "media", "media": {"payload": payload}}

    talk = np.concatenate([speech("十二月二十四日でお願いします", "ja", sample_rate=8000), silence(1.3, 8000)])
    seen: list[dict] = []
    with TestClient(app) as client:  # its event loop must outlive the socket: the watcher runs on it
        with client.websocket_connect("/telephone/handler") as ws:
            ws.send_json({"event": "start", "streamSid": "MZphone"})
            first = _receive_within(ws, 30)
            assert first["event"] == "media" and first["streamSid"] == "MZphone"  # the greeting, unasked
            assert "MZphone" in rt.calls
            for m in media(talk):  # the caller talks over the rest of the greeting
                ws.send_json(m)
            for _ in range(60):
                msg = _receive_within(ws, 30)
                seen.append(msg)
                if msg.get("event") == "clear":
                    break
            ws.send_json({"event": "stop"})
        deadline = time.monotonic() + 3
        while "MZphone" in rt.calls and time.monotonic() < deadline:
            time.sleep(0.05)
    assert {"event": "clear", "streamSid": "MZphone"} in seen
    assert all(m.get("event") in ("media", "clear") for m in seen)  # nothing Twilio does not know
    assert "MZphone" not in rt.calls  # FastRTC never calls shutdown() on the phone: the watcher did
    assert [r["reason"] for r in log_lines(rt) if r["event"] == "call_end"] == ["hangup"]


def test_on_the_phone_the_handler_takes_twilios_8khz_audio_as_it_comes(runtime_factory):
    """FastRTC's own /telephone/handler (as ours) puts a copy in phone mode; at any rate but 8 kHz it
    would resample every 20 ms frame itself (and its first one stalls the call importing librosa)."""
    h = make_handler(runtime_factory(kind="rules"))
    assert h.input_sample_rate == SR
    phone = h.copy()
    phone.phone_mode = True
    assert phone.phone_mode and phone.input_sample_rate == 8000
    assert h.copy().input_sample_rate == SR


# ----------------------------------------------------------------------------------- streaming end of turn
class CountingEars:
    """The real STT runs on every request; it reports the n-th transcription as ``lines[n]`` and
    records the length of audio each one got."""

    def __init__(self, stt, lines: list[str], slow_s: float = 0.0):
        self.stt, self.lines, self.slow_s = stt, list(lines), slow_s
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def transcribe(self, audio, sample_rate):
        time.sleep(self.slow_s)  # a recogniser on a busy machine
        result = self.stt.transcribe(audio, sample_rate)
        with self._lock:
            n = len(self.sizes)
            self.sizes.append(np.asarray(audio).size)
        return type(result)(self.lines[min(n, len(self.lines) - 1)], result.language, result.duration_s,
                            result.elapsed_s)

    def warmup(self):
        pass


def voiced_part(audio: np.ndarray) -> np.ndarray:
    """espeak-ng's speech without the silence it pads it with."""
    loud = np.flatnonzero(np.abs(audio) > 300)
    return audio[loud[0] : loud[-1] + 1]


def feed_turns(h: CallHandler, audio: np.ndarray) -> tuple[int, list]:
    """Feed 20 ms frames; every time a turn ends, answer it (as FastRTC's emit loop would).
    Returns how many turns the audio made, and what was emitted."""
    turns, out = 0, []
    for i in range(0, len(audio), 320):
        was = h.event.is_set()
        h.receive((SR, audio[i : i + 320].reshape(1, -1)))
        if not was and h.event.is_set():
            turns += 1
            out += drain(h)
            h.call.assume_played()
    return turns, out


@pytest.mark.parametrize("lead_s", [0.1, 0.33, 0.57, 0.8])
def test_a_short_hai_after_silence_is_always_a_turn_and_answered(runtime_factory, parts, loop, lead_s):
    # 0.3 s of speech: FastRTC's 0.6 s chunks lost it whenever it straddled two of them
    ears = CountingEars(parts["stt"], ["はい"])
    rt = runtime_factory(kind="rules", stt=ears)
    h, _ = start(rt, loop)
    greet(h)
    hai = speech("はい", "ja")
    turns, out = feed_turns(h, np.concatenate([silence(lead_s), hai, silence(1.0)]))
    assert turns == 1 and audio_of(out)
    tl = h.call.timelines[-1]
    assert tl.transcript == "はい" and tl.speech_end <= tl.turn_detected


def phone_number_read_in_groups() -> np.ndarray:
    groups = [speech(g, "ja") for g in ("ゼロキューゼロ", "イチニーサンヨン", "ゴーロクナナハチ")]
    return np.concatenate([silence(0.3), groups[0], silence(0.6), groups[1], silence(0.6), groups[2], silence(1.5)])


def test_a_phone_number_read_with_pauses_between_digit_groups_is_one_turn(runtime_factory, parts, loop):
    ears = CountingEars(parts["stt"], ["ゼロキューゼロ"])  # never a whole number: nothing ends it early
    rt = runtime_factory(kind="rules", stt=ears)
    h, _ = start(rt, loop)
    greet(h)
    h.call.agent.state.asking = "phone"
    turns, _ = feed_turns(h, phone_number_read_in_groups())
    assert turns == 1
    assert h.call.timelines[-1].audio_s > 3.5  # all three groups in the one turn


def test_the_same_pauses_end_the_turn_when_no_phone_number_is_asked_for(runtime_factory, parts, loop):
    rt = runtime_factory(kind="rules", stt=CountingEars(parts["stt"], ["ゼロキューゼロ"]))
    h, _ = start(rt, loop)
    greet(h)
    assert h.call.agent.state.asking != "phone"
    turns, _ = feed_turns(h, phone_number_read_in_groups())
    assert turns == 3


def test_the_early_transcript_is_the_turns_when_the_caller_does_not_go_on(runtime_factory, parts, loop):
    ears = CountingEars(parts["stt"], ["田中です", "ほかの言葉"])
    rt = runtime_factory(kind="rules", stt=ears)
    h, _ = start(rt, loop)
    greet(h)
    feed(h, np.concatenate([silence(0.3), speech("たなかです", "ja"), silence(0.24)]))
    wait_until(lambda: len(ears.sizes) == 1)  # the early transcription, started at the short pause, is back
    feed(h, silence(1.0))
    drain(h)
    tl = h.call.timelines[-1]
    assert len(ears.sizes) == 1  # one transcription for the turn, not a second one after the pause
    assert tl.speculative and tl.transcript == "田中です"
    assert tl.turn_detected <= tl.transcript_ready


def test_the_early_transcript_is_dropped_when_the_caller_goes_on(runtime_factory, parts, loop):
    ears = CountingEars(parts["stt"], ["たなか", "たなかです、よろしく"])
    rt = runtime_factory(kind="rules", stt=ears)
    h, _ = start(rt, loop)
    greet(h)
    first, second = voiced_part(speech("たなか", "ja")), speech("よろしくおねがいします", "ja")
    feed(h, np.concatenate([silence(0.3), first, silence(0.3)]))  # a pause, shorter than a turn's end
    wait_until(lambda: len(ears.sizes) == 1)  # the early transcription finished while the caller paused
    feed(h, np.concatenate([second, silence(1.0)]))
    drain(h)
    assert len(h.call.timelines) == 1
    tl = h.call.timelines[-1]
    assert len(ears.sizes) == 2 and ears.sizes[0] < first.size + SR  # the early one heard only the start
    assert tl.transcript == "たなかです、よろしく"  # the turn's transcript is of all of it
    assert tl.audio_s > (first.size + second.size) / SR


@pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)
def test_a_turn_whisper_looped_on_is_decoded_again_and_the_timeline_says_so(runtime_factory, test_config, loop,
                                                                             tmp_path):
    """A whisper that runs on to the token cap (as real weights do on a too-short window): the
    turn still gets its reply, and its timeline and call-log line record the retry on 30 s."""
    from make_test_models import build_whisper

    from pipeline.speech.stt import FasterWhisperSTT

    looping = FasterWhisperSTT(test_config.stt.model_copy(update={"window_s": 8.0}),
                               build_whisper(tmp_path / "looping", eot_bias=0.0))
    rt = runtime_factory(kind="rules", stt=looping)
    h, _ = start(rt, loop)
    greet(h)
    feed(h, np.concatenate([silence(0.3), speech("たなかです", "ja"), silence(1.2)]))
    out = drain(h)
    tl = h.call.timelines[-1]
    assert tl.stt_retried and tl.transcript  # decoded twice, and a transcript all the same
    assert any(isinstance(x, tuple) for x in out)  # the caller was answered
    logged = [json.loads(line) for line in open(rt.cfg.logging.call_log, encoding="utf-8")]
    assert any(entry.get("stt_retried") for entry in logged)


def test_the_bots_fixed_phrases_are_rendered_ahead_of_the_calls(runtime_factory):
    from pipeline.dialog.rules import PHRASES
    from pipeline.speech.tts import normalize_for_speech

    rt = runtime_factory(kind="rules")
    assert rt.prerender_phrases() > 20
    cache = rt.tts.cached()
    for lang, piece in (("ja", PHRASES["ja"]["ack_phone"]), ("ja", "アレルギーやお祝いなど、"), ("en", "Goodbye.")):
        assert (lang, normalize_for_speech(piece, lang)) in cache  # whole sentences and first clauses
    assert not any("{" in text for _, text in cache)  # templates are filled per call, never rendered raw
    rt.close()
    assert rt.prerender_phrases() == 0  # a closing runtime stops rendering


# ----------------------------------------------------------------------------------- speech over the bot
def caller_voice(text: str) -> np.ndarray:
    """Open JTalk's voice (not the bot's) through a phone line, at 16 kHz."""
    from pipeline.sim.phone import phone_line
    from pipeline.sim.voices import openjtalk

    return phone_line(*openjtalk(text))


def feed_until(h: CallHandler, done, limit_s: float = 30.0) -> None:
    """A quiet line, 20 ms at a time in real time, until ``done()`` (bounded)."""
    deadline = time.monotonic() + limit_s
    while not done() and time.monotonic() < deadline:
        feed(h, silence(0.02))
        time.sleep(0.02)


def test_a_hai_said_over_the_bot_neither_stops_it_nor_becomes_a_turn(runtime_factory, parts, loop):
    ears = CountingEars(parts["stt"], ["はい"])
    rt = runtime_factory(kind="rules", stt=ears)
    h, cleared = start(rt, loop)
    h.start_up()
    first_audio(h)  # the greeting's: the bot is talking, and goes on
    feed(h, np.concatenate([silence(0.3), caller_voice("はい")]))
    feed_until(h, lambda: bool(ears.sizes))  # its words are read while the line goes on
    feed_until(h, lambda: False, limit_s=0.6)
    assert ears.sizes  # the burst's words were looked at
    assert cleared.calls == 0 and h.generator is not None  # the bot was not stopped
    drain(h)  # the rest of the greeting, and whatever turn had been queued
    assert not h.call.timelines  # it was not a turn


def test_speech_that_goes_on_over_the_bot_stops_it_without_waiting_for_its_end(runtime_factory, parts, loop):
    rt = runtime_factory(kind="rules", stt=CountingEars(parts["stt"], ["すみません、もう一度お願いします"]))
    h, cleared = start(rt, loop)
    h.start_up()
    drain(h)
    cleared.calls = 0
    words = caller_voice("すみません、もういちど おねがいします")
    feed(h, np.concatenate([silence(0.3), words[: SR]]))  # its first second, still going
    feed_until(h, lambda: cleared.calls > 0, limit_s=5)
    assert cleared.calls >= 1


def test_with_backchannels_off_any_speech_over_the_bot_stops_it(runtime_factory, parts, loop):
    rt = runtime_factory(kind="rules", stt=CountingEars(parts["stt"], ["はい"]))
    rt.cfg.vad.backchannels = False
    h, cleared = start(rt, loop)
    h.start_up()
    drain(h)
    cleared.calls = 0
    feed(h, np.concatenate([silence(0.3), caller_voice("はい")]))
    assert cleared.calls >= 1


def test_a_vad_model_that_fails_hands_the_call_to_the_level_detector_and_the_caller_is_heard(
        runtime_factory, test_models_dir, loop, caplog):
    from make_test_models import KOKORO_FILENAME

    from pipeline.speech.vad import BundledSileroVAD

    rt = runtime_factory(kind="rules")
    rt.vad = BundledSileroVAD(test_models_dir / KOKORO_FILENAME)  # loads, but fails on every window
    h, _ = start(rt, loop)
    greet(h)
    with caplog.at_level("ERROR", logger="pipeline.voice.detector"):
        say(h, "たなかです")
    assert sum("EnergyVAD" in r.getMessage() for r in caplog.records) == 1  # said once, as an error
    assert len(h.call.timelines) == 1  # heard, and answered


# ----------------------------------------------------------------------------------- the end-of-turn model
@pytest.fixture(scope="module")
def smart_turn():
    """The real Smart Turn v3.2 file (from the pipecat-ai wheel in the real-model cache)."""
    from real_models import SKIP_ENV, RealModelsMissing, locate

    try:
        return locate().smart_turn
    except RealModelsMissing as e:
        if os.environ.get(SKIP_ENV) == "0":
            pytest.skip(f"{SKIP_ENV}=0: {e}")
        pytest.fail(str(e), pytrace=False)


def paced_turns(h: CallHandler, audio: np.ndarray) -> int:
    """Feed 20 ms frames at the wall clock's pace (the model and the early words come back during the
    pauses, as on a call); answer each turn that ends. Returns how many turns the audio made."""
    turns, due = 0, time.monotonic()
    for i in range(0, len(audio), 320):
        was = h.event.is_set()
        h.receive((SR, audio[i : i + 320].reshape(1, -1)))
        if not was and h.event.is_set():
            turns += 1
            drain(h)
            h.call.assume_played()
        due += 0.02
        time.sleep(max(0.0, due - time.monotonic()))
    return turns


def test_with_the_model_a_caller_who_stops_after_a_particle_is_waited_for(runtime_factory, parts, loop, smart_turn):
    # Smart Turn hears 「…よっかの」 said with a falling tone as finished; its words say otherwise
    ears = CountingEars(parts["stt"], ["12月24日の", "12月24日の19時に2名でお願いします"])
    rt = runtime_factory(kind="rules", stt=ears)
    rt.cfg.vad.turn_model = str(smart_turn)
    h, _ = start(rt, loop)
    greet(h)
    # Open JTalk pads each part with ~0.3 s of silence: a pause of ~0.9 s, twice the silence rule's 450 ms
    line = np.concatenate([silence(0.3), caller_voice("じゅうにがつ にじゅうよっかの"), silence(0.3),
                           caller_voice("じゅうくじに にめいで おねがいします"), silence(1.6)])
    assert paced_turns(h, line) == 1
    assert h.call.timelines[-1].transcript == "12月24日の19時に2名でお願いします"


def test_with_the_model_a_finished_sentence_is_answered(runtime_factory, parts, loop, smart_turn):
    rt = runtime_factory(kind="rules", stt=CountingEars(parts["stt"], ["田中です"]))
    rt.cfg.vad.turn_model = str(smart_turn)
    h, _ = start(rt, loop)
    greet(h)
    assert paced_turns(h, np.concatenate([silence(0.3), caller_voice("たなかです"), silence(1.6)])) == 1
    assert h.call.timelines[-1].transcript == "田中です"


def _at_name_confirmation(h: CallHandler) -> None:
    for words in ("12月24日の19時に2名でお願いします", "よみんです"):
        "".join(h.call.agent.respond(words))
    assert h.call.agent.state.pending  # 「お名前はヨミン様でよろしいでしょうか」


@pytest.mark.parametrize("first_words,slow_s", [("いいえ", 0.0), ("りね", 0.0), ("りね", 0.4)])
def test_a_no_said_to_a_confirmation_waits_for_the_correction_after_its_pause(runtime_factory, parts, loop,
                                                                              first_words, slow_s):
    """No end-of-turn model: at a yes-or-no question the silence rule is 300 ms, and 「いいえ、加藤です」
    said with a pause after the comma was two turns, the correction cut off (in the voice eval whisper
    wrote the 「いいえ」 as 「りね」「リア」「みな」 as often as not). Early words that are a bare no, or
    answer nothing, leave the caller going on; on a busy machine (``slow_s``) the turn waits for them."""
    ears = CountingEars(parts["stt"], [first_words, "いいえ、加藤です"], slow_s=slow_s)
    rt = runtime_factory(kind="rules", stt=ears)
    h, _ = start(rt, loop)
    greet(h)
    _at_name_confirmation(h)
    line = np.concatenate([silence(0.3), caller_voice("いいえ"), silence(0.3), caller_voice("かとうです"),
                           silence(2.0)])
    assert paced_turns(h, line) == 1
    assert h.call.timelines[-1].transcript == "いいえ、加藤です"


def _at_caller_id_offer(h: CallHandler) -> None:
    h.call.agent.state.caller_id = "09011112222"
    for words in ("12月24日の19時に2名でお願いします", "田中です"):
        "".join(h.call.agent.respond(words))
    # 「お電話番号は、今おかけの末尾…の番号でよろしいでしょうか」 while the phone number is asked for
    assert h.call.agent.state.asking == "phone" and h.call.agent.state.pending == {"kind": "caller_id"}


@pytest.mark.parametrize("question", [_at_name_confirmation, _at_caller_id_offer])
def test_a_yes_to_a_confirmation_is_answered_after_the_short_silence(runtime_factory, parts, loop, question):
    """Not after the phone number's long wait (1.1 s on every call's caller-ID offer in the voice eval)."""
    ears = CountingEars(parts["stt"], ["はい"])
    rt = runtime_factory(kind="rules", stt=ears)
    h, _ = start(rt, loop)
    greet(h)
    question(h)
    # a second 「はい」 0.9 s later is a second turn: the first was not waited on
    line = np.concatenate([silence(0.3), caller_voice("はい"), silence(0.3), caller_voice("はい"), silence(1.0)])
    assert paced_turns(h, line) == 2


# ----------------------------------------------------------------------------------- the reply prepared ahead
def test_a_reply_prepared_ahead_changes_nothing_and_its_first_clause_is_then_ready(runtime_factory, loop):
    import copy

    from pipeline.voice.speculation import prepare

    rt = runtime_factory(kind="rules")
    h, _ = start(rt, loop)
    greet(h)
    call = h.call
    before = copy.deepcopy(call.agent.state)
    clause = prepare(call, "12月24日の19時に2名でお願いします")
    assert clause and call.agent.state == before  # the call's own state is untouched
    reply = "".join(call.agent.respond("12月24日の19時に2名でお願いします"))  # the turn, committed
    assert reply.startswith(clause)
    hits = rt.tts.stats.cache_hits
    rt.tts.synthesize(clause, "ja")
    assert rt.tts.stats.cache_hits == hits + 1  # its audio was made ahead


def test_a_reply_that_would_book_is_not_prepared_ahead(runtime_factory, loop):
    from pipeline.voice.speculation import prepare

    rt = runtime_factory(kind="rules")
    h, _ = start(rt, loop)
    greet(h)
    call = h.call
    for line in ("12月24日の19時に2名でお願いします", "田中です", "09012345678", "特にありません"):
        "".join(call.agent.respond(line))
    assert call.agent.state.asking == "confirm"
    assert prepare(call, "はい") is None
    assert not rt.services.store.all() and call.agent.state.asking == "confirm"  # nothing booked, nothing moved


def test_the_llm_reply_prepared_ahead_is_the_turns_reply_without_asking_again(runtime_factory, parts, server, loop):
    reply = "田中様ですね。お電話番号をお願いいたします。"
    server.add(tool("update_reservation", {"name": "田中"}), text(reply))
    rt = runtime_factory(server, stt=CountingEars(parts["stt"], ["田中です"]))
    h, _ = start(rt, loop)
    greet(h)
    assert paced_turns(h, np.concatenate([silence(0.3), caller_voice("たなかです"), silence(1.6)])) == 1
    tl = h.call.timelines[-1]
    assert tl.transcript == "田中です" and tl.prepared and tl.reply == reply
    assert len(server.requests) == 2 and not server.cancelled  # asked once, ahead, and replayed
    assert h.call.agent.state.slots.name == "田中"
    assert not server.errors


# ----------------------------------------------------------------------------------- a turn cut short
def test_words_of_a_turn_cut_short_before_the_agent_read_them_start_the_next_turn(runtime_factory, loop):
    """「12月12日、」 ended a turn on its pause, and the caller went on (「土曜日のお昼1時に2名で」) before
    the agent was given the words: the barge-in closed the turn, and the date was lost (voice eval)."""
    from fastrtc import AdditionalOutputs

    rt = runtime_factory(kind="rules")
    h, _ = start(rt, loop)
    greet(h)
    call = h.call
    cut = call.turn((SR, silence(1.0)), transcript="12月12日")
    assert isinstance(next(cut), AdditionalOutputs)
    cut.close()  # the caller spoke again: the turn is stopped
    assert call.agent.state.slots.date is None
    list(call.turn((SR, silence(1.0)), transcript="土曜日のお昼1時に2名で"))
    slots = call.agent.state.slots
    assert (str(slots.date), str(slots.time)[:5], slots.party_size) == ("2026-12-12", "13:00", 2)
    # a turn the agent answered is not carried
    list(call.turn((SR, silence(1.0)), transcript="田中です"))
    assert call.agent.state.slots.name == "田中"


def test_a_wordless_turn_is_asked_about_unless_it_began_over_the_bots_reply(runtime_factory, loop):
    """A 「はい」 said over the read-back that whisper found no words in must not stop the call for
    「もう一度お願いできますか」 (voice eval); a caller who spoke 1.2 s after the bot finished is asked."""
    from pipeline.voice.phrases import APOLOGY

    rt = runtime_factory(kind="rules")
    h, _ = start(rt, loop)
    greet(h)  # the greeting is handed out now and plays for some seconds
    call = h.call
    now = time.monotonic()
    over = list(call.turn((SR, silence(1.5)), TurnTimeline(speech_end=now), transcript=""))
    assert not any(isinstance(x, tuple) for x in over)  # nothing said
    later = now + 600.0  # long after the greeting ended
    said = list(call.turn((SR, silence(1.5)), TurnTimeline(speech_end=later), transcript=""))
    assert any(isinstance(x, tuple) for x in said) and call.transcript[-1]["text"] == APOLOGY["ja"]


def test_when_the_caller_goes_on_the_llm_request_ahead_is_closed_even_after_its_first_clause(
        runtime_factory, server, loop):
    from pipeline.voice.speculation import prepare_soon, went_on

    server.add(tool("update_reservation", {"date": "12月24日"}, say="かしこまりました。"),
               Step(text="何時ごろがよろしいですか。", ttft_s=30))  # the second request is still waiting
    rt = runtime_factory(server)
    rt.cfg.llm.first_token_timeout_s = rt.cfg.llm.silence_budget_s = 30.0  # it waits until the caller goes on
    h, _ = start(rt, loop)
    greet(h)
    call = h.call
    before = copy.deepcopy(call.agent.state)
    clause = prepare_soon(call, "12月24日で").result(timeout=20)
    assert clause == "かしこまりました。"  # rendered ahead
    deadline = time.monotonic() + 10
    while len(server.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    went_on(call)
    while not server.cancelled and time.monotonic() < deadline + 10:
        time.sleep(0.02)
    assert len(server.cancelled) == 1 and server.cancelled[0] is server.requests[1]
    assert call.agent.state == before


# ----------------------------------------------------------------------------------- a late reply
def test_a_late_reply_starts_with_the_acknowledgement_and_a_timely_one_does_not(runtime_factory, parts, loop):
    """A reply with no audio ``tts.ack_after_s`` after the caller stopped (here the STT takes 1.5 s)
    starts with the pre-rendered 「はい。」, then comes whole; the call log says so. One in time has none."""
    rt = runtime_factory(kind="rules", stt=SlowEars(parts["stt"], 1.5), ack_after_s=0.4)
    ack = rt.ack_audio["ja"]
    assert ack.size > 0
    h, _ = start(rt, loop)
    greet(h)
    out = audio_of(say(h, "十二月二十四日でお願いします"))
    n = -(-ack.size // int(0.5 * rt.tts.sample_rate))  # the acknowledgement's pieces
    assert np.array_equal(np.concatenate(out[:n]), np.clip(ack, -1, 1))
    assert len(out) > n  # the reply itself follows
    tl = h.call.timelines[-1]
    assert tl.acked is not None and tl.first_audio_sent is not None and tl.acked <= tl.first_audio_sent
    assert tl.reply  # the reply was not lost to the acknowledgement
    record = [r for r in log_lines(rt) if r.get("event") == "turn"][-1]
    assert record["ms"]["acked"] is not None

    rt2 = runtime_factory(kind="rules", ack_after_s=8.0)
    h2, _ = start(rt2, loop)
    greet(h2)
    out2 = audio_of(say(h2, "十二月二十四日でお願いします"))
    assert out2 and h2.call.timelines[-1].acked is None
    assert not np.array_equal(out2[0], np.clip(rt2.ack_audio["ja"], -1, 1)[: out2[0].size])


def test_a_turn_closed_during_its_acknowledgement_is_closed_once_its_worker_lets_go(runtime_factory, parts, caplog):
    """The caller talks over the 「はい。」 (a barge-in closes the reply): nothing raises, the turn's
    worker finishes its step, the turn is closed then with no reply made, and the call goes on."""
    ears = ScriptedEars(parts["stt"], ["十二月二十四日でお願いします"])
    rt = runtime_factory(kind="rules", stt=SlowEars(ears, 1.0), ack_after_s=0.2)
    call = rt.get_call()
    audio = utterance("十二月二十四日でお願いします")
    gen = call.turn((SR, audio), TurnTimeline(speech_end=time.monotonic()))
    first = next(gen)
    assert isinstance(first, tuple) and np.array_equal(first[1], np.clip(rt.ack_audio["ja"], -1, 1)[: first[1].size])
    gen.close()
    wait_until(lambda: any(e["role"] == "user" for e in call.transcript), 10)
    time.sleep(0.5)
    assert not any(e["role"] == "bot" for e in call.transcript)  # closed before the agent answered
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    ears.lines = ["19時です"]
    out = [i for i in call.turn((SR, audio), TurnTimeline(speech_end=time.monotonic())) if isinstance(i, tuple)]
    assert out and call.agent.state.slots.date == dt.date(2026, 12, 24)  # the words cut short were kept
