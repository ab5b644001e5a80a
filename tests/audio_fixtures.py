"""Caller speech for tests, made with espeak-ng (``apt-get install espeak-ng``) and cached.

espeak-ng is robotic but silero-vad takes it for speech (max probability ~1.0), which is what the
VAD and turn-taking tests need; nothing here judges what was said. Not a conftest: import it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
ESPEAK = shutil.which("espeak-ng")
ESPEAK_MISSING = "espeak-ng is not installed (apt-get install espeak-ng): no caller speech to test with"

_VOICES = {"ja": "ja", "en": "en-us"}


def cache_dir() -> Path:
    path = Path(os.environ.get("VOICEBOT_TEST_AUDIO_CACHE", Path(tempfile.gettempdir()) / "voicebot-test-speech"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return rate, pcm


def _resample_int16(pcm: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return pcm
    n_out = int(round(len(pcm) * sr_out / sr_in))
    t = np.arange(n_out) * (sr_in / sr_out)
    return np.interp(t, np.arange(len(pcm)), pcm.astype(np.float64)).round().astype(np.int16)


def speech(text: str, lang: str = "ja", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``text`` spoken by espeak-ng as mono int16 at ``sample_rate`` (16 kHz by default).

    Cached by text, voice and rate, so a test session pays for each phrase once. Raises
    RuntimeError when espeak-ng is absent: tests check ``ESPEAK`` and skip first.
    """
    if ESPEAK is None:
        raise RuntimeError(ESPEAK_MISSING)
    voice = _VOICES.get(lang, lang)
    key = hashlib.sha1(f"{voice}\0{sample_rate}\0{text}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{key}.npy"
    if cached.exists():
        return np.load(cached)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([ESPEAK, "-v", voice, "-w", str(wav), text], check=True, capture_output=True, timeout=60)
        rate, pcm = _read_wav(wav)  # espeak-ng writes 22.05 kHz
    pcm = _resample_int16(pcm, rate, sample_rate)
    tmp_file = cached.with_suffix(f".{os.getpid()}.npy")
    np.save(tmp_file, pcm)
    tmp_file.replace(cached)  # atomic: parallel test workers never read a half-written file
    return pcm


def silence(seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.zeros(int(seconds * sample_rate), dtype=np.int16)


def noise(seconds: float, dbfs: float = -50.0, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """White noise at ``dbfs`` RMS: a quiet line, not a voice."""
    rms = 32768.0 * 10 ** (dbfs / 20)
    x = np.random.default_rng(seed).standard_normal(int(seconds * sample_rate)) * rms
    return np.clip(x, -32768, 32767).astype(np.int16)
