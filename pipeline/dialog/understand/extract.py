"""One utterance, every slot: the values it offers, the choices it leaves open, the numbers that
belong to a request."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.dialog.understand.answers import _CLAUSE_SPLIT_RE, _note_hits, parse_note
from pipeline.dialog.understand.dates import _date_cands, _next_day_of_month, _with_weekdays
from pipeline.dialog.understand.names import (
    _is_spoken_digits,
    name_is_plausible,
    parse_name,
    parse_name_answer,
)
from pipeline.dialog.understand.party import _party_cands, _party_value, parse_party_size
from pipeline.dialog.understand.phone import _find_phone
from pipeline.dialog.understand.text import IsOpen, _Cand, _claim, _last_value, _live, _prep
from pipeline.dialog.understand.times import (
    _PART_BEFORE_RE,
    _PART_NAMES,
    _apply_part,
    _resolve_bare,
    _time_cands,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- all slots at once

_SLOT_NAMES = ("date", "time", "party_size", "name", "phone", "note")
#: questions whose answer is not a name
_OTHER_ANSWERS = frozenset({"date", "time", "party_size", "phone", "manage_date", "manage_phone"})
#: words that say a name is being given (と申します, 名前は, under the name)
_NAME_SAID_RE = re.compile(r"と申|とい[いう]|と言[いう]|名前|名義|の名で|\bname\b|\bthis is\b|\bi'?m\b|\bi am\b", re.I)

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


_DECLINED_AFTER_RE = re.compile(r"\s*は\s*(?:結構|けっこう)")

#: words between two dates that make the second a correction of the first (「24日、いや25日」)
_CORRECTED_GAP_RE = re.compile(
    r"いや|いえ|違|ちが|じゃな|ではな|でなく|やっぱ|やはり|訂正|間違|\bno\b|\bsorry\b|\bactually\b|\bi mean\b|\bmake it\b|\brather\b",
    re.IGNORECASE)


def _two_dates(t: str, live: list[_Cand]) -> list[Any] | None:
    """Two different days said in one breath, the second no correction of the first (whisper's
    「今週の土曜日の…12月2日」 for 「今週の土曜日のお昼12時に2名」): which one is asked, not guessed."""
    valid = [c for c in live if c.value is not None]
    for a, b in zip(valid, valid[1:], strict=False):
        if a.value != b.value and not _CORRECTED_GAP_RE.search(t[a.end : b.start]):
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
    # 「今日は結構です」 declines, it names no day
    dates = _claim([c for c in _date_cands(t, today) if not _DECLINED_AFTER_RE.match(t[c.end:])], taken)
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

    date_choice = _choice(t, _live(t, dates)) or _two_dates(t, _live(t, dates))
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
    if date is None and "date" not in out.ambiguous:
        # 「12月18日の19月2、3映」: a date no calendar has after a real one is whisper's mishearing of
        # what followed (the time), not a correction; the real one stands
        date = next((c.value for c in reversed(_live(t, dates)) if c.value is not None), None)
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
    if name and has_long_phone and _is_spoken_digits(name, minimum=1):
        name = None  # 「…、ハチ、ハチです」: the end of a number read out digit by digit, not a name
    if (name and expecting in _OTHER_ANSWERS and not out.values and phone is None
            and not _NAME_SAID_RE.search(text)):
        # 「水落ちです」 said when a time was asked is a time whisper misheard, not a name volunteered:
        # a name comes with the other items (「明日の19時に3名で、田中です」) or says it is one
        name = None
    if name:
        out.values["name"] = name
        out.doubtful_name = not name_is_plausible(name)
    if phone is not None and not has_long_phone and any(slot in out.values for slot in ("date", "time", "party_size")):
        phone = None  # 「人数は4名です」: the 4 is a party size, not a group of a phone number
    if phone is not None:
        out.values["phone"] = phone
    note = parse_note(text)
    if note:
        out.values["note"] = note
    log.debug("analyze(%r, expecting=%s) -> %s", text, expecting, out)
    return out


def says_it_is_a_name(text: str) -> bool:
    """Whether ``text`` says a name is being given (と申します, 名前は, "my name is")."""
    return bool(_NAME_SAID_RE.search(text or ""))


def extract_slots(
    text: str,
    today: dt.date,
    *,
    expecting: str | None = None,
    is_open: IsOpen | None = None,
) -> dict[str, Any]:
    """Every slot found in one utterance; `expecting` (the slot just asked for) lets bare answers count."""
    return analyze(text, today, expecting=expecting, is_open=is_open).values
