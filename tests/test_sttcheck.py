"""`voicebot stt-check`: the scoring helpers, and the command on the random-weight test model."""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.sim.score import edit_distance, normalize_en, normalize_ja, units
from pipeline.sim.sttcheck import EN_LINES, JA_EXTRA_LINES, VOICES, CheckError, Clip, parse_windows, run_check

ESPEAK = shutil.which("espeak-ng")


# ------------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize(
    "a,b",
    [
        ("A table for four at 7 p.m., please.", "a table for 4 at seven PM please"),
        ("Can we come at 6:30 instead?", "can we come at six thirty instead"),
        ("Can we come at 6.30 instead?", "Can we come at 6:30 instead?"),
        ("My number is 090-1234-5678.", "my number is zero nine zero one two three four five six seven eight"),
        ("Twenty-five people", "25 people"),
        ("December 24th", "december 24 th"),
        ("That's right.", "thats right"),
        ("Eleven, twelve, nineteen, twenty!", "11 12 19 20"),
    ],
)
def test_english_normalisation_scores_the_same_words_alike(a, b):
    assert normalize_en(a) == normalize_en(b)


def test_english_normalisation_splits_numbers_into_digits_and_keeps_words():
    assert normalize_en("I'd like a table for TWO at 7pm.") == ["id", "like", "a", "table", "for", "2", "at", "7", "pm"]
    assert normalize_en("zero") == ["0"] and normalize_en("twenty") == ["2", "0"]
    assert normalize_en("twenty zero") == ["2", "0", "0"]  # a unit after the tens only when 1-9
    assert normalize_en("  ...  ") == []


def test_japanese_normalisation_is_nfkc_characters_without_spaces_or_punctuation():
    assert normalize_ja("１２月２４日の　１９時に、２名で お願いします。") == list("12月24日の19時に2名でお願いします")
    assert normalize_ja("ｾﾞﾛｷｭｰｾﾞﾛ！") == list("ゼロキューゼロ")  # half-width kana to full-width
    assert normalize_ja("「はい」・・・") == list("はい")
    assert normalize_ja("AI-SHIFTです") == list("aishiftです")
    assert units("田中です。", "ja") == ["田", "中", "で", "す"]
    assert units("Tanaka.", "en") == ["tanaka"]


@pytest.mark.parametrize(
    "ref,hyp,distance",
    [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("abc", "abc", 0), ("flaw", "lawn", 2)],
)
def test_edit_distance_counts_substitutions_deletions_and_insertions(ref, hyp, distance):
    assert edit_distance(list(ref), list(hyp)) == distance


def test_edit_distance_on_words():
    assert edit_distance(normalize_en("a table for four"), normalize_en("the table for 4 please")) == 2


def test_windows_always_start_with_the_30_s_reference_each_once():
    assert parse_windows("30,10,8,6") == [None, 10.0, 8.0, 6.0]
    assert parse_windows("8, 10,30, 8,") == [None, 8.0, 10.0]
    assert parse_windows("6.5") == [None, 6.5]
    for bad in ("0", "31", "abc", "nan", "inf", "10,-4", "", ","):
        with pytest.raises(CheckError) as e:
            parse_windows(bad)
        assert e.value.code == 2 and "1 to 30" in str(e.value)


def test_the_script_lines_have_a_reference_and_a_spoken_form():
    for line in (*EN_LINES, *JA_EXTRA_LINES):
        assert line.text.strip() and line.spoken.strip()
    assert len(EN_LINES) >= 15 and len(JA_EXTRA_LINES) >= 12
    assert len(VOICES["en"]) == 3 and len(VOICES["ja"]) == 2


# ------------------------------------------------------------------------------------------ aggregation
def _segment(text: str, tokens: int = 5, ratio: float = 1.2):
    return SimpleNamespace(text=text, tokens=[0] * tokens, compression_ratio=ratio)


class ScriptedDecoder:
    """What each window "hears" for each clip (by clip length), loops marked by a high compression ratio."""

    def __init__(self, heard: dict[tuple[int, float | None], tuple[str, bool]]):
        self.heard = heard

    def decode(self, x, *, window_s, max_new_tokens=None):
        text, loop = self.heard[(x.size, window_s)]
        return [_segment(text, ratio=3.0 if loop else 1.2)], "en"


