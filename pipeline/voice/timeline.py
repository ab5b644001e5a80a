"""One caller turn's timings and what was said in it: :class:`TurnTimeline`, stamped from the audio
side (the caller's last voiced window, the turn's end) and by the call (transcript, first text, first
audio), written to the call log and shown in the UI."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any


def now_iso() -> str:
    """Now in UTC, ISO 8601 to the millisecond: the time stamps of the call log."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


_STAMPS = ("speech_end", "turn_detected", "transcript_ready", "first_text", "acked", "first_audio_synth",
           "first_audio_sent", "reply_done")


@dataclass
class TurnTimeline:
    """Monotonic timestamps (``time.monotonic()``) of one caller turn, and what was said.

    ``speech_end`` is the caller's last voiced moment: the end of the last 32 ms window the
    listener's VAD took for speech, in the time of the frame that completed it.
    """

    call_id: str = ""
    turn: int = 0
    speech_end: float | None = None
    turn_detected: float | None = None
    transcript_ready: float | None = None
    first_text: float | None = None
    #: the acknowledgement was handed out, the reply being late (``tts.ack_after_s``)
    acked: float | None = None
    first_audio_synth: float | None = None
    first_audio_sent: float | None = None
    reply_done: float | None = None
    transcript: str = ""
    reply: str = ""
    #: what of the reply reached the caller, when they barged in (None: all of it)
    heard: str | None = None
    skipped: bool = False
    error: str | None = None
    audio_s: float = 0.0  # seconds of caller audio in the turn
    stt_s: float | None = None  # seconds transcription took
    #: the transcript came from transcribing the utterance early, at a short pause
    speculative: bool = False
    #: the reply was prepared ahead on these same words (``pipeline/voice/speculation.py``)
    prepared: bool = False
    #: whisper looped on its shortened window and the turn was decoded again on 30 s
    stt_retried: bool = False
    #: what the recogniser wrote, when ``transcript`` (what the agent read) is a cleaned version of it
    transcript_raw: str | None = None
    #: the caller answered on the keypad (the transcript is what the keys stood for)
    keypad: bool = False

    def stamp(self, name: str, when: float | None = None) -> None:
        """Set a timestamp once; later calls keep the first (``first_*`` mean first)."""
        if getattr(self, name) is None:
            setattr(self, name, time.monotonic() if when is None else when)

    @property
    def gap_ms(self) -> float | None:
        """Caller stops talking -> first audio of the reply handed to FastRTC."""
        if self.speech_end is None or self.first_audio_sent is None:
            return None
        return round((self.first_audio_sent - self.speech_end) * 1000, 1)

    def to_json(self) -> dict[str, Any]:
        origin = self.speech_end if self.speech_end is not None else self.turn_detected
        ms: dict[str, float | None] = {}
        for name in _STAMPS:
            value = getattr(self, name)
            ms[name] = None if value is None or origin is None else round((value - origin) * 1000, 1)
        return {
            "call_id": self.call_id,
            "turn": self.turn,
            "ms": ms,
            "gap_ms": self.gap_ms,
            "transcript": self.transcript,
            "reply": self.reply,
            "heard": self.heard,
            "skipped": self.skipped,
            "error": self.error,
            "audio_s": round(self.audio_s, 3),
            "stt_s": None if self.stt_s is None else round(self.stt_s, 3),
            "speculative": self.speculative,
            "prepared": self.prepared,
            "stt_retried": self.stt_retried,
            "transcript_raw": self.transcript_raw,
            "keypad": self.keypad,
        }
