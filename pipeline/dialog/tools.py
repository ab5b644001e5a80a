"""The deterministic tools both agents drive: fill and validate slots, search availability, answer
FAQs, read back, book, end the call.

Every slot value passes through the parsers and the restaurant's rules here, whoever proposed it
(the rules agent or an LLM). A bad argument is returned as a message the model reads, never raised.
Booking needs a full read-back in an earlier turn and a "yes" that this module finds in the
caller's own latest words, so a model cannot book on its own say-so.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.dialog import parse, speech
from pipeline.dialog.faq import FAQ
from pipeline.dialog.restaurant import Problem, Restaurant
from pipeline.dialog.state import SLOT_ORDER, DialogState
from pipeline.privacy import register_pii
from pipeline.store import FullyBooked, ReservationStore, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

MAX_TEXT = 200
_WORD_RE = re.compile(r"[A-Za-z']*[aeiouyAEIOUY][A-Za-z']*")  # longest name / note we keep; anything longer is a transcription accident


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


_LABELS = {
    "ja": {"date": "ご来店日", "time": "お時間", "party_size": "人数", "name": "お名前", "phone": "お電話番号",
           "note": "ご要望"},
    "en": {"date": "date", "time": "time", "party_size": "party size", "name": "name", "phone": "phone number",
           "note": "special requests"},
}

_SIMPLE_MSG = {
    "unparsed": {
        "ja": "{label}をうまく聞き取れませんでした。",
        "en": "I couldn't catch the {label}.",
    },
    "invalid_phone": {
        "ja": "お電話番号は市外局番から10桁か11桁でお願いいたします。{heard}",
        "en": "Please give a Japanese phone number of 10 or 11 digits, starting with the area code. {heard}",
    },
    "already_booked": {
        "ja": "ご予約はすでに確定しております。変更はお店まで直接お電話ください。",
        "en": "The booking is already confirmed; to change it, please call the restaurant.",
    },
    "bad_name": {
        "ja": "お名前をもう一度お願いできますか。",
        "en": "Could you give me the name once more?",
    },
}


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
        return _LABELS[self.lang][slot]

    def _msg(self, key: str, **kw: Any) -> str:
        return _SIMPLE_MSG[key][self.lang].format(**kw).strip()

    def _issue(self, slot: str, problem: Problem) -> SlotIssue:
        return SlotIssue(slot, problem.code, problem.message.get(self.lang, ""), list(problem.alternatives))

    def _free(self, d: dt.date, t: dt.time) -> bool:
        return self.store.free_tables(d, t, self.restaurant.cfg.tables_per_slot) > 0

    def _check_slot_time(self, d: dt.date, t: dt.time) -> Problem | None:
        """Date-and-time rules plus capacity: the one check both update and book use."""
        return self.restaurant.check_time(d, t, self.now(), free=self._free)

    def begin_turn(self, text: str) -> None:
        """A new caller utterance: the read-back/yes ordering and the booking's "yes" check use it."""
        self.state.turn += 1
        self.state.last_user_text = text or ""

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
    def update(self, values: dict[str, Any]) -> UpdateResult:
        """Apply any subset of slots. Values may be typed (date, time, int) or raw phrases."""
        result = UpdateResult()
        slots = self.state.slots
        if self.state.reservation is not None:
            if any(v not in (None, "") for v in values.values()):
                result.issues.append(SlotIssue("reservation", "already_booked", self._msg("already_booked")))
            return result
        today, now = self.today(), self.now()
        order = [s for s in SLOT_ORDER if s in values and values[s] not in (None, "")]
        # a date given alongside a time must be judged before the time is
        for slot in order:
            raw = values[slot]
            before = getattr(slots, slot)
            if slot == "date":
                d = raw if isinstance(raw, dt.date) else parse.parse_date(str(raw), today)
                if d is None:
                    result.issues.append(SlotIssue("date", "unparsed", self._msg("unparsed", label=self.label("date"))))
                    continue
                problem = self.restaurant.check_date(d, now)
                if problem is not None:
                    result.issues.append(self._issue("date", problem))
                    continue
                slots.date = d
                result.applied["date"] = d
                # a time chosen for another day may not hold on this one
                if slots.time is not None and "time" not in order:
                    tp = self._check_slot_time(d, slots.time)
                    if tp is not None:
                        result.issues.append(self._issue("time", tp))
                        slots.time = None
                        result.cleared.append("time")
            elif slot == "time":
                d = slots.date
                if isinstance(raw, dt.time):
                    t = raw
                else:
                    t = parse.parse_time(str(raw), is_open=lambda x, d=d: self.restaurant.is_open_at(x, d))
                if t is None:
                    result.issues.append(SlotIssue("time", "unparsed", self._msg("unparsed", label=self.label("time"))))
                    continue
                if d is not None:
                    problem = self._check_slot_time(d, t)
                    if problem is not None:
                        result.issues.append(self._issue("time", problem))
                        continue
                elif not self.restaurant.is_open_at(t, None):
                    # no date yet: still refuse a time the restaurant is never open
                    problem = self.restaurant.check_time(self.restaurant.next_open_dates(today, 1)[0], t, now)
                    if problem is not None and problem.code in ("outside_hours", "off_grid"):
                        result.issues.append(self._issue("time", problem))
                        continue
                slots.time = t
                result.applied["time"] = t
            elif slot == "party_size":
                n: int | None
                if isinstance(raw, bool):
                    n = None
                elif isinstance(raw, int):
                    n = raw
                elif isinstance(raw, float) and raw.is_integer():
                    n = int(raw)
                else:
                    n = parse.parse_party_size(str(raw))
                    if n is None and str(raw).strip().isdigit():
                        n = int(str(raw).strip())
                if n is None:
                    result.issues.append(
                        SlotIssue("party_size", "unparsed", self._msg("unparsed", label=self.label("party_size")))
                    )
                    continue
                problem = self.restaurant.check_party(n)
                if problem is not None:
                    result.issues.append(self._issue("party_size", problem))
                    continue
                slots.party_size = n
                result.applied["party_size"] = n
            elif slot == "name":
                name = self._clean_name(str(raw))
                if name is None:
                    result.issues.append(SlotIssue("name", "unparsed", self._msg("bad_name")))
                    continue
                slots.name = name
                register_pii(name)  # masked in every log line from now on (pipeline.privacy)
                result.applied["name"] = name
            elif slot == "phone":
                text = str(raw)
                digits = parse.parse_phone(text) or "".join(ch for ch in parse.normalize(text) if ch.isdigit())
                if not digits or self.restaurant.check_phone(digits) is not None:
                    result.issues.append(
                        SlotIssue("phone", "invalid_phone", self._msg("invalid_phone", heard=_heard_phone(digits, self.lang)))
                    )
                    continue
                slots.phone = digits
                register_pii(digits)  # masked in every log line from now on (pipeline.privacy)
                result.applied["phone"] = digits
            elif slot == "note":
                text = parse.normalize(str(raw))[:MAX_TEXT]
                if parse.is_no_request(text) and parse.parse_note(text) is None:
                    slots.note, slots.note_done = None, True
                    result.applied["note"] = None
                else:
                    slots.note, slots.note_done = text, True
                    result.applied["note"] = text
            if slot in result.applied and before is not None and before != getattr(slots, slot):
                result.changed.append(slot)
        if (result.applied or result.cleared) and self.state.awaiting_confirmation:
            # anything new must be read back again before a "yes" can book it
            self.state.awaiting_confirmation = False
            self.state.readback_turn = None
        return result

    @staticmethod
    def _clean_name(raw: str) -> str | None:
        text = parse.normalize(raw).strip(" 。、.,!！?？")
        parsed = parse.parse_name(text) or parse.parse_name_answer(text)
        name = parsed or text
        for suffix in ("様", "さん", "さま"):
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
        name = name.strip()
        if not name or len(name) > 40 or any(ch.isdigit() for ch in name):
            return None
        return name

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
                out["error"] = self._msg("unparsed", label=self.label("date"))
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
            return {"found": False, "topics": self.faq.topics(),
                    "message": "該当する情報が見つかりませんでした。" if self.lang == "ja"
                    else "No answer found for that question."}
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
                    f"{speech.say_party(s.party_size, 'ja')}、お名前は{s.name}様、"
                    f"お電話番号は{speech.say_phone(s.phone, 'ja')}、{note}"
                    "以上でよろしいでしょうか。")
        else:
            note = f", and the request: {s.note}" if s.note else ""
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
        handler = getattr(self, f"_tool_{name}", None)
        if handler is None:
            return _dump({"ok": False, "error": f"unknown tool {name!r}; available: {', '.join(t['function']['name'] for t in TOOL_SCHEMAS)}"})
        try:
            return _dump(handler(**args))
        except TypeError as e:
            return _dump({"ok": False, "error": f"bad arguments for {name}: {e}"})
        except Exception as e:  # a tool must never take the call down
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

    def _tool_end_call(self, reason: str = "") -> dict[str, Any]:
        self.end_call()
        return {"ok": True, "ended": True}


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


