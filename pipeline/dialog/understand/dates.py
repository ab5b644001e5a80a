"""Dates: absolute (12月24日, December 24th), relative (明日, 3日後, a week from today), weekdays, and
a weekday said with its date as the same day."""

from __future__ import annotations

import datetime as dt
import logging
import re

from pipeline.dialog.understand.text import _MONTH_ALT, _MONTHS, _alt, _Cand, _claim, _last_value, _prep

log = logging.getLogger(__name__)

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


