"""`voicebot bench` end to end on the test models: a test of the harness, never of the timings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from audio_fixtures import ESPEAK, ESPEAK_MISSING

from pipeline.cli import main
from pipeline.sim.bench import SCRIPT, STAGE_KEYS, make_clips, speech_end

pytestmark = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)


def test_speech_end_is_the_last_loud_window_not_the_trailing_silence():
    sr = 16000
    tone = (np.sin(np.arange(sr) * 2 * np.pi * 200 / sr) * 8000).astype(np.int16)
    audio = np.concatenate([np.zeros(sr // 2, np.int16), tone, np.zeros(sr, np.int16)])
    assert speech_end(audio) == pytest.approx(1.5, abs=0.011)


def test_caller_lines_are_speech_that_ends_before_the_clip_does():
    clips = make_clips(SCRIPT[:2])
    for clip in clips:
        assert 0.2 < clip.speech_s and clip.speech_end_s <= clip.audio.size / 16000 + 1e-9
        assert clip.audio.dtype == np.int16


def test_a_hesitant_line_pauses_inside_and_its_last_part_starts_after_the_pauses():
    first = make_clips(SCRIPT[:1])[0]
    assert first.line.hesitant and first.last_part_s >= 0.3 + sum(first.line.pauses_ms) / 1000
    assert first.last_part_s < first.speech_end_s
    assert [o.line.kind for o in first.over] == ["backchannel"] and first.over[0].audio.size > 0


def test_bench_runs_both_cascades_and_reports_every_stage_as_one_json_object(test_models_dir, tmp_path, capsys):
    code = main(["bench", "--config", str(test_models_dir / "config.yaml"), "--calls", "1", "--turns", "2",
                 "--stt-size", "tiny", "--cache-dir", str(tmp_path / "cache"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)  # exactly one object, nothing else on stdout
    assert result["stt"] == "random-weights"  # no whisper-tiny in the test models folder
    assert result["tts"] == "test-model"  # the fake kokoro is recognised as such
    assert result["machine"]["cores"] >= 1 and "cpu" in result["machine"]
    assert any("transcript: scripted, STT timed" in n for n in result["notes"])
    for cascade in ("pipeline", "naive"):
        summary = result[cascade]
        assert summary["turns"] == 2 and summary["answered"] >= 1, summary
        for key in STAGE_KEYS:
            stats = summary[key]
            assert isinstance(stats["p50"], float) and isinstance(stats["p90"], float), (cascade, key, stats)
            assert stats["p50"] >= 0 and stats["n"] >= 1
        # the mistakes, beside the gap: line 1 hesitates and gets a backchannel, line 2 an interruption
        assert summary["hesitant_lines"] == 1 and summary["backchannels"] == 1 and summary["interruptions"] == 1
        assert summary["false_cutoff_rate"] in (0.0, 1.0) and summary["false_bargein_rate"] in (0.0, 1.0)
        assert set(summary["bargein_stop_ms"]) >= {"p50", "p90", "n"}
    naive_turns = [t for t in result["turns"] if t["cascade"] == "naive"]
    timed = [t for t in naive_turns if t["gap_ms"] is not None]
    assert timed and all(t["reply"] for t in timed)
    pipeline_turns = [t for t in result["turns"] if t["cascade"] == "pipeline"]
    timed = [t for t in pipeline_turns if t["gap_ms"] is not None]
    assert timed and all(t["reported_gap_ms"] is not None for t in timed)
    said_over = [o for t in result["turns"] for o in t["over"]]
    assert {o["kind"] for o in said_over} == {"backchannel", "interruption"}


def test_bench_rejects_an_unknown_config_key_in_set(test_models_dir, capsys):
    code = main(["bench", "--config", str(test_models_dir / "config.yaml"), "--set", "vad.no_such_key=1"])
    assert code == 2
    assert "no_such_key" in capsys.readouterr().err


def test_bench_compares_the_llm_reply_prepared_ahead_with_none_in_one_run(test_models_dir, tmp_path, capsys):
    code = main(["bench", "--config", str(test_models_dir / "config.yaml"), "--calls", "1", "--turns", "1",
                 "--stt-size", "tiny", "--agent", "llm", "--ttft-ms", "50", "--compare-ahead",
                 "--cache-dir", str(tmp_path / "cache"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["settings"]["agent"] == "llm"
    for cascade in ("pipeline", "pipeline_no_ahead", "naive"):
        assert result[cascade]["turns"] == 1 and result[cascade]["answered"] == 1, (cascade, result[cascade])
    assert result["pipeline_no_ahead"]["prepared_turns"] == 0  # nothing prepared with vad.prepare_reply off
    assert {t["cascade"] for t in result["turns"]} == {"pipeline", "pipeline_no_ahead", "naive"}
    assert all(isinstance(t["prepared"], bool) for t in result["turns"] if t["cascade"].startswith("pipeline"))
    assert any("pipeline_no_ahead" in n for n in result["notes"])


def test_with_no_size_the_bench_takes_the_configured_whisper_directory(test_config, tmp_path):
    from pipeline.sim.bench import whisper_model

    cfg = test_config.model_copy(deep=True)
    configured = cfg.stt.model
    path, kind = whisper_model(cfg, None, tmp_path)
    assert kind == "real" and cfg.stt.model == configured and (path / "model.bin").is_file()
