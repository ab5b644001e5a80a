"""FasterWhisperSTT on the random-weight test model: input handling and the real decode path."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio import to_mono_float32
from pipeline.config import STTConfig
from pipeline.speech.stt import STT, FasterWhisperSTT, Transcript, make_stt, prepare_audio


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
    from pipeline.speech.stt import MAX_TOKENS, degenerate, token_cap

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

    from pipeline.speech.stt import token_cap

    model = build_whisper(tmp_path / "looping", eot_bias=0.0)
    engine = FasterWhisperSTT(test_config.stt.model_copy(update={"window_s": 8.0}), model)
    with caplog.at_level("WARNING", logger="pipeline.speech.stt"):
        result = engine.transcribe(_tone(1.0, 16000), 16000)
    assert (result.window_s, result.retried) == (None, True)
    assert "decoding again on 30 s" in caplog.text
    segments, _ = engine.decode(prepare_audio(_tone(1.0, 16000), 16000), window_s=None, max_new_tokens=token_cap(1.0))
    assert sum(len(s.tokens) for s in segments) <= token_cap(1.0)


# ------------------------------------------------------------------------------------------ dialog context
def test_the_prompt_follows_what_the_bot_asked():
    from pipeline.speech.stt import PROMPTS, STTContext, prompt_for

    assert prompt_for(None, "ja") is None
    assert prompt_for(STTContext("phone", "ja"), "ja") == PROMPTS["ja"]["phone"]
    assert prompt_for(STTContext("manage_phone", "ja"), "ja") == PROMPTS["ja"]["phone"]  # a booking's number
    assert prompt_for(STTContext("manage_confirm", "ja"), "ja") == PROMPTS["ja"]["confirm"]
    assert prompt_for(STTContext("correction", "ja"), "ja") == PROMPTS["ja"][None]  # no slot: the call's opening
    assert prompt_for(STTContext("date", "en"), None) == PROMPTS["en"]["date"]  # language detected: the call's
    assert prompt_for(STTContext("date", "en"), "ja") == PROMPTS["ja"]["date"]  # decoded in Japanese: Japanese
    assert prompt_for(STTContext("date", "fr"), None) is None
    # a phone prompt shows digits in groups, a date one dates; none of them holds a yes whisper could copy
    assert "080-4827-3916" in PROMPTS["ja"]["phone"] and "月" in PROMPTS["ja"]["date"]
    assert not any("はい" in p for p in PROMPTS["ja"].values())


def _spy(monkeypatch, engine, reply=None):
    """Record what faster-whisper is asked for; ``reply`` (segments) replaces what it decodes."""
    import types

    calls: list[dict] = []
    original = engine.model.transcribe

    def transcribe(audio, **options):
        calls.append(options)
        if reply is not None:
            return iter(reply), types.SimpleNamespace(language="ja")
        return original(audio, **options)

    monkeypatch.setattr(engine.model, "transcribe", transcribe)
    return calls


def test_what_the_bot_asked_and_the_restaurant_s_name_reach_whisper(stt, monkeypatch):
    from pipeline.speech.stt import PROMPTS, STTContext

    calls = _spy(monkeypatch, stt)
    result = stt.transcribe(_tone(1.0, 16000), 16000, context=STTContext("phone", "ja", ("Trattoria Sole",)))
    assert calls[-1]["initial_prompt"] == PROMPTS["ja"]["phone"]
    assert calls[-1]["hotwords"] == "Trattoria Sole AI-SHIFT 予約"  # the restaurant's name, then stt.hotwords
    assert result.asking == "phone"
    result = stt.transcribe(_tone(1.0, 16000), 16000)
    assert "initial_prompt" not in calls[-1] and calls[-1]["hotwords"] == "AI-SHIFT 予約"
    assert result.asking is None


def test_the_context_set_around_a_call_reaches_the_engine_through_wrappers_and_threads(stt):
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.speech.stt import STTContext, current_context, listening_for

    class Wrapper:  # a test double or a proxy that passes two arguments on
        def transcribe(self, audio, sample_rate):
            return stt.transcribe(audio, sample_rate)

    with listening_for(STTContext("date", "ja")):
        assert Wrapper().transcribe(_tone(1.0, 16000), 16000).asking == "date"
        # an explicit context wins over the one around it
        assert stt.transcribe(_tone(1.0, 16000), 16000, context=STTContext("name", "ja")).asking == "name"
        # work submitted with a copy of the context (as VoiceRuntime.transcribe_soon does) sees it
        with ThreadPoolExecutor(1) as pool:
            ctx = contextvars.copy_context()
            assert pool.submit(ctx.run, Wrapper().transcribe, _tone(1.0, 16000), 16000).result().asking == "date"
    assert current_context() is None


def test_a_looping_decode_is_redone_with_the_same_prompt(tmp_path, test_config, monkeypatch):
    from make_test_models import build_whisper

    from pipeline.speech.stt import PROMPTS, STTContext

    engine = FasterWhisperSTT(test_config.stt.model_copy(update={"window_s": 8.0}),
                              build_whisper(tmp_path / "looping", eot_bias=0.0))
    calls = _spy(monkeypatch, engine)
    result = engine.transcribe(_tone(1.0, 16000), 16000, context=STTContext("time", "ja"))
    assert (result.window_s, result.retried, result.asking) == (None, True, "time")
    assert [c["initial_prompt"] for c in calls] == [PROMPTS["ja"]["time"]] * 2


def _said(text: str, no_speech: float, logprob: float):
    from faster_whisper.transcribe import Segment

    return Segment(id=0, seek=0, start=0.0, end=1.0, text=text, tokens=[1, 2, 3], avg_logprob=logprob,
                   compression_ratio=1.2, no_speech_prob=no_speech, words=None, temperature=0.0)


def test_segments_whisper_took_for_silence_are_dropped():
    from pipeline.speech.stt import speech_segments

    speech = [_said("はい", 0.16, -1.6), _said("田中です", 0.02, -0.3), _said("2名です", 0.3, -0.9)]
    assert speech_segments(speech) == speech  # speech measured: no-speech odds of 0.16 at most
    assert speech_segments([_said("ご視聴ありがとうございました", 0.55, -0.4)]) == []
    assert speech_segments([_said("第1話", 0.4, -2.3)]) == []  # half taken for silence, barely believed
    assert speech_segments([_said("田中です", 0.4, -0.3)]) != []  # half taken for silence, but believed


def test_a_transcript_that_copies_the_prompt_is_no_speech():
    from pipeline.speech.stt import PROMPTS, echoes_prompt

    phone, date = PROMPTS["ja"]["phone"], PROMPTS["ja"]["date"]
    assert echoes_prompt(phone, phone)
    assert echoes_prompt("080-4827-3916です", phone)  # the example number: nobody has it
    assert echoes_prompt("ご来店の日にち、明日、明後日、3月15日", date)
    assert not echoes_prompt("来週の月曜日", date)  # an answer that is one of the examples is an answer
    assert not echoes_prompt("3月15日でお願いします", date)
    assert not echoes_prompt("080-4827-3917です", phone)
    assert not echoes_prompt("anything", None)


def test_transcribe_drops_no_speech_and_echoes_and_counts_them(stt, monkeypatch):
    from pipeline.speech.stt import PROMPTS, STTContext

    _spy(monkeypatch, stt, reply=[_said("ご視聴ありがとうございました", 0.7, -0.4), _said("はい", 0.05, -0.2)])
    result = stt.transcribe(_tone(1.0, 16000), 16000)
    assert (result.text, result.dropped) == ("はい", 1)
    _spy(monkeypatch, stt, reply=[_said(PROMPTS["ja"]["confirm"], 0.2, -0.5)])
    result = stt.transcribe(_tone(1.0, 16000), 16000, context=STTContext("confirm", "ja"))
    assert (result.text, result.dropped) == ("", 1)


def test_a_provider_that_takes_the_context_is_an_stt():
    class Remote:
        def transcribe(self, audio, sample_rate, context=None):
            return Transcript("", "ja", 0.0, 0.0, asking=context.asking if context else None)

        def warmup(self):
            pass

    assert isinstance(Remote(), STT)


def test_a_call_hears_with_what_its_bot_asked_and_its_agent_reads_the_clean_transcript(test_config, tmp_path):
    """Through the call runtime: the turn's STT gets the call's context (what the greeting asked),
    whisper's invented closing sentence is cleaned away before the agent reads the turn, and the
    call log keeps both texts."""
    import dataclasses
    import datetime as dt
    import json
    from zoneinfo import ZoneInfo

    from pipeline.agents.factory import make_clock
    from pipeline.speech.models import model_resolver
    from pipeline.speech.tts import make_tts
    from pipeline.voice.runtime import VoiceRuntime

    class Ears:  # the real STT runs; it reports what a caller said, with whisper's invention after it
        def __init__(self, stt):
            self.stt, self.asked = stt, []

        def transcribe(self, audio, sample_rate):
            result = self.stt.transcribe(audio, sample_rate)
            self.asked.append(result.asking)
            return dataclasses.replace(result, text="12月24日の19時に3名でお願いします。ご視聴ありがとうございました。")

        def warmup(self):
            pass

    cfg = test_config.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{tmp_path}/r.db"
    cfg.logging.call_log = str(tmp_path / "calls.jsonl")
    cfg.agent.kind = "rules"
    ears = Ears(make_stt(cfg.stt, model_resolver(cfg)))
    rt = VoiceRuntime(cfg, stt=ears, tts=make_tts(cfg.tts, model_resolver(cfg)), vad=None, prerender=False,
                      clock=make_clock(dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))))
    try:
        call = rt.get_call("c1")
        list(call.greeting())
        asked = call.agent.state.asking
        assert asked and call.stt_context().asking == asked and call.stt_context().words == (cfg.restaurant.name,)
        list(call.turn((16000, _tone(1.5, 16000))))
        assert ears.asked == [asked]
        slots = call.agent.state.slots
        assert (str(slots.date), str(slots.time)[:5], slots.party_size) == ("2026-12-24", "19:00", 3)
        line = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines() if '"turn"' in x][-1]
        assert line["transcript"] == "12月24日の19時に3名でお願いします。"
        assert line["transcript_raw"].endswith("ご視聴ありがとうございました。")
        # the early transcription, started at a pause, carries the context it is given
        future = rt.transcribe_soon(_tone(1.5, 16000), 16000, context=call.stt_context())
        assert future.result().asking == call.agent.state.asking
    finally:
        rt.close()