def test_after_retry_is_the_30_s_result_wherever_a_window_looped():
    a = Clip("a", np.zeros(16000, np.float32), "a table for four")
    b = Clip("b", np.zeros(32000, np.float32), "yes that's right")
    c = Clip("c", np.zeros(48000, np.float32), None)  # no reference: agreement and loops only
    decoder = ScriptedDecoder({
        (16000, None): ("A table for four.", False),
        (16000, 8.0): ("A table for for for for for.", True),  # looped
        (32000, None): ("Yes, that's right.", False),
        (32000, 8.0): ("Yes, that's right.", False),
        (48000, None): ("hello", False),
        (48000, 8.0): ("hello there", False),
    })
    result = run_check(decoder, [a, b, c], [None, 8.0], "en")
    assert len(result["rows"]) == 6
    full, eight = result["windows"]
    assert full["window_s"] is None and full["error_rate"] == 0.0 and full["agree"] == 1.0 and full["loops"] == 0
    assert eight["window_s"] == 8.0 and eight["clips"] == 3 and eight["scored"] == 2
    assert eight["loops"] == 1 and eight["agree"] == pytest.approx(1 / 3, abs=1e-3)
    assert eight["error_rate"] == pytest.approx(4 / 7, abs=1e-4)  # 4 extra words over 4 + 3 reference words
    assert eight["better"] == 0 and eight["worse"] == 1
    assert eight["error_rate_after_retry"] == 0.0
    assert eight["ms_after_retry"] >= eight["ms"]
    row = next(r for r in result["rows"] if r["clip"] == "c" and r["window_s"] == 8.0)
    assert row["error_rate"] is None and row["edits"] is None and row["agree"] is False
    with pytest.raises(ValueError):
        run_check(decoder, [a], [8.0], "en")


