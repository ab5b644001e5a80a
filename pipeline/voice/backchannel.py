"""A short burst said while the bot speaks: a backchannel (「はい」「ええ」, "uh-huh") or a barge-in.

Japanese callers say aizuchi over the bot all the time; they are listening, not interrupting, and
a bot that stops (and, on the phone, clears Twilio's buffer) at every one of them cannot finish a
read-back. While the bot is audible each burst of caller speech is judged here, window by window:

1. **length**: speech going on past ``vad.backchannel_max_ms`` from its first voiced window is a
   barge-in at once (a correction, a question: the bot stops within that time of the onset);
2. **energy**: a burst well above the caller's own speaking level (``vad.backchannel_loud_db``
   louder) is a barge-in at once (someone raising their voice to stop the bot);
3. **words**: a burst that ends (``vad.backchannel_gap_ms`` of silence) before that is transcribed
   (the STT worker), and it is a backchannel when its words are one (:func:`sounds_like_backchannel`:
   :func:`~pipeline.dialog.understand.is_backchannel`, or a few characters starting with one), or
   when nothing was heard; anything else is a barge-in. Speech resuming while the transcript is awaited goes back to the length rule.
4. **first words**: 「そうですね」「なるほど」 last 0.5-0.7 s, longer than the length rule allows. A burst
   still going after ``vad.backchannel_words_ms`` is transcribed so far: words that start like a
   backchannel (:func:`starts_like_backchannel`) give it up to ``vad.backchannel_long_ms``; other
   words (the start of a correction, a question) are a barge-in at once; nothing heard leaves the
   length rule as it was (while the words are awaited it allows ``WORDS_GRACE_MS`` more).

Until the verdict the bot goes on talking; nothing is cleared. What a 「はい」 *means* is the
dialog's: one said while the bot talks is listening; after the read-back has finished it is an
ordinary turn, the answer (the judge is only asked while the bot is audible).

Pure and synchronous: the listener (:mod:`.listener`) feeds it windows and hands it the transcript
when there is one.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from pipeline.config import VADConfig

#: how a backchannel starts, once lowercased and without punctuation: the first words of a long one
#: (「そうで…」「なる…」, whisper's guess at 0.2 s of 「なるほど」 is often 「な…」 and no more)
_STARTS = ("はい", "ええ", "うん", "ふん", "へえ", "ほう", "そう", "な", "ですね", "了解", "わか", "かしこま",
           "yeah", "yes", "yep", "uh", "mm", "m-", "hm", "ok", "right", "oh", "ah", "i see", "sure", "got", "all")


def starts_like_backchannel(words: str) -> bool:
    """The first words of a burst could be a backchannel's (「そうです」 of 「そうですね」)."""
    from pipeline.dialog.understand import is_backchannel

    t = words.strip().lower().lstrip("、,。. ")
    return bool(t) and (is_backchannel(t) or t.startswith(_STARTS))


#: a whole backchannel word a short burst's words may start with (「はいよ」「ええ、ええ」「うんうん」)
_WHOLE = ("はい", "ええ", "うん", "そう", "yeah", "yes", "okay", "ok", "mm", "uh-huh", "right")


def sounds_like_backchannel(words: str) -> bool:
    """The words of a whole burst are a backchannel: :func:`is_backchannel`, or a few characters that
    begin with one (whisper writes 「ええ」 as 「はいよ」) and leave nothing hanging (「ええと」 wants the floor)."""
    from pipeline.dialog.understand import is_backchannel
    from pipeline.voice.turns import sounds_unfinished

    t = words.strip().lower().rstrip("、,。.!！?？ ")
    if is_backchannel(t):
        return True
    return 0 < len(t) <= 4 and t.startswith(_WHOLE) and not sounds_unfinished(t)


#: how much longer than ``vad.backchannel_max_ms`` a burst may go on while its first words are awaited
WORDS_GRACE_MS = 64


