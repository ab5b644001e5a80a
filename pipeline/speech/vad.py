"""Voice activity detection: silero-vad's ONNX model as a FastRTC ``PauseDetectionModel``.

FastRTC's own ``get_silero_model()`` downloads an older silero model from the Hugging Face hub when
``ReplyOnPause`` is built. The ``silero-vad`` wheel already ships the v5/v6 model as an ONNX file, so
we run that with onnxruntime instead: no download, and no torch (``import silero_vad`` would import
torch, so the file is located with ``importlib.util.find_spec``, which does not run the package).

The pause logic (``get_speech_timestamps``) is FastRTC's, inherited; only the model call differs
(v5+ takes one ``state`` tensor and 64 samples of left context instead of ``h``/``c``). The voice
core does not use it: :class:`~pipeline.voice.detector.TurnDetector` runs ``__call__`` window by window
with a state of its own per call.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from fastrtc import AlgoOptions
from fastrtc.pause_detection.silero import SileroVADModel, SileroVadOptions

from pipeline.audio import to_mono_float32
from pipeline.config import VADConfig
from pipeline.speech.stt import resample

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # the only window silero v5+ accepts at 16 kHz
CONTEXT = 64  # samples of the previous window that v5+ expects in front of each window


class VADModelMissing(RuntimeError):
    """The silero ONNX file cannot be found; the message says how to get it."""


def bundled_silero_path() -> Path:
    """The ``silero_vad.onnx`` inside the installed ``silero-vad`` wheel."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VADModelMissing(
            "the silero-vad package is not installed, so its bundled VAD model is missing; "
            "install it without torch: `uv sync` (or `pip install --no-deps silero-vad`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VADModelMissing(
            f"silero VAD model not found at {path}; reinstall the silero-vad package "
            "(`uv sync --reinstall-package silero-vad`)"
        )
    return path


def silero_options(cfg: VADConfig) -> SileroVadOptions:
    """FastRTC's silero options from our config; the window is fixed by the model."""
    return SileroVadOptions(
        threshold=cfg.threshold,
        min_silence_duration_ms=cfg.min_silence_duration_ms,
        window_size_samples=WINDOW,
    )


def algo_options(cfg: VADConfig) -> AlgoOptions:
    """FastRTC's ``ReplyOnPause`` turn-taking options from our config."""
    return AlgoOptions(
        audio_chunk_duration=cfg.audio_chunk_duration,
        started_talking_threshold=cfg.started_talking_threshold,
        speech_threshold=cfg.speech_threshold,
    )


