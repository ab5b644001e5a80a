"""The surfaces: a Twilio-protocol call over a real websocket, the TwiML route, the Gradio page, the CLI.

Everything runs the real stack on the test models (random-weight whisper, fake kokoro, bundled
silero) on loopback; caller speech is espeak-ng. The phone's audio path, both ways, is measured
on steady tones: a bot that speaks in tones, and a VAD that keeps what it is given.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from audio_fixtures import ESPEAK, ESPEAK_MISSING, silence, speech

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # what FastRTC itself uses for mu-law on Python < 3.13

ROOT = Path(__file__).resolve().parent.parent
FRAME = 160  # 20 ms at 8 kHz: what Twilio sends per media message
STREAM_SID = "MZ00000000000000000000000000000001"
CALL_SID = "CA00000000000000000000000000000001"

needs_espeak = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def runtime(test_config):
    from pipeline.voice.runtime import VoiceRuntime

    return VoiceRuntime.load(test_config, download=False)


@pytest.fixture(scope="module")
def app(runtime):
    from pipeline.app import build_app

    # Twilio's signatures are off here on purpose: tests/test_twilio_auth.py runs the signed flow.
    return build_app(runtime, validate_twilio=False)


class _Server:
    """uvicorn on 127.0.0.1 in a daemon thread, stopped at teardown (and never outliving the tests)."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def server(app):
    with _Server(app) as srv:
        yield srv
    assert not srv.thread.is_alive(), "the server thread did not stop"


