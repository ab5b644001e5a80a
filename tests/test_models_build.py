"""The built test models load and run through the real faster-whisper and kokoro-onnx code."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from make_test_models import KOKORO_FILENAME, VOICES_FILENAME, WHISPER_DIRNAME, build_test_models


def test_config_points_at_the_built_files_with_relative_paths(test_models_dir, test_config):
    raw = yaml.safe_load((test_models_dir / "config.yaml").read_text(encoding="utf-8"))
    assert raw["agent"]["kind"] == "rules"
    assert raw["stt"]["model"] == WHISPER_DIRNAME and raw["stt"]["language"] == "ja"
    assert raw["store"]["url"] == "sqlite:///data/reservations.db"
    assert not any(str(v).startswith("/") for v in (raw["stt"]["model"], raw["tts"]["model"], raw["tts"]["voices"]))
    assert test_config.path(test_config.stt.model) == test_models_dir / WHISPER_DIRNAME
    assert test_config.path(test_config.tts.model) == test_models_dir / KOKORO_FILENAME
    assert test_config.path(test_config.tts.voices) == test_models_dir / VOICES_FILENAME
    assert test_config.store_url() == f"sqlite:///{test_models_dir / 'data' / 'reservations.db'}"


def test_whisper_fixture_is_multilingual_and_honours_japanese(test_models_dir):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(test_models_dir / WHISPER_DIRNAME), device="cpu", compute_type="int8", cpu_threads=1)
    assert model.model.is_multilingual  # else ctranslate2 silently swaps language="ja" for English
    audio = (np.random.default_rng(1).standard_normal(16000) * 0.1).astype(np.float32)
    for lang in ("ja", "en"):
        segments, info = model.transcribe(audio, language=lang, beam_size=1, temperature=0.0, vad_filter=False,
                                          without_timestamps=True)  # as pipeline.speech.stt decodes
        text = "".join(s.text for s in segments)
        assert info.language == lang
        assert text.strip() and text.isascii()  # short and printable by construction


def test_kokoro_fixture_makes_non_silent_audio_through_kokoro_onnx(test_models_dir):
    from kokoro_onnx import Kokoro

    kokoro = Kokoro(str(test_models_dir / KOKORO_FILENAME), str(test_models_dir / VOICES_FILENAME))
    assert set(kokoro.get_voices()) >= {"jf_alpha", "af_heart"}
    short, sr = kokoro.create("hˈɛloʊ", voice="af_heart", is_phonemes=True)
    long, _ = kokoro.create("hˈɛloʊ wˈɜːld, hˈɛloʊ wˈɜːld", voice="jf_alpha", is_phonemes=True)
    assert sr == 24000
    assert np.abs(short).max() > 0.1 and len(long) > len(short)
    fast, _ = kokoro.create("hˈɛloʊ", voice="af_heart", is_phonemes=True, speed=2.0)
    assert len(fast) < len(short)


def test_build_is_repeatable_into_an_existing_folder(tmp_path):
    first = build_test_models(tmp_path)
    second = build_test_models(tmp_path)
    assert first == second == tmp_path / "config.yaml"
    assert (tmp_path / WHISPER_DIRNAME / "model.bin").stat().st_size < 2_000_000


def test_script_cli_writes_the_models(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "make_test_models.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "config.yaml").is_file()


@pytest.mark.parametrize("name", ["tokenizer.json", "preprocessor_config.json", "config.json", "vocabulary.json"])
def test_whisper_fixture_has_the_files_faster_whisper_reads(test_models_dir, name):
    assert (test_models_dir / WHISPER_DIRNAME / name).is_file()
