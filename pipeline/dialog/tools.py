"""The deterministic tools both agents drive: fill and validate slots, search availability, answer
FAQs, read back, book, end the call.

Every slot value passes through the parsers and the restaurant's rules here, whoever proposed it
(the rules agent or an LLM). A bad argument is returned as a message the model reads, never raised.
Booking needs a full read-back in an earlier turn and a "yes" that this module finds in the
caller's own latest words, so a model cannot book on its own say-so.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.dialog import parse, speech
from pipeline.dialog.faq import FAQ
from pipeline.dialog.phrases import LABELS, MESSAGES, PHRASES
from pipeline.dialog.restaurant import Problem, Restaurant
from pipeline.dialog.slots import SLOTS, UNREAD
from pipeline.dialog.state import SLOT_ORDER, DialogState, Manage
from pipeline.dialog.understand.acts import acts_of
from pipeline.privacy import register_pii
from pipeline.store import FullyBooked, ReservationNotFound, ReservationStore, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

_WORD_RE = re.compile(r"[A-Za-z']*[aeiouyAEIOUY][A-Za-z']*")  # a latin word that could be English


@dataclass
class SlotIssue:
    slot: str
    code: str
    message: str
    alternatives: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "code": self.code, "message": self.message, "alternatives": self.alternatives}


@dataclass
class UpdateResult:
    applied: dict[str, Any] = field(default_factory=dict)
    issues: list[SlotIssue] = field(default_factory=list)
    #: slots whose old value was replaced by a different one
    changed: list[str] = field(default_factory=list)
    #: slots cleared because a new value made them invalid (e.g. a time on a new date)
    cleared: list[str] = field(default_factory=list)


@dataclass
class BookResult:
    ok: bool
    reservation: dict[str, Any] | None = None
    code: str = ""
    message: str = ""
    alternatives: list[str] = field(default_factory=list)


def _heard_phone(digits: str, lang: str) -> str:
    if not digits:
        return ""
    said = speech.say_phone(digits, lang)
    return f"({len(digits)}桁: {said}とお聞きしました)" if lang == "ja" else f"(I heard {len(digits)} digits: {said}.)"


class BookingTools:
    """One call's booking desk: the state it fills and the store it books into."""

    def __init__(
        self,
        restaurant: Restaurant,
        store: ReservationStore,
        state: DialogState,
        clock: Clock,
        *,
        call_id: str,
        faq: FAQ,
    ):
        self.restaurant = restaurant
        self.store = store
        self.state = state
        self.clock = clock
        self.call_id = call_id
        self.faq = faq

    # ------------------------------------------------------------------ clock
    def now(self) -> dt.datetime:
        return self.restaurant.local_now(self.clock())

    def today(self) -> dt.date:
        return self.now().date()

    @property
    def lang(self) -> str:
        return self.state.language

    def label(self, slot: str) -> str:
        return LABELS[self.lang][slot]

    def msg(self, key: str, **kw: Any) -> str:
        return MESSAGES[self.lang][key].format(**kw).strip()

    def issue(self, slot: str, problem: Problem) -> SlotIssue:
        return SlotIssue(slot, problem.code, problem.message.get(self.lang, ""), list(problem.alternatives))

    def _refused(self, slot: str, value: Any) -> None:
        """Note a value the restaurant could not take; the second time it is heard the caller, who
        was told, is taken to be misheard: the recogniser weighs the slot's other values next turn."""
        refused = self.state.refused.setdefault(slot, [])
        if repr(value) not in refused:
            refused.append(repr(value))
            return
        wrong = self.state.heard_wrong.setdefault(slot, [])
        if repr(value) not in wrong:
            wrong.append(repr(value))

    def _free(self, d: dt.date, t: dt.time) -> bool:
        return self.store.free_tables(d, t, self.restaurant.cfg.tables_per_slot) > 0

    def check_slot_time(self, d: dt.date, t: dt.time) -> Problem | None:
        """Date-and-time rules plus capacity: the one check both update and book use."""
        return self.restaurant.check_time(d, t, self.now(), free=self._free)

    def unread(self, slot: str) -> SlotIssue:
        """Nothing in the words was a value for ``slot``."""
        if slot == "name":
            return SlotIssue("name", "unparsed", self.msg("bad_name"))
        return SlotIssue(slot, "unparsed", self.msg("unparsed", label=self.label(slot)))

    def invalid_phone(self, digits: str) -> SlotIssue:
        return SlotIssue("phone", "invalid_phone", self.msg("invalid_phone", heard=_heard_phone(digits, self.lang)))

    def begin_turn(self, text: str) -> None:
        """A new caller utterance: the read-back/yes ordering and the booking's "yes" check use it."""
        self.state.turn += 1
        self.state.last_user_text = text or ""
        acts = acts_of(text or "")
        for act, intent in (("cancel_booking", "cancel"), ("change_booking", "change"), ("check_booking", "check")):
            if act in acts and self.state.manage is None:
                self.state.wants_existing = intent
                break

    def follow_language(self, text: str) -> None:
        """A caller who opens in the other language is answered in it (only early in the call, so
        one misrecognised utterance later on cannot flip the call)."""
        norm = parse.normalize(text or "")
        lang = parse.detect_language(norm)
        if lang == "en" and len(_WORD_RE.findall(norm)) < 2:
            return  # one latin token ("OK", or a misrecognised "kkkk") is no sign of an English caller
        if lang and lang != self.lang and self.state.turn <= 2 and len(norm) >= 4:
            log.info("call %s: caller speaks %s: switching language", self.call_id, lang)
            self.state.language = lang  # type: ignore[assignment]

    # ------------------------------------------------------------------ slots
    def update(self, values: dict[str, Any], *, decided: bool = False) -> UpdateResult:
        """Apply any subset of slots. Values may be typed (date, time, int) or raw phrases.

        ``decided`` says the caller's intent was already settled (the rules agent's own policy). Without
        it (an LLM's proposal) a filled date, time or party size is changed only when the caller's latest
        words give that value outside a request, or correct it; otherwise the change comes back as a
        question to ask (``confirm_change``), and a "yes" to it lets the same change through."""
        result = UpdateResult()
        slots = self.state.slots
        if self.state.reservation is not None:
            if any(v not in (None, "") for v in values.values()):
                result.issues.append(SlotIssue("reservation", "already_booked", self.msg("already_booked")))
            return result
        if not decided:
            values = self._unasked_changes(values, result)
        order = [s for s in SLOT_ORDER if s in values and values[s] not in (None, "")]
        # in slot order: a date given alongside a time is judged before the time is
        for slot in order:
            spec = SLOTS[slot]
            before = getattr(slots, slot)
            value = spec.read(values[slot], self)
            if value is UNREAD:
                result.issues.append(self.unread(slot))
                continue
            issue = spec.check(value, self)
            if issue is not None:
                result.issues.append(issue)
                self._refused(slot, value)
                continue
            setattr(slots, slot, value)
            result.applied[slot] = value
            if slot == "note":
                slots.note_done = True
            elif slot in ("name", "phone"):
                register_pii(value)  # masked in every log line from now on (pipeline.privacy)
                if slot == "name":
                    register_pii(speech.say_name(value, "ja"))  # and as the bot reads it back
            elif slot == "date" and slots.time is not None and "time" not in order:
                # a time chosen for another day may not hold on this one
                tp = self.check_slot_time(value, slots.time)
                if tp is not None:
                    result.issues.append(self.issue("time", tp))
                    slots.time = None
                    result.cleared.append("time")
            if before is not None and before != value:
                result.changed.append(slot)
        if (result.applied or result.cleared) and self.state.awaiting_confirmation:
            # anything new must be read back again before a "yes" can book it
            self.state.awaiting_confirmation = False
            self.state.readback_turn = None
        return result

    def _unasked_changes(self, values: dict[str, Any], result: UpdateResult) -> dict[str, Any]:
        """Hold back changes to filled slots that the caller's own words do not ask for."""
        st, slots = self.state, self.state.slots
        said = st.last_user_text
        heard = None
        kept = dict(values)
        for slot in ("date", "time", "party_size"):
            raw = values.get(slot)
            if raw in (None, "") or getattr(slots, slot) is None:
                continue
            new = self._typed(slot, raw)
            if new is None or new == getattr(slots, slot):
                continue
            if heard is None:
                heard = parse.analyze(said, self.today(), filled=[s for s in SLOT_ORDER if slots.is_filled(s)],
                                      is_open=lambda x: self.restaurant.is_open_at(x, slots.date))
            pend = st.pending or {}
            agreed = (pend.get("kind") == "change" and pend.get("slot") == slot and pend.get("value") == new
                      and parse.parse_yes_no(said) is True)
            if heard.values.get(slot) == new or parse.is_correction(said) or agreed:
                if agreed:
                    st.pending = None
                continue
            kept.pop(slot)
            st.pending = {"kind": "change", "slot": slot, "value": new}
            question = PHRASES[self.lang]["confirm_change"].format(
                label=self.label(slot), value=_say(slot, new, self.lang, self.today()))
            result.issues.append(SlotIssue(slot, "confirm_change", question))
        return kept

    def _typed(self, slot: str, raw: Any) -> Any:
        if slot == "date":
            return raw if isinstance(raw, dt.date) else parse.parse_date(str(raw), self.today())
        if slot == "time":
            return raw if isinstance(raw, dt.time) else parse.parse_time(
                str(raw), is_open=lambda x: self.restaurant.is_open_at(x, self.state.slots.date))
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        return parse.parse_party_size(str(raw))

    def missing(self) -> list[str]:
        return self.state.slots.missing()

    def status(self) -> dict[str, Any]:
        missing = self.missing()
        return {
            "slots": self.state.slots.to_json(),
            "missing": missing,
            "next_to_ask": missing[0] if missing else None,
            "awaiting_confirmation": self.state.awaiting_confirmation,
            "booked": self.state.reservation,
            "today": self.today().isoformat(),
            "now": self.now().strftime("%Y-%m-%d %H:%M"),
        }

    # ------------------------------------------------------------------ availability
    def available_dates(self, start: dt.date, n: int = 5) -> list[dt.date]:
        now = self.now()
        return [d for d in self.restaurant.next_bookable_dates(start, now, n=n + 14) if self.free_times(d)][:n]

    def free_times(self, d: dt.date) -> list[dt.time]:
        return [t for t in self.restaurant.bookable_times(d, self.now()) if self._free(d, t)]

    def availability(self, date: Any = None, time: Any = None, party_size: Any = None) -> dict[str, Any]:
        today = self.today()
        out: dict[str, Any] = {}
        d = None
        if date not in (None, ""):
            d = date if isinstance(date, dt.date) else parse.parse_date(str(date), today)
            if d is None:
                out["error"] = self.msg("unparsed", label=self.label("date"))
        d = d or self.state.slots.date
        if party_size not in (None, ""):
            n = party_size if isinstance(party_size, int) else parse.parse_party_size(str(party_size))
            if n is not None:
                problem = self.restaurant.check_party(n)
                if problem is not None:
                    out["party_size_problem"] = problem.message.get(self.lang)
        if d is not None:
            problem = self.restaurant.check_date(d, self.now())
            if problem is not None:
                out["date_problem"] = problem.message.get(self.lang)
                out["date_alternatives"] = problem.alternatives
            else:
                free = self.free_times(d)
                out["date"] = d.isoformat()
                out["free_times"] = [t.strftime("%H:%M") for t in free]
                if time not in (None, ""):
                    t = time if isinstance(time, dt.time) else parse.parse_time(
                        str(time), is_open=lambda x: self.restaurant.is_open_at(x, d))
                    if t is not None:
                        near = self.restaurant.nearest_times(d, t, 3, free=self._free)
                        out["nearest_free_times"] = [x.strftime("%H:%M") for x in near]
        out["available_dates"] = [x.isoformat() for x in self.available_dates(d or today, 5)]
        return out

    # ------------------------------------------------------------------ faq
    def answer_faq(self, question: str) -> dict[str, Any]:
        match = self.faq.match(str(question), self.lang)
        if match is None:
            # never promise a call back: the caller is told where the answer can be had
            return {"found": False, "topics": self.faq.topics(),
                    "message": PHRASES[self.lang]["no_answer"].format(phone=self.restaurant.cfg.phone)}
        return {"found": True, "topic": match.id, "answer": match.answer}

    # ------------------------------------------------------------------ confirmation and booking
    def read_back(self) -> str | None:
        """The whole reservation as it will be booked; arms the confirmation. None while incomplete."""
        s = self.state.slots
        if self.missing():
            return None
        assert s.date and s.time and s.party_size and s.name and s.phone
        today = self.today()
        if self.lang == "ja":
            note = f"ご要望は「{s.note}」、" if s.note else ""
            text = (f"ご予約内容を確認いたします。{speech.say_date(s.date, 'ja', today)}、{speech.say_time(s.time, 'ja')}から、"
                    f"{speech.say_party(s.party_size, 'ja')}、お名前は{speech.say_name(s.name, 'ja')}様、"
                    f"お電話番号は{speech.say_phone(s.phone, 'ja')}、{note}"
                    "以上でよろしいでしょうか。")
        else:
            note = f", and the request: {s.note.rstrip('.!? ')}" if s.note else ""
            text = (f"Let me read that back: {speech.say_date(s.date, 'en', today)} at {speech.say_time(s.time, 'en')}, "
                    f"{speech.say_party(s.party_size, 'en')}, under the name {s.name}, "
                    f"phone number {speech.say_phone(s.phone, 'en')}{note}. Is that all correct?")
        self.state.awaiting_confirmation = True
        self.state.readback_turn = self.state.turn
        return text

    def book(self) -> BookResult:
        st = self.state
        if st.reservation is not None:
            return BookResult(True, st.reservation, "already_booked")
        missing = self.missing()
        if missing:
            return BookResult(False, code="incomplete", message=f"missing: {', '.join(missing)}")
        if not st.awaiting_confirmation or st.readback_turn is None or st.readback_turn >= st.turn:
            return BookResult(False, code="not_read_back",
                              message="Read the whole reservation back to the caller first (read_back_reservation), "
                                      "then book only after the caller says yes in their next turn.")
        if parse.parse_yes_no(st.last_user_text) is not True:
            return BookResult(False, code="no_explicit_yes",
                              message="The caller has not clearly said yes to the read-back; ask them to confirm.")
        s = st.slots
        assert s.date and s.time and s.party_size and s.name and s.phone
        for problem in (self.restaurant.check_time(s.date, s.time, self.now()), self.restaurant.check_party(s.party_size)):
            if problem is not None:
                st.awaiting_confirmation = False
                return BookResult(False, code=problem.code, message=problem.message.get(self.lang, ""),
                                  alternatives=list(problem.alternatives))
        key = f"{self.call_id}|{s.date.isoformat()}|{s.time:%H:%M}|{s.party_size}|{s.phone}|{s.name}"
        try:
            res = self.store.book(date=s.date, time=s.time, party_size=s.party_size, name=s.name, phone=s.phone,
                                  note=s.note, capacity=self.restaurant.cfg.tables_per_slot,
                                  idempotency_key=key, call_id=self.call_id)
        except FullyBooked:
            problem = self.restaurant.fully_booked(s.date, s.time, self.now(), self._free)
            s.time = None
            st.awaiting_confirmation = False
            return BookResult(False, code="fully_booked", message=problem.message.get(self.lang, ""),
                              alternatives=list(problem.alternatives))
        except StoreError as e:
            log.error("booking failed for call %s: %s", self.call_id, e)
            st.awaiting_confirmation = False
            msg = ("申し訳ございません、ただいま予約システムに接続できません。お手数ですがお店まで直接お電話ください。"
                   if self.lang == "ja" else
                   "I'm sorry, the booking system is unavailable right now. Please call the restaurant directly.")
            return BookResult(False, code="store_error", message=msg)
        st.reservation = res.to_json()
        st.awaiting_confirmation = False
        log.info("call %s booked %s", self.call_id, res.id)
        return BookResult(True, st.reservation)

    # ------------------------------------------------------------------ existing bookings
    def find_bookings(self, phone: Any = None, date: Any = None, reservation_id: Any = None) -> list[dict[str, Any]]:
        """The caller's active bookings, by reservation number or by phone (and date). Raises StoreError."""
        if reservation_id not in (None, ""):
            res = self.store.get(str(reservation_id))
            return [res.to_json()] if res is not None and res.active else []
        digits = parse.repair_phone(parse.parse_phone(str(phone or "")) or "")
        if not digits:
            return []
        d = None
        if date not in (None, ""):
            d = date if isinstance(date, dt.date) else parse.parse_date(str(date), self.today())
        today = self.today()
        return [r.to_json() for r in self.store.find(digits, d) if r.date >= today]

    def propose_change(self, booking: dict[str, Any], values: dict[str, Any]) -> tuple[dict[str, Any], list[SlotIssue]]:
        """Check a change to an existing booking by the same slot readers and rules as a new one; arms
        the yes check. Returns the typed values that change and the problems (with alternatives) of
        those that cannot."""
        old = {"date": dt.date.fromisoformat(booking["date"]), "time": dt.time.fromisoformat(booking["time"]),
               "party_size": booking["party_size"], "name": booking["name"], "note": booking.get("note")}
        new = dict(old)
        issues: list[SlotIssue] = []
        for slot in ("date", "time", "party_size", "name", "note"):
            raw = values.get(slot)
            if raw in (None, ""):
                continue
            if slot == "time":
                d = new["date"]
                value = raw if isinstance(raw, dt.time) else parse.parse_time(
                    str(raw), is_open=lambda x, d=d: self.restaurant.is_open_at(x, d)) or UNREAD
            else:
                value = SLOTS[slot].read(raw, self)
            if value is UNREAD:
                issues.append(self.unread(slot))
            elif slot in ("date", "party_size") and (issue := SLOTS[slot].check(value, self)) is not None:
                issues.append(issue)
            else:
                new[slot] = value
        if (new["date"], new["time"]) != (old["date"], old["time"]):
            # the booking's own table is free for itself: only a move to another slot needs a free table
            problem = self.restaurant.check_time(new["date"], new["time"], self.now(), free=self._free)
            if problem is not None:
                issues.append(self.issue("time" if values.get("time") not in (None, "") else "date", problem))
                new["date"], new["time"] = old["date"], old["time"]
        changes = {k: v for k, v in new.items() if v != old[k]}
        if "name" in changes:
            register_pii(changes["name"])
        m = self.state.manage
        if m is not None and changes and not issues:
            m.proposal, m.proposal_kind, m.proposed_turn = changes, "change", self.state.turn
        return changes, issues

    def propose_cancel(self) -> None:
        m = self.state.manage
        if m is not None and m.booking is not None:
            m.proposal, m.proposal_kind, m.proposed_turn = {}, "cancel", self.state.turn

    def _caller_said_yes_to(self, kind: str) -> str | None:
        """None when the proposal of ``kind`` may be carried out now, else why not (for the model)."""
        m = self.state.manage
        if m is None or m.booking is None or m.proposal_kind != kind or m.proposed_turn is None:
            return f"nothing to {kind}: use propose_{kind} first"
        if m.proposed_turn >= self.state.turn:
            return "read the proposal to the caller and wait for their answer in their next turn"
        if parse.parse_yes_no(self.state.last_user_text) is not True:
            return "the caller has not clearly said yes; ask them to confirm"
        return None

    def apply_change(self) -> dict[str, Any]:
        """Make the proposed change in one transaction with the capacity check. Raises FullyBooked,
        ReservationNotFound or StoreError; ValueError when the caller has not said yes to it."""
        why = self._caller_said_yes_to("change")
        if why is not None:
            raise ValueError(why)
        m = self.state.manage
        assert m is not None and m.booking is not None and m.proposal is not None
        res = self.store.change(m.booking["id"], capacity=self.restaurant.cfg.tables_per_slot, **m.proposal)
        log.info("call %s changed %s", self.call_id, res.id)
        m.booking, m.proposal, m.proposal_kind, m.proposed_turn, m.done = res.to_json(), None, None, None, True
        return m.booking

    def apply_cancel(self) -> dict[str, Any]:
        why = self._caller_said_yes_to("cancel")
        if why is not None:
            raise ValueError(why)
        m = self.state.manage
        assert m is not None and m.booking is not None
        if not self.store.cancel(m.booking["id"]):
            raise ReservationNotFound(m.booking["id"])
        log.info("call %s cancelled %s", self.call_id, m.booking["id"])
        cancelled = m.booking
        if self.state.reservation is not None and self.state.reservation.get("id") == cancelled["id"]:
            self.state.reservation = None
        m.proposal, m.proposal_kind, m.proposed_turn, m.done = None, None, None, True
        return cancelled

    def describe_booking(self, booking: dict[str, Any], changes: dict[str, Any] | None = None) -> dict[str, str]:
        """The spoken parts of a booking (with ``changes`` applied): when, party, name."""
        b = {**booking, **{k: _jsonable(v) for k, v in (changes or {}).items()}}
        d, t = dt.date.fromisoformat(b["date"]), dt.time.fromisoformat(b["time"])
        day, at = speech.say_date(d, self.lang, self.today()), speech.say_time(t, self.lang)
        return {"when": f"{day}の{at}" if self.lang == "ja" else f"{day} at {at}",
                "party": speech.say_party(b["party_size"], self.lang), "name": speech.say_name(b["name"], self.lang)}

    def end_call(self) -> None:
        self.state.ended = True

    # ------------------------------------------------------------------ LLM interface
    def schemas(self) -> list[dict[str, Any]]:
        return TOOL_SCHEMAS

    def call(self, name: str, arguments: str | dict[str, Any] | None) -> str:
        """Run a tool for the LLM. Returns JSON text; every failure is a message, never an exception."""
        try:
            args = _load_args(arguments)
        except ValueError as e:
            return _dump({"ok": False, "error": str(e)})
        spec = TOOLS.get(name)
        if spec is None:
            return _dump({"ok": False, "error": f"unknown tool {name!r}; available: {', '.join(TOOLS)}"})
        handler = getattr(self, spec.method)
        try:
            inspect.signature(handler).bind(**args)
        except TypeError as e:
            return _dump({"ok": False, "error": f"bad arguments for {name}: {e}"})
        try:
            return _dump(handler(**args))
        except Exception as e:  # a tool must never take the call down; a TypeError in here is our bug
            log.exception("tool %s failed in call %s", name, self.call_id)
            return _dump({"ok": False, "error": f"{name} failed: {type(e).__name__}"})

    def _tool_update_reservation(self, **values: Any) -> dict[str, Any]:
        unknown = [k for k in values if k not in SLOT_ORDER]
        if unknown:
            return {"ok": False, "error": f"unknown fields {unknown}; allowed: {list(SLOT_ORDER)}"}
        r = self.update(values)
        status = self.status()
        return {
            "ok": not r.issues,
            "applied": {k: _jsonable(v) for k, v in r.applied.items()},
            "problems": [i.to_json() for i in r.issues],
            "cleared": r.cleared,
            "slots": status["slots"],
            "missing": status["missing"],
            "next_to_ask": status["next_to_ask"],
        }

    def _tool_get_reservation_status(self) -> dict[str, Any]:
        return {"ok": True, **self.status()}

    def _tool_find_availability(self, date: Any = None, time: Any = None, party_size: Any = None) -> dict[str, Any]:
        return {"ok": True, **self.availability(date, time, party_size)}

    def _tool_answer_faq(self, question: str = "") -> dict[str, Any]:
        return {"ok": True, **self.answer_faq(question)}

    def _tool_read_back_reservation(self) -> dict[str, Any]:
        text = self.read_back()
        if text is None:
            return {"ok": False, "error": "incomplete", "missing": self.missing()}
        return {"ok": True, "say_exactly": text,
                "instruction": "Say this read-back to the caller word for word and wait for their answer."}

    def _tool_confirm_booking(self) -> dict[str, Any]:
        r = self.book()
        if r.ok:
            return {"ok": True, "reservation": r.reservation}
        return {"ok": False, "code": r.code, "message": r.message, "alternatives": r.alternatives}

    def _manage(self, intent: str) -> Any:
        if self.state.manage is None or self.state.manage.intent != intent:
            self.state.manage = Manage(intent=intent)  # type: ignore[arg-type]
        return self.state.manage

    def _tool_find_reservations(self, phone: Any = None, date: Any = None, reservation_id: Any = None) -> dict[str, Any]:
        if phone in (None, "") and reservation_id in (None, ""):
            return {"ok": False, "error": "give the phone number the booking was made with, or the reservation number"}
        found = self.find_bookings(phone, date, reservation_id)
        m = self.state.manage
        if len(found) == 1:
            m = self._manage(m.intent if m else "check")
            m.booking = found[0]
        return {"ok": True, "reservations": found, "count": len(found),
                **({"hint": "several bookings: ask the caller for the date"} if len(found) > 1 else {})}

    def _select(self, reservation_id: Any, intent: str) -> dict[str, Any] | None:
        m = self._manage(intent)
        if reservation_id not in (None, ""):
            found = self.find_bookings(reservation_id=reservation_id)
            if found:
                m.booking = found[0]
        return m.booking

    def _tool_propose_change(self, reservation_id: Any = None, **values: Any) -> dict[str, Any]:
        booking = self._select(reservation_id, "change")
        if booking is None:
            return {"ok": False, "error": "no booking selected: use find_reservations first"}
        changes, issues = self.propose_change(booking, values)
        if issues:
            return {"ok": False, "problems": [i.to_json() for i in issues]}
        if not changes:
            return {"ok": False, "error": "nothing would change"}
        parts = self.describe_booking(booking, changes)
        return {"ok": True, "changes": {k: _jsonable(v) for k, v in changes.items()},
                "say_exactly": PHRASES[self.lang]["change_confirm"].format(**parts)}

    def _tool_apply_change(self) -> dict[str, Any]:
        try:
            return {"ok": True, "reservation": self.apply_change()}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        except FullyBooked as e:
            problem = self.restaurant.fully_booked(e.date, e.time, self.now(), self._free)
            return {"ok": False, "code": "fully_booked", "message": problem.message.get(self.lang, ""),
                    "alternatives": list(problem.alternatives)}
        except ReservationNotFound:
            return {"ok": False, "code": "not_found", "error": "the booking no longer exists"}

    def _tool_propose_cancel(self, reservation_id: Any = None) -> dict[str, Any]:
        booking = self._select(reservation_id, "cancel")
        if booking is None:
            return {"ok": False, "error": "no booking selected: use find_reservations first"}
        self.propose_cancel()
        parts = self.describe_booking(booking)
        return {"ok": True, "say_exactly": PHRASES[self.lang]["manage_found"].format(**parts)
                + ("" if self.lang == "ja" else " ") + PHRASES[self.lang]["cancel_confirm"]}

    def _tool_apply_cancel(self) -> dict[str, Any]:
        try:
            return {"ok": True, "cancelled": self.apply_cancel()}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        except ReservationNotFound:
            return {"ok": False, "code": "not_found", "error": "the booking no longer exists"}

    def _tool_transfer_to_person(self) -> dict[str, Any]:
        if self.state.can_transfer:
            self.state.transfer_requested = True
            self.end_call()
            return {"ok": True, "transferring": True, "say_exactly": PHRASES[self.lang]["transferring"]}
        return {"ok": True, "transferring": False,
                "say_exactly": PHRASES[self.lang]["person"].format(phone=self.restaurant.cfg.phone)}

    def _tool_end_call(self, reason: str = "") -> dict[str, Any]:
        self.end_call()
        return {"ok": True, "ended": True}


