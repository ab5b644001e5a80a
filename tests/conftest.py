"""Shared fixtures: tiny model files built once per session, the config that points at them, and
empty reservation databases on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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


# ---- reservation databases: SQLite and PostgreSQL ----------------------------------------------

#: the test PostgreSQL database (SQLAlchemy URL); scripts/test.sh starts one and sets it
PG_URL_ENV = "VOICEBOT_TEST_PG_URL"
#: set to 0 to skip the PostgreSQL runs of the store tests where no PostgreSQL can be had
PG_SWITCH_ENV = "VOICEBOT_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL database's URL, checked to answer; a clear failure when there is none.

    Skipped only when ``VOICEBOT_TEST_POSTGRES=0`` says so: a run that should test PostgreSQL and
    cannot must not pass quietly.
    """
    if os.environ.get(PG_SWITCH_ENV, "").strip() == "0":
        pytest.skip(f"PostgreSQL tests switched off ({PG_SWITCH_ENV}=0)")
    url = os.environ.get(PG_URL_ENV, "").strip()
    if not url:
        pytest.fail(f"{PG_URL_ENV} is not set: run the tests with `bash scripts/test.sh`, which starts a local "
                    f"PostgreSQL, or point {PG_URL_ENV} at one (postgresql+psycopg://user:pass@host/db), "
                    f"or set {PG_SWITCH_ENV}=0 to skip the PostgreSQL runs", pytrace=False)
    from sqlalchemy import create_engine, text

    from pipeline.store import mask_url

    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as e:
        pytest.fail(f"cannot reach the test PostgreSQL at {mask_url(url)} ({PG_URL_ENV}): {e}", pytrace=False)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """An empty reservations database: a SQLite file, then a schema of its own on the test PostgreSQL.

    The URL carries everything (the schema goes in as ``search_path``), so other processes given it
    see the same database.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'reservations.db'}"
        return
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = request.getfixturevalue("postgres_url")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'create schema "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'drop schema if exists "{schema}" cascade'))
        admin.dispose()
