"""The remote speech providers (``stt.provider: openai``, ``tts.provider: openai``) against our own
test models served through the OpenAI audio API on loopback (pipeline.sim.speech_server).

They hear and say what the local engines do; the voice tests that the local engines pass are run
on both (``speech`` is parametrised over local and remote); a call through the real handler is
answered on them; and a server that fails, is slow or sends garbage is answered as a local fault
is: the apology, never silence, and the call goes on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import time
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from audio_fixtures import ESPEAK, ESPEAK_MISSING, silence, speech
from fastrtc import AdditionalOutputs

from pipeline.agents.factory import make_clock
from pipeline.config import ConfigError, STTConfig, TTSConfig, load_config
from pipeline.sim.speech_server import SpeechServer
from pipeline.speech.models import ModelsMissing, model_resolver
from pipeline.speech.remote import (
    RemoteSTT,
    RemoteSTTError,
    RemoteTTS,
    RemoteTTSError,
    decode_wav,
    encode_wav,
    ensure_local_models,
    remote_whisper_model,
    to_pcm16,
)
from pipeline.speech.stt import STT, STTContext, Transcript, make_stt, prompt_for
from pipeline.speech.tts import TTS, SentenceSplitter, TTSFault, check_speech, make_tts
from pipeline.speech.vad import make_vad
from pipeline.transport.fastrtc import make_handler
from pipeline.voice.phrases import APOLOGY
from pipeline.voice.runtime import VoiceRuntime

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
SR = 16000
#: the remote providers' timeout in these tests; the injected slowness is well past it
TIMEOUT_S = 1.0
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def local(test_config):
    """The local engines on the test models, loaded and warmed once: what the server serves too."""
    resolve = model_resolver(test_config)
    stt, tts = make_stt(test_config.stt, resolve), make_tts(test_config.tts, resolve)
    stt.warmup()
    tts.warmup()
    return SimpleNamespace(name="local", stt=stt, tts=tts)


@pytest.fixture(scope="module")
def server(local):
    with SpeechServer(local.stt, local.tts) as s:
        yield s


@pytest.fixture(autouse=True)
def _healthy(request):
    """Every test starts (and leaves) the shared server without faults."""
    if "server" not in request.fixturenames:
        yield
        return
    srv = request.getfixturevalue("server")
    srv.heal()
    yield
    srv.heal()


def remote_config(test_config, base_url: str, **tts_update):
    cfg = test_config.model_copy(deep=True)
    cfg.stt.base_url = cfg.tts.base_url = base_url
    cfg.stt.provider, cfg.tts.provider = "openai", "openai"
    cfg.stt.timeout_s = cfg.tts.timeout_s = TIMEOUT_S
    for key, value in tts_update.items():
        setattr(cfg.tts, key, value)
    return cfg


@pytest.fixture(scope="module")
def remote(test_config, server):
    cfg = remote_config(test_config, server.base_url)
    resolve = model_resolver(cfg)
    stt, tts = make_stt(cfg.stt, resolve), make_tts(cfg.tts, resolve)
    yield SimpleNamespace(name="remote", stt=stt, tts=tts, cfg=cfg)
    stt.close()
    tts.close()


@pytest.fixture(params=["local", "remote"])
def engines(request, local, remote):
    """The same voice test on the local engines and on the remote providers."""
    return local if request.param == "local" else remote


def voiced(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    """A vowel-like signal: harmonics of a gliding pitch under a syllable-rate envelope, and a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return (0.2 * voice * envelope + noise).astype(np.float32)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ----------------------------------------------------------------------------------- config and factory
def test_the_factories_build_the_remote_providers_named_in_the_config(remote, test_models_dir):
    assert isinstance(remote.stt, RemoteSTT) and isinstance(remote.stt, STT)
    assert isinstance(remote.tts, RemoteTTS) and isinstance(remote.tts, TTS) and remote.tts.sample_rate == 24000
    cfg = load_config(test_models_dir / "config.yaml",
                      environ={"VOICEBOT__STT__PROVIDER": "local", "VOICEBOT__TTS__PROVIDER": "local"})
    assert (cfg.stt.provider, cfg.tts.provider) == ("faster-whisper", "kokoro")  # `local` names the local engines
    env = {"VOICEBOT__STT__PROVIDER": "openai", "VOICEBOT__STT__BASE_URL": "http://127.0.0.1:8000/v1/",
           "VOICEBOT__TTS__PROVIDER": "openai", "VOICEBOT__TTS__BASE_URL": "http://127.0.0.1:8880/v1"}
    cfg = load_config(test_models_dir / "config.yaml", environ=env)
    assert cfg.stt.base_url == "http://127.0.0.1:8000/v1" and cfg.tts.base_url == "http://127.0.0.1:8880/v1"