def _say(slot: str, value: Any, lang: str, today: dt.date) -> str:
    if slot == "date":
        return speech.say_date(value, lang, today)
    if slot == "time":
        return speech.say_time(value, lang)
    return speech.say_party(value, lang)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dt.time):
        return v.strftime("%H:%M")
    return v


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_jsonable)


def _load_args(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        args = json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        raise ValueError("arguments must be a JSON object") from None
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError("arguments must be a JSON object")
    return args


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name and description for the model, its arguments' schema, and the method that runs it."""

    name: str
    description: str
    properties: dict[str, Any]
    method: str

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {"type": "object", "properties": self.properties, "additionalProperties": False},
            },
        }


TOOLS: dict[str, ToolSpec] = {}


def _register(name: str, description: str, properties: dict[str, Any] | None = None) -> None:
    TOOLS[name] = ToolSpec(name, description, properties or {}, f"_tool_{name}")


_SLOT_PROPS = {
    "date": {"type": "string", "description": "reservation date as the caller said it (e.g. 明日, 12月24日, next Friday) or YYYY-MM-DD"},
    "time": {"type": "string", "description": "time as said (e.g. 19時, 午後7時半, 7:30 pm) or HH:MM"},
    "party_size": {"type": ["integer", "string"], "description": "number of people"},
    "name": {"type": "string", "description": "the name the booking is under"},
    "phone": {"type": "string", "description": "callback phone number exactly as the caller said it; digits with any separators"},
    "note": {"type": "string", "description": "special requests (allergies, birthday cake, ...); the caller's words, or 'none' if they have none"},
}
_ID_PROP = {"reservation_id": {"type": "string", "description": "the reservation number (R-XXXXXX) from find_reservations"}}

