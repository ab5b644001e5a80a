"""Synthesis faults: audio that is not speech is a TTS fault, and the caller hears the apology.

The broken models are the fake kokoro of pipeline.sim.testmodels with its knobs turned: peaks
of 1e12 (what a faulty int8 kernel gives), NaN, silence, a few milliseconds for a whole sentence,
and, as the case that must pass, a loud voice's overshoot. The real int8 and float32 kokoro files
are checked in test_real_models.py.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from pipeline.sim.testmodels import build_fake_kokoro, build_voices
from pipeline.speech.tts import MAX_SPEECH_PEAK, KokoroTTS, TTSFault, check_speech
from pipeline.voice.runtime import VoiceRuntime

SR = 24000
BROKEN = {
    "huge": {"amplitude": 1e12},
    "nan": {"amplitude": math.nan},
    "silent": {"amplitude": 0.0},
    "short": {"samples_per_token": 1},
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("broken-kokoro")
    build_voices(out / "voices.bin")
    for name, knobs in {**BROKEN, "loud": {"amplitude": 1.2}}.items():
        build_fake_kokoro(out / f"{name}.onnx", **knobs)
    return out


def kokoro(test_config, model_dir, name: str) -> KokoroTTS:
    return KokoroTTS(test_config.tts, model_dir / f"{name}.onnx", model_dir / "voices.bin")


# ------------------------------------------------------------------------------------ the check itself
def _speech(seconds: float, peak: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (peak * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


@pytest.mark.parametrize("audio, sounds, speed, raw_peak, why", [
    (_speech(1.0, 0.5), 16, 1.0, 1e12, "peaks at 1e\\+12"),  # kokoro-onnx's trim kept a normal-looking piece
    (_speech(1.0, 3.0), 16, 1.0, None, "peaks at 3"),
    (np.full(SR, np.nan, np.float32), 16, 1.0, None, "NaN or infinite"),
    (_speech(1.0, 0.5), 16, 1.0, math.inf, "NaN or infinite"),
    (np.zeros(SR, np.float32), 16, 1.0, None, "silence"),
    (np.zeros(0, np.float32), 3, 1.0, None, "0 ms of audio for 3 sounds"),
    (_speech(0.03, 0.5), 16, 1.0, None, "30 ms of audio for 16 sounds"),
    (_speech(0.2, 0.5), 16, 1.0, None, "at least 320 ms"),  # 16 sounds never fit in 0.2 s
])
def test_audio_that_is_not_speech_is_a_fault_that_says_why(audio, sounds, speed, raw_peak, why):
    with pytest.raises(TTSFault, match=why):
        check_speech(audio, sounds, speed, SR, raw_peak=raw_peak)


def test_a_mild_overshoot_is_clipped_and_quiet_speech_passes_unchanged():
    loud = check_speech(_speech(1.0, 1.2), 16, 1.0, SR)  # jm_kumo's peaks reach ~1.2
    assert loud.max() == 1.0 and loud.min() == -1.0 and loud.size == SR
    quiet = _speech(1.0, 0.05)
    assert np.array_equal(check_speech(quiet, 16, 1.0, SR), quiet)
    with pytest.raises(TTSFault):
        check_speech(_speech(1.0, MAX_SPEECH_PEAK * 1.01), 16, 1.0, SR)


def test_the_shortest_speech_allowed_follows_the_speed():
    short = _speech(0.2, 0.5)  # 16 sounds in 0.2 s: garbage at speed 1, possible at speed 2
    with pytest.raises(TTSFault):
        check_speech(short, 16, 1.0, SR)
    assert check_speech(short, 8, 2.0, SR).size == short.size


# ------------------------------------------------------------------------------------ through KokoroTTS
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_model_that_gives_garbage_raises_a_tts_fault_every_time(test_config, model_dir, name, caplog):
    tts = kokoro(test_config, model_dir, name)
    for attempt in (1, 2):  # a fault is never cached: the same piece is tried again next time
        with caplog.at_level(logging.WARNING, logger="pipeline.speech.tts"), pytest.raises(TTSFault):
            tts.synthesize("かしこまりました。", "ja")
        assert tts.stats.faults == attempt and tts.stats.synthesized == attempt
    assert any("TTS fault on 'かしこまりました。'" in r.getMessage() for r in caplog.records)
    with pytest.raises(TTSFault):  # English too
        tts.synthesize("Thank you for calling.", "en")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_text_with_nothing_to_say_is_still_no_audio_not_a_fault(test_config, model_dir, name):
    tts = kokoro(test_config, model_dir, name)
    assert tts.synthesize("！？", "ja").size == 0 and tts.synthesize("...", "en").size == 0
    assert tts.stats.faults == 0


def test_a_loud_voice_is_clipped_not_refused(test_config, model_dir):
    tts = kokoro(test_config, model_dir, "loud")
    audio = tts.synthesize("かしこまりました。ありがとうございます。", "ja")
    assert audio.size > 0.5 * SR and np.abs(audio).max() == 1.0
    assert tts.stats.faults == 0


def test_a_broken_model_while_prerendering_writes_nothing_to_disk(test_config, model_dir):
    tts = kokoro(test_config, model_dir, "huge")
    with tts.prerendering(), pytest.raises(TTSFault):
        tts.synthesize("かしこまりました。", "ja")
    assert tts.stats.disk_writes == 0


# ------------------------------------------------------------------------------------ what the caller hears
def test_the_caller_hears_the_apology_when_synthesis_gives_garbage(test_config, model_dir, tmp_path):
    cfg = test_config.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{tmp_path}/r.db"
    good = KokoroTTS(cfg.tts, cfg.path(cfg.tts.model), cfg.path(cfg.tts.voices))
    rt = VoiceRuntime(cfg, stt=None, tts=good, vad=None, call_log=False)  # the apology is rendered now
    try:
        apology = rt.fallback_audio["ja"]
        assert apology.size > 0
        rt.tts = kokoro(test_config, model_dir, "huge")  # the model starts giving garbage
        call = rt.get_call("fault-call", language="ja")
        heard = np.concatenate([chunk for _, chunk in call.greeting()])
        assert np.array_equal(heard, np.clip(apology, -1, 1))  # the apology known to be good, not noise
        assert rt.tts.stats.faults == 1  # and the greeting's other sentences were not tried
        assert call.transcript[-1]["role"] == "bot"
    finally:
        rt.close()
