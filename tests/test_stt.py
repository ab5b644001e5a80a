"""FasterWhisperSTT on the random-weight test model: input handling and the real decode path."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import STTConfig
from pipeline.stt import STT, FasterWhisperSTT, Transcript, make_stt, prepare_audio, to_mono_float32


@pytest.fixture(scope="module")
def stt(test_config) -> FasterWhisperSTT:
    engine = make_stt(test_config.stt, test_config.path)
    engine.warmup()
    return engine


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_factory_builds_the_configured_provider(stt, test_config):
    assert isinstance(stt, STT) and isinstance(stt, FasterWhisperSTT)
    assert stt.language == "ja" and stt.hotwords == "AI-SHIFT 予約"
    with pytest.raises(FileNotFoundError, match="voicebot models download"):
        make_stt(test_config.stt, lambda value: test_config.path("no-such-model"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: (_tone(1.0, 16000), 16000),
        lambda: ((_tone(1.0, 16000) * 32767).astype(np.int16), 16000),
        lambda: ((_tone(1.0, 16000) * 32767).astype(np.int16).reshape(1, -1), 16000),  # FastRTC frames
        lambda: (_tone(1.0, 16000).reshape(-1, 1), 16000),
        lambda: ((_tone(1.0, 8000) * 32767).astype(np.int16), 8000),  # the phone line
        lambda: (_tone(1.0, 48000), 48000),  # WebRTC
        lambda: (np.stack([_tone(1.0, 44100)] * 2, axis=1).astype(np.float64), 44100),  # stereo (N, 2)
    ],
    ids=["f32-16k", "i16-16k", "i16-1xN", "f32-Nx1", "i16-8k", "f32-48k", "f64-stereo-44k"],
)
def test_transcribes_any_pcm_shape_and_rate(stt, make):
    audio, rate = make()
    result = stt.transcribe(audio, rate)
    assert isinstance(result, Transcript)
    assert result.language == "ja"
    assert result.duration_s == pytest.approx(1.0, abs=0.01)
    assert result.text and result.elapsed_s > 0


@pytest.mark.parametrize(
    "audio,rate,message",
    [
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.full(16000, np.nan, np.float32), 16000, "NaN"),
        (np.array([np.inf, 0.0] * 8000, np.float32), 16000, "NaN or infinite"),
        (np.zeros(16000, np.complex64), 16000, "dtype"),
        (np.zeros(16000, bool), 16000, "dtype"),
        (np.zeros((2, 2, 100), np.float32), 16000, "1-D or 2-D"),
        ([0.0] * 100, 16000, "numpy array"),
        (np.zeros(16000, np.float32), 0, "sample_rate"),
        (np.zeros(16000, np.float32), 16000.5, "sample_rate"),
    ],
    ids=["empty", "nan", "inf", "complex", "bool", "3d", "list", "rate-0", "rate-float"],
)
def test_garbage_input_is_a_clear_value_error(stt, audio, rate, message):
    with pytest.raises(ValueError, match=message):
        stt.transcribe(audio, rate)


def test_auto_language_is_detected(test_config):
    cfg = STTConfig(**{**test_config.stt.model_dump(), "language": "auto"})
    engine = FasterWhisperSTT(cfg, test_config.path(cfg.model))
    result = engine.transcribe(_tone(1.0, 16000), 16000)
    assert engine.language is None and result.language  # whatever the random model picks, it is named


def test_resampling_keeps_duration_and_scale():
    x = prepare_audio((_tone(2.0, 8000) * 32767).astype(np.int16), 8000)
    assert x.dtype == np.float32 and len(x) == pytest.approx(32000, abs=2)
    assert 0.25 < np.abs(x).max() <= 1.0
    # int16 values handed over as float (a common slip) are rescaled, not clipped
    assert np.abs(prepare_audio(_tone(1.0, 16000) * 32767, 16000)).max() <= 1.0
    assert to_mono_float32(np.array([[0, 16384]], np.int16)).tolist() == [0.0, 0.5]