_register("update_reservation",
          "Record any reservation details the caller just gave (any subset). Pass raw phrases; they are parsed and "
          "validated here. Problems come back with alternatives to offer the caller.", _SLOT_PROPS)
_register("get_reservation_status", "What is filled, what is missing and what to ask next.")
_register("find_availability", "Free times on a date and the next dates with free tables.",
          {k: _SLOT_PROPS[k] for k in ("date", "time", "party_size")})
_register("answer_faq", "Answer a question about the restaurant (hours, access, parking, payment, allergies, private "
          "rooms, courses, children, ...). If nothing is found, say so and give the restaurant's phone number.",
          {"question": {"type": "string", "description": "the caller's question"}})
_register("read_back_reservation",
          "When every detail is filled: returns the full read-back (phone number digit by digit) to say word for word. "
          "Booking is only possible after this and the caller's explicit yes in their next turn.")
_register("confirm_booking", "Book the reservation after the caller said yes to the read-back. Fails (with the reason) otherwise.")
_register("find_reservations",
          "Find the caller's existing bookings, for hearing, changing or cancelling one: by the phone number they booked "
          "with (plus the date when there are several) or by the reservation number.",
          {"phone": _SLOT_PROPS["phone"], "date": _SLOT_PROPS["date"],
           "reservation_id": _ID_PROP["reservation_id"]})
_register("propose_change",
          "Check a change to an existing booking (only the fields that change) and get the sentence to read back. "
          "The change is made only by apply_change after the caller's yes in their next turn.",
          {**_ID_PROP, **{k: _SLOT_PROPS[k] for k in ("date", "time", "party_size", "name", "note")}})
_register("apply_change", "Make the change proposed with propose_change, after the caller said yes to it.")
_register("propose_cancel", "Get the sentence that asks the caller to confirm cancelling an existing booking.", _ID_PROP)
_register("apply_cancel", "Cancel the booking proposed with propose_cancel, after the caller said yes to it.")
_register("transfer_to_person",
          "The caller asks for a person, or you cannot help them: hands the call to the restaurant's staff when the "
          "call can be transferred (say the returned sentence; the call is then put through), otherwise returns the "
          "restaurant's phone number to give the caller.")
_register("end_call", "End the call after saying goodbye.",
          {"reason": {"type": "string", "description": "why the call ends"}})

TOOL_SCHEMAS: list[dict[str, Any]] = [spec.schema() for spec in TOOLS.values()]