@pytest.mark.parametrize("env, message", [
    ({"VOICEBOT__STT__PROVIDER": "openai"}, "stt.base_url"),
    ({"VOICEBOT__TTS__PROVIDER": "openai"}, "tts.base_url"),
    ({"VOICEBOT__TTS__PROVIDER": "openai", "VOICEBOT__TTS__BASE_URL": "localhost:8880"}, "API root"),
    ({"VOICEBOT__STT__PROVIDER": "whisper.cpp"}, "provider"),
])
def test_a_remote_provider_without_a_server_url_is_a_config_error(test_models_dir, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(test_models_dir / "config.yaml", environ=env)


def test_the_project_config_names_the_remote_speech_keys():
    cfg = load_config(environ={})
    assert cfg.stt.provider == "faster-whisper" and cfg.tts.provider == "kokoro"
    assert cfg.stt.base_url is None and cfg.tts.base_url is None
    assert cfg.tts.response_format == "pcm" and cfg.stt.timeout_s > 0 and cfg.tts.timeout_s > 0


def test_the_model_asked_for_is_the_remote_model_or_the_size_as_its_repository():
    assert remote_whisper_model(STTConfig(model="base")) == "Systran/faster-whisper-base"
    assert remote_whisper_model(STTConfig(model="models/my-whisper")) == "models/my-whisper"
    assert remote_whisper_model(STTConfig(model="base", remote_model="openai/whisper-large-v3")) == \
        "openai/whisper-large-v3"


# ----------------------------------------------------------------------------------- what is heard
@pytest.mark.parametrize("context", [
    None,
    STTContext(asking="date", language="ja", words=("AI-SHIFT",)),
    STTContext(asking="phone", language="ja", words=("AI-SHIFT",)),
], ids=["no-context", "asking-date", "asking-phone"])
def test_the_server_hears_what_the_local_engine_hears(local, remote, context):
    texts = []
    for seed, seconds in ((0, 1.2), (1, 2.5)):
        audio = to_pcm16(voiced(seconds, seed=seed))  # 16-bit 16 kHz, as it goes on the wire
        here, there = local.stt.transcribe(audio, SR, context), remote.stt.transcribe(audio, SR, context)
        assert isinstance(there, Transcript)
        assert there.text == here.text
        assert (there.language, there.asking) == (here.language, here.asking)
        assert there.duration_s == pytest.approx(here.duration_s)
        texts.append(here.text)
    assert any(texts)  # the random-weight whisper writes something: the comparison compares words


def test_the_server_is_told_the_model_the_language_and_the_prompt(remote, server):
    context = STTContext(asking="time", language="ja", words=("AI-SHIFT",))
    remote.stt.transcribe(voiced(1.0), SR, context)
    sent = [r for r in server.requests if r.endpoint == "transcriptions"][-1].fields
    assert sent["model"] == "whisper-tiny-random" and sent["language"] == "ja"
    assert sent["prompt"] == prompt_for(context, "ja") and sent["response_format"] == "json"
    assert sent["hotwords"] is None  # not sent unless stt.remote_hotwords (the OpenAI API has none)


def test_hotwords_and_the_api_key_reach_the_server_when_configured(local, test_config, monkeypatch):
    monkeypatch.setenv("SPEECH_KEY_FOR_TEST", "s3cret")
    with SpeechServer(local.stt, local.tts, api_key="s3cret") as srv:
        cfg = remote_config(test_config, srv.base_url)
        cfg.stt.remote_hotwords = True
        cfg.stt.api_key_env = cfg.tts.api_key_env = "SPEECH_KEY_FOR_TEST"
        stt, tts = RemoteSTT(cfg.stt), RemoteTTS(cfg.tts)
        stt.transcribe(voiced(1.0), SR, STTContext(asking="name", language="ja", words=("AI-SHIFT",)))
        assert tts.synthesize("かしこまりました。", "ja").size
        assert [r.authorization for r in srv.requests] == ["Bearer s3cret"] * 2
        assert srv.requests[0].fields["hotwords"] == "AI-SHIFT 予約"  # the context's words and the configured ones
        monkeypatch.setenv("SPEECH_KEY_FOR_TEST", "wrong")
        with pytest.raises(RemoteSTTError, match="401.*invalid API key"):
            RemoteSTT(cfg.stt).transcribe(voiced(1.0), SR)
        with pytest.raises(TTSFault, match="401"):
            RemoteTTS(cfg.tts).synthesize("かしこまりました。", "ja")


def test_with_language_auto_the_language_heard_is_named(engines, test_config):
    # as tests/test_stt.py has it for the local engine: whatever the random model picks, it is named
    cfg = getattr(engines, "cfg", test_config).stt.model_copy(update={"language": "auto"})
    stt = make_stt(cfg, model_resolver(test_config))
    result = stt.transcribe(voiced(1.0), SR)
    assert stt.language is None and result.language


@pytest.mark.parametrize(
    "make",
    [
        lambda: (voiced(1.0), 16000),
        lambda: (to_pcm16(voiced(1.0)).reshape(1, -1), 16000),  # FastRTC frames
        lambda: (voiced(1.0).reshape(-1, 1), 16000),
        lambda: (to_pcm16(voiced(1.0, 8000)), 8000),  # the phone line
        lambda: (voiced(1.0, 48000), 48000),  # WebRTC
        lambda: (np.stack([voiced(1.0, 44100)] * 2, axis=1).astype(np.float64), 44100),  # stereo (N, 2)
    ],
    ids=["f32-16k", "i16-1xN", "f32-Nx1", "i16-8k", "f32-48k", "f64-stereo-44k"],
)
def test_transcribes_any_pcm_shape_and_rate(engines, make):
    audio, rate = make()
    result = engines.stt.transcribe(audio, rate)
    assert isinstance(result, Transcript) and result.language == "ja"
    assert result.duration_s == pytest.approx(1.0, abs=0.01)
    assert isinstance(result.text, str) and result.elapsed_s > 0


@pytest.mark.parametrize(
    "audio,rate,message",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.full(16000, np.nan, np.float32), 16000, "NaN"),
        (np.zeros(16000, np.complex64), 16000, "dtype"),
        (np.zeros((2, 2, 100), np.float32), 16000, "1-D or 2-D"),
        ([0.0] * 100, 16000, "numpy array"),
        (np.zeros(16000, np.float32), 0, "sample_rate"),
    ],
    ids=["empty", "nan", "complex", "3d", "list", "rate-0"],
)
def test_input_that_is_not_audio_is_a_value_error_before_any_request(engines, server, audio, rate, message):
    before = server.count("stt")
    with pytest.raises(ValueError, match=message):
        engines.stt.transcribe(audio, rate)
    assert server.count("stt") == before


