"""Text as the finders read it: normalisation, language, numerals as digits, and the candidate
machinery every slot finder shares (spans claimed by priority, negated candidates dropped)."""

from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

log = logging.getLogger(__name__)

IsOpen = Callable[[dt.time], bool]

# --------------------------------------------------------------------------- normalisation

_DASH_RE = re.compile("[\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d]")
_ZERO_WIDTH_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_SPACE_RE = re.compile(r"\s+")
# Whisper sometimes writes the katakana long-vowel mark where a caller said "hyphen" in a number.
_CHOONPU_DASH_RE = re.compile(r"(?<=\d)\s*ー\s*(?=\d)")


#: the most of one utterance any parser reads; the rest is ignored (callers do not talk for pages, and
#: every finder stays linear-time on a bounded input)
MAX_UTTERANCE = 500


def normalize(text: str) -> str:
    """NFKC (full-width digits/letters to half-width), one kind of dash and space, stripped; at most
    :data:`MAX_UTTERANCE` characters."""
    if not isinstance(text, str) or not text:
        return ""
    t = unicodedata.normalize("NFKC", _ZERO_WIDTH_RE.sub("", text[: MAX_UTTERANCE * 2]))[:MAX_UTTERANCE]
    t = _DASH_RE.sub("-", t)
    t = _CHOONPU_DASH_RE.sub("-", t)
    t = _SPACE_RE.sub(" ", t)
    return t.strip()


_JA_CHAR_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\u3005\uff66-\uff9f]")
_LATIN_RE = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> Literal["ja", "en"] | None:
    t = normalize(text)
    if _JA_CHAR_RE.search(t):
        return "ja"
    if _LATIN_RE.search(t):
        return "en"
    return None


# --------------------------------------------------------------------------- numbers

_KANJI_DIGITS = {
    "〇": 0,
    "零": 0,
    "一": 1,
    "二": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_KANJI_UNITS = {"十": 10, "百": 100, "千": 1000}
_KANJI_NUM_RE = re.compile("[〇零一二三四五六七八九十百千]+")


def _kanji_number(s: str) -> str:
    if not any(c in _KANJI_UNITS for c in s):
        # "二〇二六", "〇九〇": read digit by digit, keeping leading zeros
        return "".join(str(_KANJI_DIGITS[c]) for c in s)
    total, cur = 0, None
    for c in s:
        if c in _KANJI_DIGITS:
            cur = _KANJI_DIGITS[c] if cur is None else cur * 10 + _KANJI_DIGITS[c]
        else:
            total += (1 if cur is None else cur) * _KANJI_UNITS[c]
            cur = None
    return str(total + (cur or 0))


_EN_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_EN_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_EN_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_EN_ORD_UNITS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
}
_EN_ORD_OTHER = {
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
    "twentieth": 20,
    "thirtieth": 30,
}
_MONTHS = {
    "january": 1,
    "jan": 1,
    "february": 2,
    "feb": 2,
    "march": 3,
    "mar": 3,
    "april": 4,
    "apr": 4,
    "may": 5,
    "june": 6,
    "jun": 6,
    "july": 7,
    "jul": 7,
    "august": 8,
    "aug": 8,
    "september": 9,
    "sept": 9,
    "sep": 9,
    "october": 10,
    "oct": 10,
    "november": 11,
    "nov": 11,
    "december": 12,
    "dec": 12,
}
_MONTH_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))


def _alt(words: Iterable[str]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_EN_CARD_RE = re.compile(
    rf"\b(?:({_alt(_EN_TENS)})(?:[\s-]({_alt(_EN_UNITS)}))?|({_alt(_EN_TEENS)})|({_alt(_EN_UNITS)}))\b"
)
_EN_ORD_RE = re.compile(
    rf"\b(?:(twenty|thirty)[\s-]({_alt(_EN_ORD_UNITS)})|({_alt(_EN_ORD_OTHER)})|({_alt(_EN_ORD_UNITS)}))\b"
)
# an ordinal word is a day of the month only in a date context ("the fourth", "December fourth", "fourth of")
_ORD_BEFORE_RE = re.compile(rf"(?:\bthe|\bon|\b(?:{_MONTH_ALT}))\.?\s+$")
_ORD_AFTER_RE = re.compile(r"^\s+of\b")


def _ordinal_suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _en_card_sub(m: re.Match[str]) -> str:
    if m.group(1):
        return str(_EN_TENS[m.group(1)] + (_EN_UNITS[m.group(2)] if m.group(2) else 0))
    if m.group(3):
        return str(_EN_TEENS[m.group(3)])
    return str(_EN_UNITS[m.group(4)])


def _en_ord_sub(m: re.Match[str]) -> str:
    t = m.string
    if not (_ORD_BEFORE_RE.search(t, 0, m.start()) or _ORD_AFTER_RE.match(t[m.end() : m.end() + 6])):
        return m.group(0)
    if m.group(1):
        n = _EN_TENS[m.group(1)] + _EN_ORD_UNITS[m.group(2)]
    elif m.group(3):
        n = _EN_ORD_OTHER[m.group(3)]
    else:
        n = _EN_ORD_UNITS[m.group(4)]
    return f"{n}{_ordinal_suffix(n)}"


_EN_THREE_MISHEARD_RE = re.compile(r"\b(?:free|tree)(?=\s+(?:people|persons|guests|adults|of us)\b)")


def _prep(text: str) -> str:
    """The form the date/time/party finders read: digits for every numeral, lower case."""
    t = normalize(text)
    t = _KANJI_NUM_RE.sub(lambda m: _kanji_number(m.group(0)), t)
    t = t.lower()
    # whisper's English for "three" before a count of people ("make it free people")
    t = _EN_THREE_MISHEARD_RE.sub("three", t)
    t = _EN_ORD_RE.sub(_en_ord_sub, t)
    t = _EN_CARD_RE.sub(_en_card_sub, t)
    return t


# --------------------------------------------------------------------------- candidates


class _Cand(NamedTuple):
    start: int
    end: int
    value: Any
    tag: str = ""


def _claim(cands: Iterable[_Cand], taken: list[tuple[int, int]]) -> list[_Cand]:
    """Keep candidates (given in priority order) whose span no earlier one has taken."""
    out = []
    for c in cands:
        if any(c.start < e and s < c.end for s, e in taken):
            continue
        taken.append((c.start, c.end))
        out.append(c)
    return out


_NEG_AFTER_RE = re.compile(
    r"^\s*(?:の|で|に|は)?\s*(?:じゃなくて|じゃなく|ではなくて|ではなく|でなくて|でなく|じゃない|ではない|じゃありません|ではありません)"
)
_NEG_BEFORE_RE = re.compile(r"\b(?:not|instead of|rather than)\s+(?:(?:on|at|for|the|be)\s+)*$")


def _negated(t: str, c: _Cand) -> bool:
    return bool(
        _NEG_AFTER_RE.match(t[c.end : c.end + 12]) or _NEG_BEFORE_RE.search(t[max(0, c.start - 24) : c.start])
    )


def _live(t: str, cands: Iterable[_Cand]) -> list[_Cand]:
    return sorted((c for c in cands if not _negated(t, c)), key=lambda c: c.start)


def _last_value(t: str, cands: Iterable[_Cand]) -> Any:
    live = _live(t, cands)
    return live[-1].value if live else None