class Burst(enum.Enum):
    PENDING = "pending"  # still listening to it
    TRANSCRIBE = "transcribe"  # it is over and short: its words decide (ask once, then PENDING)
    BACKCHANNEL = "backchannel"
    BARGE_IN = "barge_in"


def rms_db(window: np.ndarray) -> float:
    """A window's level in dBFS (int16 or float in [-1, 1])."""
    x = np.asarray(window, dtype=np.float32)
    if window.dtype == np.int16:
        x = x / 32768.0
    rms = math.sqrt(float(np.dot(x, x)) / x.size) if x.size else 0.0
    return 20 * math.log10(max(rms, 1e-6))


@dataclass
class BurstJudge:
    """One burst's verdict. ``caller_db``: the caller's usual speaking level (None: unknown, the
    energy rule is off). :meth:`window` answers ``TRANSCRIBE`` when the burst's words are wanted
    (once early, while it goes on; once when it ends); :meth:`transcript` takes them."""

    cfg: VADConfig
    window_ms: float
    caller_db: float | None = None
    elapsed_ms: float = 0.0  # since the burst's first voiced window
    silence_ms: float = 0.0  # trailing silence
    voiced_ms: float = 0.0
    peak_db: float = -120.0
    verdict: Burst = Burst.PENDING
    asked: str | None = None  # which words were asked for: "early" (the burst so far), "final", None
    early_asked: bool = False
    long: bool = False  # its first words are a backchannel's: it may last backchannel_long_ms

    @property
    def decided(self) -> bool:
        return self.verdict in (Burst.BACKCHANNEL, Burst.BARGE_IN)

    def window(self, voiced: bool, level_db: float) -> Burst:
        """One more VAD window of the burst (the first call is its first voiced window)."""
        if self.decided:
            return self.verdict
        cfg = self.cfg
        self.elapsed_ms += self.window_ms
        if voiced:
            self.voiced_ms += self.window_ms
            self.silence_ms = 0.0
            self.peak_db = max(self.peak_db, level_db)
            if self.asked == "final":
                self.asked = None  # it goes on: the transcript asked for is of part of it
            loud = cfg.backchannel_loud_db
            if loud is not None and self.caller_db is not None and self.peak_db >= self.caller_db + loud:
                return self._set(Burst.BARGE_IN)
            limit = cfg.backchannel_long_ms if self.long else cfg.backchannel_max_ms
            if self.asked == "early":
                limit += WORDS_GRACE_MS  # its first words are on their way: a little longer for them
            if self.elapsed_ms >= limit:
                return self._set(Burst.BARGE_IN)
            if not self.early_asked and cfg.backchannel_words_ms and self.elapsed_ms >= cfg.backchannel_words_ms:
                self.early_asked = True
                self.asked = "early"
                return Burst.TRANSCRIBE
            return Burst.PENDING
        self.silence_ms += self.window_ms
        if self.asked != "final" and self.silence_ms >= cfg.backchannel_gap_ms:
            self.asked = "final"
            return Burst.TRANSCRIBE
        return Burst.PENDING

    def transcript(self, text: str | None) -> Burst:
        """The words asked for last (None: the transcription failed)."""
        if self.decided or self.asked is None:
            return self.verdict  # decided meanwhile, or stale (the caller went on)
        words = None if text is None else text.strip()
        if self.asked == "early":
            self.asked = None
            if words:  # nothing heard yet, or a failure: the length rule stands
                if not starts_like_backchannel(words):
                    return self._set(Burst.BARGE_IN)
                self.long = True
            return self.verdict
        if words is None:
            return self._set(Burst.BARGE_IN)  # when in doubt, the caller has the floor
        return self._set(Burst.BACKCHANNEL if not words or sounds_like_backchannel(words) else Burst.BARGE_IN)

    def timed_out(self) -> Burst:
        """No transcript of the ended burst in time: the caller has the floor."""
        return self.verdict if self.decided else self._set(Burst.BARGE_IN)

    def _set(self, verdict: Burst) -> Burst:
        self.verdict = verdict
        return verdict