# ----------------------------------------------------------------------------------- what is said
SAYINGS = [
    ("ja", "かしこまりました。"),
    ("ja", "ご予約ありがとうございます。12月24日の19時半、3名様ですね。"),
    ("ja", "お電話番号は090-1234-5678ですね。AI-SHIFTでお待ちしております。"),
    ("en", "Thank you for calling. Your table for three is at 7:30 pm on December 24th."),
]


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
@pytest.mark.parametrize("lang, text", SAYINGS)
def test_the_server_says_what_the_local_engine_says(local, test_config, server, fmt, lang, text):
    tts = RemoteTTS(remote_config(test_config, server.base_url, response_format=fmt).tts)
    here, there = local.tts.synthesize(text, lang), tts.synthesize(text, lang)
    assert there.dtype == np.float32 and there.ndim == 1
    assert there.shape == here.shape and here.size > 0.3 * 24000
    assert np.abs(there - here).max() <= 1 / 32768  # only the 16 bits on the wire differ


@pytest.mark.parametrize("lang, text", SAYINGS[1:])
def test_synthesizes_audible_float32_in_both_languages(engines, lang, text):
    audio = engines.tts.synthesize(text, lang)
    assert isinstance(engines.tts, TTS) and engines.tts.sample_rate == 24000
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size > 0.5 * engines.tts.sample_rate and np.abs(audio).max() > 0.1


