"""A simulated phone line: 8 kHz G.711 mu-law in 20 ms frames, as Twilio carries a call, with
line noise at a chosen signal-to-noise ratio."""

from __future__ import annotations

import base64

import numpy as np

from pipeline.audio import PHONE_RATE, mulaw_decode, mulaw_encode, resample, to_float32, to_int16

#: 20 ms at 8 kHz: one Twilio media frame
FRAME_SAMPLES = PHONE_RATE // 50
FRAME_S = 0.02
#: the level callers are brought to (RMS of the voiced part): a normal telephone talker
TALK_DBFS = -20.0


def to_phone_rate(rate: int, pcm: np.ndarray) -> np.ndarray:
    """int16 audio at ``rate`` as int16 at 8 kHz (band-limited below 4 kHz)."""
    if rate == PHONE_RATE:
        return np.asarray(pcm, dtype=np.int16)
    return to_int16(resample(to_float32(np.asarray(pcm, dtype=np.int16)), rate, PHONE_RATE))


def phone_line(rate: int, pcm: np.ndarray, out_rate: int = 16000) -> np.ndarray:
    """Audio as a phone call delivers it: down to 8 kHz, through mu-law and back, then up to
    ``out_rate`` (the handler's 16 kHz by default), int16."""
    line = mulaw_decode(mulaw_encode(to_phone_rate(rate, pcm)))
    if out_rate == PHONE_RATE:
        return line
    return to_int16(resample(to_float32(line), PHONE_RATE, out_rate))


def active_rms(pcm: np.ndarray, sample_rate: int = PHONE_RATE, below_peak_db: float = 30.0) -> float:
    """RMS (full scale 1.0) over the 10 ms windows within ``below_peak_db`` of the loudest: the level
    of the speech, not of the pauses around it."""
    window = max(1, sample_rate // 100)
    n = pcm.size // window
    if n == 0:
        return 0.0
    frames = pcm[: n * window].astype(np.float64).reshape(n, window) / 32768.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    if rms.max() <= 0:
        return 0.0
    voiced = rms[rms > rms.max() * 10 ** (-below_peak_db / 20)]
    return float(np.sqrt(np.mean(voiced**2)))


def at_level(pcm: np.ndarray, dbfs: float = TALK_DBFS, sample_rate: int = PHONE_RATE) -> np.ndarray:
    """``pcm`` scaled so that its speech is at ``dbfs`` RMS, its peaks kept under full scale."""
    level = active_rms(pcm, sample_rate)
    if level <= 0:
        return np.asarray(pcm, dtype=np.int16)
    gain = 10 ** (dbfs / 20) / level
    peak = float(np.abs(pcm.astype(np.float64)).max()) / 32768.0
    gain = min(gain, 0.95 / peak) if peak > 0 else gain
    return np.clip(np.round(pcm.astype(np.float64) * gain), -32768, 32767).astype(np.int16)


class LineNoise:
    """White noise ``snr_db`` below a talker at :data:`TALK_DBFS`, one frame at a time, seeded."""

    def __init__(self, snr_db: float, seed: int = 0, talk_dbfs: float = TALK_DBFS):
        self.snr_db = snr_db
        self.rms = 32768.0 * 10 ** ((talk_dbfs - snr_db) / 20)
        self._rng = np.random.default_rng(seed)

    def add(self, pcm: np.ndarray) -> np.ndarray:
        x = pcm.astype(np.float64) + self._rng.standard_normal(pcm.size) * self.rms
        return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def frames(pcm8k: np.ndarray) -> list[np.ndarray]:
    """8 kHz int16 audio as 20 ms frames, the last padded with silence."""
    pcm8k = np.asarray(pcm8k, dtype=np.int16)
    pad = (-pcm8k.size) % FRAME_SAMPLES
    if pad:
        pcm8k = np.concatenate([pcm8k, np.zeros(pad, np.int16)])
    return [pcm8k[i : i + FRAME_SAMPLES] for i in range(0, pcm8k.size, FRAME_SAMPLES)]


def payload(frame8k: np.ndarray) -> str:
    """One frame as a Twilio media payload: mu-law bytes, base64."""
    return base64.b64encode(mulaw_encode(np.asarray(frame8k, dtype=np.int16))).decode()


def payloads(pcm8k: np.ndarray) -> list[str]:
    return [payload(f) for f in frames(pcm8k)]


def decode_payload(data: str) -> np.ndarray:
    """A Twilio media payload as 8 kHz int16 samples."""
    return mulaw_decode(base64.b64decode(data))
