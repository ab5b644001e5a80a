"""Caller voices: speech that is not the bot's, for simulated calls.

- Japanese: Open JTalk's HTS voice through ``pyopenjtalk.tts(text, speed, half_tone)`` (48 kHz;
  pyopenjtalk-plus is a dependency already, its dictionary inside the wheel), with the speed and
  pitch varied per caller. It reads kanji, kana and ``090-1234-5678`` digit by digit.
- English (and a Japanese voice for tests that only need *speech*): espeak-ng
  (``apt-get install espeak-ng``), robotic, but silero-vad takes it for speech.

:func:`speech` is espeak-ng cached on disk by text, voice and rate, so that a test session pays
for each phrase once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: what the call handler and whisper take
SAMPLE_RATE = 16000
ESPEAK = shutil.which("espeak-ng")
ESPEAK_MISSING = "espeak-ng is not installed (apt-get install espeak-ng): no caller speech to test with"
ESPEAK_VOICES = {"ja": "ja", "en": "en-us"}
#: bumped when the cached audio would come out differently
_CACHE_VERSION = 2


def espeak(text: str, voice: str = "ja", speed: int | None = None, pitch: int | None = None) -> tuple[int, np.ndarray]:
    """espeak-ng's ``(rate, int16 mono)`` for ``text``; ``speed`` in words a minute (its default 175),
    ``pitch`` 0-99 (its default 50). Raises RuntimeError when espeak-ng is missing or fails."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(ESPEAK_MISSING)
    options = [*(["-s", str(speed)] if speed else []), *(["-p", str(pitch)] if pitch is not None else [])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "line.wav"
        try:
            subprocess.run([exe, "-v", voice, *options, "-w", str(path), text], check=True, capture_output=True,
                           timeout=60)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"espeak-ng -v {voice} failed: {e.stderr.decode(errors='replace').strip()}") from None
        with wave.open(str(path)) as w:
            rate, channels = w.getframerate(), w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels)[:, 0]
    return rate, pcm


def openjtalk(text: str, speed: float = 1.0, half_tone: float = 0.0) -> tuple[int, np.ndarray]:
    """Open JTalk's ``(rate, int16 mono)`` for Japanese ``text`` (48 kHz); ``speed`` 1.0 is its
    normal pace, ``half_tone`` shifts the pitch by semitones."""
    import pyopenjtalk

    audio, rate = pyopenjtalk.tts(text, speed=speed, half_tone=half_tone)
    # float64 on the int16 scale
    return int(rate), np.clip(np.round(audio), -32768, 32767).astype(np.int16)


def resample_int16(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    from pipeline.audio import resample, to_float32, to_int16

    if rate_in == rate_out:
        return np.asarray(pcm, dtype=np.int16)
    return to_int16(resample(to_float32(np.asarray(pcm, dtype=np.int16)), rate_in, rate_out))


@dataclass(frozen=True)
class Voice:
    """One caller's voice: ``engine`` "openjtalk" (Japanese; ``speed`` a factor, ``pitch`` semitones)
    or "espeak" (``name`` an espeak-ng voice; ``speed`` words a minute, ``pitch`` 0-99)."""

    engine: str = "openjtalk"
    name: str = ""
    speed: float = 1.0
    pitch: float = 0.0

    def render(self, text: str) -> tuple[int, np.ndarray]:
        if self.engine == "openjtalk":
            return openjtalk(text, self.speed, self.pitch)
        if self.engine == "espeak":
            return espeak(text, self.name or "en-us", int(self.speed) or None, int(self.pitch))
        raise ValueError(f"unknown voice engine {self.engine!r} (expected openjtalk or espeak)")

    def slower(self, factor: float) -> Voice:
        """The same voice at ``factor`` times its pace (< 1: slower)."""
        return Voice(self.engine, self.name, self.speed * factor if self.engine == "openjtalk" else
                     max(80, round(self.speed * factor)), self.pitch)

    def describe(self) -> str:
        if self.engine == "openjtalk":
            return f"openjtalk speed {self.speed:g} pitch {self.pitch:+g}"
        return f"espeak-ng {self.name or 'en-us'} {int(self.speed)} wpm pitch {int(self.pitch)}"


# ------------------------------------------------------------------------------ cached espeak speech
def cache_dir() -> Path:
    path = Path(os.environ.get("VOICEBOT_TEST_AUDIO_CACHE", Path(tempfile.gettempdir()) / "voicebot-test-speech"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def speech(text: str, lang: str = "ja", sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``text`` spoken by espeak-ng as mono int16 at ``sample_rate`` (16 kHz by default), cached on disk.

    Raises RuntimeError when espeak-ng is absent: tests check :data:`ESPEAK` and skip first.
    """
    if ESPEAK is None:
        raise RuntimeError(ESPEAK_MISSING)
    voice = ESPEAK_VOICES.get(lang, lang)
    key = hashlib.sha1(f"{_CACHE_VERSION}\0{voice}\0{sample_rate}\0{text}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{key}.npy"
    if cached.exists():
        return np.load(cached)
    rate, pcm = espeak(text, voice)  # 22.05 kHz
    pcm = resample_int16(pcm, rate, sample_rate)
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


def trim(pcm: np.ndarray, sample_rate: int, below_peak_db: float = 40.0, margin_s: float = 0.02) -> np.ndarray:
    """``pcm`` without the silence a voice puts before and after the words (Open JTalk: ~0.25 s and
    ~0.35 s), ``margin_s`` kept: a pause written into a line is then the pause the caller makes."""
    window = max(1, sample_rate // 100)
    n = pcm.size // window
    if n == 0:
        return pcm
    rms = np.sqrt(np.mean((pcm[: n * window].astype(np.float64) / 32768.0).reshape(n, window) ** 2, axis=1))
    if rms.max() <= 0:
        return pcm[:0]
    voiced = np.flatnonzero(rms > rms.max() * 10 ** (-below_peak_db / 20))
    margin = int(margin_s * sample_rate)
    return pcm[max(0, voiced[0] * window - margin) : min(pcm.size, (voiced[-1] + 1) * window + margin)]


def speech_end(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, below_peak_db: float = 35.0) -> float:
    """Seconds to the end of the last 10 ms window within ``below_peak_db`` of the loudest one."""
    window = sample_rate // 100
    n = audio.size // window
    if n == 0:
        return 0.0
    frames = audio[: n * window].astype(np.float64).reshape(n, window) / 32768.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    voiced = np.flatnonzero(rms > rms.max() * 10 ** (-below_peak_db / 20))
    return float((voiced[-1] + 1) * window / sample_rate) if voiced.size and rms.max() > 0 else 0.0
