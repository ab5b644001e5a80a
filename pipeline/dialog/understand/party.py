"""Party sizes: 3名, ふたり, a table for six, 大人2人と子供1人."""

from __future__ import annotations

import datetime as dt
import logging
import re

from pipeline.dialog.understand.dates import _date_cands
from pipeline.dialog.understand.text import _alt, _Cand, _claim, _live, _prep
from pipeline.dialog.understand.times import _time_cands

log = logging.getLogger(__name__)

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


