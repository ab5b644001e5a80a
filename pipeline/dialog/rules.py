"""The LLM-free agent: a deterministic policy over the same tools the LLM calls.

It asks for one missing item at a time and takes what an utterance offers by what was asked: a value
for an empty slot is taken, a different value for a filled one only when the caller corrects it
(otherwise it asks), a choice or a contradiction is asked about, a number inside a request stays in
the request. Questions are answered and fill nothing; "wait" and "say that again" are honoured and
never count as failed answers; ending the call is confirmed first. It reads the whole reservation
back and books only on a clear yes; callers can also hear, change or cancel an existing booking.
After repeated failures on one item it says what to do instead and ends the call.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator

from pipeline.dialog import parse, speech
from pipeline.dialog.phrases import HINTS, PHRASES, QUESTIONS, stock_phrases
from pipeline.dialog.state import Manage
from pipeline.dialog.tools import BookingTools, UpdateResult
from pipeline.dialog.understand import Understanding, understand
from pipeline.dialog.understand.acts import looks_like_question
from pipeline.dialog.understand.answers import is_no_request
from pipeline.dialog.understand.extract import says_it_is_a_name
from pipeline.dialog.understand.sound import common_surname, request_is_clear
from pipeline.store import FullyBooked, ReservationNotFound, StoreError

log = logging.getLogger(__name__)

__all__ = ["HINTS", "PHRASES", "QUESTIONS", "RulesAgent", "stock_phrases"]

_NOTHING_ELSE = re.compile(
    r"(以上です|ないです|ありません|大丈夫です|大丈夫|特にない|結構です|けっこうです|それだけ|ありがとう|"
    r"\bno\b|nothing|that'?s all|that'?s it|i'?m good|all good|thank)",
    re.IGNORECASE,
)
_AVAILABILITY = re.compile(
    r"(空いて|空き|あいて|予約できる日|いつなら|予約でき|取れ(?:ます|る)|いけますか|大丈夫ですか|可能ですか"
    r"|available|free|open slots|any tables|can (?:i|we) (?:book|get|reserve|come)|is there a table|do you have a table)",
    re.IGNORECASE,
)
_NEW_BOOKING = re.compile(r"(新しく|別の|もう一件|もう1件|追加で)?.{0,6}予約(?:を)?(?:したい|お願い|取りたい|入れたい)|\b(?:new|another) (?:reservation|booking)\b|\bmake a (?:reservation|booking)\b", re.IGNORECASE)
_FIRST = re.compile(r"前者|最初|初め|はじめ|早い方|早いほう|前の方|\bfirst\b|\bearlier\b|\bformer\b", re.IGNORECASE)
_SECOND = re.compile(r"後者|後の方|あとの方|遅い方|遅いほう|後ろ|\bsecond\b|\blater\b|\blatter\b", re.IGNORECASE)
_SLOT_WORDS = {
    "date": r"(日にち|日付|日程|来店日|何日|\bdate\b|\bday\b)",
    "time": r"(時間|時刻|\btime\b)",
    "party_size": r"(人数|何名|何人|\bpeople\b|\bparty\b|\bguests?\b|\bpersons?\b)",
    "name": r"(名前|\bname\b)",
    "phone": r"(電話|番号|\bphone\b|\bnumber\b)",
    "note": r"(要望|リクエスト|備考|\brequests?\b|\bnote\b)",
}
_SLOTS = tuple(QUESTIONS["ja"])
_FILLERS = re.compile(r"(?:えーっと|えっと|えーと|ええと|えー|あのー|あの|うーん|うーんと|んー|まあ|\b(?:um+|uh+|er+|erm|well|hmm+)\b)[、,。.\s]*",
                      re.IGNORECASE)
#: what the bot asks while handling an existing booking, and the slot an answer to it fills
_MANAGE_ASKS = {"manage_phone": "phone", "manage_date": "date", "manage_change": None, "manage_confirm": None}


#: slots said back as 「…ですね」
_WHEN_SLOTS = ("date", "time", "party_size")
#: slots whose value the recogniser's guess may be asked about
_GUESSABLE = frozenset({"date", "time", "party_size", "phone", "name"})


class RulesAgent:
    kind = "rules"

    def __init__(self, tools: BookingTools, *, max_failures: int = 3):
        self.tools = tools
        self.state = tools.state
        self.max_failures = max_failures

    # ------------------------------------------------------------------ helpers
    @property
    def lang(self) -> str:
        return self.state.language

    def p(self, key: str, **kw) -> str:
        return PHRASES[self.lang][key].format(**kw)

    def question(self, slot: str) -> str:
        return QUESTIONS[self.lang][slot]

    def greeting(self) -> str:
        self.state.asking = "date"
        text = self.p("greeting", name=self.tools.restaurant.name)
        self.state.last_prompt = text
        return text

    def respond(self, text: str) -> Iterator[str]:
        """The Agent interface: the reply as text chunks (one here)."""
        reply = self.reply(text)
        if reply:
            yield reply

    # ------------------------------------------------------------------ the turn
    def reply(self, text: str) -> str:
        if self.state.ended:
            return ""
        self.tools.begin_turn(text)
        return self.handle(text)

    def interrupted(self, heard: str) -> None:
        """Barge-in: the rules agent keeps no history beyond the state, so nothing to rewrite."""

    def handle(self, text: str) -> str:
        """One turn already counted by ``tools.begin_turn`` (the LLM agent hands turns over here)."""
        st = self.state
        if st.ended:
            return ""
        norm = parse.normalize(text or "")
        self.tools.follow_language(norm)
        self._keep_prompt = False
        reply = self._turn(norm)
        if reply and not self._keep_prompt:
            st.last_prompt = reply
        return reply

    def _turn(self, norm: str) -> str:
        st = self.state
        if not re.search(r"[0-9A-Za-z\u00c0-\u024f\u3040-\u30ff\u3400-\u9fff\u3005\u3007]", norm):
            return self._fail(st.asking, self.p("sorry_again"))
        u = self._understand(norm)
        if u.has("repeat") and not u.values and not u.analysis.ambiguous:
            return self._repeat()
        if u.has("wait") and not u.values:
            self._keep_prompt = True
            return self.p("wait_ok")
        if u.has("person"):
            if st.can_transfer:
                return self._transfer("transferring")
            self._keep_prompt = True
            return self._join(self.p("person", phone=self.tools.restaurant.cfg.phone), self._current_question())
        if st.pending is not None:
            settled = self._settle_pending(u, norm)
            if settled is not None:
                return settled
        m = st.manage
        if m is not None and not m.done:
            return self._managing(u, norm)
        wants = self._existing_booking_intent(u)
        if wants is None and m is None and st.wants_existing and st.reservation is None \
                and not any(st.slots.is_filled(s) for s in _SLOTS):
            wants = st.wants_existing  # said earlier, to an agent that has since handed the call over
        if wants is not None:
            st.wants_existing = None
            return self._start_manage(wants, u)
        if st.reservation is not None or (m is not None and m.done):
            return self._after_booking(u, norm)
        if u.has("book") and not u.values and not u.has("question") and not st.awaiting_confirmation \
                and st.pending is None:
            # 「予約をお願いしたいんですが」 answers no question but is no failure either
            return self._join(self.p("ack_book"), self._current_question())
        if st.awaiting_confirmation or st.asking == "correction":
            return self._confirming(u, norm)
        return self._collecting(u, norm)

    def _understand(self, norm: str) -> Understanding:
        st = self.state
        asking = st.asking if st.asking in _SLOTS else _MANAGE_ASKS.get(st.asking or "")
        if st.pending and st.pending.get("kind") == "choose":
            asking = st.pending["slot"]
        filled = [s for s in _SLOTS if st.slots.is_filled(s)]
        return understand(norm, self.tools.today(), asking=asking, filled=filled,
                          is_open=lambda t: self.tools.restaurant.is_open_at(t, st.slots.date))

    def _current_question(self) -> str:
        st = self.state
        if st.asking in _SLOTS:
            return self.question(st.asking)
        if st.asking == "confirm":
            return HINTS[self.lang]["confirm"]
        if st.asking == "anything_else":
            return self.p("anything_else")
        return st.last_prompt

    def _repeat(self) -> str:
        st = self.state
        if st.awaiting_confirmation and st.pending is None:
            readback = self.tools.read_back()  # re-armed: the "yes" may come in the next turn
            if readback:
                return self._join(self.p("repeat_lead"), readback)
        self._keep_prompt = True
        return self._join(self.p("repeat_lead"), st.last_prompt or self._current_question())

    def _transfer(self, key: str) -> str:
        """Say so and hand the call to a person: the transport makes the transfer once this is said."""
        self.state.transfer_requested = True
        log.info("call %s: transferring to the restaurant", self.tools.call_id)
        return self._end(key)

    def _end(self, key: str, **kw) -> str:
        self.tools.end_call()
        self.state.asking = None
        self.state.pending = None
        return self.p(key, **kw)

    def _fail(self, slot: str | None, lead: str) -> str:
        st = self.state
        key = slot or "general"
        st.failures[key] = st.failures.get(key, 0) + 1
        guess = self._guessed(slot)
        if guess is not None:
            # what the recogniser thought most likely, asked as a yes-or-no question: easier to hear
            # than the answer said again, and before giving up
            st.pending = {"kind": "guess", "slot": slot, "value": guess}
            return self.p("confirm_guess", value=self._say_value(slot, guess))
        if st.failures[key] >= self.max_failures:
            if slot == "note":
                st.slots.note_done = True
                return self._next(self.p("ack_no_note"))
            if slot == "name" and st.name_heard:
                # never lose a booking over a name: file it as heard; the read-back says it in full
                r = self.tools.update({"name": st.name_heard}, decided=True)
                if r.applied:
                    return self._next(self._ack(r))
            log.info("giving up on %s after %d failures", key, st.failures[key])
            if st.can_transfer:
                return self._transfer("give_up_transfer")
            return self._end("give_up", phone=self.tools.restaurant.cfg.phone)
        hint = HINTS[self.lang].get(slot or "", "")
        if st.keypad and slot in ("phone", "manage"):
            hint = self._join(hint, self.p("keypad_phone"))
        elif st.keypad and slot in ("confirm", "manage_confirm"):
            hint = self._join(hint, self.p("keypad_yes_no"))
        if slot in QUESTIONS[self.lang] or slot == "confirm":
            return self._join(lead, hint or self.question(slot))
        return self._join(lead, hint) if slot == "manage_confirm" else lead

    def _next(self, lead: str = "") -> str:
        """Ask for the next missing item, or read the reservation back when nothing is missing."""
        st = self.state
        missing = self.tools.missing()
        if missing:
            st.asking = missing[0]
            if missing[0] == "phone" and st.caller_id and not st.caller_id_declined and st.pending is None:
                st.pending = {"kind": "caller_id"}
                return self._join(lead, self.p("caller_id_offer", last4=speech.say_digits(st.caller_id[-4:], self.lang)))
            return self._join(lead, self.question(missing[0]))
        readback = self.tools.read_back()
        self.state.asking = "confirm"
        return self._join(lead, readback or "")

    def _join(self, *parts: str) -> str:
        sep = "" if self.lang == "ja" else " "
        return sep.join(p.strip() for p in parts if p and p.strip())

    def _ack(self, r: UpdateResult) -> str:
        a = r.applied
        today = self.tools.today()
        parts: list[str] = []
        for slot in r.changed:
            value = self._say_value(slot, a[slot])
            parts.append(self.p("changed", label=self.tools.label(slot), value=value))
        when_bits = []
        if "date" in a and "date" not in r.changed:
            when_bits.append(speech.say_date(a["date"], self.lang, today))
        if "time" in a and "time" not in r.changed:
            when_bits.append(speech.say_time(a["time"], self.lang))
        if "party_size" in a and "party_size" not in r.changed:
            when_bits.append(speech.say_party(a["party_size"], self.lang))
        if when_bits:
            if self.lang == "ja":
                when = "の".join(when_bits[:2]) if "date" in a and "time" in a else "、".join(when_bits[:2])
                if len(when_bits) == 3:
                    when += "、" + when_bits[2]
            else:
                when = when_bits[0]
                if "date" in a and "time" in a and "time" not in r.changed:
                    when = f"{when_bits[0]} at {when_bits[1]}" + (f" for {when_bits[2]}" if len(when_bits) > 2 else "")
                elif len(when_bits) > 1:
                    when = ", ".join(when_bits)
                when = when[0].upper() + when[1:]
            parts.append(self.p("ack_when", when=when))
        if "name" in a and "name" not in r.changed:
            parts.append(self.p("ack_name", name=speech.say_name(a["name"], self.lang)))
        if "phone" in a and "phone" not in r.changed:
            parts.append(self.p("ack_phone"))
        if "note" in a and "note" not in r.changed:
            parts.append(self.p("ack_note") if a["note"] else self.p("ack_no_note"))
        return self._join(*parts)

    def _say_value(self, slot: str, value) -> str:
        if slot == "date":
            return speech.say_date(value, self.lang, self.tools.today())
        if slot == "time":
            return speech.say_time(value, self.lang)
        if slot == "party_size":
            return speech.say_party(value, self.lang)
        if slot == "phone":
            return speech.say_phone(value, self.lang)
        if slot == "note" and not value:
            return "なし" if self.lang == "ja" else "none"
        return f"{speech.say_name(value, 'ja')}様" if slot == "name" and self.lang == "ja" else str(value)

    def _faq_answer(self, norm: str, extracted: bool) -> str | None:
        match = self.tools.faq.match(norm, self.lang)
        if match is None:
            return None
        if extracted and not looks_like_question(norm):
            return None
        return match.answer

    def _guessed(self, slot: str | None) -> object:
        """The value of ``slot`` in the recogniser's guess at the turn just failed, or None.

        When its next best was about as likely and says another value (20時 against 20時半), the
        guess is asked about only once the question has failed twice: a coin toss asked as a yes or
        no is a turn lost when wrong, but better than giving up."""
        st = self.state
        said = self._take_guesses()
        if not said or slot not in _GUESSABLE or st.pending is not None:
            return None
        value = self._understand(said[0]).values.get(slot)
        if value is None or value == getattr(st.slots, slot, None) or repr(value) in st.guesses_denied \
                or repr(value) in st.heard_wrong.get(slot, ()):
            return None
        if len(said) > 1 and self._understand(said[1]).values.get(slot) not in (None, value) \
                and st.failures.get(slot, 0) < 2:
            return None
        return value

    def _take_guesses(self) -> list[str]:
        """The recogniser's guesses at the turn just heard, best first; each is used once."""
        st = self.state
        said = [t for t in (st.guess, st.guess_also) if t]
        st.guess, st.guess_also = None, None
        return said

    def _guessed_no_note(self, heard: str) -> bool:
        """Whether the request ``heard`` may be a misheard "none": the recogniser's guess at it was
        one, or it is short and names nothing requests are about; never again once the caller said
        no to that question in this call."""
        st = self.state
        said = self._take_guesses()
        if st.pending is not None or repr("none") in st.guesses_denied:
            return False
        if is_no_request(heard):
            return False  # 「nope, that's it」: a none as said, taken as one
        return (bool(said) and self._understand(said[0]).has("none")) or not request_is_clear(heard)

    def _slot_named(self, norm: str) -> str | None:
        for slot, pattern in _SLOT_WORDS.items():
            if re.search(pattern, norm, re.IGNORECASE):
                return slot
        return None

    # ------------------------------------------------------------------ questions the next answer settles
    def _ask_choice(self, slot: str, options: list, lead: str = "") -> str:
        self.state.pending = {"kind": "choose", "slot": slot, "options": options}
        a, b = (self._say_value(slot, o) for o in options[:2])
        key = "which_date" if slot == "date" else "choose"
        return self._join(lead, self.p(key, a=a, b=b))

    def _settle_pending(self, u: Understanding, norm: str) -> str | None:
        """Answer to the bot's own yes/no or either/or question; None hands the turn to the normal path."""
        st = self.state
        pend = st.pending or {}
        kind = pend.get("kind")
        values = u.values
        if kind == "end":
            if (u.has("affirm") or u.has("end")) and not values:
                return self._end("goodbye_unbooked")
            st.pending = None
            if u.has("deny") and not values:
                return self._join(self.p("ack_no_note"), self._current_question())
            return None
        if kind == "guess":
            st.pending = None
            slot, value = pend["slot"], pend["value"]
            if u.has("affirm") and not u.has("deny") and not values:
                r = self.tools.update({slot: value}, decided=True)
                lead = self._join(self._ack(r), *(i.message for i in r.issues))
                return self._resume(lead)
            if u.has("deny") and not values:
                st.guesses_denied.append(repr(value))
                st.asking = slot
                return self.question(slot)
            return None  # the answer itself said again, or something else: the normal path
        if kind == "caller_id":
            st.pending = None
            others = {k: v for k, v in values.items() if k not in ("phone", "note", "name")}
            if others and "phone" not in values and not u.has("affirm"):
                # 「いいえ、人数は4名です」: the no is about what follows it, not the number offered; that
                # is changed and the number offered again
                r = self.tools.update(others, decided=True)
                return self._next(self._join(self._ack(r), *(i.message for i in r.issues)))
            if u.has("affirm") and not u.has("deny") and "phone" not in values:
                r = self.tools.update({"phone": st.caller_id}, decided=True)
                return self._resume(self._ack(r))
            st.caller_id_declined = True
            if "phone" not in values:
                st.asking = "phone"
                return self.question("phone")
            return None
        if kind == "change":
            slot, value = pend["slot"], pend["value"]
            if u.has("affirm") and not u.has("deny") and not values:
                st.pending = None
                r = self.tools.update({slot: value}, decided=True)
                lead = self._join(self._ack(r), *(i.message for i in r.issues))
                return self._resume(lead)
            if u.has("deny") and not values:
                st.pending = None
                kept = self._say_value(slot, getattr(st.slots, slot))
                return self._resume(self.p("keep_value", label=self.tools.label(slot), value=kept))
            st.pending = None
            return None
        if kind == "name":
            if u.has("affirm") and not u.has("deny"):
                st.pending = None
                r = self.tools.update({"name": pend["value"]}, decided=True)
                return self._resume(self._ack(r))
            st.pending = None
            if u.has("deny") and "name" not in values:
                st.asking = "name"
                return self._fail("name", self.p("sorry_again"))
            if "name" in values and values["name"] == pend["value"]:
                # said again the same way: never lose a booking over a name (it is read back in full)
                r = self.tools.update({"name": values["name"]}, decided=True)
                return self._resume(self._ack(r))
            return None
        if kind == "choose":
            slot, options = pend["slot"], pend["options"]
            v = values.get(slot)
            pick = None
            if v in options:
                pick = v
            elif slot == "date" and v is not None:
                same_wd = [o for o in options if o.weekday() == v.weekday()]
                pick = same_wd[0] if len(same_wd) == 1 else None
            if pick is None and v is None and not u.analysis.ambiguous.get(slot):
                if _FIRST.search(norm):
                    pick = options[0]
                elif _SECOND.search(norm):
                    pick = options[1]
            if pick is not None:
                st.pending = None
                rest = {k: x for k, x in values.items() if k != slot and k != "note"}
                r = self.tools.update({slot: pick, **rest}, decided=True)
                lead = self._join(self._ack(r), *(i.message for i in r.issues))
                return self._after_update(r, lead, slot)
            if v is not None or u.analysis.ambiguous:
                st.pending = None
                return None  # a new value, or a new choice: the normal path takes it
            st.failures[slot] = st.failures.get(slot, 0) + 1
            if st.failures[slot] >= self.max_failures:
                return self._fail(slot, "")
            return self._ask_choice(slot, options, self.p("sorry_again"))
        st.pending = None
        return None

    def _resume(self, lead: str) -> str:
        """Back to where the call was: the read-back if everything is there, else the next question."""
        return self._next(lead)

    def _after_update(self, r: UpdateResult, lead: str, asked: str | None) -> str:
        st = self.state
        for issue in r.issues:
            if issue.slot in QUESTIONS[self.lang] and not st.slots.is_filled(issue.slot):
                return self._refused(issue.slot, lead, count=issue.slot == asked)
        return self._next(lead)

    # ------------------------------------------------------------------ taking a new booking
    def _collecting(self, u: Understanding, norm: str) -> str:
        st = self.state
        asking = st.asking
        if (u.has("end") and not u.has("question") and not u.values) \
                or (u.acts == {"none"} and asking in _WHEN_SLOTS and not u.values):
            # 「以上です」「結構です」 to a question about the booking: the caller may be done; asked
            st.pending = {"kind": "end"}
            return self.p("confirm_end")
        values = dict(u.values)
        if asking in values and repr(values[asking]) in st.heard_wrong.get(asking, ()):
            # the value the caller corrected at the read-back, heard again: whisper's mishearing of
            # what they say, not their answer, the first time; said once more, it is taken (the caller
            # may mean it: "no, make it three" to a booking for three)
            st.heard_wrong[asking].remove(repr(values.pop(asking)))
        if u.acts == {"affirm"} and not values and asking in ("date", "time", "party_size", "name", "phone") \
                and len(norm) <= 12 and st.failures.get("listening", 0) < 2:
            # 「はい」 to an open question (a backchannel to the greeting that outlasted it): the
            # caller is listening, not answering; the question again, not counted as a failure (twice)
            st.failures["listening"] = st.failures.get("listening", 0) + 1
            return self._current_question()
        if asking != "note" and "note" in values and not parse.parse_note(norm):
            values.pop("note")
        if asking == "name" and not u.acts & {"wait", "repeat", "none", "deny", "question"}:
            heard = _FILLERS.sub("", parse.normalize(norm)).strip(" 。、.,!！?？ー")
            if len(heard) >= 2 and not any(ch.isdigit() for ch in heard) and len(heard) <= 40:
                st.name_heard = heard
        if asking == "note":
            kept_in_request = False
            if not u.has("correct"):
                # the request is the caller's words; its numbers stay in it, whether or not it reads
                # as a request (「卵アレルギーの者が1名おります」 misheard is still no new party size)
                for slot in ("date", "time", "party_size"):
                    if slot in values and st.slots.is_filled(slot):
                        values.pop(slot)
                        kept_in_request = True
            if "note" not in values:
                if u.has("none") or (u.has("deny") and not values):
                    values["note"] = "none"
                elif kept_in_request and not values and len(norm) >= 4:
                    values["note"] = norm  # 「子供が一人いるので、一応お願いします」: a request, numbers and all
                elif u.has("affirm") and not values:
                    st.failures["note_what"] = st.failures.get("note_what", 0) + 1
                    if st.failures["note_what"] > 2:
                        return self._fail("note", self.p("sorry_again"))
                    return self.p("note_what")  # "はい" to "any requests?": which one?
                elif not values and not u.has("question") and len(norm) >= 4:
                    values["note"] = norm  # whatever they asked for, in their words
            if values.get("note") not in (None, "none") and set(values) == {"note"} and self._guessed_no_note(norm):
                # 「Nor it went.」 for "no requests": a short request naming nothing, or one whisper
                # found a none nearly as likely as, is asked about once
                st.pending = {"kind": "guess", "slot": "note", "value": "none"}
                return self.p("confirm_no_note")
        faq = None
        if u.has("question"):
            match = self.tools.faq.match(norm, self.lang)
            if match is not None:
                # a question about the restaurant fills nothing ("土曜日は何時までですか")
                return self._join(match.answer, self._current_question())
            if not _AVAILABILITY.search(norm) and not any(k != "note" for k in values):
                if values.get("note") and asking == "note":
                    pass  # "窓際の席でもいいですか": a request put as a question
                else:
                    return self._join(self.p("no_answer", phone=self.tools.restaurant.cfg.phone),
                                      self._current_question())
        elif not values and _AVAILABILITY.search(norm):
            return self._join(self._availability_answer(), self.question(asking or "date"))
        elif not values:
            faq = self._faq_answer(norm, False)
            if faq is not None:
                return self._join(faq, self._current_question())
        lead_parts: list[str] = []
        # a phone number given in groups over several turns
        if asking == "phone" and "phone" in values:
            digits = values["phone"]
            if len(digits) < 10 and len(st.phone_partial + digits) <= 11:
                st.phone_partial += digits
                if len(st.phone_partial) < 10 or not parse.is_valid_phone(st.phone_partial):
                    if len(st.phone_partial) < 11 and st.phone_partial.startswith("0"):
                        return self.p("phone_more", digits=speech.say_phone(digits, self.lang))
                values["phone"] = st.phone_partial
            st.phone_partial = ""
        # values offered as a choice are asked about; the rest is taken
        choice = next(iter(u.analysis.ambiguous.items()), None)
        # a filled slot changes only when the caller corrects it; otherwise ask
        change_q = None
        same: list[str] = []
        for slot in list(values):
            if slot in ("note", "phone") or not st.slots.is_filled(slot):
                continue
            if values[slot] == getattr(st.slots, slot):
                values.pop(slot)
                same.append(slot)
                continue
            explicit = u.has("correct") or slot == asking or self._slot_named(norm) == slot
            if not explicit:
                value = values.pop(slot)
                if change_q is None:
                    change_q = (slot, value)
        if asking == "name" and "name" in values and self.lang == "ja":
            guess = self._guessed("name")
            if guess is not None and speech.say_name(guess, self.lang) != speech.say_name(values["name"], self.lang):
                # whisper wrote 「小話」 but found 小林 nearly as likely: the common surname is asked about
                st.pending = {"kind": "guess", "slot": "name", "value": guess}
                return self.p("confirm_name", name=speech.say_name(guess, self.lang))
        doubtful = None
        if "name" in values and u.analysis.doubtful_name and not st.slots.name:
            doubtful = values.pop("name")
        r = self.tools.update(values, decided=True) if values else UpdateResult()
        lead = self._join(*lead_parts, self._ack(r), *(i.message for i in r.issues))
        if choice is not None:
            return self._ask_choice(choice[0], choice[1], lead)
        if change_q is not None:
            slot, value = change_q
            st.pending = {"kind": "change", "slot": slot, "value": value}
            return self._join(lead, self.p("confirm_change", label=self.tools.label(slot),
                                           value=self._say_value(slot, value)))
        if doubtful is not None:
            st.pending = {"kind": "name", "value": doubtful}
            return self._join(lead, self.p("confirm_name", name=speech.say_name(doubtful, self.lang)))
        asked_issues = [i for i in r.issues if i.slot == asking]
        if not r.applied and not r.issues and asking in same and asking in _WHEN_SLOTS:
            # the value it already holds, given again when asked for it again: it stands
            st.awaiting_confirmation = False
            return self._next(self._join(lead, self.p("ack_when", when=self._say_value(asking, getattr(st.slots, asking)))))
        if not r.applied and not r.issues and same and asking not in same:
            # 「やっぱり3名で」 for the 3 already taken: said back, and the question asked again, no failure
            said = [self._say_value(slot, getattr(st.slots, slot)) for slot in same if slot in _WHEN_SLOTS]
            when = ("、" if self.lang == "ja" else ", ").join(said)
            return self._join(lead, self.p("ack_when", when=when[:1].upper() + when[1:]) if said else "",
                              self._current_question())
        if not r.applied:
            if r.issues and not asked_issues:
                return self._next(lead)
            if not asked_issues or any(i.code == "unparsed" for i in asked_issues):
                if asking == "phone":
                    st.phone_partial = ""
                return self._fail(asking, lead or self.p("sorry_again"))
        if asked_issues and asking:
            return self._refused(asking, lead)
        return self._after_update(r, lead, None)

    def _refused(self, slot: str, lead: str, *, count: bool = True) -> str:
        """The caller was understood but the value cannot be booked; the message offers alternatives."""
        st = self.state
        if count:
            st.failures[slot] = st.failures.get(slot, 0) + 1
            if st.failures[slot] >= self.max_failures:
                return self._fail(slot, lead)
        st.asking = slot
        if not re.search(r"(か。|[?？])\s*$", lead):
            lead = self._join(lead, self.question(slot))
        return lead

    def _availability_answer(self) -> str:
        info = self.tools.availability()
        if info.get("free_times") and info.get("date"):
            d = dt.date.fromisoformat(info["date"])
            times = [dt.time.fromisoformat(t) for t in info["free_times"]]
            return self.p("free_times", date=speech.say_date(d, self.lang),
                          times=speech.say_list([speech.say_time(t, self.lang) for t in times[:4]], self.lang))
        dates = info.get("available_dates") or []
        if not dates:
            return self.p("no_free")
        return self.p("available_dates", dates=speech.say_list(
            [speech.say_date(dt.date.fromisoformat(x), self.lang) for x in dates[:3]], self.lang))

    # ------------------------------------------------------------------ the read-back
    def _confirming(self, u: Understanding, norm: str) -> str:
        st = self.state
        values = dict(u.values)
        if "note" in values and not parse.parse_note(norm):
            values.pop("note")
        yes_no = True if u.has("affirm") else False if u.has("deny") else None
        if st.slots.note and st.slots.note != "none" and not values and st.asking != "correction" \
                and u.acts <= {"none", "deny"} and "none" in u.acts and re.search(r"request|要望|リクエスト", norm, re.I):
            # "no requests" to the read-back: the request taken from a mishearing goes
            values["note"] = "none"
            yes_no = None
        elif yes_no is None and u.acts == {"none"} and not values and st.asking != "correction":
            # 「特にありません」 to the read-back from a caller still on the request question (who did
            # not hear the read-back, or heard it stall): the request taken from other words (whisper's
            # 「きょです」) is dropped and the booking read again; with no request it is no clear yes
            # (the booking tool wants one), and the booking is read again once before that counts
            if st.slots.note and st.slots.note != "none":
                values["note"] = "none"
            elif not st.failures.get("readback_again"):
                st.failures["readback_again"] = 1
                return self._repeat()
        if u.has("end") and not values and yes_no is not True:
            st.pending = {"kind": "end"}
            return self.p("confirm_end")
        if "name" in values and self.lang == "ja" and not u.acts & {"deny", "correct"} \
                and not says_it_is_a_name(norm):
            # 「キノビです」 said to the read-back is whisper's end of 「12月11日、金曜日です」 as often as a
            # name: without いいえ or 名前は, only a common surname (by its sound) corrects the name
            surname = common_surname(values["name"])
            if surname is None or speech.say_name(surname, self.lang) == speech.say_name(st.slots.name or "", self.lang):
                values.pop("name")
            else:
                values["name"] = surname
        if not values and not u.acts and st.slots.name and self.lang == "ja":
            # a bare common surname said to the read-back (「佐藤」: whisper dropped the いいえ and the です)
            # corrects the name it read out when it sounds otherwise; any other bare word is no name
            # (「リンエ」 is whisper's start of 「いいえ、…」)
            name = parse.parse_name_answer(norm)
            surname = common_surname(name) if name else None
            if surname and speech.say_name(surname, self.lang) != speech.say_name(st.slots.name, self.lang):
                values["name"] = surname
        again = [slot for slot in _WHEN_SLOTS if slot in values and values[slot] == getattr(st.slots, slot)]
        if again and not u.has("affirm") and not set(values) - set(again) - {"note"}:
            # the value read back, said again instead of a yes (whisper dropped the 「いいえ、」): the
            # caller is correcting it and is heard the same wrong way; it is asked for once more, and
            # not taken the next time it is heard (the recogniser weighs the others: ``heard_wrong``)
            slot = again[0]
            wrong = st.heard_wrong.setdefault(slot, [])
            if repr(values[slot]) not in wrong:
                wrong.append(repr(values[slot]))
                st.awaiting_confirmation = False
                st.asking = slot
                return self._join(self.p("say_slot_again", label=self.tools.label(slot)),
                                  HINTS[self.lang].get(slot, ""))
        choice = next(iter(u.analysis.ambiguous.items()), None)
        if values or choice:
            r = self.tools.update(values, decided=True) if values else UpdateResult()
            lead = self._join(self._ack(r), *(i.message for i in r.issues))
            if r.applied:
                st.failures.pop("confirm", None)
            if choice is not None:
                st.awaiting_confirmation = False
                return self._ask_choice(choice[0], choice[1], lead)
            for issue in r.issues:
                if not st.slots.is_filled(issue.slot):
                    st.asking = issue.slot
                    return lead
            if r.applied or st.asking == "correction":
                return self._next(lead)
        if st.asking == "correction":
            slot = self._slot_named(norm)
            if slot is not None:
                st.asking = slot
                st.awaiting_confirmation = False
                return self.p("ask_new_value", label=self.tools.label(slot))
            if yes_no is True:  # "no, it's fine after all"
                return self._next()
            if u.has("end") or yes_no is False:
                st.pending = {"kind": "end"}
                return self.p("confirm_end")
            return self._fail("confirm", self.p("which_fix"))
        if yes_no is True:
            result = self.tools.book()
            if result.ok and result.reservation:
                return self.booked_message()
            if result.code == "store_error":
                return self._join(result.message, self._end("goodbye"))
            st.asking = "time" if not st.slots.time else st.asking
            return self._join(result.message, self._next() if st.slots.missing() else "")
        if yes_no is False:
            slot = self._slot_named(norm)
            st.awaiting_confirmation = False
            if slot is not None:
                st.asking = slot
                return self.p("ask_new_value", label=self.tools.label(slot))
            st.asking = "correction"
            return self.p("which_fix")
        faq = self._faq_answer(norm, False)
        if faq:
            return self._join(faq, HINTS[self.lang]["confirm"])
        return self._fail("confirm", self.p("sorry_again"))

    def booked_message(self) -> str:
        """The booking is made: its number, when, and an offer of more help."""
        res = self.state.reservation or {}
        day = speech.say_date(dt.date.fromisoformat(res["date"]), self.lang, self.tools.today())
        at = speech.say_time(dt.time.fromisoformat(res["time"]), self.lang)
        when = f"{day}の{at}" if self.lang == "ja" else f"{day} at {at}"
        self.state.asking = "anything_else"
        return self.p("booked", id=res["id"], when=when, name=speech.say_name(res["name"], self.lang))

    def _after_booking(self, u: Understanding, norm: str) -> str:
        st = self.state
        faq = self._faq_answer(norm, False)
        if faq and u.has("question"):
            return self._join(faq, self.p("anything_else"))
        if _NEW_BOOKING.search(norm) and not u.has("none"):
            # another booking in the same call
            st.manage, st.reservation = None, None
            st.slots.__init__()
            st.failures.clear()
            st.awaiting_confirmation, st.readback_turn = False, None
            return self._next()
        if u.has("end") or u.has("none") or u.has("deny") or _NOTHING_ELSE.search(norm):
            return self._end("goodbye_booked" if st.reservation is not None else "goodbye")
        if st.reservation is not None and any(k != "note" for k in u.values):
            # "actually, make it 8": a change to what was just booked
            m = st.manage = Manage(intent="change", booking=dict(st.reservation))
            m.wanted = {k: v for k, v in u.values.items() if k in ("date", "time", "party_size", "name")}
            return self._propose(m)
        if faq:
            return self._join(faq, self.p("anything_else"))
        return self._end("goodbye_booked" if st.reservation is not None else "goodbye")

    # ------------------------------------------------------------------ existing bookings
    def _existing_booking_intent(self, u: Understanding) -> str | None:
        st = self.state
        intent = ("cancel" if u.has("cancel_booking") else "change" if u.has("change_booking")
                  else "check" if u.has("check_booking") else None)
        if intent is None and u.reservation_id:
            intent = "check"
        if intent is None:
            return None
        started = any(st.slots.is_filled(s) for s in _SLOTS) and st.reservation is None
        if started and intent == "change":
            return None  # "予約を8時に変更して" while booking: a correction of this booking
        if started and intent == "cancel":
            return None  # stopping this booking: confirmed as an end
        return intent

    def _start_manage(self, intent: str, u: Understanding) -> str:
        st = self.state
        st.pending = None
        before = st.manage
        m = st.manage = Manage(intent=intent)  # type: ignore[arg-type]
        m.wanted = {k: v for k, v in u.values.items() if k in ("date", "time", "party_size", "name")}
        if not u.reservation_id and "phone" not in u.values:
            # the booking this call already made or found
            known = st.reservation or (before.booking if before is not None and before.intent != "cancel" else None)
            if known is not None:
                m.booking = dict(known)
                return self._found(m)
        if u.reservation_id or "phone" in u.values:
            if "phone" in u.values:
                m.wanted.pop("date", None)
            return self._identify(m, u)
        if st.caller_id:
            # the number they are calling from finds their booking without a question
            try:
                found = self.tools.find_bookings(phone=st.caller_id)
            except StoreError as e:
                log.warning("call %s: looking up bookings failed: %s", self.tools.call_id, e)
                found = []
            if len(found) == 1:
                m.booking, m.phone = found[0], st.caller_id
                return self._found(m)
            if len(found) > 1:
                m.phone = st.caller_id
                st.asking = "manage_date"
                return self.p("manage_which_date", n=len(found))
        st.asking = "manage_phone"
        return self.p("manage_phone")

    def _managing(self, u: Understanding, norm: str) -> str:
        st = self.state
        m = st.manage
        assert m is not None
        if u.has("end") and not u.values:
            m.done = True
            return self._end("goodbye")
        if m.booking is None:
            return self._identify(m, u)
        if m.proposal_kind == "cancel":
            if u.has("affirm") and not u.has("deny"):
                try:
                    self.tools.apply_cancel()
                except (ReservationNotFound, StoreError, ValueError) as e:
                    log.warning("call %s: cancelling failed: %s", self.tools.call_id, e)
                    m.done = True
                    st.asking = "anything_else"
                    return self._join(self.p("manage_store_error"), self.p("anything_else"))
                st.asking = "anything_else"
                return self.p("cancelled")
            if u.has("deny"):
                m.done, m.proposal_kind = True, None
                st.asking = "anything_else"
                return self.p("cancel_kept")
            return self._fail("manage_confirm", self._join(self.p("sorry_again"), self.p("cancel_confirm")))
        if m.proposal_kind == "change":
            if u.has("affirm") and not u.has("deny") and not u.values:
                return self._apply_change(m)
            m.proposal, m.proposal_kind = None, None
            if not u.values:
                if u.has("deny") or u.has("none"):
                    st.asking = "manage_change"
                    return self.p("change_what")
                return self._fail("manage_confirm", self.p("change_what"))
        if m.intent == "check":
            m.done = True
            return self._after_booking(u, norm)
        # what to change
        values = {k: v for k, v in u.values.items() if k in ("date", "time", "party_size", "name", "note")}
        if "note" in values and not parse.parse_note(norm):
            values.pop("note")
        choice = next(iter(u.analysis.ambiguous.items()), None)
        if choice is not None:
            return self._ask_choice(choice[0], choice[1])
        if not values:
            if u.has("none") or u.has("deny"):
                m.done = True
                st.asking = "anything_else"
                return self.p("cancel_kept")
            if u.has("cancel_booking"):
                m.intent = "cancel"
                return self._found(m)
            return self._fail("manage_change", self.p("change_what"))
        m.wanted = values
        return self._propose(m)

    def _identify(self, m: Manage, u: Understanding) -> str:
        st = self.state
        try:
            if u.reservation_id:
                found = self.tools.find_bookings(reservation_id=u.reservation_id)
                if not found:
                    st.asking = "manage_phone"
                    return self._fail("manage", self._join(self.p("manage_id_not_found", id=u.reservation_id),
                                                           self.p("manage_phone")))
            elif m.phone and "date" in u.values:
                found = self.tools.find_bookings(phone=m.phone, date=u.values["date"])
            else:
                digits = u.values.get("phone", "")
                if digits and len(digits) < 10:
                    st.phone_partial += digits
                    if len(st.phone_partial) < 10:
                        return self.p("phone_more", digits=speech.say_phone(digits, self.lang))
                    digits, st.phone_partial = st.phone_partial, ""
                if not digits:
                    st.asking = "manage_phone"
                    return self._fail("manage", self.p("manage_phone"))
                m.phone = parse.repair_phone(digits)
                found = self.tools.find_bookings(phone=m.phone)
        except StoreError as e:
            log.warning("call %s: looking up bookings failed: %s", self.tools.call_id, e)
            return self._join(self.p("manage_store_error"), self._end("goodbye"))
        if not found:
            said = speech.say_phone(m.phone, self.lang) if m.phone else ""
            m.phone = None
            st.asking = "manage_phone"
            return self._fail("manage", self._join(self.p("manage_not_found", phone=said), self.p("manage_phone")))
        if len(found) > 1:
            st.asking = "manage_date"
            return self.p("manage_which_date", n=len(found))
        m.booking = found[0]
        return self._found(m)

    def _found(self, m: Manage) -> str:
        st = self.state
        assert m.booking is not None
        said = self.p("manage_found", **self.tools.describe_booking(m.booking))
        if m.intent == "check":
            m.done = True
            st.asking = "anything_else"
            return self._join(said, self.p("check_done"))
        if m.intent == "cancel":
            self.tools.propose_cancel()
            st.asking = "manage_confirm"
            return self._join(said, self.p("cancel_confirm"))
        if m.wanted:
            return self._join(said, self._propose(m))
        st.asking = "manage_change"
        return self._join(said, self.p("change_what"))

    def _propose(self, m: Manage) -> str:
        st = self.state
        assert m.booking is not None
        changes, issues = self.tools.propose_change(m.booking, m.wanted)
        m.wanted = {}
        lead = self._join(*(i.message for i in issues))
        if issues or not changes:
            st.asking = "manage_change"
            return self._join(lead, self.p("change_what"))
        st.asking = "manage_confirm"
        return self._join(lead, self.p("change_confirm", **self.tools.describe_booking(m.booking, changes)))

    def _apply_change(self, m: Manage) -> str:
        st = self.state
        try:
            booking = self.tools.apply_change()
        except FullyBooked as e:
            problem = self.tools.restaurant.fully_booked(e.date, e.time, self.tools.now(), self.tools._free)
            m.proposal, m.proposal_kind = None, None
            st.asking = "manage_change"
            return self._join(problem.message.get(self.lang, ""), self.p("change_what"))
        except (ReservationNotFound, StoreError, ValueError) as e:
            log.warning("call %s: changing a booking failed: %s", self.tools.call_id, e)
            m.done = True
            st.asking = "anything_else"
            return self._join(self.p("manage_store_error"), self.p("anything_else"))
        st.reservation = booking  # the call's outcome: this booking, as it now stands
        st.asking = "anything_else"
        parts = self.tools.describe_booking(booking)
        return self.p("changed_booking", when=parts["when"], party=parts["party"])
