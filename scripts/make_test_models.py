"""Build tiny stand-in model files so the real model code runs with no model hub.

    python scripts/make_test_models.py DIR

writes a random-weight whisper, a kokoro-shaped ONNX graph, a voices file and ``DIR/config.yaml``
pointing at them. The builder lives in :mod:`pipeline.sim.testmodels` (see its docstring); this
script is its command, and what the tests import as ``make_test_models``.
"""

from __future__ import annotations

import sys

from pipeline.sim.testmodels import (
    CONFIG_TEMPLATE,
    KOKORO_FILENAME,
    KOKORO_SAMPLE_RATE,
    SAMPLES_PER_TOKEN,
    VOICE_NAMES,
    VOICES_FILENAME,
    WHISPER_DIRNAME,
    WHISPER_LANGUAGES,
    build_fake_kokoro,
    build_test_models,
    build_voices,
    build_whisper,
    main,
)

__all__ = ["CONFIG_TEMPLATE", "KOKORO_FILENAME", "KOKORO_SAMPLE_RATE", "SAMPLES_PER_TOKEN", "VOICES_FILENAME",
           "VOICE_NAMES", "WHISPER_DIRNAME", "WHISPER_LANGUAGES", "build_fake_kokoro", "build_test_models",
           "build_voices", "build_whisper", "main"]

if __name__ == "__main__":
    sys.exit(main())