def test_stream_yields_one_chunk_per_sentence(engines):
    chunks = list(engines.tts.stream("はい。承知しました！ご予約は19:30ですね？", "ja"))
    assert len(chunks) == 3
    assert all(rate == 24000 and audio.dtype == np.float32 and audio.size for rate, audio in chunks)
    en = list(engines.tts.stream("Hello. Mr. Tanaka, your table is ready! See you at 7 p.m. tomorrow.", "en"))
    assert len(en) == 3


@pytest.mark.parametrize("text", ["", "   ", "！？", "...", "🙂👍", "**", "https://example.com"])
@pytest.mark.parametrize("lang", ["ja", "en"])
def test_nothing_to_say_gives_empty_audio_not_an_error(engines, server, text, lang):
    before = server.count("tts")
    assert engines.tts.synthesize(text, lang).size == 0
    assert list(engines.tts.stream(text, lang)) == []
    assert server.count("tts") == before  # and costs no request


def test_unknown_language_and_missing_voice_are_clear_errors(engines, server):
    with pytest.raises(ValueError, match="unsupported speech language"):
        engines.tts.synthesize("hola", "es")
    if engines.name == "remote":
        only_ja = RemoteTTS(engines.cfg.tts.model_copy(update={"voice": {"ja": "jf_alpha"}}))
        with pytest.raises(ValueError, match="no voice for language 'en'"):
            only_ja.synthesize("Hello.", "en")
        nobody = RemoteTTS(engines.cfg.tts.model_copy(update={"voice": {"ja": "xx_nobody"}}))
        with pytest.raises(TTSFault, match="HTTP 400.*xx_nobody"):  # the server knows no such voice
            nobody.synthesize("はい。", "ja")


def test_the_speed_reaches_the_server(local, remote, test_config):
    fast_local = make_tts(test_config.tts.model_copy(update={"speed": 1.5}), model_resolver(test_config))
    fast_remote = RemoteTTS(remote.cfg.tts.model_copy(update={"speed": 1.5}))
    text = "かしこまりました、少々お待ちください。"
    normal = local.tts.synthesize(text, "ja")
    here, there = fast_local.synthesize(text, "ja"), fast_remote.synthesize(text, "ja")
    assert there.shape == here.shape and there.size < 0.8 * normal.size


def test_a_short_piece_said_before_is_replayed_without_a_request(remote, server):
    tts = RemoteTTS(remote.cfg.tts.model_copy(update={"cache_size": 4}))
    before = server.count("tts")
    first = tts.synthesize("少々お待ちください。", "ja")
    again = tts.synthesize("少々お待ちください。", "ja")
    assert np.array_equal(first, again) and first.size
    assert server.count("tts") == before + 1
    assert tts.stats.synthesized == 1 and tts.stats.cache_hits == 1
    (_, piece), = tts.stream("少々お待ちください。", "ja")
    assert not piece.flags.writeable  # shared by every call that says it


# ----------------------------------------------------------------------------------- faults
SERVER_FAULTS = {
    "http-500": ({"status": 500}, "HTTP 500"),
    "http-503": ({"status": 503}, "HTTP 503"),
    "garbage": ({"garbage": True}, "not JSON|noise"),
    "slow": ({"delay_s": 3 * TIMEOUT_S}, "did not answer within"),
    "stalls-mid-answer": ({"stall_s": 3 * TIMEOUT_S}, "did not"),
}


