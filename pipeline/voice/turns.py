"""Turn-taking: from the VAD's view of the caller and what the bot asked, wait, speculate or end.

Silence alone cannot tell 「明日の、えーと、」 (a caller thinking) from 「明日の19時で。」 (a caller
done): both end in a pause. With an end-of-turn model configured (``vad.turn_model``, Smart Turn
v3.2), the utterance so far is classified at each short pause, in a worker thread (never on the
event loop or the audio path), and the silence that ends the turn follows its verdict: short
(``vad.turn_complete_silence_ms``) when it says complete, long (``vad.turn_incomplete_silence_ms``,
longer while a phone number is read) when it says incomplete. Until the verdict is back the turn
is taken as unfinished: only a "complete" ends it early. A model that is off, missing or failing
leaves the silence-only rule, the slot-aware ``vad.end_silence*`` waits (said once in the log).

Smart Turn hears prosody: a Japanese caller who stops after a particle with a falling tone
(「12月24日の、」) sounds finished to it. The early transcript of the same pause, which the turn's
reply needs anyway, has the words: one that ends on a connective particle, a filler or a comma
(:func:`sounds_unfinished`) turns a "complete" into an "incomplete"; so do some digits but no
whole number yet while a phone number is asked for (each group sounds finished). The other way
round, words that close a sentence (:func:`sounds_finished`), or a whole phone number when one is
asked for, turn an "incomplete" into no verdict: the silence rule decides.

:class:`TurnPolicy` is pure: it is given the numbers (voiced windows, trailing silence, what the bot
asked, whether the early transcript holds a whole phone number) and a verdict when there is one,
and answers :class:`Decision`. :class:`EndOfTurnModel` runs the model in its pool.
"""

from __future__ import annotations

import enum
import logging
import re
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
#: the rules agent's questions (``state.pending["kind"]``) that a yes or a no answers, whatever the
#: item being asked for (the caller's own number offered, a name or a guess checked, a change)
YES_NO_PENDING = frozenset({"caller_id", "name", "guess", "change", "end"})


# A Japanese phrase left hanging: a connective particle (の, を, が, は, と, も, や, から, けど, ...), a
# filler (えーと, あの, その, えー, まあ, うーん) or an adverb/conjunction that leads somewhere (特に,
# それで, あと). に and で are left out: 「7時に」「2名で」 are whole answers.
_UNFINISHED_JA = re.compile(
    r"(?:の|を|が|は|と|も|や|から|まで|けど|けれど|けども|ので|って|"
    r"えーと|えっと|ええと|えー+|あの+|あのー+|その+|そのー+|まあ|うーん|んー|"
    r"特に|とくに|それで|それから|あと|あとは|ただ|えっとですね)ー*$"
)
_UNFINISHED_EN = re.compile(
    r"\b(?:and|or|but|so|because|the|a|an|to|at|for|on|of|with|my|uh+|um+|er+|like|is|are)$", re.IGNORECASE)
#: a trailing comma in any script: whisper writes one where the speaker's voice stays up
_COMMA = ("、", ",", "，", "…", "...")


# figures, or digits read out in katakana; not kanji numerals: 「もう一度」 is no number
_DIGITS = re.compile(r"[0-9０-９]|ゼロ|イチ|ニー|サン|ヨン|ゴー|ロク|ナナ|ハチ|キュー")


def holds_digits(text: str) -> bool:
    """Some digits in the words: while a phone number is asked for, digits that do not make a
    whole number yet are a number being read."""
    return bool(_DIGITS.search(text))


# A Japanese sentence brought to its end: a polite predicate (です, ます, ません, ました, ください, ...),
# a yes or a no.
_FINISHED_JA = re.compile(r"(?:です|ます|ません|ました|でした|ましょう|ください|下さい|はい|いいえ|ない|ですか|ますか)$")


def sounds_finished(text: str) -> bool:
    """The words so far close a sentence (「特にありません」, "That's all."): Smart Turn, hearing a flat
    tone, may still call it unfinished."""
    t = text.strip()
    if not t or sounds_unfinished(t):
        return False
    if _FINISHED_JA.search(t.rstrip("。.!?！？ 　")):
        return True
    return t.endswith((".", "?", "!")) and t.isascii()


def sounds_unfinished(text: str) -> bool:
    """The words so far leave the sentence hanging (see the module docstring); ``text`` is a raw
    early transcript, final punctuation and all."""
    t = text.strip()
    if not t:
        return False
    if t.endswith(_COMMA):
        return True
    t = t.rstrip("。.!?！？ 　")
    return bool(_UNFINISHED_JA.search(t) or _UNFINISHED_EN.search(t))


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
            from pipeline.speech.turn import SmartTurn

            try:
                _shared[key] = EndOfTurnModel(SmartTurn(key[0], threshold=cfg.turn_threshold))
            except Exception as e:
                log.warning("end-of-turn model off (%s); turns end on silence alone", e)
                _shared[key] = None
        return _shared[key]