# -------------------------------------------------------------------------------------------- helpers
def to_mulaw_frames(pcm16k: np.ndarray) -> list[str]:
    """16 kHz int16 -> Twilio media payloads: 8 kHz mu-law, 20 ms each, base64."""
    pcm8k = pcm16k[::2].astype(np.int16)  # espeak has little energy above 4 kHz: plain decimation will do
    pcm8k = pcm8k[: len(pcm8k) // FRAME * FRAME]
    raw = audioop.lin2ulaw(pcm8k.tobytes(), 2)
    return [base64.b64encode(raw[i : i + FRAME]).decode() for i in range(0, len(raw), FRAME)]


def decode_media(msg: dict) -> np.ndarray:
    raw = base64.b64decode(msg["media"]["payload"], validate=True)
    return np.frombuffer(audioop.ulaw2lin(raw, 2), dtype=np.int16)


class TwilioCall:
    """The Twilio side of a Media Streams call: sends JSON frames, records every message it gets."""

    def __init__(self, ws):
        self.ws = ws
        self.received: list[tuple[float, dict]] = []
        self.seq = 0
        self.chunk = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self):
        from websockets.exceptions import ConnectionClosed

        try:
            async for text in self.ws:
                self.received.append((time.monotonic(), json.loads(text)))
        except ConnectionClosed:
            pass

    async def send(self, event: str, **body):
        self.seq += 1
        await self.ws.send(json.dumps({"event": event, "sequenceNumber": str(self.seq), **body}))

    async def start(self, custom: dict | None = None, call_sid: str = CALL_SID):
        await self.send("connected", protocol="Call", version="1.0.0")
        await self.send("start", streamSid=STREAM_SID, start={
            "streamSid": STREAM_SID, "callSid": call_sid, "accountSid": "AC0", "tracks": ["inbound"],
            "customParameters": custom or {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        })

    async def audio(self, pcm16k: np.ndarray, realtime: float = 1.0):
        """Send audio as Twilio does, one 20 ms frame at a time; ``realtime`` < 1 sends faster."""
        t0 = time.monotonic()
        for i, payload in enumerate(to_mulaw_frames(pcm16k)):
            self.chunk += 1
            await self.send("media", streamSid=STREAM_SID, media={
                "track": "inbound", "chunk": str(self.chunk), "timestamp": str(self.chunk * 20), "payload": payload})
            if realtime:
                delay = t0 + (i + 1) * 0.02 * realtime - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    def events(self, kind: str, since: float = 0.0) -> list[dict]:
        return [m for t, m in self.received if m.get("event") == kind and t >= since]

    async def wait_for(self, kind: str, since: float, timeout: float, keep_talking: bool = True) -> dict:
        """The first ``kind`` message after ``since``; meanwhile the line carries silence, like a real call."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(kind, since)
            if found:
                return found[0]
            if keep_talking:
                await self.audio(silence(0.1))
            else:
                await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind!r} within {timeout} s; got {[m.get('event') for _, m in self.received]}")

    async def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Until no media has arrived for ``quiet`` seconds (the bot finished sending), carrying silence."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            media = [t for t, m in self.received if m.get("event") == "media"]
            if media and time.monotonic() - media[-1] > quiet:
                return
            await self.audio(silence(0.1))
        raise AssertionError(f"the bot kept sending audio for {timeout} s")

    @property
    def closed(self) -> bool:
        """The server closed the socket."""
        return self._reader.done()

    async def wait_closed(self, timeout: float) -> bool:
        """Until the server has closed the socket (True); a timeout raises."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return True

    async def close(self):
        self._reader.cancel()
        await self.ws.close()


def _registry(runtime) -> dict:
    return runtime.calls


# ------------------------------------------------------------------------------------------ the phone
@needs_espeak
def test_twilio_call_greets_answers_is_interrupted_and_stops_cleanly(server, runtime, caplog, capfd):
    import websockets

    utterance = speech("もしもし、予約をお願いします", "ja")
    barge = speech("すみません、ちょっと待ってください", "ja")

    async def call():
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/telephone/handler",
                                      open_timeout=10, close_timeout=5) as ws:
            tw = TwilioCall(ws)
            t_start = time.monotonic()
            await tw.start()
            greeting = await tw.wait_for("media", t_start, timeout=20)
            assert STREAM_SID in _registry(runtime)
            await tw.wait_quiet(quiet=1.0, timeout=30)
            await tw.send("mark", streamSid=STREAM_SID, mark={"name": "greeting"})

            t_spoke = time.monotonic()
            await tw.audio(utterance)
            t_stopped = time.monotonic()
            reply = await tw.wait_for("media", t_stopped, timeout=20)

            # Talk over the reply while it is still arriving: the bot must flush Twilio's buffer.
            t_barge = time.monotonic()
            await tw.audio(barge, realtime=0.5)
            clear = await tw.wait_for("clear", t_barge, timeout=10)
            await tw.audio(silence(1.5))

            await tw.send("stop", streamSid=STREAM_SID, stop={"accountSid": "AC0", "callSid": CALL_SID})
            await tw.wait_closed(timeout=10)  # the server closes the socket after stop
            return tw, greeting, reply, clear, (t_start, t_spoke, t_stopped, t_barge)

    with caplog.at_level(logging.WARNING):
        tw, greeting, reply, clear, (t_start, t_spoke, t_stopped, t_barge) = asyncio.run(asyncio.wait_for(call(), 90))

    # The greeting: media events carrying valid base64 mu-law audio, for this stream.
    greet_media = [m for t, m in tw.received if m.get("event") == "media" and t < t_spoke]
    assert greet_media and greeting in greet_media
    assert all(m["streamSid"] == STREAM_SID for m in tw.events("media"))
    pcm = np.concatenate([decode_media(m) for m in greet_media])
    assert len(pcm) > 8000 * 0.3, "the greeting is shorter than 0.3 s"
    assert np.abs(pcm.astype(np.int32)).max() > 1000, "the greeting is silent"

    # A reply after the caller's utterance and pause.
    assert reply["streamSid"] == STREAM_SID and len(decode_media(reply)) > 0
    # Barge-in: Twilio is told to drop the audio it still holds for this stream.
    assert clear == {"event": "clear", "streamSid": STREAM_SID}

    # Only Twilio's own messages go to Twilio (FastRTC's browser status messages do not).
    assert {m.get("event") for _, m in tw.received} <= {"media", "clear", "mark"}, tw.received

    # stop: the call is gone from the runtime and nothing failed on the server.
    deadline = time.monotonic() + 5
    while len(_registry(runtime)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_registry(runtime)) == 0, f"calls left after stop: {list(_registry(runtime))}"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------- the phone's audio path