@pytest.mark.parametrize("name", sorted(SERVER_FAULTS))
def test_a_failing_speech_server_is_a_tts_fault_soon_and_not_kept(remote, server, name):
    knobs, message = SERVER_FAULTS[name]
    tts = RemoteTTS(remote.cfg.tts.model_copy(update={"cache_size": 8}))
    server.fail("tts", **knobs, times=1)
    start = time.monotonic()
    with pytest.raises(TTSFault, match=message) as caught:
        tts.synthesize("かしこまりました。", "ja")
    assert isinstance(caught.value, RemoteTTSError)
    assert time.monotonic() - start < 2 * TIMEOUT_S + 1.0  # bounded: never the server's 3 s
    assert tts.stats.faults == 1
    assert tts.synthesize("かしこまりました。", "ja").size  # a fault is not cached: tried again, and well


@pytest.mark.parametrize("name", sorted(SERVER_FAULTS))
def test_a_failing_transcription_server_is_an_stt_error_soon(remote, server, name):
    knobs, message = SERVER_FAULTS[name]
    server.fail("stt", **knobs, times=1)
    start = time.monotonic()
    with pytest.raises(RemoteSTTError, match=message):
        remote.stt.transcribe(voiced(1.0), SR)
    assert time.monotonic() - start < 2 * TIMEOUT_S + 1.0
    assert isinstance(remote.stt.transcribe(voiced(1.0), SR), Transcript)  # and the next turn is heard


def test_no_server_at_the_address_is_a_fault_at_once(test_config):
    cfg = remote_config(test_config, closed_port_url())
    start = time.monotonic()
    with pytest.raises(RemoteSTTError, match="ConnectError"):
        RemoteSTT(cfg.stt).transcribe(voiced(1.0), SR)
    with pytest.raises(TTSFault, match="ConnectError"):
        RemoteTTS(cfg.tts).synthesize("はい。", "ja")
    with pytest.raises(RemoteSTTError, match=r"127\.0\.0\.1"):  # start-up names the server it could not reach
        RemoteSTT(cfg.stt).warmup()
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("headers, body, message", [
    ({"content-type": "application/json"}, b'{"error": {"message": "model not loaded"}}', "not audio"),
    ({"content-type": "audio/pcm"}, b'{"detail": "Internal Server Error"}', "not audio"),
    ({"content-type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>", "not audio"),
    ({}, b"<!DOCTYPE html><html></html>", "not audio"),
    ({"content-type": "audio/mpeg"}, b"ID3\x04\x00" + bytes(4000), "mp3"),
    ({"content-type": "audio/pcm"}, bytes(4001), "not whole 16-bit samples"),
    ({"content-type": "audio/wav"}, b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot be read"),
    ({"content-type": "audio/pcm"}, b"", "0 ms of audio"),
    ({"content-type": "audio/pcm"}, bytes(48000), "silence"),
])
def test_an_answer_that_is_not_speech_is_a_tts_fault(remote, headers, body, message):
    tts = remote.tts
    with pytest.raises(TTSFault, match=message):
        check_speech(tts.decode(headers, body), 8, 1.0, tts.sample_rate)


def test_audio_in_a_wav_is_read_at_its_rate_and_resampled():
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(22050) / 22050)).astype(np.float32)
    rate, back = decode_wav(encode_wav(to_pcm16(tone), 22050))
    assert rate == 22050 and np.abs(back - tone).max() <= 1 / 32768
    tts = RemoteTTS(TTSConfig(provider="openai", base_url="http://127.0.0.1:9/v1"))
    audio = tts.decode({"content-type": "audio/wav"}, encode_wav(to_pcm16(tone), 22050))
    assert audio.size == pytest.approx(24000, abs=2)  # one second at the bot's 24 kHz


