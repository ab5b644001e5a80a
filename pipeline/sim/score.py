"""Scoring what was heard against what was said: word error rate for English, character error rate
for Japanese, on written text or on its reading.

Written-text units (:func:`units`) compare whisper's output with a reference as written; Japanese
then counts 十九時 against 19時 as errors. :func:`spoken_units` compares what was *said*: Japanese as
its katakana reading (Open JTalk's), so 19時, 十九時 and じゅうくじ are the same, and a name in the
wrong kanji but the right sound is right; English as normalised words. Fillers (えーと, um) are
left out on both sides: whisper drops them more often than not, and they carry nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
NUMBER_WORDS = {w: n for n, w in enumerate(_UNITS)}


def _english_numbers(words: list[str]) -> list[str]:
    """Number words as digits: zero..nineteen, the tens, and tens followed by a unit (thirty five)."""
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in _TENS:
            n = _TENS[w]
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if 1 <= NUMBER_WORDS.get(nxt, 0) <= 9:
                n += NUMBER_WORDS[nxt]
                i += 1
            out.append(str(n))
        elif w in NUMBER_WORDS:
            out.append(str(NUMBER_WORDS[w]))
        else:
            out.append(w)
        i += 1
    return out


def normalize_en(text: str) -> list[str]:
    """Words for English scoring: lowercase, apostrophes and the dots of p.m. dropped, other punctuation a space, number
    words as digits, and every digit a word of its own (so "7:30", "7.30" and "seven thirty", or
    "090-1234" and "zero nine zero one two three four", score alike)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("'", "").replace("\u2019", "")
    text = re.sub(r"(?<=\b[a-z])\.(?=[a-z]\b)", "", text)  # p.m. -> pm, u.s. -> us
    text = re.sub(r"[^\w]+|_", " ", text)
    text = re.sub(r"(?<=\d)(?=[^\W\d])|(?<=[^\W\d])(?=\d)", " ", text)  # 7pm -> 7 pm, 24th -> 24 th
    out: list[str] = []
    for w in _english_numbers(text.split()):
        out.extend(list(w) if w.isdigit() else [w])
    return out


def normalize_ja(text: str) -> list[str]:
    """Characters for Japanese scoring: NFKC (full-width digits and letters to ASCII, half-width kana
    to full-width), lowercase, no spaces, punctuation or symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return [c for c in text if unicodedata.category(c)[0] not in "PSZC"]


def units(text: str, language: str) -> list[str]:
    """The units the error rate counts: words in English, characters in Japanese."""
    return normalize_en(text) if language == "en" else normalize_ja(text)


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance: the substitutions, deletions and insertions that turn ``ref`` into ``hyp``."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


# ------------------------------------------------------------------------------------------ by sound
FILLERS = {
    "ja": ("えーっと", "えーと", "えっと", "えー", "あのー", "あのう", "うーん", "んー", "まあ", "あの、"),
    "en": ("uh", "um", "umm", "er", "erm", "hmm", "uhm"),
}
_JA_FILLER = re.compile("(?:" + "|".join(map(re.escape, FILLERS["ja"])) + ")[、,，]?")
_KATAKANA = re.compile(r"[\u30a1-\u30f6]")


def strip_fillers(text: str, language: str) -> str:
    if language == "en":
        return " ".join(w for w in text.split() if w.strip(",.!?").lower() not in FILLERS["en"])
    return _JA_FILLER.sub("", text)


def reading(text: str) -> str:
    """The katakana reading of Japanese ``text`` (Open JTalk's), long-vowel marks dropped
    (じゅう and ジュー read alike), anything without a reading left out."""
    from pipeline.dialog.understand.sound import kana_of  # the front end's one lock

    text = unicodedata.normalize("NFKC", text).strip()
    if not text:
        return ""
    return "".join(_KATAKANA.findall(kana_of(text)))


def spoken_units(text: str, language: str) -> list[str]:
    """What the error rate by sound counts: words in English, reading characters in Japanese."""
    text = strip_fillers(text or "", language)
    return normalize_en(text) if language == "en" else list(reading(text))


@dataclass
class ErrorCount:
    """Edits against reference units, summed over utterances: ``rate`` is their WER or CER."""

    edits: int = 0
    total: int = 0

    def add(self, other: ErrorCount) -> ErrorCount:
        self.edits += other.edits
        self.total += other.total
        return self

    def __add__(self, other: ErrorCount) -> ErrorCount:
        return ErrorCount(self.edits + other.edits, self.total + other.total)

    @property
    def rate(self) -> float | None:
        return round(self.edits / self.total, 4) if self.total else None


def error_count(reference: str, heard: str, language: str) -> ErrorCount:
    """Edits by sound between what was said and what was heard (:func:`spoken_units`)."""
    ref, hyp = spoken_units(reference, language), spoken_units(heard, language)
    return ErrorCount(edit_distance(ref, hyp), len(ref))
