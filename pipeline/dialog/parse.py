"""Deterministic parsers for what restaurant callers say and what Whisper writes (Japanese and English).

Everything here is pure: text in, values out, relative to a clock that is passed in. No I/O.

How the slot parsers work: the utterance is prepared once (NFKC, kanji numerals and English number
words turned into digits, lower case), every pattern for a slot yields *candidates* with their span,
more specific patterns claim their span first, and the last candidate that is not negated
("7時じゃなくて8時", "not the 24th") wins, because callers correct themselves mid-sentence.
`extract_slots` runs the same finders with one shared set of claimed spans, which is what keeps the
numbers of one slot from leaking into another ("12月24日の7時、2名").
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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


def _prep(text: str) -> str:
    """The form the date/time/party finders read: digits for every numeral, lower case."""
    t = normalize(text)
    t = _KANJI_NUM_RE.sub(lambda m: _kanji_number(m.group(0)), t)
    t = t.lower()
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


# --------------------------------------------------------------------------- dates


def _mk_date(y: int, m: int, d: int) -> dt.date | None:
    try:
        return dt.date(y, m, d)
    except ValueError:
        return None


def _next_month_day(today: dt.date, m: int, d: int) -> dt.date | None:
    """The next M/D to come (today counts); a few years ahead so 2月29日 finds a leap year."""
    for y in range(today.year, today.year + 5):
        cand = _mk_date(y, m, d)
        if cand is not None and cand >= today:
            return cand
    return None


def _next_day_of_month(today: dt.date, d: int) -> dt.date | None:
    if not 1 <= d <= 31:
        return None
    for k in range(13):
        y, mo = divmod(today.month - 1 + k, 12)
        cand = _mk_date(today.year + y, mo + 1, d)
        if cand is not None and cand >= today:
            return cand
    return None


def _add_months(today: dt.date, k: int, d: int) -> dt.date | None:
    y, mo = divmod(today.month - 1 + k, 12)
    return _mk_date(today.year + y, mo + 1, d)


def _weekday_date(today: dt.date, wd: int, mode: str) -> dt.date:
    if mode == "upcoming":  # today counts
        return today + dt.timedelta(days=(wd - today.weekday()) % 7)
    if mode == "after":  # strictly after today
        return today + dt.timedelta(days=(wd - today.weekday()) % 7 or 7)
    monday = today - dt.timedelta(days=today.weekday())
    weeks = 2 if mode == "week_after" else 1
    return monday + dt.timedelta(days=7 * weeks + wd)


_JA_WD = {"月": 0, "火": 1, "水": 2, "木": 3, "金": 4, "土": 5, "日": 6}
_EN_WD = {"monday": 0, "tuesday": 1, "wednesday": 2, "thursday": 3, "friday": 4, "saturday": 5, "sunday": 6}
_EN_WD_ALT = _alt(_EN_WD)

_D_YMD_JA = re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日?")
_D_YMD_NUM = re.compile(r"(?<![\d/.-])(\d{4})[/.-](\d{1,2})[/.-](\d{1,2})(?![\d/.-])")
_D_MD_JA = re.compile(
    r"(?:(今年|来年|再来年)\s*の?\s*)?(?<![\d/.])(\d{1,2})\s*月\s*(\d{1,2})(?:\s*日)?(?![\d時:])"
)
_D_MD_EN = re.compile(
    rf"\b({_MONTH_ALT})\.?\s*(?:the\s+)?(\d{{1,2}})(?:st|nd|rd|th)?(?![\d:])(?!\s*(?:people|persons?|guests|of us|[ap]\.?m\b|o'?\s?clock))(?:,?\s*(\d{{4}})\b)?"
)
_D_DM_EN = re.compile(
    rf"\b(?:the\s+)?(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_ALT})\b\.?(?:,?\s*(\d{{4}})\b)?"
)
_D_SLASH = re.compile(r"(?<![\d/.:-])(\d{1,2})/(\d{1,2})(?![\d/])")
_D_REL_MONTH_JA = re.compile(r"(今月|来月|再来月)\s*の?\s*(\d{1,2})\s*日")
_D_REL = [
    (re.compile(r"明々後日|明明後日|しあさって"), 3),
    (re.compile(r"明後日|あさって|\b(?:the\s+)?day after tomorrow\b"), 2),
    (re.compile(r"明日|あした|明晩|\btomorrow\b"), 1),
    (re.compile(r"今日|きょう|本日|今夜|今晩|今宵|\btoday\b|\btonight\b"), 0),
]
_D_WD_JA = re.compile(r"(再来週|来週|今週|次|今度|この)?\s*の?\s*([月火水木金土日])曜(?:日)?")
# "3日後", "1週間後", "2ヶ月後"; "in three days", "a week from today", "two weeks from now"
_D_OFFSET_JA = re.compile(r"(?:今日から|本日から|今から)?\s*(\d{1,3})\s*(日|週間|週|か月|ヶ月|カ月|ケ月|ヵ月)\s*(?:後|先|あと)")
_D_OFFSET_EN = re.compile(
    r"\b(?:in\s+(a|an|\d{1,3})\s+(days?|weeks?|months?)(?:'?\s*time)?(?:\s+from\s+(?:today|now))?"
    r"|(a|an|\d{1,3})\s+(days?|weeks?|months?)\s+(?:from\s+(?:today|now)|later|after\s+today|out))\b"
)
# the weekday said with an explicit date ("12月24日、木曜日", "Thursday, December 24th") names the same day
_WD_GAP_RE = re.compile(r"^[\s、,の(（)）]*$")
_D_WD_EN_NEXTWEEK = re.compile(rf"\b(next week|the week after next)(?:\s+on)?\s+({_EN_WD_ALT})\b")
_D_WD_EN = re.compile(
    rf"\b(?:(this coming|this|next|coming|on)\s+)?({_EN_WD_ALT})s?\b(?:\s+(next week|this week|after next))?"
)
_D_DAY_JA = re.compile(r"(?<![\d月/.:年])(\d{1,2})\s*日(?!間|前|後|目|曜|本|中)")
_D_DAY_EN = re.compile(
    r"\b(?:on\s+)?(?:the\s+)?(\d{1,2})(?:st|nd|rd|th)\b"
    r"(?!\s+(?:time|one|floor|course|of us|person|people|table|seat|option|choice|try|call|year|anniversary|birthday))"
)


def _date_cands(t: str, today: dt.date) -> list[_Cand]:
    """Date candidates in priority order (most specific first)."""
    out: list[_Cand] = []

    def add(m: re.Match[str], value: dt.date | None, tag: str = "") -> None:
        out.append(_Cand(m.start(), m.end(), value, tag))

    for m in _D_YMD_JA.finditer(t):
        add(m, _mk_date(int(m.group(1)), int(m.group(2)), int(m.group(3))), "abs")
    for m in _D_YMD_NUM.finditer(t):
        add(m, _mk_date(int(m.group(1)), int(m.group(2)), int(m.group(3))), "abs")
    for m in _D_MD_JA.finditer(t):
        mo, d = int(m.group(2)), int(m.group(3))
        if m.group(1) in ("来年", "再来年"):
            add(m, _mk_date(today.year + (1 if m.group(1) == "来年" else 2), mo, d), "abs")
        elif m.group(1) == "今年":
            add(m, _mk_date(today.year, mo, d), "abs")
        else:
            add(m, _next_month_day(today, mo, d), "abs")
    for rx, mi, di in ((_D_MD_EN, 1, 2), (_D_DM_EN, 2, 1)):
        for m in rx.finditer(t):
            mo, d = _MONTHS[m.group(mi)], int(m.group(di))
            y = m.group(3)
            add(m, _mk_date(int(y), mo, d) if y else _next_month_day(today, mo, d), "abs")
    for m in _D_SLASH.finditer(t):
        add(m, _next_month_day(today, int(m.group(1)), int(m.group(2))), "abs")
    for m in _D_REL_MONTH_JA.finditer(t):
        add(m, _add_months(today, {"今月": 0, "来月": 1, "再来月": 2}[m.group(1)], int(m.group(2))))
    for m in _D_OFFSET_JA.finditer(t):
        n, unit = int(m.group(1)), m.group(2)
        if unit == "日":
            add(m, today + dt.timedelta(days=n))
        elif unit.startswith("週"):
            add(m, today + dt.timedelta(weeks=n))
        else:
            add(m, _shift_months(today, n))
    for m in _D_OFFSET_EN.finditer(t):
        num, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        n = 1 if num in ("a", "an") else int(num)
        if unit.startswith("day"):
            add(m, today + dt.timedelta(days=n))
        elif unit.startswith("week"):
            add(m, today + dt.timedelta(weeks=n))
        else:
            add(m, _shift_months(today, n))
    for rx, days in _D_REL:
        for m in rx.finditer(t):
            add(m, today + dt.timedelta(days=days))
    for m in _D_WD_JA.finditer(t):
        mode = {"来週": "next_week", "再来週": "week_after", "次": "after", "今度": "after"}.get(
            m.group(1) or "", "upcoming"
        )
        add(m, _weekday_date(today, _JA_WD[m.group(2)], mode), "wd" if not m.group(1) else "")
    for m in _D_WD_EN_NEXTWEEK.finditer(t):
        add(
            m,
            _weekday_date(
                today, _EN_WD[m.group(2)], "next_week" if m.group(1) == "next week" else "week_after"
            ),
        )
    for m in _D_WD_EN.finditer(t):
        pre, suf = m.group(1) or "", m.group(3) or ""
        if suf == "next week" or pre == "next":
            mode = "next_week"
        elif suf == "after next":
            mode = "week_after"
        else:
            mode = "upcoming"
        add(m, _weekday_date(today, _EN_WD[m.group(2)], mode), "wd" if not (pre or suf) or pre == "on" else "")
    for rx in (_D_DAY_JA, _D_DAY_EN):
        for m in rx.finditer(t):
            add(m, _next_day_of_month(today, int(m.group(1))), "abs")
    return out


def _shift_months(today: dt.date, k: int) -> dt.date | None:
    y, mo = divmod(today.month - 1 + k, 12)
    for d in range(today.day, 27, -1):  # "1ヶ月後" of January 31st is the end of February
        got = _mk_date(today.year + y, mo + 1, d)
        if got is not None:
            return got
    return _mk_date(today.year + y, mo + 1, min(today.day, 28))


def _with_weekdays(t: str, cands: list[_Cand]) -> tuple[list[_Cand], list[tuple[dt.date, dt.date]]]:
    """Fold a bare weekday said next to an explicit date into that date.

    "12月24日、木曜日" is one day, not two. When the weekday does not match the date's, the pair comes
    back as a conflict (the date, and the weekday's next date) for the caller to settle.
    """
    absolute = [c for c in cands if c.tag == "abs" and c.value is not None]
    keep: list[_Cand] = []
    conflicts: list[tuple[dt.date, dt.date]] = []
    for c in cands:
        if c.tag != "wd" or c.value is None:
            keep.append(c)
            continue
        partner = next(
            (a for a in absolute
             if (a.end <= c.start and _WD_GAP_RE.match(t[a.end : c.start]))
             or (c.end <= a.start and _WD_GAP_RE.match(t[c.end : a.start]))),
            None,
        )
        if partner is None:
            keep.append(c)
        elif partner.value.weekday() != c.value.weekday():
            conflicts.append((partner.value, c.value))
    return keep, conflicts


def parse_date(text: str, today: dt.date) -> dt.date | None:
    t = _prep(text)
    if not t:
        return None
    cands, conflicts = _with_weekdays(t, _claim(_date_cands(t, today), []))
    if conflicts:
        return None  # a date whose weekday does not match is asked about, never guessed
    return _last_value(t, cands)


# --------------------------------------------------------------------------- times


def _safe_open(is_open: IsOpen, t: dt.time) -> bool:
    try:
        return bool(is_open(t))
    except Exception:  # a broken predicate must not break parsing; treat as "unknown"
        log.debug("is_open raised for %s", t, exc_info=True)
        return False


def _resolve_bare(h: int, m: int, is_open: IsOpen | None) -> int:
    """The 24-hour hour for an hour said with no am/pm marker."""
    if not 1 <= h <= 11:
        return h
    if is_open is not None:
        said, evening = _safe_open(is_open, dt.time(h, m)), _safe_open(is_open, dt.time(h + 12, m))
        if evening and not said:
            return h + 12
        if said and not evening:
            return h
    # people book dinner: "7時" means 19:00, but "11時" is lunch
    return h + 12 if h <= 9 else h


def _apply_part(h: int, m: int, part: str | None, is_open: IsOpen | None) -> int:
    if part is None:
        return _resolve_bare(h, m, is_open)
    if part == "am":
        return 0 if h == 12 else h
    if part == "pm":
        return h + 12 if h < 12 else h
    # midday ("昼の1時", "lunch at 2"): early afternoon hours are pm, 11 and 12 as said
    return h + 12 if 1 <= h <= 6 else h


_PART_BEFORE_RE = re.compile(
    r"(午前|ごぜん|深夜|朝|morning)|(午後|ごご|夕方|夕|夜|晩|ディナー|evening|night|dinner)|(お昼|昼|ランチ|afternoon|lunch)"
)
_PART_AFTER_RE = re.compile(
    r"^\s*(?:(a\.?\s?m\b\.?|in the morning|this morning)|(p\.?\s?m\b\.?|in the evening|this evening|at night|tonight)"
    r"|(in the afternoon|this afternoon))"
)
_PART_NAMES = ("am", "pm", "mid")

_NOT_PEOPLE = r"(?!\s*(?:people|persons?|guests?|of us|adults?|children|kids?|pax|名|人|st\b|nd\b|rd\b|th\b|minutes?|hours?|days?|weeks?|months?|years?|%))"
_T_JA = re.compile(
    r"(?<![\d.:/])(\d{1,2})\s*時\s*(?:(半)|(\d{1,2})\s*分|(\d{2})(?![\d名人日月様分]))?(?!間(?!違))"
)
_T_SHOGO = re.compile(r"正午|\bnoon\b|\bmidday\b")
_T_MIDNIGHT = re.compile(r"\bmidnight\b")
_T_COLON = re.compile(r"(?<![\d.:/])(\d{1,2}):(\d{2})(?![\d:])")
_T_PAST = re.compile(
    r"\b(half|quarter|\d{1,2})(?:\s+minutes?)?\s+(past|after|to|before)\s+(\d{1,2})\b(?![\d:])"
)
_T_OCLOCK = re.compile(r"(?<![\d.:/])(\d{1,2})\s*o'?\s?clock\b")
_T_HM_WORDS = re.compile(
    r"(?<![\d.:/,-])\b(\d{1,2})\s+(00|05|10|15|20|25|30|35|40|45|50|55)\b(?![\d:/])" + _NOT_PEOPLE
)
_T_MARKED = re.compile(
    r"(?<![\d.:/])(\d{1,2})(?=\s*(?:[ap]\.?\s?m\b|in the (?:morning|afternoon|evening)|at night|tonight|this (?:morning|afternoon|evening)))"
)
_T_AT = re.compile(
    r"\b(?:at|around|about|by|from|until|till|after|before)\s+(\d{1,2})\b(?![\d:/])" + _NOT_PEOPLE
)


def _time_cands(t: str, is_open: IsOpen | None) -> list[_Cand]:
    raw: list[tuple[int, int, int, int, int, str]] = []  # start, end, hour said, minute, delta, tag

    for m in _T_JA.finditer(t):
        minute = 30 if m.group(2) else int(m.group(3) or m.group(4) or 0)
        raw.append((m.start(), m.end(), int(m.group(1)), minute, 0, ""))
    for m in _T_SHOGO.finditer(t):
        raw.append((m.start(), m.end(), 12, 0, 0, "fixed"))
    for m in _T_MIDNIGHT.finditer(t):
        raw.append((m.start(), m.end(), 0, 0, 0, "fixed"))
    for m in _T_COLON.finditer(t):
        raw.append((m.start(), m.end(), int(m.group(1)), int(m.group(2)), 0, ""))
    for m in _T_PAST.finditer(t):
        amount = {"half": 30, "quarter": 15}.get(m.group(1)) or int(m.group(1))
        if amount >= 60:
            continue
        forward = m.group(2) in ("past", "after")
        raw.append((m.start(), m.end(), int(m.group(3)), 0, amount if forward else -amount, ""))
    for m in _T_OCLOCK.finditer(t):
        raw.append((m.start(), m.end(), int(m.group(1)), 0, 0, ""))
    for m in _T_HM_WORDS.finditer(t):
        raw.append((m.start(), m.end(), int(m.group(1)), int(m.group(2)), 0, "weak"))
    for m in _T_MARKED.finditer(t):
        raw.append((m.start(), m.end(), int(m.group(1)), 0, 0, ""))
    for m in _T_AT.finditer(t):
        raw.append((m.start(1), m.end(), int(m.group(1)), 0, 0, "weak"))

    out = []
    for start, end, h, minute, delta, tag in raw:
        if h > 24 or minute > 59 or (h == 24 and (minute or delta)):
            out.append(_Cand(start, end, None, tag))
            continue
        if tag == "fixed":
            out.append(_Cand(start, end, dt.time(h, minute), ""))
            continue
        part = None
        after = _PART_AFTER_RE.match(t[end : end + 20])
        if after:
            # the span stays on the number: "tonight" after "7" is also the date word
            part = _PART_NAMES[next(i for i in range(3) if after.group(i + 1))]
        else:
            before = list(_PART_BEFORE_RE.finditer(t[max(0, start - 16) : start]))
            if before:
                last = before[-1]
                part = _PART_NAMES[next(i for i in range(3) if last.group(i + 1))]
        hour = 0 if h == 24 else _apply_part(h, minute, part, is_open)
        total = (hour * 60 + minute + delta) % (24 * 60)
        out.append(_Cand(start, end, dt.time(total // 60, total % 60), tag))
    return out


def parse_time(text: str, is_open: IsOpen | None = None) -> dt.time | None:
    t = _prep(text)
    if not t:
        return None
    taken: list[tuple[int, int]] = []
    # dates claim their digits first so "12月24日" or "the 24th" is never read as a time
    _claim(_date_cands(t, dt.date(2000, 1, 1)), taken)
    return _last_value(t, _claim(_time_cands(t, is_open), taken))


# --------------------------------------------------------------------------- party size

_KANA_PEOPLE = {
    "ひとり": 1,
    "ふたり": 2,
    "さんにん": 3,
    "よにん": 4,
    "ごにん": 5,
    "ろくにん": 6,
    "しちにん": 7,
    "ななにん": 7,
    "はちにん": 8,
    "きゅうにん": 9,
    "くにん": 9,
    "じゅうにん": 10,
}
_P_JA = re.compile(
    r"(?<![\d.:/-])(\d{1,3})\s*(?:名|人|めい|にん)(?:様|さま)?(?!目|前|分|間|数|気|生|件|組|称|物|中)"
)
_P_KANA = re.compile(rf"(?<![ぁ-ゖ])({_alt(_KANA_PEOPLE)})")
_P_EN_NOUN = re.compile(
    r"\b(\d{1,3})\s+(people|persons?|guests?|adults?|diners|pax|children|kids?|child|babies|baby|infants?|toddlers?|of us)\b"
)
_AFTER_NUM_NOT_PARTY = (
    r"(?![\d:])(?!\s*(?:[ap]\.?\s?m\b|o'?\s?clock|st\b|nd\b|rd\b|th\b|minutes?|hours?|days?|nights?|weeks?|months?|years?"
    r"|in the|tonight|at night|this (?:morning|evening|afternoon)|%|時|日|月|年))"
)
_P_EN_OF = re.compile(
    r"\b(?:party|group|table|reservation|booking|room|seats?)\s+(?:of|for)\s+(?:a\s+)?(\d{1,3})\b"
    + _AFTER_NUM_NOT_PARTY
)
_P_EN_FOR = re.compile(r"\bfor\s+(\d{1,3})\b" + _AFTER_NUM_NOT_PARTY)
_P_EN_WE = re.compile(
    r"\b(?:we are|we're|we will be|we'll be|there are|there will be|there'll be)\s+(\d{1,3})\b"
    + _AFTER_NUM_NOT_PARTY
)
_P_EN_ONE = re.compile(
    r"\b(?:just|only)\s+(?:me|myself|1|1 person)\b(?!\s+and)|\bby myself\b|\bon my own\b|\balone\b"
)
_P_EN_A_CHILD = re.compile(r"\b(?:a|an|plus a|and a)\s+(child|kid|baby|toddler|infant)\b")
_CHILD_BEFORE_RE = re.compile(
    r"(子供|子ども|こども|お子様|お子さん|幼児|赤ちゃん|乳児|キッズ|小学生|未就学児)\s*(?:が|は|も)?\s*$"
)
_ADULT_BEFORE_RE = re.compile(r"(大人|おとな)\s*(?:が|は|も)?\s*$")
_CHILD_NOUNS = {
    "children",
    "kids",
    "kid",
    "child",
    "babies",
    "baby",
    "infant",
    "infants",
    "toddler",
    "toddlers",
}


def _party_cands(t: str) -> list[_Cand]:
    out: list[_Cand] = []
    for m in _P_JA.finditer(t):
        before = t[max(0, m.start() - 8) : m.start()]
        tag = "group" if (_CHILD_BEFORE_RE.search(before) or _ADULT_BEFORE_RE.search(before)) else ""
        out.append(_Cand(m.start(), m.end(), int(m.group(1)), tag))
    for m in _P_KANA.finditer(t):
        out.append(_Cand(m.start(), m.end(), _KANA_PEOPLE[m.group(1)]))
    for m in _P_EN_NOUN.finditer(t):
        tag = "group" if m.group(2) in _CHILD_NOUNS or m.group(2).startswith("adult") else ""
        out.append(_Cand(m.start(), m.end(), int(m.group(1)), tag))
    for m in _P_EN_A_CHILD.finditer(t):
        out.append(_Cand(m.start(), m.end(), 1, "group"))
    for rx in (_P_EN_OF, _P_EN_WE, _P_EN_FOR):
        for m in rx.finditer(t):
            out.append(_Cand(m.start(), m.end(), int(m.group(1))))
    for m in _P_EN_ONE.finditer(t):
        out.append(_Cand(m.start(), m.end(), 1))
    return [c for c in out if c.value > 0]


def _party_value(t: str, cands: list[_Cand]) -> int | None:
    live = _live(t, cands)
    if not live:
        return None
    if any(c.tag == "group" for c in live):
        # "大人2人と子供1人", "2 adults and a child": the party is everyone
        return sum(c.value for c in live)
    return live[-1].value


_BARE_FILLER_RE = re.compile(
    r"^(?:えっと|えーと|ええと|あの|あのー|はい|うーん|uh|um|well|so|yes|yeah|it's|it is|we're|we are|just)?[\s、,。.]*"
    r"(\d{1,3})\s*(?:です|でお願いします|でお願い|で|名|人|だ|please|people|of us)?[\s、,。.!]*$"
)


def parse_party_size(text: str) -> int | None:
    t = _prep(text)
    if not t:
        return None
    taken: list[tuple[int, int]] = []
    _claim(_date_cands(t, dt.date(2000, 1, 1)), taken)
    _claim(_time_cands(t, None), taken)
    value = _party_value(t, _claim(_party_cands(t), taken))
    if value is None:
        # a bare number ("two", "3です") is a party size only when it is the whole answer
        m = _BARE_FILLER_RE.match(t)
        if m and not m.group(1).startswith("0") and int(m.group(1)) > 0:
            value = int(m.group(1))
    return value


# --------------------------------------------------------------------------- phone numbers

_KANA_READINGS = {
    "ゼロ": "0",
    "レイ": "0",
    "マル": "0",
    "イチ": "1",
    "ニー": "2",
    "ニイ": "2",
    "ゴオ": "5",
    "ニ": "2",
    "サン": "3",
    "ヨン": "4",
    "シ": "4",
    "ゴー": "5",
    "ゴ": "5",
    "ロク": "6",
    "ナナ": "7",
    "シチ": "7",
    "ハチ": "8",
    "キュウ": "9",
    "キュー": "9",
    "ク": "9",
}
_KANA_READING_LIST = sorted(_KANA_READINGS, key=len, reverse=True)
_KANA_SEPARATORS = {"ハイフン", "ダッシュ", "ノ"}
_EN_DIGIT_WORDS = {**{k: str(v) for k, v in _EN_UNITS.items()}, "oh": "0", "o": "0", "nought": "0"}
_EN_SEP_WORDS = {"dash", "hyphen"}
_PHONE_TOKEN_RE = re.compile(
    r"(?P<num>\d+)|(?P<kan>[〇零一二三四五六七八九]+)|(?P<kana>[ぁ-ゖー]+|[ァ-ヺー]+)|(?P<word>[a-z]+)"
    r"|(?P<sep>[\s\-,、。・()\[\]]+)|(?P<other>.)",
    re.S,
)
_PLUS81_RE = re.compile(r"\+\s*81[\s-]*(?:\(\s*0\s*\)[\s-]*)?")


def _hira_to_kata(s: str) -> str:
    return "".join(chr(ord(c) + 0x60) if "ぁ" <= c <= "ゖ" else c for c in s)


def _decompose_kana(s: str) -> list[str] | None:
    """Split a katakana run into digit readings ("ゼロキューゼロ" -> 0 9 0), or None if it is a word."""
    n = len(s)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for i in range(n):
        if best[i] is None:
            continue
        for r in _KANA_READING_LIST:
            if s.startswith(r, i):
                j = i + len(r)
                while j < n and s[j] == "ー":  # drawn-out vowels: "イチー", "ゴーー"
                    j += 1
                if best[j] is None:
                    best[j] = best[i] + [_KANA_READINGS[r]]  # type: ignore[operator]
    return best[n]


_COPULAS = {"デス", "デ", "ダ", "ネ", "ヨ", "デスネ", "デスヨ", "デショウ", "デゴザイマス"}


def _partial_kana(kata: str) -> list[tuple[str, str]]:
    """A kana run that is not all digits may still end or start with them: "バンゴウハゼロキューゼロ"."""
    if len(kata) > 40:  # long prose: not worth the quadratic search
        return [("b", "")]
    for i in range(1, len(kata) - 1):
        digits = _decompose_kana(kata[i:])
        # one reading after a particle counts ("ばんごうはぜろ、…"), but not the さん of "たなかさん"
        if digits is not None and (len(digits) >= 2 or kata[i - 1] in "ハガモヲ"):
            return [("b", ""), ("d", "".join(digits))]
    for j in range(len(kata) - 1, 0, -1):
        digits = _decompose_kana(kata[:j])
        # one reading before a copula counts ("…、いちです")
        if digits is not None and (len(digits) >= 2 or kata[j:] in _COPULAS):
            return [("d", "".join(digits)), ("b", "")]
    return [("b", "")]


def _phone_runs(norm: str) -> list[str]:
    """Digit runs: digits joined across separators, broken by anything that is not a digit reading."""
    text = _PLUS81_RE.sub("0", norm.lower())
    items: list[tuple[str, str]] = []  # ("d", digits) | ("s", "") | ("b", "") | ("weak", digits) | ...
    for m in _PHONE_TOKEN_RE.finditer(text):
        kind = m.lastgroup
        s = m.group(0)
        if kind == "num":
            items.append(("d", s))
        elif kind == "kan":
            items.append(("d", "".join(str(_KANJI_DIGITS[c]) for c in s)))
        elif kind == "sep":
            items.append(("s", s))
        elif kind == "kana":
            for piece in re.split("(の)", s):
                if not piece:
                    continue
                kata = _hira_to_kata(piece)
                if piece == "の" or kata in _KANA_SEPARATORS or set(kata) == {"ー"}:
                    items.append(("s", ""))
                    continue
                digits = _decompose_kana(kata)
                if digits is None:
                    items.extend(_partial_kana(kata))
                elif len(digits) >= 2 or piece == kata:
                    items.append(("d", "".join(digits)))
                else:
                    # a lone hiragana reading is usually a particle (に, ご, し): decided by its neighbours
                    items.append(("weak", "".join(digits)))
        elif kind == "word":
            if s in _EN_DIGIT_WORDS:
                items.append(("oh", "0") if s in ("oh", "o") else ("w", _EN_DIGIT_WORDS[s]))
            elif s in _EN_TEENS:
                items.append(("w", str(_EN_TEENS[s])))
            elif s in _EN_TENS:
                items.append(("tens", str(_EN_TENS[s] // 10)))
            elif s in ("double", "triple"):
                items.append(("mul", "2" if s == "double" else "3"))
            elif s == "hundred":
                items.append(("w", "00"))
            elif s in _EN_SEP_WORDS:
                items.append(("s", ""))
            else:
                items.append(("b", ""))
        else:
            items.append(("b", ""))

    def neighbour(i: int, step: int) -> str:
        j = i + step
        while 0 <= j < len(items) and items[j][0] == "s":
            j += step
        return items[j][0] if 0 <= j < len(items) else "edge"

    def raw_neighbour(i: int, step: int) -> str:
        j = i + step
        return items[j][0] if 0 <= j < len(items) else "edge"

    runs: list[str] = []
    cur: list[str] = []
    mult = 1
    i = 0
    while i < len(items):
        kind, val = items[i]
        if kind == "oh":
            # "oh" is zero only next to other spoken digits; "Oh, 090..." is an interjection
            nxt, prev = neighbour(i, 1), neighbour(i, -1)
            spoken = nxt in ("w", "oh", "tens", "mul") or prev in ("w", "oh", "tens", "d", "mul")
            # "oh-90-1234" reads as zero, "Oh, 090-…" as a sigh: Whisper puts a comma after the sigh
            comma_after = (
                i + 1 < len(items) and items[i + 1][0] == "s" and any(c in items[i + 1][1] for c in ",、.。")
            )
            kind = "w" if spoken or (nxt == "d" and not comma_after) else "b"
        elif kind == "weak":
            ok = raw_neighbour(i, -1) in ("s", "edge") and raw_neighbour(i, 1) in ("s", "edge")
            kind = "w" if ok else "b"
        if kind == "tens":
            # "thirty four" is 34, but "thirty, four" is 3 0 4
            joined = i + 2 < len(items) and items[i + 1][0] == "s" and items[i + 1][1].strip(" -") == ""
            if joined and items[i + 2][0] == "w" and len(items[i + 2][1]) == 1 and items[i + 2][1] != "0":
                val, i = val + items[i + 2][1], i + 2
            else:
                val += "0"
            kind = "w"
        if kind in ("d", "w"):
            if mult > 1:
                val = val[0] * mult + val[1:]
                mult = 1
            cur.append(val)
        elif kind == "mul":
            mult = int(val)
        elif kind == "b":
            if cur:
                runs.append("".join(cur))
            cur, mult = [], 1
        i += 1
    if cur:
        runs.append("".join(cur))
    return runs


def _find_phone(text: str, min_digits: int) -> str | None:
    norm = normalize(text)
    if not norm:
        return None
    runs = _phone_runs(norm)
    if not runs:
        return None
    best = max(runs, key=len)  # max() keeps the first of equals: the number usually comes first
    return best if len(best) >= min_digits else None


def parse_phone(text: str) -> str | None:
    return _find_phone(text, 6)


def repair_phone(digits: str) -> str:
    """Whisper writes a spoken "090-1234-5678" as "090012345678" (the pause after 090 heard as a
    zero): a 12-digit number of that shape is the 11-digit one. The read-back confirms it."""
    if len(digits) == 12 and digits[3] == "0" and digits[:3] in _ELEVEN_DIGIT_PREFIXES:
        fixed = digits[:3] + digits[4:]
        if is_valid_phone(fixed):
            return fixed
    return digits


_ELEVEN_DIGIT_PREFIXES = ("020", "050", "060", "070", "080", "090")


def is_valid_phone(digits: str) -> bool:
    """A Japanese number: 10 digits (landline, 0120, 0570), or 11 for mobile and IP phones (0X0)
    and 0800. A 10-digit 090 number has lost a digit, so it is not valid."""
    if not isinstance(digits, str) or not digits.isascii() or not digits.isdigit():
        return False
    if not digits.startswith("0") or digits.startswith("00"):
        return False
    if len(digits) == 10:
        return digits[:3] not in _ELEVEN_DIGIT_PREFIXES
    return len(digits) == 11 and (digits[:3] in _ELEVEN_DIGIT_PREFIXES or digits.startswith("0800"))


# --------------------------------------------------------------------------- yes / no

_YES_DESPITE_NEG_RE = re.compile(
    r"間違いない|間違いありません|間違いございません|問題ない|問題ありません|問題ございません|\bno problem\b|\bno worries\b"
    r"|\bnot a problem\b|\bwhy not\b|\bnothing wrong\b"
)
_NEUTRAL_RE = re.compile(
    r"\bnot sure\b|\bi don't know\b|\bno idea\b|わかりません|分かりません|わからない|分からない"
)
_NO_RE = re.compile(
    r"(?:大丈夫|そう|正しい|合って|あって|いい|良い)?\s*(?:じゃない|ではない|じゃありません|ではありません|じゃないです|でない)"
    r"|合ってない|合っていない|合っていません|あってない|あっていません|正しくない|正しくありません"
    r"|いいえ|いえ|いや(?!ー|、?お願い)|違[いうっ]|ちが[いうっ]|間違|まちが|ううん|だめ|ダメ|駄目|嫌|ノー"
    r"|\b(?:that's |that is |it's |it is )?not (?:right|correct|quite|it|really|that|ok|okay|good|fine)\b|\bthat's not\b"
    r"|\bno\b|\bnope\b|\bnah\b|\bwrong\b|\bincorrect\b"
    r"|\bisn't (?:right|correct)\b|\bdon't\b|\bnegative\b"
)
_YES_RE = re.compile(
    r"はい|はーい|ええ(?!っ?と|ーと)|うん|お願い|大丈夫|そうです|そうだ|そう(?:ですね|ね)?$|^そう|合って|あってます|あっています"
    r"|正しい|その通り|そのとおり|いいです|いいですよ|良いです|いいよ|オッケー|オーケー|了解|承知|かしこまりました|それで"
    r"|\byes\b|\byeah\b|\byep\b|\byup\b|\bcorrect\b|\bright\b|\bsure\b|\bplease\b|\bperfect\b|\bsounds good\b|\bgo ahead\b"
    r"|\bfine\b|\bgreat\b|\balright\b|\ball right\b|\babsolutely\b|\bexactly\b|\bdefinitely\b|\bof course\b|\bok\b|\bokay\b"
    r"|\bconfirm(?:ed)?\b|\bgood\b|\bthat's it\b|\bthat works\b|\byes please\b"
)


_REPEAT_RE = re.compile(
    r"もう一度|もう1度|もういちど|もう一回|もう1回|繰り返|聞こえ|聞き取れ|なんて|何て"
    r"|\brepeat\b|\bpardon\b|\bsay (?:that|it) again\b|\bcome again\b|\bdidn't (?:catch|hear)\b|\bone more time\b"
)


def parse_yes_no(text: str) -> bool | None:
    t = normalize(text).lower()
    # "もう一度お願いします" is a request to hear the read-back again, not a yes
    if not t or _REPEAT_RE.search(t):
        return None
    yes = False
    if _YES_DESPITE_NEG_RE.search(t):
        yes = True
        t = _YES_DESPITE_NEG_RE.sub(" ", t)
    t = _NEUTRAL_RE.sub(" ", t)
    no = bool(_NO_RE.search(t))
    t = _NO_RE.sub(" ", t)
    yes = yes or bool(_YES_RE.search(t.strip()))
    if yes == no:
        return None
    return yes


# --------------------------------------------------------------------------- notes and "no requests"

_NOTE_KEYWORDS_RE = re.compile(
    r"誕生日|バースデー|バースデイ|記念日|アニバーサリー|お祝い|祝い|ケーキ|プレート|サプライズ|花束|プロポーズ"
    r"|アレルギー|アレルギ|食べられ|苦手|抜き|ベジタリアン|ヴィーガン|ビーガン|グルテン|ハラール|宗教"
    r"|窓際|窓側|窓の|個室|半個室|テラス|カウンター|座敷|掘りごたつ|ソファ|奥の席|静かな|禁煙|喫煙"
    r"|子供用|子ども用|こども用|お子様用|キッズチェア|ハイチェア|チャイルドチェア|ベビーチェア|子供椅子|子ども椅子|椅子|いす|イス"
    r"|車椅子|車いす|車イス|ベビーカー|バギー|段差|杖"
    r"|\bbirthday\b|\banniversar|\bcelebrat|\bcake\b|\bsurprise\b|\bproposal\b|\bpropose\b|\ballerg|\bvegetarian\b|\bvegan\b"
    r"|\bgluten\b|\bhalal\b|\bkosher\b|\bnuts?\b|\bshellfish\b|\bpeanuts?\b|\bdairy\b|\blactose\b|\bcan't eat\b|\bcannot eat\b"
    r"|\bdietary\b|\bwindow\b|\bprivate room\b|\bbooth\b|\bterrace\b|\bpatio\b|\boutside\b|\boutdoor\b|\bquiet\b"
    r"|\bhigh ?chairs?\b|\bbooster\b|\bwheelchairs?\b|\bstroller\b|\bpram\b|\bbuggy\b|\bbaby\b|\bnon-?smoking\b|\bsmoking\b"
    r"|\bcounter\b|\bcorner\b"
)
_NOTE_NEG_AFTER_RE = re.compile(
    r"^[^、。,.]{0,4}?(?:は|も|が)?\s*(?:特に|とくに)?\s*(?:ありません|ない|無い|なし|無し|ございません|いません|大丈夫|不要|いらない|要らない)"
)
_NOTE_NEG_BEFORE_RE = re.compile(
    r"\b(?:no|not|without|don't need|do not need|don't have|do not have|nobody has|no one has|none of us has|no one is|nobody is|don't)\s+(?:any\s+|a\s+|an\s+|the\s+|special\s+|food\s+)*$"
)
_CLAUSE_SPLIT_RE = re.compile(r"[、。,.!?！？]+")
_LEADING_FILLER_RE = re.compile(
    r"^(?:(?:えっと|えーっと|えーと|ええっと|ええと|あのー|あのう|うーんと|うーん)[ー、,。.\s]*"
    r"|(?:あの|その|えー|ええ|えと|まあ|あ|はい|うん|uh|um|uhm|er|erm|so|well|and|also|oh|yes|yeah|okay|ok|actually|but)(?:[ー、,。.\s]+|$))+",
    re.I,
)
_TRAILING_PLEASANTRY_RE = re.compile(
    r"(?:[、,。.\s]*(?:よろしくお願いします|よろしくお願いいたします|以上です|以上|ありがとうございます|that's all|thank you|thanks|please))+[、,。.!\s]*$",
    re.I,
)


def _note_hits(t: str) -> list[re.Match[str]]:
    hits = []
    low = t.lower()
    for m in _NOTE_KEYWORDS_RE.finditer(low):
        if _NOTE_NEG_AFTER_RE.match(low[m.end() : m.end() + 16]):
            continue
        if _NOTE_NEG_BEFORE_RE.search(low[max(0, m.start() - 40) : m.start()]):
            continue
        hits.append(m)
    return hits


def _clean_note(s: str) -> str:
    s = s.strip(" 、,。.")
    s = _LEADING_FILLER_RE.sub("", s)
    s = _TRAILING_PLEASANTRY_RE.sub("", s)
    return s.strip(" 、,。.")


def parse_note(text: str) -> str | None:
    t = normalize(text)
    if not t:
        return None
    hits = _note_hits(t)
    if not hits:
        return None
    # the request starts at the clause holding the first request word: earlier clauses are usually slots
    first = hits[0].start()
    start = 0
    for m in _CLAUSE_SPLIT_RE.finditer(t, 0, first):
        start = m.end()
    note = _clean_note(t[start:])
    return note or None


_NO_REQUEST_RE = re.compile(
    r"特に|とくに|なしで|なし|無し|ないです|ありません|ございません|大丈夫|結構です|結構|以上です|不要|いらない|要らない|いりません"
    r"|必要ない|必要ありません|何もない|なにもない|何もありません|大丈夫です|ノープロブレム"
    r"|\bno\b|\bnothing\b|\bnone\b|\bnope\b|\bnah\b|\bthat's all\b|\bthat is all\b|\bthat's it\b|\bno thanks?\b"
    r"|\bno thank you\b|\bi'm good\b|\bwe're good\b|\ball good\b|\bnot really\b|\bnothing else\b|\bno requests?\b"
    r"|\bnothing special\b|\bi'm fine\b|\bwe're fine\b"
)


def is_no_request(text: str) -> bool:
    t = normalize(text).lower()
    if not t or not _NO_REQUEST_RE.search(t):
        return False
    return parse_note(text) is None


# --------------------------------------------------------------------------- corrections

_CORRECTION_RE = re.compile(
    r"やっぱり|やっぱ|やはり|変更|変えて|変えたい|かえて|じゃなくて|じゃなく|ではなく|でなく|訂正|間違えました|間違えた|まちがえ"
    r"|言い間違|修正|直して|違いました"
    r"|\bactually\b|\bchange\b|\binstead\b|\bmake it\b|\bnot\b.*\bbut\b|\bsorry,? i meant\b|\bi meant\b|\bi mean\b"
    r"|\bcorrection\b|\bscratch that\b|\brather\b|\bmistake\b|\bswitch\b|\bmove it\b"
)


def is_correction(text: str) -> bool:
    t = normalize(text).lower()
    return bool(t and _CORRECTION_RE.search(t))


# --------------------------------------------------------------------------- names

_LATIN_LETTERS = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_NAME_CHARS = f"\u3005\u3006\u4e00-\u9fff\u30a1-\u30faー・\u3041-\u3096{_LATIN_LETTERS}'\\-"
_JA_NAME_OK_RE = re.compile(rf"[{_NAME_CHARS}]+(?: [{_NAME_CHARS}]+)?")
_HONORIFIC_RE = re.compile(r"\s*(?:様|さま|さん|くん|君|ちゃん|殿|氏)$")
_JA_NAME_STOP = {
    "それ",
    "これ",
    "あれ",
    "そちら",
    "こちら",
    "どちら",
    "それで",
    "何",
    "なに",
    "はい",
    "いいえ",
    "ええ",
    "うん",
    "そう",
    "そうそう",
    "大丈夫",
    "以上",
    "結構",
    "了解",
    "予約",
    "明日",
    "今日",
    "明後日",
    "本日",
    "今夜",
    "今晩",
    "来週",
    "今週",
    "週末",
    "平日",
    "夜",
    "朝",
    "昼",
    "夕方",
    "午前",
    "午後",
    "未定",
    "本当",
    "確認",
    "変更",
    "予定",
    "自分",
    "私",
    "わたし",
    "わたくし",
    "僕",
    "ぼく",
    "俺",
    "家族",
    "友達",
    "友人",
    "全員",
    "大人",
    "子供",
    "子ども",
    "会社",
    "仕事",
    "本人",
    "同じ",
    "一緒",
    "初めて",
    "禁煙",
    "喫煙",
    "個室",
    "窓際",
    "誕生日",
    "記念日",
    "問題",
    "無理",
    "なし",
    "ない",
    "特に",
    "特になし",
    "違います",
    "ちがいます",
    "間違い",
    "電話",
    "番号",
    "名前",
    "お名前",
    "ランチ",
    "ディナー",
    "コース",
    "キャンセル",
    "オッケー",
    "ありがとう",
    "すみません",
    "もしもし",
    "こんにちは",
    "こんばんは",
    "お願い",
    "お願いします",
    "分かりました",
    "わかりました",
    "承知",
    "失礼",
    "テスト",
    "OK",
    "ok",
    "お疲れ様",
    "よろしく",
    "どうも",
    "あの",
    "えっと",
    "えーと",
    "そうです",
    "はいはい",
    "いや",
    "だめ",
    "ダメ",
    "多分",
    "たぶん",
    "全部",
    "以上です",
    "満席",
    "空席",
    "席",
    "店",
    "お店",
    "電話番号",
    "今",
    "今から",
    "すぐ",
    "まだ",
    "また",
    "あと",
    "後で",
    "ちょっと",
    "少々",
    "待って",
    "はじめまして",
    "予約者",
    "本人です",
    "代表",
    "担当",
    "ひとり",
    "ふたり",
    "一人",
    "二人",
    "大丈夫です",
    "問題ない",
    "ありません",
}
_JA_NAME_STOP_SUBSTR = (
    "予約",
    "お願い",
    "大丈夫",
    "曜日",
    "電話",
    "番号",
    "ありがと",
    "すみません",
    "もしもし",
    "以上",
    "ランチ",
    "ディナー",
    "タイム",
    "コース",
    "メニュー",
    "テーブル",
    "キャンセル",
    "時間",
    "人数",
)
_HIRA_VERBISH_END_RE = re.compile(
    r"(?:ます|です|ない|たい|した|って|ください|よね|かな|でしょう|ません|ました|だよ|だね)$"
)
_HIRA_ONLY_RE = re.compile(r"[\u3041-\u3096ー]+")
_HAS_NAME_SCRIPT_RE = re.compile(r"[\u3005\u4e00-\u9fff\u30a1-\u30faA-Za-z]")

_EN_NAME_STOP = {
    "a",
    "an",
    "the",
    "and",
    "or",
    "but",
    "is",
    "it",
    "its",
    "it's",
    "i",
    "i'm",
    "me",
    "my",
    "we",
    "our",
    "you",
    "your",
    "he",
    "she",
    "they",
    "this",
    "that",
    "there",
    "here",
    "calling",
    "call",
    "speaking",
    "from",
    "with",
    "for",
    "at",
    "on",
    "in",
    "of",
    "to",
    "about",
    "just",
    "only",
    "yes",
    "yeah",
    "yep",
    "no",
    "nope",
    "not",
    "ok",
    "okay",
    "sure",
    "please",
    "thanks",
    "thank",
    "hello",
    "hi",
    "hey",
    "sorry",
    "um",
    "uh",
    "er",
    "erm",
    "well",
    "so",
    "reservation",
    "booking",
    "table",
    "party",
    "people",
    "person",
    "tomorrow",
    "today",
    "tonight",
    "morning",
    "evening",
    "afternoon",
    "night",
    "noon",
    "pm",
    "am",
    "fine",
    "good",
    "great",
    "correct",
    "right",
    "wrong",
    "alright",
    "under",
    "name",
    "number",
    "phone",
    "looking",
    "trying",
    "wondering",
    "going",
    "interested",
    "actually",
    "available",
    "free",
    "busy",
    "done",
    "all",
    "also",
    "still",
    "afraid",
    "happy",
    "glad",
    "what",
    "who",
    "why",
    "how",
    "when",
    "where",
    "which",
    "can",
    "could",
    "would",
    "will",
    "should",
    "do",
    "does",
    "did",
    "have",
    "has",
    "had",
    "be",
    "been",
    "being",
    "was",
    "were",
    "are",
    "like",
    "want",
    "need",
    "book",
    "make",
    "change",
    "cancel",
    "perfect",
    "exactly",
    "nothing",
    "none",
    "nobody",
    "someone",
    "something",
    "anything",
    "everything",
    "again",
    "later",
    "now",
    "then",
    "birthday",
    "anniversary",
    "allergy",
    "window",
    "seat",
    "seats",
    "dinner",
    "lunch",
    "o'clock",
    "oh",
    "hmm",
    "mine",
    "correction",
    "same",
    "that's",
    "thats",
    "we're",
    "i'd",
    "i'll",
    "let",
    "let's",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "restaurant",
    "friend",
    "wife",
    "husband",
    "family",
    "yourself",
    "myself",
    "absolutely",
    "definitely",
    "course",
    "fine.",
    "good.",
    *_EN_WD,
    *_MONTHS,
}
_EN_TITLES = {"mr", "mrs", "ms", "miss", "dr", "mr.", "mrs.", "ms.", "dr."}
_EN_NAME_WORD_RE = re.compile(rf"[{_LATIN_LETTERS}][{_LATIN_LETTERS}'\-.]*")

_EN_STRONG_TRIGGER_RE = re.compile(
    r"\b(?:my name(?:'s| is)|the name(?:'s| is| will be| would be)|name(?:'s| is)|call me|in the name of"
    r"|under (?:the name(?: of)?\s+)?|(?:reservation|booking|table) (?:under|for)(?: the name(?: of)?)?|put it under)\s*[:,]?\s*",
    re.I,
)
_EN_WEAK_TRIGGER_RE = re.compile(r"\b(?:this is|it's|it is|i'm|i am)\s+", re.I)
_EN_SPEAKING_RE = re.compile(r"\b([A-Z][a-z'\-]+(?:\s+[A-Z][a-z'\-]+)?)\s+(?:speaking|here)\b")

_JA_PREFIX_TRIGGER_RE = re.compile(r"(?:お?名前|名義|予約名|予約者名)\s*(?:は|が|:)\s*")
_JA_SUFFIX_TRIGGER_RE = re.compile(
    r"\s*(?:様|さま|さん)?\s*(?:と申します|と申す|と申しま|といいます|と言います|っていいます|って言います|の名前で|名義で|で予約|の名義で)"
)
_JA_END_RE = re.compile(
    r"\s*(?:様|さま|さん)?\s*(?:です|でございます|と申します|といいます|と言います|でお願いします|でお願い|で予約|で|だ|になります)?\s*[。.!！、,]*$"
)
_JA_LEAD_RE = re.compile(
    r"^(?:(?:はい|ええ|えっと|えーと|ええと|あの|あのー|えー|うん|もしもし|私|わたし|わたくし|僕|ぼく|俺)(?:は|が)?[、,。\s]*)+"
)
_EN_LEAD_RE = re.compile(
    r"^(?:(?:yes|yeah|yep|sure|okay|ok|um|uh|er|well|so|oh|hi|hello|it's|it is|that's|that is|the name is|my name is|name is)[,.\s]*)+",
    re.I,
)
_EN_END_RE = re.compile(r"[\s,.!?]*(?:please|thanks|thank you)?[\s,.!?]*$", re.I)


_KATA_ONLY_RE = re.compile(r"[\u30a1-\u30faー]+")
_STARTS_HIRA_HAS_KANJI_RE = re.compile(r"^[\u3041-\u3096].*[\u3005\u4e00-\u9fff]")
_ONE_KANJI_OKURIGANA_RE = re.compile(r"^[\u3005\u4e00-\u9fff][\u3041-\u3096]+$")


def _is_spoken_digits(x: str) -> bool:
    """"ゴーロクナナハチ": a phone number read out in katakana, not a name."""
    kata = _hira_to_kata(x.replace("・", ""))
    digits = _decompose_kana(kata) if _KATA_ONLY_RE.fullmatch(kata) else None
    return digits is not None and len(digits) >= 3


def _looks_like_ja_name(x: str, strict: bool) -> bool:
    x = x.strip()
    if not x or len(x) > 12 or any(c.isdigit() for c in x) or not _JA_NAME_OK_RE.fullmatch(x):
        return False
    if _is_spoken_digits(x) or _STARTS_HIRA_HAS_KANJI_RE.search(x):
        return False
    if _KANJI_NUM_RE.fullmatch(x):  # "三です" answers "何名様ですか"
        return False
    if x in _JA_NAME_STOP or x.lower() in _JA_NAME_STOP or any(s in x for s in _JA_NAME_STOP_SUBSTR):
        return False
    if _NOTE_KEYWORDS_RE.search(x.lower()):
        return False
    if _HIRA_ONLY_RE.fullmatch(x):
        # hiragana-only names exist (さくら) but so do most short answers: only where a name was asked for
        return not strict and 2 <= len(x) <= 6 and not _HIRA_VERBISH_END_RE.search(x)
    if _HIRA_VERBISH_END_RE.search(x):
        return False
    prepped = _prep(x)
    today = dt.date(2000, 1, 1)
    if _date_cands(prepped, today) or _time_cands(prepped, None) or _party_cands(prepped):
        return False
    return bool(_HAS_NAME_SCRIPT_RE.search(x))


def _strip_honorific(x: str) -> str:
    return _HONORIFIC_RE.sub("", x.strip()).strip()


def _en_name_after(rest: str, need_capital: bool) -> str | None:
    words = []
    for w in rest.split():
        core = w.strip(',.!?;:"')
        if not _EN_NAME_WORD_RE.fullmatch(core):
            break
        low = core.lower()
        if not words and low in _EN_TITLES:
            if w.endswith(","):
                break
            continue
        if low.rstrip(".") in _EN_NAME_STOP or low in _EN_NAME_STOP:
            break
        if need_capital and not core[0].isupper():
            break
        words.append(core.rstrip("."))
        if len(words) == 3 or w[-1] in ",.!?;:":
            break
    return " ".join(words) or None


_TOPIC_PREFIX_RE = re.compile(r"^.*(?:は|が)(?=[\u3005\u4e00-\u9fff\u30a1-\u30fa])")


def _ja_name_before(t: str, end: int) -> str | None:
    head = t[max(0, end - 100) : end]
    piece = re.split(r"[、。,.!?！？\s]", head)[-1] if head else ""
    piece = _JA_LEAD_RE.sub("", piece)
    # "予約者は田中と申します": the name starts after the topic particle
    piece = _TOPIC_PREFIX_RE.sub("", piece)
    name = _strip_honorific(piece)
    # two-part names said with a space: "山田 花子と申します"
    parts = [p for p in re.split(r"[、。,.!?！？]", head)[-1].strip().split(" ") if p]
    if len(parts) == 2 and _strip_honorific(parts[1]) == name:
        both = _strip_honorific(_JA_LEAD_RE.sub("", parts[0]) + " " + parts[1])
        if _looks_like_ja_name(both, strict=False):
            return both
    return name or None


_COMMA_BEFORE_COPULA_RE = re.compile(r"[、,]\s*(?=(?:様|さま|さん)?\s*(?:です|でございます|と申します|といいます|と言います|でお願いします)[。.!！]*$)")


def _parse_name(text: str, bare: bool) -> str | None:
    t = _COMMA_BEFORE_COPULA_RE.sub("", normalize(text))
    if not t:
        return None
    # English, with an explicit trigger
    for m in _EN_STRONG_TRIGGER_RE.finditer(t):
        name = _en_name_after(t[m.end() : m.end() + 200], need_capital=False)
        if name:
            return name
    for m in _EN_SPEAKING_RE.finditer(t):
        name = _en_name_after(m.group(1), need_capital=True)
        if name:
            return name
    for m in _EN_WEAK_TRIGGER_RE.finditer(t):
        name = _en_name_after(t[m.end() : m.end() + 200], need_capital=True)
        if name:
            return name
    # Japanese, with an explicit trigger
    for m in _JA_PREFIX_TRIGGER_RE.finditer(t):
        rest = t[m.end() :]
        cut = re.split(
            r"[、。,.!?！？]|です|でございます|と申|といい|と言い|でお願い|で予約|になります|で(?=[\s、。,.]|$)",
            rest,
            maxsplit=1,
        )[0]
        name = _strip_honorific(cut)
        if _looks_like_ja_name(name, strict=False):
            return name
    for m in _JA_SUFFIX_TRIGGER_RE.finditer(t):
        if m.start() == 0:
            continue
        name = _ja_name_before(t, m.start())
        if name and _looks_like_ja_name(name, strict=False):
            return name
    # "田中です": the whole utterance, or its last clause ("明日の19時に3名で、田中です"), is a name and a copula
    body = _JA_LEAD_RE.sub("", t)
    last_clause = _JA_LEAD_RE.sub("", re.split(r"[、。,!?！？]\s*(?=\S)", body)[-1])
    m = re.fullmatch(r"(.+?)\s*(?:様|さま|さん)?\s*(?:です|でございます)\s*[。.!！]*", last_clause)
    if m:
        name = _strip_honorific(m.group(1))
        if _looks_like_ja_name(name, strict=not bare):
            return name
    if not bare:
        return None
    # a bare answer to "お名前は?": "田中", "田中でお願いします", "Smith", "John Smith, please"
    if _JA_CHAR_RE.search(t):
        body = _JA_END_RE.sub("", body)
        name = _strip_honorific(body)
        return name if _looks_like_ja_name(name, strict=False) else None
    body = _EN_END_RE.sub("", _EN_LEAD_RE.sub("", t))
    words = body.split()
    if not 1 <= len(words) <= 4:
        return None
    name = _en_name_after(body, need_capital=False)
    if name and len(name.split()) == len([w for w in words if w.lower().rstrip(".") not in _EN_TITLES]):
        return name
    return None


def parse_name(text: str) -> str | None:
    return _parse_name(text, bare=False)


def name_is_plausible(name: str) -> bool:
    """A name Whisper is unlikely to have made up from other words: kanji, katakana or Latin letters
    as names are written. Hiragana-only names and one kanji with verb endings (「読みん」) are often
    mishearings, so the dialog checks them with the caller first."""
    x = name.replace(" ", "")
    if _HIRA_ONLY_RE.fullmatch(x) or _ONE_KANJI_OKURIGANA_RE.fullmatch(x):
        return False
    return True


def parse_name_answer(text: str) -> str | None:
    name = _parse_name(text, bare=True)
    # "はい" / "Sure" / "お願いします" answer the question, they are not a name
    if name is None or parse_yes_no(name) is not None or is_no_request(name):
        return None
    return name


# --------------------------------------------------------------------------- all slots at once

_SLOT_NAMES = ("date", "time", "party_size", "name", "phone", "note")

# "24", "24です", "7でお願いします": a bare number is a value only when it is the whole answer
_BARE_ANSWER_RE = re.compile(
    r"^(?:えっと|えーと|ええと|あの|あのー|はい|うーん|uh|um|well|so|yes|yeah|it's|it is|just|the)?[\s、,。.]*"
    r"(\d{1,2})\s*(?:です|でお願いします|でお願い|で|だ|please|at night|in the evening)?[\s、,。.!]*$"
)
# two values offered as a choice: "7時か8時", "24日か25日", "7 or 8"
_OR_GAP_RE = re.compile(r"^\s*(?:か|かまたは|または|もしくは|それとも|か、|or|or maybe|or else|or perhaps)\s*[、,]?\s*$")
# Whisper's "5.6時" / "5、6時" for 「5、6時」 ("five or six o'clock"), and "7 or 8 pm"
_T_ALT_JA = re.compile(r"(?<![\d.:/])(\d{1,2})\s*[、,.・]\s*(\d{1,2})\s*時(?!間)")
_T_ALT_EN = re.compile(
    r"(?:\b(?:at|around|about|by|between)\s+)?(?<![\d.:/])\b(\d{1,2})(?::(\d{2}))?\s+or\s+(\d{1,2})(?::(\d{2}))?"
    r"\s*([ap]\.?\s?m\b\.?|o'?\s?clock|in the evening|at night)"
)


@dataclass
class Analysis:
    """What one utterance offers for each slot, before the dialog decides what to take."""

    values: dict[str, Any] = field(default_factory=dict)
    #: a slot offered as a choice or with a contradiction ("7時か8時", "12月24日金曜日"): the options
    ambiguous: dict[str, list[Any]] = field(default_factory=dict)
    #: slot values that sit inside a request ("卵アレルギーの者が1名"): they stay in the note
    in_note: dict[str, Any] = field(default_factory=dict)
    #: a name that may well be a mishearing (hiragana only, verb-like): to be confirmed first
    doubtful_name: bool = False


def _clauses_with_notes(t: str) -> list[tuple[int, int]]:
    """The spans of the clauses that hold a request word (アレルギー, ケーキ, vegetarian...)."""
    hits = _note_hits(t)
    if not hits:
        return []
    bounds = [0, *(m.end() for m in _CLAUSE_SPLIT_RE.finditer(t)), len(t)]
    spans = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        if any(a <= h.start() < b for h in hits):
            spans.append((a, b))
    return spans


def _choice(t: str, live: list[_Cand]) -> list[Any] | None:
    for a, b in zip(live, live[1:], strict=False):
        if a.value is not None and b.value is not None and a.value != b.value and _OR_GAP_RE.match(t[a.end : b.start]):
            return [a.value, b.value]
    return None


def _time_alternatives(t: str, is_open: IsOpen | None, taken: list[tuple[int, int]]) -> tuple[list[dt.time], tuple[int, int]] | None:
    for m in _T_ALT_JA.finditer(t):
        if any(m.start() < e and s < m.end() for s, e in taken):
            continue
        hours = [int(m.group(1)), int(m.group(2))]
        if all(0 <= h <= 23 for h in hours) and hours[0] != hours[1]:
            part = None
            before = list(_PART_BEFORE_RE.finditer(t[max(0, m.start() - 16) : m.start()]))
            if before:
                part = _PART_NAMES[next(i for i in range(3) if before[-1].group(i + 1))]
            return [dt.time(_apply_part(h, 0, part, is_open), 0) for h in hours], m.span()
    for m in _T_ALT_EN.finditer(t):
        if any(m.start() < e and s < m.end() for s, e in taken):
            continue
        suffix = m.group(5).replace(" ", "").replace(".", "")
        part = "am" if suffix.startswith("a") else "pm" if suffix.startswith("p") or "evening" in suffix or "night" in suffix else None
        out = []
        for h, mm in ((m.group(1), m.group(2)), (m.group(3), m.group(4))):
            hh, mi = int(h), int(mm or 0)
            if not (0 <= hh <= 23 and mi <= 59):
                break
            out.append(dt.time(_apply_part(hh, mi, part, is_open) % 24, mi))
        if len(out) == 2 and out[0] != out[1]:
            return out, m.span()
    return None


def analyze(
    text: str,
    today: dt.date,
    *,
    expecting: str | None = None,
    is_open: IsOpen | None = None,
    filled: Iterable[str] = (),
) -> Analysis:
    """Every slot value one utterance offers; `expecting` (the slot just asked for) lets bare answers
    count, `filled` (slots that already hold a value) keeps numbers inside a request out of them."""
    out = Analysis()
    t = _prep(text)
    if not t:
        return out
    if expecting not in _SLOT_NAMES:
        expecting = None
    filled = set(filled)

    phone = _find_phone(text, 1 if expecting == "phone" else 6)
    has_long_phone = phone is not None and len(phone) >= 6

    taken: list[tuple[int, int]] = []
    dates = _claim(_date_cands(t, today), taken)
    dates, conflicts = _with_weekdays(t, dates)
    alt = _time_alternatives(t, is_open, taken)
    if alt is not None:
        taken.append(alt[1])
    times = _time_cands(t, is_open)
    if has_long_phone:
        # spoken phone numbers ("fifty five, twelve thirty") look like weak times; the number wins
        times = [c for c in times if c.tag != "weak"]
    times = _claim(times, taken)
    parties = _claim(_party_cands(t), taken)

    note_spans = _clauses_with_notes(t)

    def outside_notes(slot: str, cands: list[_Cand]) -> list[_Cand]:
        if not note_spans:
            return cands
        inside = [c for c in cands if any(a <= c.start < b for a, b in note_spans)]
        rest = [c for c in cands if c not in inside]
        if inside and (rest or slot in filled or expecting == "note"):
            value = _party_value(t, inside) if slot == "party_size" else _last_value(t, inside)
            if value is not None:
                out.in_note[slot] = value
            return rest
        return cands

    dates = outside_notes("date", dates)
    times = outside_notes("time", times)
    parties = outside_notes("party_size", parties)

    date_choice = _choice(t, _live(t, dates))
    time_choice = _choice(t, _live(t, times))
    if conflicts:
        out.ambiguous["date"] = list(conflicts[-1])
    elif date_choice:
        out.ambiguous["date"] = date_choice
    if alt is not None and not times:
        out.ambiguous["time"] = alt[0]
    elif time_choice:
        out.ambiguous["time"] = time_choice

    date = None if "date" in out.ambiguous else _last_value(t, dates)
    time = None if "time" in out.ambiguous else _last_value(t, times)
    party = _party_value(t, parties)

    if expecting in ("date", "time", "party_size") and not has_long_phone and not out.ambiguous:
        m = _BARE_ANSWER_RE.match(t) if expecting != "party_size" else None
        if m is not None:
            n = int(m.group(1))
            if expecting == "date" and date is None:
                date = _next_day_of_month(today, n)
            elif expecting == "time" and time is None and 0 <= n <= 23:
                time = dt.time(_resolve_bare(n, 0, is_open), 0)
        elif expecting == "party_size" and party is None:
            party = parse_party_size(text)

    if date is not None:
        out.values["date"] = date
    if time is not None:
        out.values["time"] = time
    if party is not None:
        out.values["party_size"] = party
    name = parse_name_answer(text) if expecting == "name" else parse_name(text)
    if name:
        out.values["name"] = name
        out.doubtful_name = not name_is_plausible(name)
    if phone is not None:
        out.values["phone"] = phone
    note = parse_note(text)
    if note:
        out.values["note"] = note
    log.debug("analyze(%r, expecting=%s) -> %s", text, expecting, out)
    return out


def extract_slots(
    text: str,
    today: dt.date,
    *,
    expecting: str | None = None,
    is_open: IsOpen | None = None,
) -> dict[str, Any]:
    """Every slot found in one utterance; `expecting` (the slot just asked for) lets bare answers count."""
    return analyze(text, today, expecting=expecting, is_open=is_open).values
