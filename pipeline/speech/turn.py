"""End of turn from the audio: Smart Turn v3.2, a small classifier on Whisper features.

Silence alone cannot tell 「明日の、えーと、」 (a caller thinking) from 「明日の19時で。」 (a caller done):
both end in a pause. Smart Turn reads the last 8 s of the utterance (16 kHz) and says how likely the
speaker has finished; the turn-taking answers after a short pause when it says "complete" and waits
longer when it says "incomplete". Japanese is among the languages it was trained on.

The model's input is Whisper's 80-bin log-mel spectrogram of the audio normalised to zero mean and
unit variance, 8 s long (zero-padded at the start); faster-whisper's feature extractor computes it,
so this adds no dependency. Inference is ~10-60 ms on a CPU: callers run it in a worker thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
WINDOW_S = 8
#: the file's name in its hub repository and in the pipecat-ai wheel
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
HUB_REPO = "pipecat-ai/smart-turn-v3"


class TurnModelError(RuntimeError):
    """The end-of-turn model could not be loaded or run; the turn-taking falls back to silence alone."""


@dataclass(frozen=True)
class TurnVerdict:
    #: the model's probability that the speaker has finished their turn
    probability: float
    complete: bool
    elapsed_s: float


class SmartTurn:
    """One loaded Smart Turn model; :meth:`predict` is thread-safe."""

    def __init__(self, path: str | Path, *, threshold: float = 0.5, threads: int = 1):
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        path = Path(path)
        if not path.is_file():
            raise TurnModelError(f"end-of-turn model {path} not found (`voicebot models download` fetches it)")
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise TurnModelError(f"cannot load the end-of-turn model {path}: {e}") from e
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        if "input_features" not in inputs or list(inputs["input_features"])[1:] != [80, 100 * WINDOW_S]:
            raise TurnModelError(f"{path} is not a Smart Turn v3 model (inputs: {inputs})")
        self._features = FeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE)
        self._lock = threading.Lock()
        self.threshold = threshold

    def features(self, audio: np.ndarray) -> np.ndarray:
        """[1, 80, 800] model input for the last 8 s of ``audio`` (float, 16 kHz, mono)."""
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        n = SAMPLE_RATE * WINDOW_S
        x = x[-n:]
        x = np.pad(x, (n - len(x), 0)) if len(x) < n else x
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mel = self._features(x, padding=0)[:, : 100 * WINDOW_S]
        if mel.shape[1] < 100 * WINDOW_S:
            mel = np.pad(mel, ((0, 0), (0, 100 * WINDOW_S - mel.shape[1])))
        return mel[np.newaxis].astype(np.float32)

    def predict(self, audio: np.ndarray) -> TurnVerdict:
        import time

        start = time.perf_counter()
        feats = self.features(audio)
        try:
            with self._lock:
                out = self._session.run(None, {"input_features": feats})[0]
        except Exception as e:
            raise TurnModelError(f"end-of-turn model failed: {e}") from e
        p = float(np.asarray(out).reshape(-1)[0])
        if not np.isfinite(p):
            raise TurnModelError(f"end-of-turn model returned {p}")
        p = min(1.0, max(0.0, p))
        return TurnVerdict(p, p >= self.threshold, time.perf_counter() - start)