# ------------------------------------------------------------------------------------------ the command
def _write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def _speech(text: str, rate: int) -> np.ndarray:
    """espeak-ng saying ``text`` at its own rate when it is installed (``rate`` is then ignored), else a tone."""
    if ESPEAK:
        out = subprocess.run([ESPEAK, "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
        return np.frombuffer(out[44:], dtype="<i2")  # 22050 Hz mono after the 44-byte header
    t = np.arange(int(1.5 * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def _speech_rate(rate: int) -> int:
    return 22050 if ESPEAK else rate


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["stt-check", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_checks_recordings_on_two_windows_as_one_json_object(test_models_dir, tmp_path, capsys):
    audio = tmp_path / "calls"
    audio.mkdir()
    mono = _speech("a table for four at seven", 16000)
    _write_wav(audio / "one.wav", mono, _speech_rate(16000))
    (audio / "one.txt").write_text("A table for four at 7.\n", encoding="utf-8")
    stereo = _speech("yes that's right", 8000)
    _write_wav(audio / "two.wav", np.repeat(stereo, 2), _speech_rate(8000), channels=2)
    (audio / "two.txt").write_text("Yes, that's right.", encoding="utf-8")

    code, out, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--audio", str(audio),
                          "--language", "en", "--windows", "30,8", "--json")
    assert code == 0, err
    result = json.loads(out)  # exactly one object, nothing else on stdout
    assert result["source"] == "recordings" and result["language"] == "en" and result["clips"] == 2
    assert Path(result["model"]) == test_models_dir / "whisper-tiny-random"
    assert any("random-weight" in note for note in result["notes"])
    assert [w["window_s"] for w in result["windows"]] == [None, 8.0]
    assert len(result["rows"]) == 2 * 2
    assert {r["clip"] for r in result["rows"]} == {"one.wav", "two.wav"}
    full = result["windows"][0]
    assert full["agree"] == 1.0 and full["clips"] == 2 and full["scored"] == 2
    for w in result["windows"]:
        assert set(w) >= {"window_s", "error_rate", "better", "worse", "agree", "loops", "ms",
                          "error_rate_after_retry"}
        assert isinstance(w["error_rate"], float) and w["error_rate"] >= 0
        assert isinstance(w["error_rate_after_retry"], float) and w["error_rate_after_retry"] >= 0
        assert 0.0 <= w["agree"] <= 1.0 and 0 <= w["loops"] <= 2 and w["ms"] > 0
        assert 0 <= w["better"] + w["worse"] <= 2
    for row in result["rows"]:
        assert row["ref_units"] > 0 and row["edits"] >= 0 and row["error_rate"] >= 0
        assert isinstance(row["text"], str) and isinstance(row["loop"], bool) and row["ms"] > 0
        assert row["duration_s"] > 1.0
        if row["window_s"] is None:
            assert row["agree"] is True


def test_a_recording_without_reference_text_gets_no_error_rate_and_prints_a_table(test_models_dir, tmp_path,
                                                                                   capsys):
    _write_wav(tmp_path / "alone.wav", _speech("hello", 16000), _speech_rate(16000))
    code, out, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--audio", str(tmp_path),
                          "--windows", "10")
    assert code == 0, err
    assert str(test_models_dir / "whisper-tiny-random") in out and "your recordings" in out
    assert "30 s (ref)" in out and "10 s" in out and "random-weight" in out

    code, out, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--audio", str(tmp_path),
                          "--windows", "10", "--json")
    result = json.loads(out)
    assert code == 0 and result["clips"] == 1 and len(result["rows"]) == 2
    assert all(r["error_rate"] is None and r["reference"] is None for r in result["rows"])
    assert all(w["error_rate"] is None and w["scored"] == 0 for w in result["windows"])
    assert result["windows"][0]["agree"] == 1.0


@pytest.mark.parametrize("windows", ["0", "31", "ten", "8,,x", "-5"])
def test_bad_windows_exit_2_with_a_clear_message(test_models_dir, capsys, windows):
    code, out, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--windows", windows)
    assert code == 2
    assert "--windows expects seconds from 1 to 30" in err and "Traceback" not in err and not out


def test_a_missing_model_exits_1_naming_it_and_how_to_get_it(test_models_dir, tmp_path, capsys):
    missing = tmp_path / "no-model"
    code, out, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--model", str(missing))
    assert code == 1 and not out
    assert str(missing) in err and "model.bin" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    # the configured size, never downloaded
    config = tmp_path / "config.yaml"
    config.write_text(f"stt:\n  model: tiny\nmodels:\n  dir: {tmp_path / 'models'}\n", encoding="utf-8")
    code, out, err = _run(capsys, "--config", str(config))
    assert code == 1 and "voicebot models download" in err and "faster-whisper-tiny" in err
    assert not (tmp_path / "models").exists() and "Traceback" not in err


def test_unreadable_recordings_are_named(test_models_dir, tmp_path, capsys):
    (tmp_path / "broken.wav").write_bytes(b"not a wav at all")
    code, _, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--audio", str(tmp_path))
    assert code == 1 and "broken.wav" in err and "16-bit PCM" in err and "Traceback" not in err

    (tmp_path / "broken.wav").unlink()
    with wave.open(str(tmp_path / "wide.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(b"\0" * 3 * 1600)
    code, _, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--audio", str(tmp_path))
    assert code == 1 and "wide.wav" in err and "24-bit" in err

    code, _, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--audio", str(tmp_path / "nope"))
    assert code == 2 and "no such folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--audio", str(empty))
    assert code == 2 and "no .wav files" in err


@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed: no synthetic clips")
@pytest.mark.parametrize("language", ["en", "ja"])
def test_synthetic_clips_are_each_line_in_every_voice(test_models_dir, capsys, language):
    code, out, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--language", language,
                          "--limit", "2", "--windows", "8", "--json")
    assert code == 0, err
    result = json.loads(out)
    voices = VOICES[language]
    assert result["source"] == "espeak" and result["clips"] == 2 * len(voices)
    assert result["voices"] == [f"{v}@{s}" for v, s in voices]
    assert len(result["rows"]) == 2 * len(voices) * 2
    assert all(r["reference"] and r["ref_units"] > 0 for r in result["rows"])
    # a line with 0.3 s before it and 0.45 s after: longer than 0.75 s, and slower speech is longer
    durations = {r["voice"]: r["duration_s"] for r in result["rows"] if r["clip"].startswith(f"{language}01")}
    assert all(d > 1.0 for d in durations.values())
    if language == "ja":
        assert durations["ja@140"] > durations["ja@175"]
    assert result["windows"][0]["agree"] == 1.0 and result["windows"][0]["scored"] == 2 * len(voices)


def test_limit_must_be_positive(test_models_dir, capsys):
    code, _, err = _run(capsys, "--config", str(test_models_dir / "config.yaml"), "--limit", "0")
    assert code == 2 and "--limit" in err
