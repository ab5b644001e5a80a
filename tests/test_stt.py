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


# ------------------------------------------------------------------------------------------ encoder window
def _segment(tokens: int, ratio: float):
    from faster_whisper.transcribe import Segment

    return Segment(id=0, seek=0, start=0.0, end=1.0, text="x", tokens=list(range(tokens)), avg_logprob=-0.3,
                   compression_ratio=ratio, no_speech_prob=0.0, words=None, temperature=0.0)


def test_a_decode_that_repeats_itself_or_runs_to_the_cap_is_degenerate():
    from pipeline.stt import MAX_TOKENS, degenerate, token_cap

    cap = token_cap(2.0)
    assert 2.0 * 10 < cap < MAX_TOKENS  # room for fast speech (about 10 tokens a second), far below the context
    assert token_cap(120.0) == MAX_TOKENS
    assert not degenerate([_segment(12, 1.1)], cap)
    assert degenerate([_segment(12, 3.0)], cap)  # "はい。はい。はい。…" compresses like this
    assert degenerate([_segment(cap, 1.0)], cap)
    assert not degenerate([], cap)


def test_the_configured_window_is_used_when_the_decode_is_sound(test_config):
    engine = FasterWhisperSTT(test_config.stt.model_copy(update={"window_s": 8.0}), test_config.path(test_config.stt.model))
    result = engine.transcribe(_tone(2.0, 16000), 16000)
    assert (result.window_s, result.retried) == (8.0, False)
    assert result.text  # the test model's few letters
    off = FasterWhisperSTT(test_config.stt.model_copy(update={"window_s": None}), test_config.path(test_config.stt.model))
    assert off.transcribe(_tone(2.0, 16000), 16000).window_s is None


def test_a_looping_decode_on_a_short_window_is_redone_on_whisper_s_own_window(tmp_path, test_config, caplog):
    """A whisper that never ends its text (random weights, unsteered) loops like real weights do on
    a too-short window: the turn is decoded again on 30 s, and the token cap bounds both decodes."""
    from make_test_models import build_whisper

    from pipeline.stt import token_cap

    model = build_whisper(tmp_path / "looping", eot_bias=0.0)
    engine = FasterWhisperSTT(test_config.stt.model_copy(update={"window_s": 8.0}), model)
    with caplog.at_level("WARNING", logger="pipeline.stt"):
        result = engine.transcribe(_tone(1.0, 16000), 16000)
    assert (result.window_s, result.retried) == (None, True)
    assert "decoding again on 30 s" in caplog.text
    segments, _ = engine.decode(prepare_audio(_tone(1.0, 16000), 16000), window_s=None, max_new_tokens=token_cap(1.0))
    assert sum(len(s.tokens) for s in segments) <= token_cap(1.0)
