"""Where the model files live, whether they are there, and fetching the missing ones.

- Whisper: ``stt.model`` is a size name (``base``, ``small``, ``large-v3``...: faster-whisper's hub
  repositories, e.g. ``Systran/faster-whisper-base``), a hub repository id (``owner/name``), or a
  local directory holding a CTranslate2 model. Downloads go to ``<models.dir>/faster-whisper-<size>``.
- Kokoro: ``tts.model`` and ``tts.voices`` are file paths; the files of kokoro-onnx's GitHub release
  ``model-files-v1.0`` are fetched to exactly those paths.
- The end-of-turn model (``vad.turn_model``, when set): Smart Turn v3.2's ONNX file, fetched from its
  hub repository ``pipecat-ai/smart-turn-v3`` to that path.

Nothing here downloads unless asked (``ensure_models(cfg, download=True)``); offline, or when the
network fails in any way, ``ModelsMissing`` says which file is missing and how to get it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config

log = logging.getLogger(__name__)

KOKORO_RELEASE_URL = "https://github.com/thewh1teagle/kokoro-onnx/releases/download/model-files-v1.0"
#: the files that release has; a configured name outside this set must be placed by hand
KOKORO_RELEASE_FILES = frozenset(
    {"kokoro-v1.0.onnx", "kokoro-v1.0.fp16.onnx", "kokoro-v1.0.int8.onnx", "voices-v1.0.bin"}
)
HF_ENDPOINT = "https://huggingface.co"

# faster-whisper's size names (faster_whisper.utils._MODELS), written out so that checking for
# files does not import faster-whisper.
WHISPER_REPOS = {
    "tiny.en": "Systran/faster-whisper-tiny.en",
    "tiny": "Systran/faster-whisper-tiny",
    "base.en": "Systran/faster-whisper-base.en",
    "base": "Systran/faster-whisper-base",
    "small.en": "Systran/faster-whisper-small.en",
    "small": "Systran/faster-whisper-small",
    "medium.en": "Systran/faster-whisper-medium.en",
    "medium": "Systran/faster-whisper-medium",
    "large-v1": "Systran/faster-whisper-large-v1",
    "large-v2": "Systran/faster-whisper-large-v2",
    "large-v3": "Systran/faster-whisper-large-v3",
    "large": "Systran/faster-whisper-large-v3",
    "distil-large-v2": "Systran/faster-distil-whisper-large-v2",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
    "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2",
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
    "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}
# What faster-whisper itself fetches from a repository (faster_whisper.utils.download_model).
WHISPER_PATTERNS = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


#: what still works without the model files or the network, said wherever files are missing
OFFLINE_HINT = (
    "offline, without these files:\n"
    "  - `voicebot chat` talks to the same bot by text and needs no model files\n"
    "  - test models: `uv run python scripts/make_test_models.py DIR` writes tiny ones, then run "
    "ui, serve or chat with `--config DIR/config.yaml` (nonsense transcripts, a tone for a voice)"
)


class ModelsMissing(RuntimeError):
    """Model files are absent and could not be fetched; the message lists each and how to get it."""

    def __init__(self, missing: list[MissingFile], reason: str | None = None):
        self.missing = missing
        self.reason = reason
        lines = ["model files are missing:"]
        for m in missing:
            lines.append(f"  - {m.what}: {m.path}")
            lines.append(f"      {m.how}")
        if reason:
            lines.append(f"download failed: {reason}")
        lines.append(OFFLINE_HINT)
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class MissingFile:
    what: str
    path: Path
    how: str


@dataclass(frozen=True)
class ModelPaths:
    whisper: Path  # a directory with model.bin
    kokoro_model: Path
    kokoro_voices: Path


@dataclass(frozen=True)
class _WhisperSource:
    path: Path
    repo: str | None  # None: a local directory the user provides


def _whisper_source(cfg: Config) -> _WhisperSource:
    value = cfg.stt.model.strip()
    local = cfg.path(value)
    if local.is_dir():
        return _WhisperSource(local, None)
    repo = WHISPER_REPOS.get(value)
    # "owner/name" is a hub id unless its first part is a folder here ("models/my-whisper").
    if repo is None and _REPO_ID.match(value) and not cfg.path(value.split("/")[0]).is_dir():
        repo = value
    if repo is None:
        return _WhisperSource(local, None)
    name = value if value in WHISPER_REPOS else repo.replace("/", "--")
    return _WhisperSource(cfg.path(cfg.models.dir) / f"faster-whisper-{name}", repo)


def whisper_dir(cfg: Config) -> Path:
    """The local directory the configured whisper model is (or will be) in."""
    return _whisper_source(cfg).path


def _whisper_present(path: Path) -> bool:
    return (
        (path / "model.bin").is_file()
        and (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("vocabulary.*"))
    )


def model_resolver(cfg: Config) -> Callable[[str], Path]:
    """``value -> Path`` for ``make_stt``/``make_tts``: whisper names to their directory, paths via ``cfg.path``."""

    def resolve(value: str) -> Path:
        return whisper_dir(cfg) if value == cfg.stt.model else cfg.path(value)

    return resolve


def models_status(cfg: Config) -> list[tuple[str, Path, bool]]:
    """``(what, path, present)`` for each model the config needs."""
    wdir = whisper_dir(cfg)
    model, voices = cfg.path(cfg.tts.model), cfg.path(cfg.tts.voices)
    out = [
        (f"whisper model ({cfg.stt.model})", wdir, _whisper_present(wdir)),
        ("kokoro model", model, model.is_file()),
        ("kokoro voices", voices, voices.is_file()),
    ]
    if cfg.vad.turn_model:
        turn = cfg.path(cfg.vad.turn_model)
        out.append(("end-of-turn model", turn, turn.is_file()))
    return out


def _missing(cfg: Config, kokoro_base_url: str) -> list[MissingFile]:
    out = []
    src = _whisper_source(cfg)
    if not _whisper_present(src.path):
        if src.repo:
            how = (f"run `voicebot models download`, or copy the files of https://huggingface.co/{src.repo} "
                   f"({', '.join(WHISPER_PATTERNS)}) into it, or set stt.model in config.yaml to a local "
                   "model directory")
        else:
            how = (f"stt.model {cfg.stt.model!r} is neither a model size ({', '.join(list(WHISPER_REPOS)[:8])}, "
                   "...) nor a directory with model.bin: fix it in config.yaml")
        out.append(MissingFile(f"whisper model ({cfg.stt.model})", src.path, how))
    for what, key in (("kokoro model", "model"), ("kokoro voices", "voices")):
        path = cfg.path(getattr(cfg.tts, key))
        if path.is_file():
            continue
        if path.name in KOKORO_RELEASE_FILES:
            how = (f"run `voicebot models download`, or download {kokoro_base_url}/{path.name} to this "
                   f"path, or set tts.{key} in config.yaml to where the file is")
        else:
            how = (f"{path.name} is not a file of kokoro-onnx's release; place it there by hand or set "
                   f"tts.{key} in config.yaml (release files: {', '.join(sorted(KOKORO_RELEASE_FILES))})")
        out.append(MissingFile(what, path, how))
    if cfg.vad.turn_model:
        from pipeline.speech.turn import HUB_REPO, MODEL_FILE

        path = cfg.path(cfg.vad.turn_model)
        if not path.is_file():
            if path.name == MODEL_FILE:
                how = (f"run `voicebot models download`, or download {MODEL_FILE} of https://huggingface.co/"
                       f"{HUB_REPO} to this path, or set vad.turn_model to null (turns end on silence alone)")
            else:
                how = (f"{path.name} is not the file of {HUB_REPO} ({MODEL_FILE}); place it there by hand or "
                       "set vad.turn_model in config.yaml")
            out.append(MissingFile("end-of-turn model", path, how))
    return out


def _download_whisper(repo: str, dest: Path, endpoint: str, progress: bool) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading whisper %s from %s into %s", repo, endpoint, dest)
    if not progress:
        disable_progress_bars()
    try:
        snapshot_download(repo, local_dir=dest, allow_patterns=WHISPER_PATTERNS, endpoint=endpoint,
                          etag_timeout=15)
    except BaseException:
        if created:  # leave no empty model folder behind to be mistaken for a model later
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        if not progress:
            enable_progress_bars()
    if not _whisper_present(dest):
        raise OSError(f"{repo} did not provide a complete CTranslate2 model (model.bin, config.json, "
                      "tokenizer.json, vocabulary)")


def _download_file(url: str, dest: Path, progress: bool, timeout: float = 30.0) -> None:
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s to %s", url, dest)
    request = urllib.request.Request(url, headers={"User-Agent": "voicebot"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"{url}: got {part.stat().st_size} of {total} bytes")
        # Renamed only when complete, so a broken download never looks like a present file.
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)


def ensure_models(
    cfg: Config,
    download: bool,
    progress: bool = True,
    *,
    hf_endpoint: str | None = None,
    kokoro_base_url: str | None = None,
) -> ModelPaths:
    """The model paths, fetching missing files first when ``download`` is true.

    Raises ``ModelsMissing`` (never a network exception) when a file is absent and was not, or
    could not be, fetched. The endpoints default to ``HF_ENDPOINT`` and ``VOICEBOT_KOKORO_URL``
    from the environment, read at call time.
    """
    endpoint = (hf_endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    kokoro_url = (kokoro_base_url or os.environ.get("VOICEBOT_KOKORO_URL") or KOKORO_RELEASE_URL).rstrip("/")
    paths = ModelPaths(whisper_dir(cfg), cfg.path(cfg.tts.model), cfg.path(cfg.tts.voices))
    missing = _missing(cfg, kokoro_url)
    if not missing:
        return paths
    if not download:
        raise ModelsMissing(missing)

    from pipeline.speech.turn import HUB_REPO as turn_repo
    from pipeline.speech.turn import MODEL_FILE as turn_file

    failures: list[str] = []
    src = _whisper_source(cfg)
    for m in missing:
        try:
            if m.path == src.path and src.repo:
                _download_whisper(src.repo, src.path, endpoint, progress)
            elif m.path.name in KOKORO_RELEASE_FILES:
                _download_file(f"{kokoro_url}/{m.path.name}", m.path, progress)
            elif m.what == "end-of-turn model" and m.path.name == turn_file:
                _download_file(f"{endpoint}/{turn_repo}/resolve/main/{turn_file}", m.path, progress)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # any network, HTTP, disk or hub error: reported, not raised
            log.debug("download of %s failed", m.path, exc_info=True)
            failures.append(f"{m.what}: {type(e).__name__}: {_short(e)}")
    still = _missing(cfg, kokoro_url)
    if still:
        raise ModelsMissing(still, "; ".join(failures) or None)
    return paths


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        text = f"cannot reach the server ({e.reason})"
    return text if len(text) <= limit else text[: limit - 3] + "..."