class BundledSileroVAD(SileroVADModel):
    """silero v5/v6 from the silero-vad wheel, run by onnxruntime on one thread.

    Implements FastRTC's ``PauseDetectionModel`` (``vad()`` + ``warmup()``). Every ``vad()`` call
    starts from a fresh recurrent state, so one instance can serve several calls at once (an
    onnxruntime session is safe to run from several threads).
    """

    def __init__(self, path: str | Path | None = None, options: SileroVadOptions | None = None,
                 num_threads: int = 1):
        # SileroVADModel.__init__ is deliberately not called: it downloads the hub model.
        import onnxruntime

        self.path = Path(path) if path is not None else bundled_silero_path()
        if not self.path.is_file():
            raise VADModelMissing(f"silero VAD model not found at {self.path}")
        opts = onnxruntime.SessionOptions()
        # One thread by default: a 32 ms window is ~0.1 ms of work, too little to split, and a
        # thread pool per session would fight the STT and TTS for the cores.
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = num_threads
        opts.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.options = replace(options or SileroVadOptions(), window_size_samples=WINDOW)

    # --- the model call FastRTC's get_speech_timestamps() drives -------------------------------
    def get_initial_state(self, batch_size: int):
        return (
            np.zeros((2, batch_size, 128), dtype=np.float32),
            np.zeros((batch_size, CONTEXT), dtype=np.float32),
        )

    def __call__(self, x: np.ndarray, state, sr: int):
        if x.ndim == 1:
            x = x[None, :]
        rnn_state, context = state
        window = np.concatenate([context, x], axis=1).astype(np.float32, copy=False)
        prob, new_state = self.session.run(
            None, {"input": window, "state": rnn_state, "sr": np.array(sr, dtype=np.int64)}
        )
        return prob, (new_state, window[:, -CONTEXT:])

    # --- PauseDetectionModel ---------------------------------------------------------------------
    def vad(self, audio: tuple[int, np.ndarray], options: SileroVadOptions | None = None):
        """Seconds of speech in ``audio`` and the speech chunks (sample offsets at 16 kHz)."""
        sample_rate, samples = audio
        opts = replace(options, window_size_samples=WINDOW) if options is not None else self.options
        try:
            x = to_mono_float32(samples)
            if sample_rate != SAMPLE_RATE:
                x = resample(x, sample_rate, SAMPLE_RATE)
            if x.size == 0:
                return 0.0, []
            chunks = self.get_speech_timestamps(x, opts)
        except Exception:
            # ReplyOnPause calls this from the audio path, where an exception would end the call.
            # Reporting "no speech" lets a started turn end and be answered instead of hanging.
            log.warning("VAD failed on a %s chunk at %s Hz; treating it as silence",
                        getattr(samples, "shape", "?"), sample_rate, exc_info=True)
            return 0.0, []
        speech = sum(c["end"] - c["start"] for c in chunks)
        return speech / SAMPLE_RATE, chunks

    def speech_probs(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Speech probability per 32 ms window (for tests, tuning and barge-in heuristics)."""
        x = to_mono_float32(audio)
        if sample_rate != SAMPLE_RATE:
            x = resample(x, sample_rate, SAMPLE_RATE)
        state = self.get_initial_state(1)
        probs = []
        for start in range(0, len(x) - WINDOW + 1, WINDOW):
            p, state = self(x[start : start + WINDOW], state, SAMPLE_RATE)
            probs.append(float(np.asarray(p).ravel()[0]))
        return np.array(probs, dtype=np.float32)

    def warmup(self) -> None:
        """Run the model once so the first caller's turn does not pay onnxruntime's first-run cost."""
        start = time.perf_counter()
        self.vad((SAMPLE_RATE, np.zeros(SAMPLE_RATE, dtype=np.float32)), None)
        log.debug("VAD warmed up in %.3f s", time.perf_counter() - start)


def make_vad(cfg: VADConfig, path: str | Path | None = None) -> BundledSileroVAD:
    """The VAD for ``ReplyOnPause(model=...)``, with ``cfg``'s silero options as its defaults."""
    return BundledSileroVAD(path, options=silero_options(cfg), num_threads=cfg.num_threads)


class EnergyVAD:
    """A level-based stand-in for silero with the same call (``model(window, state, sr) -> (prob,
    state)``), for a call whose silero model has failed: a window well above the line's noise floor
    (tracked in ``state``) and above an absolute floor is speech. Cruder than silero (a loud noise
    is speech), but a call that hears something beats one that has gone deaf."""

    #: a window this far above the noise floor is speech
    MARGIN_DB = 12.0
    #: and never below this (digital silence, a quiet line)
    FLOOR_DBFS = -48.0

    def get_initial_state(self, batch_size: int = 1):
        return {"floor": -70.0}

    def __call__(self, x: np.ndarray, state, sr: int):
        samples = np.asarray(x, dtype=np.float32).reshape(-1)
        rms = float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0
        db = 20 * np.log10(max(rms, 1e-6))
        floor = state["floor"] if isinstance(state, dict) else -70.0
        # the floor falls at once to a quieter window and creeps up slowly under steady sound
        floor = db if db < floor else floor + 0.005 * (db - floor)
        over = db - max(floor + self.MARGIN_DB, self.FLOOR_DBFS)
        prob = float(1.0 / (1.0 + np.exp(-over / 2.0)))
        return np.array([[prob]], np.float32), {"floor": floor}