BOT_TONE_HZ = 1000  # 24 samples a cycle at kokoro's 24 kHz, 8 at the phone's 8 kHz
CALLER_TONE_HZ = 500  # 16 samples a cycle at 8 kHz, 32 at the VAD's 16 kHz
TONE_LEVEL = 0.3


class ToneTTS:
    """Says every sentence as a steady tone a whole number of cycles long, so that the pieces of a
    reply join into one unbroken tone: whatever breaks it is the audio path's doing."""

    sample_rate = 24000

    def synthesize(self, text: str, language: str) -> np.ndarray:
        cycles = 60 * max(1, len(text))  # 60 ms a character
        n = np.arange(cycles * self.sample_rate // BOT_TONE_HZ)
        return (TONE_LEVEL * np.sin(2 * np.pi * BOT_TONE_HZ * n / self.sample_rate)).astype(np.float32)

    def stream(self, text: str, language: str):
        yield self.sample_rate, self.synthesize(text, language)

    def warmup(self) -> None:
        pass


class ListeningVAD:
    """The real silero model, keeping every window it is given: the caller's audio exactly as the
    handler heard it, at 16 kHz."""

    def __init__(self, vad):
        self.silero = vad
        self.heard: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __call__(self, window, state, sample_rate):
        with self._lock:
            self.heard.append(np.array(window, dtype=np.float32))
        return self.silero(window, state, sample_rate)

    def audio(self) -> np.ndarray:
        with self._lock:
            return np.concatenate(self.heard) if self.heard else np.zeros(0, np.float32)

    def __getattr__(self, name):
        return getattr(self.silero, name)


def aperiodic_db(x: np.ndarray, period: int, skip: int) -> float:
    """Energy of ``x`` not periodic with ``period`` samples, relative to its whole energy (dB),
    leaving out ``skip`` samples at each end. A tone resampled as one stream is periodic; a seam at
    every frame or chunk is not."""
    x = np.asarray(x, np.float64)[skip : len(x) - skip]
    rows = x[: len(x) // period * period].reshape(-1, period)
    rest = rows - rows.mean(axis=0)
    return 10 * math.log10(max(float((rest**2).sum()), 1e-30) / float((rows**2).sum()))


@pytest.fixture
def tone_server(test_config, tmp_path):
    from pipeline.app import build_app
    from pipeline.speech.models import model_resolver
    from pipeline.speech.stt import make_stt
    from pipeline.speech.vad import make_vad
    from pipeline.voice.runtime import VoiceRuntime

    cfg = test_config.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{tmp_path}/r.db"
    cfg.logging.call_log = None
    ears = ListeningVAD(make_vad(cfg.vad))
    rt = VoiceRuntime(cfg, stt=make_stt(cfg.stt, model_resolver(cfg)), tts=ToneTTS(), vad=ears)
    try:
        with _Server(build_app(rt, validate_twilio=False)) as srv:
            yield srv, ears
    finally:
        rt.close()


def test_phone_audio_is_resampled_as_one_stream_each_way_with_no_seam_at_every_frame(tone_server):
    """Over a real websocket in Twilio's format: the bot's greeting (a 1 kHz tone at 24 kHz, handed
    out in 0.5 s chunks) arrives as 8 kHz mu-law that is still one steady tone, and the caller's
    500 Hz tone in 20 ms mu-law frames reaches the handler at 16 kHz as the whole signal resampled
    at once would. FastRTC's own path resamples every chunk and every frame on its own and fails
    both (tests/test_audio.py measures it)."""
    import websockets

    from pipeline.audio import mulaw_decode, mulaw_encode, resample, to_float32

    srv, ears = tone_server
    n = np.arange(2 * 8000)  # two seconds of the caller
    caller = mulaw_encode(TONE_LEVEL * np.sin(2 * np.pi * CALLER_TONE_HZ * n / 8000))

    async def call():
        async with websockets.connect(f"ws://127.0.0.1:{srv.port}/telephone/handler",
                                      open_timeout=10, close_timeout=5) as ws:
            tw = TwilioCall(ws)
            await tw.start()
            await tw.wait_for("media", 0.0, timeout=20, keep_talking=False)
            while time.monotonic() - max(t for t, m in tw.received if m.get("event") == "media") < 1.0:
                await asyncio.sleep(0.05)  # until the greeting has all been sent
            greeting = tw.events("media")
            for i in range(0, len(caller), FRAME):
                await tw.send("media", streamSid=STREAM_SID, media={
                    "track": "inbound", "payload": base64.b64encode(caller[i : i + FRAME]).decode()})
            deadline = time.monotonic() + 20
            while ears.audio().size < 2 * 16000 - 512 - 64 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await tw.send("stop", streamSid=STREAM_SID)
            await tw.wait_closed(timeout=10)
            return greeting

    greeting = asyncio.run(asyncio.wait_for(call(), 90))

    # the bot: one steady 1 kHz tone at the level it was synthesised at, no seam at any chunk
    bot = np.concatenate([mulaw_decode(base64.b64decode(m["media"]["payload"])) for m in greeting])
    assert bot.size > 8000 * 1.5, "the greeting is too short to span several chunks"
    assert aperiodic_db(bot, 8, 80) < -80
    cycles = bot[80:-80][: (bot.size - 160) // 8 * 8].astype(np.float64) / 32768
    level = np.abs(np.dot(cycles, np.exp(-2j * np.pi * BOT_TONE_HZ * np.arange(cycles.size) / 8000))) * 2 / cycles.size
    assert abs(20 * math.log10(level / TONE_LEVEL)) < 0.2

    # the caller: what the handler heard is the one-shot resampling of what Twilio sent
    heard = ears.audio()
    assert heard.size >= 2 * 16000 - 512 - 64
    reference = resample(to_float32(mulaw_decode(caller)), 8000, 16000)[: heard.size]
    assert np.abs(heard - reference).max() <= 1.5 / 32768  # int16 rounding, nothing else
    assert aperiodic_db(heard, 32, 320) < -80


# ------------------------------------------------------------------------------------------ HTTP routes
def test_incoming_call_webhook_returns_twiml_pointing_at_the_media_websocket(app):
    from fastapi.testclient import TestClient

    client = TestClient(app, base_url="https://bot.example.com")
    r = client.post("/telephone/incoming", data={"CallSid": CALL_SID, "From": "+81312345678"})
    assert r.status_code == 200
    assert "xml" in r.headers["content-type"]
    assert '<Connect><Stream url="wss://bot.example.com/telephone/handler"' in r.text


def test_gradio_page_and_health_are_served(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as client:  # with the lifespan, as uvicorn runs it
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "gradio" in page.text.lower()
        config = client.get("/config").json()
        kinds = {c.get("type") for c in config["components"]}
        assert {"webrtc", "chatbot", "dataframe"} <= kinds, kinds


def test_stream_uses_audio_and_the_configured_limits(runtime):
    from pipeline.app import build_stream

    stream = build_stream(runtime)
    assert stream.modality == "audio" and stream.mode == "send-receive"
    assert stream.concurrency_limit == runtime.cfg.server.concurrency_limit
    assert stream.time_limit == runtime.cfg.server.time_limit_s


def test_ui_renders_snapshots_as_transcript_slots_and_latency():
    from pipeline.app import render

    turn = {"turn": 1, "gap_ms": 612.4, "ms": {"speech_end": 0.0, "turn_detected": 480.0, "transcript_ready": 560.0,
                                              "first_text": 563.0, "first_audio_synth": 610.0,
                                              "first_audio_sent": 612.4, "reply_done": 900.0}}
    snap = {
        "transcript": [{"role": "bot", "text": "お電話ありがとうございます"}, {"role": "user", "text": "12月24日"}],
        "slots": {"date": "2026-12-24", "party_size": None},
        "reservation": None, "ended": False, "last_turn": turn,
    }
    chat, slots, status, latency = render(snap)
    assert chat == [{"role": "assistant", "content": "お電話ありがとうございます"},
                    {"role": "user", "content": "12月24日"}]
    assert ["date", "2026-12-24"] in slots and ["party size", "—"] in slots
    assert latency == [["1", "612", "pause 480 · stt 80 · agent 3 · tts 47 · send 2"]]
    # The same turn reported again updates its row; the next turn adds one.
    _, _, _, latency = render(snap, latency)
    assert len(latency) == 1
    snap2 = {**snap, "last_turn": {**turn, "turn": 2, "gap_ms": 500.0}, "reservation": {"id": "R-1"}}
    _, _, status, latency = render(snap2, latency)
    assert [r[0] for r in latency] == ["1", "2"] and "R-1" in status


def test_latency_rows_accumulate_per_call_on_the_server():
    from pipeline.app import LatencyBook

    book = LatencyBook(keep=2)

    def snap(call, turn, gap):
        return {"call_id": call, "transcript": [], "slots": {}, "last_turn": {"turn": turn, "gap_ms": gap}}

    book.render(snap("a", 1, 700))
    book.render(snap("b", 1, 800))
    assert [r[:2] for r in book.render(snap("a", 2, 650))[3]] == [["1", "700"], ["2", "650"]]
    assert [r[:2] for r in book.render(snap("b", 2, 600))[3]] == [["1", "800"], ["2", "600"]]
    book.render(snap("c", 1, 500))  # a third call: the oldest is forgotten
    assert [r[0] for r in book.render(snap("a", 3, 640))[3]] == ["3"]


def test_the_app_checks_twilio_by_default_and_will_not_start_without_the_auth_token(runtime, monkeypatch):
    from pipeline.app import build_app
    from pipeline.config import TwilioConfig
    from pipeline.transport.twilio.auth import TwilioAuthMissing

    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    assert TwilioConfig().validate is True
    # the test models' config turns validation off for local development: put the default back
    monkeypatch.setattr(runtime.cfg, "twilio", TwilioConfig())
    with pytest.raises(TwilioAuthMissing, match="TWILIO_AUTH_TOKEN"):
        build_app(runtime)


def test_the_test_models_config_serves_locally_without_twilio(test_config):
    assert test_config.twilio.validate is False


# ------------------------------------------------------------------------------------------------ CLI
def test_models_status_lists_the_test_models_as_present(test_models_dir, capsys):
    from pipeline.cli import main

    assert main(["models", "status", "--config", str(test_models_dir / "config.yaml")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("present") for line in lines), out
    for name in ("whisper-tiny-random", "kokoro-fake.onnx", "voices.bin"):
        assert name in out


def test_serve_without_models_and_no_download_names_the_missing_file(test_models_dir, tmp_path, capsys):
    from pipeline.cli import main

    cfg = yaml.safe_load((test_models_dir / "config.yaml").read_text())
    cfg["stt"]["model"] = str(test_models_dir / cfg["stt"]["model"])
    cfg["tts"]["voices"] = str(test_models_dir / cfg["tts"]["voices"])
    cfg["tts"]["model"] = "kokoro-v1.0.onnx"  # not there
    cfg["store"]["url"] = "sqlite://"
    cfg["twilio"] = {"validate": False}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))

    code = main(["serve", "--config", str(path), "--no-download", "--port", "1"])
    err = capsys.readouterr().err
    assert code != 0
    assert "kokoro-v1.0.onnx" in err and "voicebot models download" in err
    assert "Traceback" not in err


def test_phone_without_a_hugging_face_token_says_so_and_fails(test_models_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "phone", "--config",
                        str(test_models_dir / "config.yaml")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
