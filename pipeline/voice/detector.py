"""One call's voice activity, window by window: where the caller's utterances start and end.

silero runs on every 32 ms window as frames arrive (with its state kept per call and hysteresis on
the speech probability), instead of FastRTC's pause check every 0.6 s chunk, which ended turns
0.6-1.1 s after the caller stopped and lost a short 「はい」 straddling two chunks. A window too quiet
to be speech on any line is not given to silero (an idle call costs next to nothing), and a model
that fails leaves the call on the level-based :class:`~pipeline.speech.vad.EnergyVAD` rather than deaf.
How much silence ends a turn is the caller's to set per frame (:mod:`pipeline.voice.turns`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np

from pipeline.config import VADConfig
from pipeline.speech.vad import WINDOW as VAD_WINDOW
from pipeline.speech.vad import EnergyVAD
from pipeline.voice.backchannel import rms_db

log = logging.getLogger(__name__)

#: the VAD's chunk offsets and windows are in samples at this rate (silero resamples to it)
VAD_RATE = 16000
#: a "turn" longer than this is a stuck line or steady noise: answer it rather than buffer forever
MAX_TURN_S = 30.0
#: audio kept from before the first voiced window: silero's probability rises a window or two
#: after the onset, and Whisper misses a first mora it gets without lead-in
PREROLL_S = 0.3
#: silence kept after the last voiced window in the audio given to STT
TAIL_S = 0.2
#: a window this quiet is no speech on any line: silero is not run on it (on an idle call, silero on
#: every window would be most of the call's CPU)
QUIET_DBFS = -60.0
#: quiet windows (0.5 s) silero is given before the next sound: without them its state is cold and
#: it rates the onset of a short 「はい」 too low to be speech
QUIET_CONTEXT = 16


class TurnDetector:
    """One call's end of turn: silero on every 512-sample window as the audio arrives.

    Not thread-safe: the listener feeds it under the transport's lock. Times are ``time.monotonic()``; a
    window's time is when the frame completing it arrived, less the samples after it.
    """

    def __init__(self, model: Any, cfg: VADConfig):
        self.model = model
        self.enter = cfg.threshold
        self.leave = cfg.threshold - cfg.hysteresis
        self.window_s = VAD_WINDOW / VAD_RATE
        self.min_speech = self._windows(cfg.min_speech_ms)
        self.onset = self._windows(cfg.onset_ms)
        self.end_after = self._windows(cfg.end_silence_ms)  # the listener sets it per frame
        #: (above the threshold, level dBFS) of the last frame's windows from the utterance's first
        #: voiced one on; without the hysteresis, whose tail would make a short 「はい」 look long
        self.windows: list[tuple[bool, float]] = []
        self.reset()

    def _windows(self, ms: float) -> int:
        return max(1, int(round(ms / 1000 / self.window_s)))

    def set_end_silence(self, ms: float) -> None:
        self.end_after = self._windows(ms)

    def reset(self) -> None:
        self.state = self.model.get_initial_state(1)
        self._left = np.zeros(0, np.float32)  # samples short of a whole window
        #: the last quiet windows silero was not run on, run before the next sound
        self._skipped: deque[np.ndarray] = deque(maxlen=QUIET_CONTEXT)
        self.speaking = False
        self.total = 0  # samples received since reset
        self.processed = 0  # samples the VAD has seen
        self._idle()
        self._buffer: list[np.ndarray] = []
        self._buffer_start = 0  # absolute sample offset of the buffer's first sample

    def _idle(self) -> None:
        self.in_utterance = False
        self.voiced = 0  # voiced windows in the utterance
        self.silence = 0  # unvoiced windows since its last voiced one
        self.onset_fired = False
        self.last_voiced_end = 0  # absolute sample offset of the end of the last voiced window
        self.speech_end: float | None = None

    def feed(self, pcm: np.ndarray, arrived: float) -> set[str]:
        """Take a frame (int16 mono at 16 kHz); returns the events it caused: ``"start"`` (a first
        voiced window), ``"onset"`` (the caller has been talking for ``onset_ms``) and/or ``"end"``
        (the turn is over: ``take()``)."""
        events: set[str] = set()
        self.windows = []
        self._buffer.append(pcm)
        self.total += pcm.size
        self._left = np.concatenate([self._left, pcm.astype(np.float32) / 32768.0])
        while self._left.size >= VAD_WINDOW:
            window, self._left = self._left[:VAD_WINDOW], self._left[VAD_WINDOW:]
            self.processed += VAD_WINDOW
            level = rms_db(window)
            if level > QUIET_DBFS:
                for quiet in self._skipped:  # silero's state wants the quiet just before the sound
                    self._prob(quiet)
                self._skipped.clear()
                prob = self._prob(window)
            else:
                self._skipped.append(window)
                prob = 0.0
            self.speaking = prob >= (self.leave if self.speaking else self.enter)
            if self.speaking and not self.in_utterance:
                events.add("start")
            if self.speaking or self.in_utterance:
                self.windows.append((prob >= self.enter, level))
            if self.speaking:
                self.in_utterance = True
                self.voiced += 1
                self.silence = 0
                self.last_voiced_end = self.processed
                self.speech_end = arrived - (self.total - self.processed) / VAD_RATE
                if not self.onset_fired and self.voiced >= self.onset:
                    self.onset_fired = True
                    events.add("onset")
            elif self.in_utterance:
                self.silence += 1
                if self.silence >= self.end_after:
                    if self.voiced >= self.min_speech:
                        events.add("end")
                        break  # the rest of the frame belongs to what comes next
                    self._idle()  # a click or a breath, not a turn
        if self.in_utterance and "end" not in events and self.total - self._buffer_start >= MAX_TURN_S * VAD_RATE:
            events.add("end")
        if not self.in_utterance:
            self._trim()
        return events

    def _prob(self, window: np.ndarray) -> float:
        try:
            prob, self.state = self.model(window, self.state, VAD_RATE)
            return float(np.asarray(prob).ravel()[0])
        except Exception:
            # A fault, not silence: taking every window as silence would leave the call deaf (and an
            # exception on the audio path would end it). The rest of the call is heard by level.
            if isinstance(self.model, EnergyVAD):
                log.exception("the fallback VAD failed on a window; taking it as silence")
                return 0.0
            log.error("the VAD model failed; this call goes on with the level-based detector (EnergyVAD)",
                      exc_info=True)
            self.model = EnergyVAD()
            self.state = self.model.get_initial_state(1)
            return self._prob(window)

    def _trim(self) -> None:
        """Keep only the pre-roll while nobody talks."""
        keep = int(PREROLL_S * VAD_RATE) + VAD_WINDOW
        excess = self.total - self._buffer_start - keep
        while excess > 0 and self._buffer:
            first = self._buffer[0]
            if first.size <= excess:
                self._buffer.pop(0)
                self._buffer_start += first.size
                excess -= first.size
            else:
                self._buffer[0] = first[excess:]
                self._buffer_start += excess
                excess = 0

    def audio(self, upto: int | None = None) -> np.ndarray:
        """The utterance so far, pre-roll included (the buffer is trimmed only between
        utterances), up to absolute sample ``upto``."""
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.int16)
        if upto is None:
            return audio
        return audio[: max(0, min(audio.size, upto - self._buffer_start))]

    def take(self) -> tuple[np.ndarray, float | None, int]:
        """End the utterance: its audio (to the last voiced window plus a little silence), when
        speech ended, and how many windows were voiced. What follows the cut stays as pre-roll."""
        whole = self.audio()
        if self.in_utterance:
            cut = max(0, min(whole.size, self.last_voiced_end + int(TAIL_S * VAD_RATE) - self._buffer_start))
        else:  # trigger_response() with nobody talking
            cut = whole.size
        audio, rest = whole[:cut], whole[cut:]
        self._buffer = [rest] if rest.size else []
        self._buffer_start += cut
        speech_end, voiced = self.speech_end, self.voiced
        self._idle()
        self._trim()
        return audio, speech_end, voiced
