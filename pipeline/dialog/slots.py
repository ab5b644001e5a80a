"""The slot table: for each item of a reservation, one reader (the caller's words or a typed value to
the value) and one check (the restaurant's rules), so that filling slots is one loop.

Readers return :data:`UNREAD` when the words hold no value; a check returns the problem, with its
alternatives, or None. The booking desk (:class:`~pipeline.dialog.tools.BookingTools`) is passed in
for the clock, the restaurant and the messages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.dialog import parse

if TYPE_CHECKING:
    from pipeline.dialog.tools import BookingTools, SlotIssue

#: longest name / note we keep; anything longer is a transcription accident
MAX_TEXT = 200
UNREAD = object()


@dataclass(frozen=True)
class SlotSpec:
    name: str
    read: Callable[[Any, BookingTools], Any]
    check: Callable[[Any, BookingTools], SlotIssue | None]
    #: the message when nothing could be read: a code and a message key
    unread_code: str = "unparsed"


def _read_date(raw: Any, desk: BookingTools) -> Any:
    if isinstance(raw, dt.date) and not isinstance(raw, dt.datetime):
        return raw
    return parse.parse_date(str(raw), desk.today()) or UNREAD


def _check_date(d: dt.date, desk: BookingTools) -> SlotIssue | None:
    problem = desk.restaurant.check_date(d, desk.now())
    return desk.issue("date", problem) if problem is not None else None


def _read_time(raw: Any, desk: BookingTools) -> Any:
    if isinstance(raw, dt.time):
        return raw
    d = desk.state.slots.date
    return parse.parse_time(str(raw), is_open=lambda x: desk.restaurant.is_open_at(x, d)) or UNREAD


def _check_time(t: dt.time, desk: BookingTools) -> SlotIssue | None:
    d = desk.state.slots.date
    if d is not None:
        problem = desk.check_slot_time(d, t)
    elif desk.restaurant.is_open_at(t, None):
        problem = None
    else:
        # no date yet: still refuse a time the restaurant is never open
        problem = desk.restaurant.check_time(desk.restaurant.next_open_dates(desk.today(), 1)[0], t, desk.now())
        if problem is not None and problem.code not in ("outside_hours", "off_grid"):
            problem = None
    return desk.issue("time", problem) if problem is not None else None


def _read_party(raw: Any, desk: BookingTools) -> Any:
    if isinstance(raw, bool):
        return UNREAD
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    n = parse.parse_party_size(str(raw))
    if n is None and str(raw).strip().isdigit():
        n = int(str(raw).strip())
    return UNREAD if n is None else n


def _check_party(n: int, desk: BookingTools) -> SlotIssue | None:
    problem = desk.restaurant.check_party(n)
    return desk.issue("party_size", problem) if problem is not None else None


def clean_name(raw: str) -> str | None:
    text = parse.normalize(raw).strip(" 。、.,!！?？")
    if parse.parse_name(text) is None and parse.parse_name_answer(f"{text}です") == text:
        # already a name as the parser gives one (「山だ」 from whisper's 「山だで」, read back as ヤマダ):
        # parsed again, its last kana would go as a copula
        parsed = text
    else:
        parsed = parse.parse_name(text) or parse.parse_name_answer(text)
    name = parsed or text
    for suffix in ("様", "さん", "さま"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    name = name.strip()
    if not name or len(name) > 40 or any(ch.isdigit() for ch in name):
        return None
    return name


def _read_name(raw: Any, desk: BookingTools) -> Any:
    return clean_name(str(raw)) or UNREAD


def _read_phone(raw: Any, desk: BookingTools) -> Any:
    text = str(raw)
    digits = parse.parse_phone(text) or "".join(ch for ch in parse.normalize(text) if ch.isdigit())
    return parse.repair_phone(digits)


def _check_phone(digits: str, desk: BookingTools) -> SlotIssue | None:
    if digits and desk.restaurant.check_phone(digits) is None:
        return None
    return desk.invalid_phone(digits)


def read_note(raw: Any, desk: BookingTools | None = None) -> str | None:
    """The request in the caller's words, or None for "no requests"."""
    text = parse.normalize(str(raw))[:MAX_TEXT]
    if parse.is_no_request(text) and parse.parse_note(text) is None:
        return None
    return text


def _no_check(value: Any, desk: BookingTools) -> None:
    return None


SLOTS: dict[str, SlotSpec] = {
    spec.name: spec
    for spec in (
        SlotSpec("date", _read_date, _check_date),
        SlotSpec("time", _read_time, _check_time),
        SlotSpec("party_size", _read_party, _check_party),
        SlotSpec("name", _read_name, _no_check, "bad_name"),
        SlotSpec("phone", _read_phone, _check_phone),
        SlotSpec("note", read_note, _no_check),
    )
}
