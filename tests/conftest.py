"""Shared fixtures: tiny model files built once per session, and the config that points at them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Belt and braces: no test may reach a model hub, whatever a library does at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def test_models_dir(tmp_path_factory) -> Path:
    """A folder with the random-weight whisper, the fake kokoro, its voices and ``config.yaml``."""
    from make_test_models import build_test_models

    out = tmp_path_factory.mktemp("models")
    build_test_models(out)
    return out


@pytest.fixture(scope="session")
def test_config(test_models_dir):
    """``pipeline.config.Config`` loaded from the test models' ``config.yaml`` (no env overrides)."""
    from pipeline.config import load_config

    return load_config(test_models_dir / "config.yaml", environ={})