# ----------------------------------------------------------------------------------- model files
def test_a_stage_on_a_server_needs_no_model_files_here(test_config, tmp_path):
    cfg = test_config.model_copy(deep=True)
    cfg.stt.model = "base"  # a size name, not downloaded
    cfg.models.dir = str(tmp_path / "models")
    cfg.tts.model, cfg.tts.voices = str(tmp_path / "kokoro.onnx"), str(tmp_path / "voices.bin")
    with pytest.raises(ModelsMissing) as local_only:
        ensure_local_models(cfg, download=False)
    assert len(local_only.value.missing) == 3  # unchanged for local stages: whisper and kokoro's two files
    cfg.stt.base_url = "http://127.0.0.1:9/v1"
    cfg.stt.provider = "openai"
    with pytest.raises(ModelsMissing) as tts_only:
        ensure_local_models(cfg, download=False)
    assert [m.what for m in tts_only.value.missing] == ["kokoro model", "kokoro voices"]
    cfg.tts.base_url = "http://127.0.0.1:9/v1"
    cfg.tts.provider = "openai"
    assert ensure_local_models(cfg, download=False).kokoro_model == tmp_path / "kokoro.onnx"


def test_the_voice_runtime_loads_on_speech_servers_without_model_files(test_config, server, tmp_path):
    cfg = remote_config(test_config, server.base_url)
    cfg.stt.model = "base"
    cfg.models.dir = str(tmp_path / "models")
    cfg.tts.model, cfg.tts.voices = str(tmp_path / "kokoro.onnx"), str(tmp_path / "voices.bin")
    cfg.store.url = f"sqlite:///{tmp_path}/r.db"
    cfg.logging.call_log = None
    cfg.tts.cache_size = 0  # no phrases rendered in the background
    rt = VoiceRuntime.load(cfg, download=False, clock=make_clock(NOW))
    try:
        assert isinstance(rt.stt, RemoteSTT) and isinstance(rt.tts, RemoteTTS)
        assert rt.fallback_audio["ja"].size > 0  # the apology, rendered by the server at start-up
        sent = [r.fields["model"] for r in server.requests if r.endpoint == "transcriptions"]
        assert sent[-1] == "Systran/faster-whisper-base"  # warmed up: the server was asked for the size's repository
    finally:
        rt.close()


# ----------------------------------------------------------------------------------- through the call
@pytest.fixture(scope="module")
def vad(test_config):
    v = make_vad(test_config.vad)
    v.warmup()
    return v


@pytest.fixture
def call_runtime(test_config, server, vad, tmp_path):
    made: list[VoiceRuntime] = []

    def make(**tts_update) -> VoiceRuntime:
        cfg = remote_config(test_config, server.base_url, **tts_update)
        cfg.store.url = f"sqlite:///{tmp_path}/r.db"
        cfg.logging.call_log = str(tmp_path / "calls.jsonl")
        cfg.agent.kind = "rules"
        resolve = model_resolver(cfg)
        rt = VoiceRuntime(cfg, stt=make_stt(cfg.stt, resolve), tts=make_tts(cfg.tts, resolve), vad=vad,
                          clock=make_clock(NOW))
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def feed(h, audio: np.ndarray, frame_ms: int = 20) -> None:
    n = SR * frame_ms // 1000
    for i in range(0, len(audio), n):
        h.receive((SR, audio[i:i + n].reshape(1, -1)))


def drain(h, limit: int = 2000) -> list:
    """emit() until the reply is over, as FastRTC's loop calls it (None while idle)."""
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


def start_call(rt: VoiceRuntime):
    h = make_handler(rt).copy()  # FastRTC copies the handler per connection
    h.start_up()
    greeting = drain(h)
    h.call.assume_played()  # as if the caller had listened to all of it
    return h, greeting


def say(h, words: str) -> list:
    feed(h, np.concatenate([silence(0.3), speech(words, "ja"), silence(1.3)]))
    out = drain(h)
    h.call.assume_played()
    return out


def apology_size(rt: VoiceRuntime, lang: str) -> int:
    """The apology said as a reply is said: its first clause, then the rest."""
    clause = SentenceSplitter(first_clause_chars=rt.cfg.tts.first_clause_chars)
    pieces = [*clause.feed(APOLOGY[lang]), clause.flush()]
    return sum(rt.tts.synthesize(p, lang).size for p in pieces)


