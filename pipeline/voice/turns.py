"""Turn-taking: from the VAD's view of the caller and what the bot asked, wait, speculate or end.

Silence alone cannot tell 「明日の、えーと、」 (a caller thinking) from 「明日の19時で。」 (a caller
done): both end in a pause. With an end-of-turn model configured (``vad.turn_model``, Smart Turn
v3.2), the utterance so far is classified at each short pause, in a worker thread (never on the
event loop or the audio path), and the silence that ends the turn follows its verdict: short
(``vad.turn_complete_silence_ms``) when it says complete, long (``vad.turn_incomplete_silence_ms``,
longer while a phone number is read) when it says incomplete. Until the verdict is back the
silence-only rule stands: the slot-aware ``vad.end_silence*`` waits. A model that is off, missing
or failing leaves the silence-only rule alone (said once in the log).

:class:`TurnPolicy` is pure: it is given the numbers (voiced windows, trailing silence, what the bot
asked, whether the early transcript holds a whole phone number) and a verdict when there is one,
and answers :class:`Decision`. :class:`EndOfTurnModel` runs the model in its pool.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import VADConfig

log = logging.getLogger(__name__)

#: what the bot asked when the caller's answer is a yes or a no: it can end after less silence
SHORT_ANSWER = frozenset({"confirm", "anything_else"})


class Decision(enum.Enum):
    WAIT = "wait"
    SPECULATE = "speculate"  # a short pause: transcribe (and classify) the utterance so far
    END = "end"


@dataclass(frozen=True)
class Pause:
    """Where the caller is, in milliseconds and voiced windows."""

    voiced: int  # voiced windows in the utterance
    silence_ms: float  # trailing silence since the last voiced window
    asking: str | None = None  # the slot the bot asked for (``agent.state.asking``)
    phone_heard: bool = False  # the early transcript already holds a whole valid phone number


class TurnPolicy:
    """The end-of-turn rule of one call. ``verdict`` is the end-of-turn model's answer on the
    utterance as it stands (None: no model, not asked yet, or not back yet)."""

    def __init__(self, cfg: VADConfig):
        self.cfg = cfg

    def silence_only_ms(self, pause: Pause) -> int:
        """The slot-aware silence that ends a turn without a model."""
        cfg = self.cfg
        if pause.asking == "phone":
            # callers pause between digit groups; a whole number already heard needs no waiting
            return cfg.end_silence_ms if pause.phone_heard else cfg.end_silence_phone_ms
        if pause.asking in SHORT_ANSWER:
            return cfg.end_silence_short_ms
        return cfg.end_silence_ms

    def end_silence_ms(self, pause: Pause, complete: bool | None) -> int:
        """The silence that ends the turn given the model's verdict (None: none)."""
        cfg = self.cfg
        if complete is None:
            return self.silence_only_ms(pause)
        reading_phone = pause.asking == "phone" and not pause.phone_heard
        if complete:
            # a group of digits said with a falling tone sounds finished: the phone wait stands
            return cfg.end_silence_phone_ms if reading_phone else cfg.turn_complete_silence_ms
        if reading_phone:
            return max(cfg.turn_incomplete_silence_ms, cfg.turn_incomplete_phone_silence_ms)
        return cfg.turn_incomplete_silence_ms

    def decide(self, pause: Pause, complete: bool | None = None) -> Decision:
        if pause.voiced <= 0:
            return Decision.WAIT
        if pause.silence_ms >= self.end_silence_ms(pause, complete):
            return Decision.END
        spec = self.cfg.speculative_pause_ms
        if spec and pause.silence_ms >= spec:
            return Decision.SPECULATE
        return Decision.WAIT


class EndOfTurnModel:
    """An end-of-turn classifier run in its own small worker pool, shared by every call.

    ``predict(audio16k) -> verdict`` with ``verdict.complete``; :meth:`classify_soon` returns a
    future of ``complete`` (bool), or of None once the model has failed (logged once; every later
    call answers None at once, so the turn-taking is silence alone)."""

    def __init__(self, model: Any, workers: int = 2):
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="turn-model")
        self._failed = threading.Event()

    @property
    def failed(self) -> bool:
        return self._failed.is_set()

    def classify_soon(self, audio: np.ndarray) -> Future:
        if self._failed.is_set():
            done: Future = Future()
            done.set_result(None)
            return done
        return self._pool.submit(self._classify, np.asarray(audio))

    def _classify(self, audio: np.ndarray) -> bool | None:
        try:
            x = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32)
            return bool(self.model.predict(x.reshape(-1)).complete)
        except Exception:
            if not self._failed.is_set():
                self._failed.set()
                log.warning("the end-of-turn model failed; turns end on silence alone from now on", exc_info=True)
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_shared: dict[tuple[str, float], EndOfTurnModel | None] = {}
_shared_lock = threading.Lock()


def end_of_turn_model(cfg: VADConfig, resolve: Callable[[str], Path] = Path) -> EndOfTurnModel | None:
    """The configured end-of-turn model, loaded once per process (None when ``vad.turn_model`` is
    null, or the file cannot be loaded: that is logged once and the silence rule used)."""
    if not cfg.turn_model:
        return None
    key = (str(resolve(cfg.turn_model)), cfg.turn_threshold)
    with _shared_lock:
        if key not in _shared:
            from pipeline.turn import SmartTurn

            try:
                _shared[key] = EndOfTurnModel(SmartTurn(key[0], threshold=cfg.turn_threshold))
            except Exception as e:
                log.warning("end-of-turn model off (%s); turns end on silence alone", e)
                _shared[key] = None
        return _shared[key]
