"""Judging a call by the database: the bookings before and after it, against what the caller wanted.

A booking counts as right when exactly the wanted change happened and nothing else was touched:
date, time, party size and phone exact, the name by its reading (田中, たなか and タナカ alike; a
name in the wrong kanji but the right sound is the name the restaurant will call out), a request
kept when there was one (by sound, half its characters at least) and none made up when there was none.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from pipeline.sim.personas import Caller, Persona, PersonaSet, apply_changes, intended_booking
from pipeline.sim.score import error_count, spoken_units


def snapshot(store_url: str) -> dict[str, dict[str, Any]]:
    """The active reservations by id, as ``voicebot reservations --json`` lists them."""
    from pipeline.store import ReservationStore

    with ReservationStore(store_url) as store:
        return {r.id: r.to_json() for r in store.all()}


def _same_name(wanted: str, got: str, language: str) -> bool:
    strip = str.maketrans("", "", " 　様")
    return spoken_units(wanted.translate(strip), language) == spoken_units((got or "").translate(strip), language)


def field_errors(wanted: dict[str, Any], got: dict[str, Any], language: str) -> list[str]:
    """What of ``got`` is not what was ``wanted``, one phrase per item."""
    out = []
    for key in ("date", "time", "party_size", "phone"):
        if str(wanted.get(key)) != str(got.get(key)):
            out.append(f"{key} {got.get(key)} (wanted {wanted.get(key)})")
    if not _same_name(wanted["name"], got.get("name") or "", language):
        out.append(f"name {got.get('name')!r} (wanted {wanted['name']!r})")
    note, kept = wanted.get("note"), got.get("note")
    if not note and kept:
        out.append(f"note {kept!r} (wanted none)")
    elif note and (not kept or (error_count(note, kept, language).rate or 0) > 0.5):
        out.append(f"note {kept!r} (wanted {note!r})")
    return out


@dataclass
class Verdict:
    right: bool
    why: str = ""
    booking_id: str | None = None  # the booking the call made, changed or cancelled


def judge(wants: str, expected: dict[str, Any] | None, target: str | None, before: dict[str, dict[str, Any]],
          after: dict[str, dict[str, Any]], language: str) -> Verdict:
    """Whether the database went from ``before`` to ``after`` exactly as the caller wanted."""
    added = [after[i] for i in after if i not in before]
    removed = [i for i in before if i not in after]
    changed = [i for i in before if i in after and before[i] != after[i]]
    if wants == "book":
        if removed or changed:
            return Verdict(False, f"also removed {removed} / changed {changed}")
        if not added:
            return Verdict(False, "no booking made")
        if len(added) > 1:
            return Verdict(False, f"{len(added)} bookings made", added[0]["id"])
        errors = field_errors(expected or {}, added[0], language)
        return Verdict(not errors, "; ".join(errors), added[0]["id"])
    if wants == "nothing":
        touched = [*(a["id"] for a in added), *removed, *changed]
        return Verdict(not touched, f"touched {touched}" if touched else "")
    if target is None:
        return Verdict(False, "no booking to act on")
    others = [i for i in [*removed, *changed] if i != target] + [a["id"] for a in added]
    if others:
        return Verdict(False, f"touched other bookings {others}", target)
    if wants == "cancel":
        return Verdict(target in removed, "" if target in removed else "not cancelled", target)
    if target in removed:
        return Verdict(False, "cancelled instead of changed", target)
    if target not in changed:
        return Verdict(False, "not changed", target)
    errors = field_errors(expected or {}, after[target], language)
    return Verdict(not errors, "; ".join(errors), target)


@dataclass
class Plan:
    """One persona's call: what it wants and the booking it acts on."""

    persona: Persona
    caller: Caller
    expected: dict[str, Any] | None  # the booking that should stand after the call (cancel: the one to go)
    target: str | None = None  # the id of the booking a change or cancel acts on
    seeded: bool = False


class Bookings:
    """The run's memory of who booked what, so a later call can change or cancel it."""

    def __init__(self, pset: PersonaSet, store_url: str, today: dt.date, tables: int):
        self.pset, self.store_url, self.today, self.tables = pset, store_url, today, tables
        self.made: dict[str, str] = {}  # persona id -> booking id

    def intended(self, p: Persona) -> dict[str, Any]:
        assert p.booking is not None
        return intended_booking(p.booking, self.today)

    def plan(self, p: Persona) -> Plan:
        cues, defaults = self.pset.cues[p.language], self.pset.defaults[p.language]
        if p.wants == "book":
            expected = self.intended(p)
            return Plan(p, Caller(p, cues, defaults, expected, self.today), expected)
        if p.wants == "nothing":
            return Plan(p, Caller(p, cues, defaults, None, self.today), None)
        ref = self.pset.by_id(p.of or "")
        wanted = self.intended(ref)
        if p.wants == "change" and p.changes is not None:
            wanted = apply_changes(wanted, p.changes, self.today)
        plan = Plan(p, Caller(p, cues, defaults, wanted, self.today), wanted)
        current = snapshot(self.store_url)
        plan.target = self.made.get(ref.id)
        if plan.target not in current:
            # the earlier call did not leave its booking (or did not run): put it there, so that this
            # call is judged on its own
            plan.target, plan.seeded = self._seed(ref), True
        row = current.get(plan.target) or snapshot(self.store_url)[plan.target]
        # judged against the booking as it stands, whatever the earlier call made of it
        plan.expected = row
        if p.wants == "change" and p.changes is not None:
            when = {k: row[k] for k in ("date", "time", "party_size")}
            plan.expected = {**row, **apply_changes(when, p.changes, self.today)}
        return plan

    def _seed(self, ref: Persona) -> str:
        from pipeline.store import ReservationStore

        b = self.intended(ref)
        with ReservationStore(self.store_url) as store:
            row = store.book(date=dt.date.fromisoformat(b["date"]), time=dt.time.fromisoformat(b["time"]),
                             party_size=b["party_size"], name=b["name"], phone=b["phone"], note=b["note"],
                             capacity=self.tables, idempotency_key=f"eval-seed-{ref.id}-{secrets.token_hex(4)}",
                             call_id=f"eval-seed-{ref.id}")
        self.made[ref.id] = row.id
        return row.id

    def record(self, p: Persona, verdict: Verdict) -> None:
        if p.wants == "book" and verdict.booking_id:
            self.made[p.id] = verdict.booking_id
