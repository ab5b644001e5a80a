"""Turn-taking policy (pipeline/voice/turns.py) and the backchannel judge (pipeline/voice/backchannel.py):
pure rules, given numbers; the real Smart Turn only where the real-model cache has it."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from pipeline.config import VADConfig
from pipeline.voice.backchannel import (
    WORDS_GRACE_MS,
    Burst,
    BurstJudge,
    rms_db,
    sounds_like_backchannel,
    starts_like_backchannel,
)
from pipeline.voice.turns import (
    Decision,
    EndOfTurnModel,
    Pause,
    TurnPolicy,
    end_of_turn_model,
    holds_digits,
    sounds_finished,
    sounds_unfinished,
)

CFG = VADConfig()
W = 32.0  # ms per VAD window


def test_without_a_model_the_slot_aware_silences_stand():
    policy = TurnPolicy(CFG)
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.end_silence_ms - 1)) is Decision.SPECULATE
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.end_silence_ms)) is Decision.END
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.end_silence_short_ms, asking="confirm")) is Decision.END
    reading = Pause(voiced=10, silence_ms=CFG.end_silence_ms, asking="phone")
    assert policy.decide(reading) is Decision.SPECULATE
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.end_silence_ms, asking="phone", phone_heard=True)) \
        is Decision.END


def test_a_short_pause_speculates_and_nobody_talking_waits():
    policy = TurnPolicy(CFG)
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.speculative_pause_ms - 1)) is Decision.WAIT
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.speculative_pause_ms)) is Decision.SPECULATE
    assert policy.decide(Pause(voiced=0, silence_ms=5000)) is Decision.WAIT


def test_complete_answers_after_the_short_silence_and_incomplete_waits_for_the_long_one():
    policy = TurnPolicy(CFG)
    pause = Pause(voiced=10, silence_ms=CFG.turn_complete_silence_ms)
    assert policy.decide(pause, complete=True) is Decision.END
    assert policy.decide(pause, complete=False) is not Decision.END
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.end_silence_ms), complete=False) is not Decision.END
    assert policy.decide(Pause(voiced=10, silence_ms=CFG.turn_incomplete_silence_ms), complete=False) is Decision.END


def test_a_phone_number_being_read_waits_longer_even_when_it_sounds_finished():
    policy = TurnPolicy(CFG)
    reading = Pause(voiced=10, silence_ms=CFG.turn_incomplete_silence_ms, asking="phone")
    assert policy.decide(reading, complete=False) is not Decision.END
    assert policy.end_silence_ms(reading, complete=False) >= CFG.turn_incomplete_phone_silence_ms
    assert policy.end_silence_ms(reading, complete=True) == CFG.end_silence_phone_ms
    heard = Pause(voiced=10, silence_ms=0, asking="phone", phone_heard=True)
    assert policy.end_silence_ms(heard, complete=True) == CFG.turn_complete_silence_ms


def test_the_config_refuses_a_complete_silence_that_ends_turns_between_syllables():
    with pytest.raises(ValueError, match="turn_complete_silence_ms"):
        VADConfig(turn_complete_silence_ms=64)
    with pytest.raises(ValueError, match="turn_incomplete_silence_ms"):
        VADConfig(turn_complete_silence_ms=400, turn_incomplete_silence_ms=300)


class _Verdict:
    def __init__(self, complete: bool):
        self.complete = complete


class _Model:
    def __init__(self, complete=True, fail=False):
        self.complete, self.fail, self.calls = complete, fail, 0

    def predict(self, audio):
        self.calls += 1
        if self.fail:
            raise RuntimeError("broken model")
        return _Verdict(self.complete)


def test_the_model_runs_in_its_pool_and_a_failure_means_silence_alone_said_once(caplog):
    ok = EndOfTurnModel(_Model(complete=False))
    assert ok.classify_soon(np.zeros(1600, np.int16)).result(timeout=5) is False
    ok.close()
    broken = _Model(fail=True)
    eot = EndOfTurnModel(broken)
    with caplog.at_level(logging.WARNING, logger="pipeline.voice.turns"):
        assert eot.classify_soon(np.zeros(1600, np.int16)).result(timeout=5) is None
        assert eot.classify_soon(np.zeros(1600, np.int16)).result(timeout=5) is None
    assert eot.failed and broken.calls == 1
    assert sum("end-of-turn model failed" in r.getMessage() for r in caplog.records) == 1
    eot.close()


def test_a_missing_model_file_turns_the_model_off(tmp_path, caplog):
    assert end_of_turn_model(VADConfig()) is None
    with caplog.at_level(logging.WARNING, logger="pipeline.voice.turns"):
        assert end_of_turn_model(VADConfig(turn_model=str(tmp_path / "nothing.onnx"))) is None
    assert any("end-of-turn model off" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ backchannels
LOUD, NORMAL = -10.0, -25.0


def feed(judge: BurstJudge, pattern: str, level: float = NORMAL) -> list[Burst]:
    """'v' a voiced window, '.' a silent one."""
    return [judge.window(c == "v", level if c == "v" else -70.0) for c in pattern]


def test_a_short_burst_is_transcribed_and_a_hai_does_not_interrupt():
    judge = BurstJudge(CFG, W, caller_db=NORMAL)
    out = feed(judge, "vvvvvv...")
    assert out[-1] is Burst.TRANSCRIBE and not judge.decided
    assert judge.transcript("はい") is Burst.BACKCHANNEL


def test_a_short_burst_saying_something_else_is_a_barge_in():
    judge = BurstJudge(CFG, W)
    feed(judge, "vvvvvv...")
    assert judge.transcript("いいえ") is Burst.BARGE_IN


def test_speech_that_goes_on_is_a_barge_in_within_the_length_limit():
    judge = BurstJudge(CFG, W)
    out = feed(judge, "v" * 40)  # its first words are asked for, and never come
    first = out.index(Burst.BARGE_IN)
    assert (first + 1) * W <= CFG.backchannel_max_ms + WORDS_GRACE_MS + W


def test_a_loud_burst_is_a_barge_in_at_once():
    judge = BurstJudge(CFG, W, caller_db=NORMAL)
    assert feed(judge, "vv", level=LOUD)[-1] is Burst.BARGE_IN


def test_speech_resuming_while_the_words_are_awaited_makes_the_transcript_stale():
    judge = BurstJudge(CFG.model_copy(update={"backchannel_words_ms": 0}), W)
    feed(judge, "vvv...")
    feed(judge, "v")
    assert judge.transcript("はい") is Burst.PENDING  # of half of it: ignored
    assert Burst.BARGE_IN in feed(judge, "v" * 10)


def test_a_long_backchannel_whose_first_words_are_one_runs_past_the_length_limit():
    judge = BurstJudge(CFG, W)
    early = feed(judge, "v" * int(CFG.backchannel_words_ms // W))
    assert early[-1] is Burst.TRANSCRIBE and judge.asked == "early"
    assert judge.transcript("そうです") is Burst.PENDING  # 「そうですね」 so far
    longest = int(CFG.backchannel_long_ms // W) - len(early) - 1
    assert Burst.BARGE_IN not in feed(judge, "v" * longest)
    assert feed(judge, "...")[-1] is Burst.TRANSCRIBE
    assert judge.transcript("そうですね") is Burst.BACKCHANNEL


def test_first_words_that_are_not_a_backchannel_stop_the_bot_before_the_length_limit():
    judge = BurstJudge(CFG, W)
    feed(judge, "v" * int(CFG.backchannel_words_ms // W))
    assert judge.transcript("すみません") is Burst.BARGE_IN
    assert judge.elapsed_ms < CFG.backchannel_max_ms


def test_no_first_words_leave_the_length_rule_as_it_was():
    judge = BurstJudge(CFG, W)
    early = feed(judge, "v" * int(CFG.backchannel_words_ms // W))
    assert judge.transcript("") is Burst.PENDING
    out = feed(judge, "v" * 20)
    assert (len(early) + out.index(Burst.BARGE_IN) + 1) * W <= CFG.backchannel_max_ms + W


def test_the_words_of_a_whole_burst():
    for words in ("はい。", "はいよ", "ええ、ええ", "うんうん", "そうですね", "Uh-huh.", "mm"):
        assert sounds_like_backchannel(words), words
    for words in ("ええと", "はい、8時です", "いいえ", "すみません", "wait"):
        assert not sounds_like_backchannel(words), words


def test_backchannel_starts():
    for words in ("はい", "そうです", "なる", "ええ、", "Okay", "uh"):
        assert starts_like_backchannel(words), words
    for words in ("すみません", "いいえ", "Sumi", "8時", "no, wait", ""):
        assert not starts_like_backchannel(words), words


def test_words_that_leave_a_sentence_hanging():
    for text in ("12月24日の", "えーと", "明日の、", "特に", "予約をお願いしたいんですけど", "I'd like to book for", "so, um"):
        assert sounds_unfinished(text), text
    for text in ("12月24日の19時に2名でお願いします。", "田中です", "はい", "7時に", "2名で", "特にありません",
                 "以上です", "ええ", "That's all.", ""):
        assert not sounds_unfinished(text), text


def test_words_that_close_a_sentence():
    for text in ("特にありません", "田中です。", "はい", "That's all.", "お願いします"):
        assert sounds_finished(text), text
    for text in ("12月24日の", "えーと", "090 1234", "so, um.", "", "明日の、"):
        assert not sounds_finished(text), text


def test_digits_in_the_words_are_seen_however_whisper_writes_them():
    for text in ("090", "０９０、", "ゼロキューゼロ"):
        assert holds_digits(text), text
    for text in ("はい", "田中です", "携帯は持っていません", "すみません、もう一度お願いします"):
        assert not holds_digits(text), text


def test_no_transcript_in_time_or_a_failed_one_gives_the_caller_the_floor():
    judge = BurstJudge(CFG, W)
    feed(judge, "vvv...")
    assert judge.timed_out() is Burst.BARGE_IN
    judge = BurstJudge(CFG, W)
    feed(judge, "vvv...")
    assert judge.transcript(None) is Burst.BARGE_IN


def test_nothing_heard_in_a_burst_is_not_a_barge_in():
    judge = BurstJudge(CFG, W)
    feed(judge, "vv...")
    assert judge.transcript("") is Burst.BACKCHANNEL


def test_levels_are_in_dbfs():
    assert rms_db(np.full(512, 32767, np.int16)) == pytest.approx(0.0, abs=0.01)
    assert rms_db(np.zeros(512, np.float32)) <= -100


# ------------------------------------------------------------------ the real model, where present
def test_real_smart_turn_in_the_pool_hears_a_finished_sentence_as_complete():
    from real_models import SKIP_ENV, RealModelsMissing, locate

    try:
        path = locate().smart_turn
    except RealModelsMissing as e:
        if os.environ.get(SKIP_ENV) == "0":
            pytest.skip(f"{SKIP_ENV}=0: {e}")
        pytest.fail(str(e), pytrace=False)
    from pipeline.audio import to_float32, to_int16
    from pipeline.sim.phone import phone_line
    from pipeline.sim.voices import openjtalk

    eot = end_of_turn_model(VADConfig(turn_model=str(path)))
    assert eot is not None
    audio = np.concatenate([to_float32(phone_line(*openjtalk("田中です。"))), np.zeros(3200, np.float32)])
    assert eot.classify_soon(to_int16(audio)).result(timeout=30) is True


def test_models_download_fetches_the_end_of_turn_file_from_its_hub_repository(tmp_path, test_config):
    """A local HTTP server stands in for the hub: the file lands at vad.turn_model's path."""
    import http.server
    import threading
    from functools import partial

    from pipeline.speech.models import ModelsMissing, ensure_models, models_status

    served = tmp_path / "served" / "pipecat-ai" / "smart-turn-v3" / "resolve" / "main"
    served.mkdir(parents=True)
    (served / "smart-turn-v3.2-cpu.onnx").write_bytes(b"t" * 2048)
    cfg = test_config.model_copy(deep=True)
    cfg.vad.turn_model = str(tmp_path / "models" / "smart-turn-v3.2-cpu.onnx")
    with pytest.raises(ModelsMissing) as err:
        ensure_models(cfg, download=False)
    assert [m.what for m in err.value.missing] == ["end-of-turn model"]
    assert "pipecat-ai/smart-turn-v3" in err.value.missing[0].how
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ensure_models(cfg, download=True, progress=False, hf_endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert (tmp_path / "models" / "smart-turn-v3.2-cpu.onnx").read_bytes() == b"t" * 2048
    assert all(present for _, _, present in models_status(cfg))
