"""Times of day: 19時, 午後7時半, 7:30 pm, half past seven; a bare hour resolved by the opening hours."""

from __future__ import annotations

import datetime as dt
import logging
import re

from pipeline.dialog.understand.dates import _date_cands
from pipeline.dialog.understand.text import IsOpen, _Cand, _claim, _last_value, _prep

log = logging.getLogger(__name__)

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
#: 「18時間で」: whisper's 時間 for 時半 (じかん, じはん); never a stay that long, and no duration follows
_T_JA_KAN = re.compile(r"(?<![\d.:/])([5-9]|1\d|2[0-3])\s*時間(?=\s*(?:に|で|です|から|、|。|$))")
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
    for m in _T_JA_KAN.finditer(t):
        raw.append((m.start(), m.end(), int(m.group(1)), 30, 0, ""))
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


