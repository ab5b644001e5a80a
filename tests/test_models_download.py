"""ensure_models: present files are used, missing ones are named with how to get them, and a
download that cannot reach the network fails fast with that message instead of a traceback."""

from __future__ import annotations

import time

import pytest

from pipeline.config import load_config
from pipeline.speech.models import (
    KOKORO_RELEASE_URL,
    ModelsMissing,
    ensure_models,
    model_resolver,
    models_status,
    whisper_dir,
)

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture
def empty_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("stt:\n  model: base\nmodels:\n  dir: models\n", encoding="utf-8")
    return load_config(path, environ={})


def test_present_files_are_returned_without_any_download(test_config, test_models_dir):
    paths = ensure_models(test_config, download=False)
    assert paths.whisper == test_models_dir / "whisper-tiny-random"
    assert paths.kokoro_model.is_file() and paths.kokoro_voices.is_file()
    assert all(present for _, _, present in models_status(test_config))
    resolve = model_resolver(test_config)
    assert resolve(test_config.stt.model) == paths.whisper and resolve(test_config.tts.voices) == paths.kokoro_voices


def test_missing_files_without_download_name_each_file_and_how_to_get_it(empty_config, tmp_path):
    with pytest.raises(ModelsMissing) as err:
        ensure_models(empty_config, download=False)
    message = str(err.value)
    for needle in ("faster-whisper-base", "Systran/faster-whisper-base", "kokoro-v1.0.onnx", "voices-v1.0.bin",
                   f"{KOKORO_RELEASE_URL}/kokoro-v1.0.onnx", "voicebot models download", "config.yaml"):
        assert needle in message
    assert len(err.value.missing) == 3
    assert not (tmp_path / "models").exists()  # nothing was created, let alone downloaded
    assert [present for _, _, present in models_status(empty_config)] == [False, False, False]


def test_the_missing_files_message_ends_with_what_works_offline(empty_config):
    with pytest.raises(ModelsMissing) as err:
        ensure_models(empty_config, download=False)
    tail = str(err.value).split("\n")[-3:]
    assert tail == [
        "offline, without these files:",
        "  - `voicebot chat` talks to the same bot by text and needs no model files",
        "  - test models: `uv run python scripts/make_test_models.py DIR` writes tiny ones, then run ui, serve or "
        "chat with `--config DIR/config.yaml` (nonsense transcripts, a tone for a voice)",
    ]


def test_size_names_repo_ids_and_local_dirs_resolve(tmp_path):
    (tmp_path / "models" / "my-whisper").mkdir(parents=True)
    cases = {
        "small": tmp_path / "models" / "faster-whisper-small",
        "Systran/faster-whisper-tiny": tmp_path / "models" / "faster-whisper-Systran--faster-whisper-tiny",
        "models/my-whisper": tmp_path / "models" / "my-whisper",
        str(tmp_path / "elsewhere"): tmp_path / "elsewhere",
    }
    for value, expected in cases.items():
        path = tmp_path / "config.yaml"
        path.write_text(f"stt:\n  model: {value}\n", encoding="utf-8")
        assert whisper_dir(load_config(path, environ={})) == expected, value


def test_unknown_local_whisper_dir_says_to_fix_the_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("stt:\n  model: ./nowhere\n", encoding="utf-8")
    with pytest.raises(ModelsMissing, match="neither a model size"):
        ensure_models(load_config(path, environ={}), download=True, progress=False,
                      hf_endpoint=UNREACHABLE, kokoro_base_url=UNREACHABLE)


def test_unreachable_network_fails_fast_with_the_clear_message(empty_config, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # conftest sets HF_HUB_OFFLINE for safety; here the hub client must really try (and fail) to connect.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setenv("VOICEBOT_KOKORO_URL", UNREACHABLE + "/kokoro")
    start = time.perf_counter()
    with pytest.raises(ModelsMissing) as err:
        ensure_models(empty_config, download=True, progress=False)
    assert time.perf_counter() - start < 20
    message = str(err.value)
    assert "download failed" in message and "voicebot models download" in message
    assert "`voicebot chat`" in message and "scripts/make_test_models.py DIR" in message  # what works offline
    assert "faster-whisper-base" in message and "kokoro-v1.0.onnx" in message and "voices-v1.0.bin" in message
    assert "Traceback" not in message
    models = tmp_path / "models"
    assert not models.exists() or not any(p.is_file() for p in models.rglob("*"))  # no partial files left


def test_a_served_kokoro_file_is_downloaded_whole(empty_config, tmp_path, monkeypatch):
    """A local HTTP server stands in for GitHub: the file lands at the configured path, no .part left."""
    import http.server
    import threading
    from functools import partial

    served = tmp_path / "served"
    served.mkdir()
    (served / "kokoro-v1.0.onnx").write_bytes(b"x" * 4096)
    (served / "voices-v1.0.bin").write_bytes(b"v" * 1000)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        with pytest.raises(ModelsMissing) as err:  # whisper still cannot come from the unreachable hub
            ensure_models(empty_config, download=True, progress=False, hf_endpoint=UNREACHABLE,
                          kokoro_base_url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert [m.what for m in err.value.missing] == ["whisper model (base)"]
    assert (tmp_path / "models" / "kokoro-v1.0.onnx").read_bytes() == b"x" * 4096
    assert (tmp_path / "models" / "voices-v1.0.bin").stat().st_size == 1000
    assert not list((tmp_path / "models").glob("*.part"))