def _fn(name: str, description: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties or {}, "additionalProperties": False},
        },
    }


_SLOT_PROPS = {
    "date": {"type": "string", "description": "reservation date as the caller said it (e.g. 明日, 12月24日, next Friday) or YYYY-MM-DD"},
    "time": {"type": "string", "description": "time as said (e.g. 19時, 午後7時半, 7:30 pm) or HH:MM"},
    "party_size": {"type": ["integer", "string"], "description": "number of people"},
    "name": {"type": "string", "description": "the name the booking is under"},
    "phone": {"type": "string", "description": "callback phone number exactly as the caller said it; digits with any separators"},
    "note": {"type": "string", "description": "special requests (allergies, birthday cake, ...); the caller's words, or 'none' if they have none"},
}

TOOL_SCHEMAS: list[dict[str, Any]] = [
    _fn("update_reservation",
        "Record any reservation details the caller just gave (any subset). Pass raw phrases; they are parsed and "
        "validated here. Problems come back with alternatives to offer the caller.", _SLOT_PROPS),
    _fn("get_reservation_status", "What is filled, what is missing and what to ask next."),
    _fn("find_availability", "Free times on a date and the next dates with free tables.",
        {k: _SLOT_PROPS[k] for k in ("date", "time", "party_size")}),
    _fn("answer_faq", "Answer a question about the restaurant (hours, access, parking, payment, allergies, cancellation).",
        {"question": {"type": "string", "description": "the caller's question"}}),
    _fn("read_back_reservation",
        "When every detail is filled: returns the full read-back (phone number digit by digit) to say word for word. "
        "Booking is only possible after this and the caller's explicit yes in their next turn."),
    _fn("confirm_booking",
        "Book the reservation after the caller said yes to the read-back. Fails (with the reason) otherwise."),
    _fn("end_call", "End the call after saying goodbye.",
        {"reason": {"type": "string", "description": "why the call ends"}}),
]
