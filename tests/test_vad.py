"""silero-vad's bundled ONNX as a FastRTC PauseDetectionModel: speech is speech, quiet is not."""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import ESPEAK, ESPEAK_MISSING, noise, silence, speech
from fastrtc import ReplyOnPause

from pipeline.config import VADConfig
from pipeline.speech.vad import BundledSileroVAD, algo_options, bundled_silero_path, make_vad, silero_options

needs_espeak = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)


@pytest.fixture(scope="module")
def vad() -> BundledSileroVAD:
    model = make_vad(VADConfig())
    model.warmup()
    return model


def test_model_file_comes_from_the_silero_wheel_without_importing_torch():
    import sys

    assert bundled_silero_path().name == "silero_vad.onnx"
    assert "torch" not in sys.modules and "silero_vad" not in sys.modules


def test_options_come_from_config():
    cfg = VADConfig(threshold=0.6, audio_chunk_duration=0.4, started_talking_threshold=0.3,
                    speech_threshold=0.15, min_silence_duration_ms=300)
    algo, silero = algo_options(cfg), silero_options(cfg)
    assert (algo.audio_chunk_duration, algo.started_talking_threshold, algo.speech_threshold) == (0.4, 0.3, 0.15)
    assert (silero.threshold, silero.min_silence_duration_ms, silero.window_size_samples) == (0.6, 300, 512)


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        BundledSileroVAD(tmp_path / "nope.onnx")


@needs_espeak
@pytest.mark.parametrize("lang,text", [("ja", "こんにちは、予約をお願いします。"), ("en", "Hello, I would like a table.")])
def test_espeak_speech_is_detected(vad, lang, text):
    audio = speech(text, lang)
    seconds, chunks = vad.vad((16000, audio), None)
    assert seconds > 0.5 and chunks
    assert vad.speech_probs(audio).max() > 0.9


@pytest.mark.parametrize("audio", [silence(2.0), noise(2.0, dbfs=-50)], ids=["silence", "low-noise"])
def test_silence_and_low_noise_are_not_speech(vad, audio):
    seconds, chunks = vad.vad((16000, audio), None)
    assert seconds == 0.0 and chunks == []
    assert vad.speech_probs(audio).max() < 0.5


@needs_espeak
@pytest.mark.parametrize("rate", [8000, 24000, 48000])
def test_other_rates_and_shapes_are_resampled(vad, rate):
    audio = speech("はい、三名です。", "ja", sample_rate=rate)
    seconds, _ = vad.vad((rate, audio.reshape(1, -1)), None)  # FastRTC's (1, N) frames
    assert seconds > 0.3
    f32 = audio.astype(np.float32) / 32768
    assert vad.vad((rate, f32), None)[0] == pytest.approx(seconds, abs=0.1)


def test_garbage_audio_reports_no_speech_instead_of_raising(vad):
    assert vad.vad((16000, np.full(16000, np.nan, np.float32)), None) == (0.0, [])
    assert vad.vad((16000, np.zeros(0, np.int16)), None) == (0.0, [])


def _feed(handler, audio, rate, frame_ms=20):
    step = rate * frame_ms // 1000
    for i in range(0, len(audio), step):
        handler.receive((rate, audio[i : i + step].reshape(1, -1)))


@needs_espeak
def test_reply_on_pause_answers_once_after_the_caller_stops(vad):
    heard = []

    def reply(audio):
        rate, samples = audio
        heard.append(samples.shape[-1] / rate)
        yield (24000, np.zeros(480, dtype=np.float32))

    cfg = VADConfig()
    handler = ReplyOnPause(reply, model=vad, algo_options=algo_options(cfg), model_options=silero_options(cfg),
                           input_sample_rate=16000)
    handler._clear_queue = lambda: None  # the transport normally injects these two
    handler.send_message_sync = lambda msg: None
    utterance = speech("ご予約をお願いしたいのですが、明日の夜は空いていますか。", "ja")
    _feed(handler, np.concatenate([silence(0.6), utterance, silence(1.5)]), 16000)
    assert handler.emit() is not None
    assert len(heard) == 1 and heard[0] >= len(utterance) / 16000 * 0.8


def test_reply_on_pause_stays_quiet_on_a_silent_line(vad):
    calls = []
    handler = ReplyOnPause(lambda audio: calls.append(audio) or iter(()), model=vad, input_sample_rate=16000)
    handler._clear_queue = lambda: None
    handler.send_message_sync = lambda msg: None
    _feed(handler, np.concatenate([silence(1.5), noise(1.5, dbfs=-50)]), 16000)
    assert handler.emit() is None and calls == []


def _energy_probs(audio: np.ndarray) -> np.ndarray:
    from pipeline.speech.vad import WINDOW, EnergyVAD

    model = EnergyVAD()
    state = model.get_initial_state(1)
    x = audio.astype(np.float32) / 32768.0
    out = []
    for start in range(0, x.size - WINDOW + 1, WINDOW):
        prob, state = model(x[start : start + WINDOW], state, 16000)
        out.append(float(np.asarray(prob).ravel()[0]))
    return np.array(out)


@needs_espeak
def test_the_energy_fallback_hears_speech_after_silence_and_not_a_quiet_line():
    line = np.concatenate([noise(1.0, dbfs=-55), speech("こんにちは、予約をお願いします。", "ja"), noise(1.0, dbfs=-55)])
    probs = _energy_probs(line)
    first_s = 1.0 / (512 / 16000)
    assert probs[: int(first_s)].max() < 0.5
    assert (probs > 0.5).sum() >= 10
    assert _energy_probs(silence(2.0)).max() < 0.5