@needs_espeak
def test_a_call_on_the_speech_servers_greets_and_answers_a_turn(call_runtime, server):
    rt = call_runtime()
    h, greeting = start_call(rt)
    assert audio_of(greeting) and all(sr == 24000 for sr, _ in (i for i in greeting if isinstance(i, tuple)))
    heard_before = server.count("stt")
    out = say(h, "十二月二十四日の十九時に二名でお願いします")
    assert audio_of(out) and isinstance(out[-1], AdditionalOutputs)
    assert server.count("stt") > heard_before  # the caller was heard by the server
    user, bot = h.call.transcript[-2:]
    assert user["role"] == "user" and user["text"] and bot["role"] == "bot" and bot["text"]
    tl = h.call.timelines[-1]
    assert not tl.error and tl.first_audio_sent is not None and tl.gap_ms > 0


@needs_espeak
def test_a_failing_transcription_server_gets_the_apology_and_the_call_goes_on(call_runtime, server):
    rt = call_runtime()
    h, _ = start_call(rt)
    server.fail("stt", status=500)
    out = say(h, "十二月二十四日でお願いします")
    assert np.concatenate(audio_of(out)).size == apology_size(rt, h.call.language)  # not silence
    assert h.call.transcript[-1] == {"role": "bot", "text": APOLOGY[h.call.language]}
    assert "HTTP 500" in h.call.timelines[-1].error and not h.call.ended
    server.heal()
    out = say(h, "十二月二十四日でお願いします")
    assert audio_of(out) and h.call.transcript[-2]["role"] == "user"


@needs_espeak
@pytest.mark.parametrize("knobs", [{"status": 500}, {"garbage": True}, {"delay_s": 3 * TIMEOUT_S}],
                         ids=["http-500", "garbage", "slow"])
def test_a_failing_speech_server_plays_the_apology_rendered_at_start_up(call_runtime, server, knobs):
    rt = call_runtime(cache_size=0)  # every piece of the reply goes to the server
    assert rt.fallback_audio["ja"].size > 0
    h, _ = start_call(rt)
    server.fail("tts", **knobs)
    begun = time.monotonic()
    out = say(h, "十二月二十四日でお願いします")
    took = time.monotonic() - begun
    spoken = np.concatenate(audio_of(out))
    assert np.array_equal(spoken, np.clip(rt.fallback_audio[h.call.language], -1, 1))  # never silence, never noise
    assert "tts" in h.call.timelines[-1].error and not h.call.ended
    assert took < 3 * TIMEOUT_S + 5  # bounded by tts.timeout_s, not the server's delay per piece
    server.heal()
    out = say(h, "十二月二十四日でお願いします")
    assert audio_of(out) and not h.call.timelines[-1].error  # the call goes on, in the bot's own voice again


def test_a_turn_on_the_call_path_is_answered_by_the_servers(call_runtime, server):
    """VoiceCall.turn, as the handler runs it, with a transcription whose words a test can know."""
    rt = call_runtime()
    call = rt.get_call("remote-turn")
    greeting = [a for _, a in call.greeting()]
    assert greeting and sum(a.size for a in greeting) > 24000

    class Ears:  # the remote STT runs; the caller's scripted words are reported
        def __init__(self, stt):
            self.stt = stt

        def transcribe(self, audio, sample_rate):
            heard = self.stt.transcribe(audio, sample_rate)
            return dataclasses.replace(heard, text="12月24日の19時に2名でお願いします")

        def warmup(self):
            pass

    rt.stt = Ears(rt.stt)
    before = server.count("stt")
    out = list(call.turn((SR, voiced(1.5))))
    assert server.count("stt") == before + 1
    assert [x for x in out if isinstance(x, tuple)]
    slots = call.agent.state.slots
    assert (str(slots.date), str(slots.time)[:5], slots.party_size) == ("2026-12-24", "19:00", 2)
