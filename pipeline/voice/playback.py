"""What the caller heard of a reply: the audio handed out and when, and the playback position
estimated from it.

What the caller actually heard matters after a barge-in: the agent must not believe it said
sentences that were cut off. Every reply keeps a :class:`Playback` record of the audio handed out
and when, and estimates the playback position from it (real time from the moment each chunk was
handed out); a barge-in freezes it at what was heard (:meth:`pipeline.voice.call.VoiceCall.barge_in`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

#: audio is handed to the transport in pieces this long, so a barge-in can drop what was not yet sent
CHUNK_S = 0.5


def in_chunks(audio: np.ndarray, sample_rate: int) -> Iterator[tuple[int, np.ndarray]]:
    """``audio`` in pieces of :data:`CHUNK_S`, each with the sample it starts at."""
    step = max(1, int(CHUNK_S * sample_rate))
    for i in range(0, audio.size, step):
        yield i, audio[i : i + step]


@dataclass
class Sentence:
    text: str
    raw_end: int  # end of this sentence in the agent's raw text
    sample_start: int
    sample_end: int


@dataclass
class Playback:
    """The audio of one reply as handed out, to tell what the caller has heard at a given moment."""

    sample_rate: int
    raw: str = ""
    sentences: list[Sentence] = field(default_factory=list)
    #: (monotonic time handed out, first sample, end sample) per chunk, in order
    sends: list[tuple[float, int, int]] = field(default_factory=list)
    samples: int = 0
    #: a barge-in froze the record: later sends were dropped by the transport
    frozen: bool = False
    done: bool = False  # the generator producing it has finished or was closed
    applied: bool = False  # the agent has been told what was heard
    heard: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, text: str, raw_end: int, n: int) -> Sentence:
        s = Sentence(text, raw_end, self.samples, self.samples + n)
        self.sentences.append(s)
        self.samples += n
        return s

    def sent(self, start: int, end: int, when: float) -> None:
        with self.lock:
            if not self.frozen:
                self.sends.append((when, start, end))

    def played(self, now: float) -> int:
        """Samples played by ``now``, if playback runs in real time from each hand-out."""
        cursor: float | None = None
        pos = 0
        for t, s0, s1 in self.sends:
            start = t if cursor is None else max(t, cursor)
            dur = (s1 - s0) / self.sample_rate
            if now <= start:
                break
            pos = s0 + int(min(dur, now - start) * self.sample_rate)
            cursor = start + dur
        return pos

    def playing_until(self) -> float:
        cursor: float | None = None
        for t, s0, s1 in self.sends:
            start = t if cursor is None else max(t, cursor)
            cursor = start + (s1 - s0) / self.sample_rate
        return cursor or 0.0

    def heard_text(self, now: float) -> str:
        """The agent's raw text up to the end of the last sentence whose playback had started."""
        pos = self.played(now)
        raw_end = 0
        for s in self.sentences:
            if s.sample_start < pos and s.sample_end > s.sample_start:
                raw_end = max(raw_end, s.raw_end)
        return self.raw[:raw_end]
