"""The LLM-free agent: a deterministic policy over the same tools the LLM calls.

It asks for one missing item at a time, takes every slot an utterance offers, answers FAQ
questions and returns to the booking, reads the whole reservation back, books only on a clear yes,
and after repeated failures on one item says what to do instead and ends the call.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator

from pipeline.dialog import parse, speech
from pipeline.dialog.faq import looks_like_question
from pipeline.dialog.tools import BookingTools, UpdateResult

log = logging.getLogger(__name__)

QUESTIONS = {
    "ja": {
        "date": "ご来店のご希望日をお聞かせください。",
        "time": "何時ごろのご来店をご希望でしょうか。",
        "party_size": "何名様でいらっしゃいますか。",
        "name": "ご予約のお名前をお伺いできますか。",
        "phone": "ご連絡先のお電話番号をお願いいたします。",
        "note": "アレルギーやお祝いなど、何かご要望はございますか。",
    },
    "en": {
        "date": "What date would you like to come?",
        "time": "What time would you like?",
        "party_size": "How many people will be in your party?",
        "name": "May I have the name for the booking?",
        "phone": "What phone number can we reach you at?",
        "note": "Do you have any special requests, such as allergies or a birthday?",
    },
}

HINTS = {
    "ja": {
        "date": "「12月24日」や「来週の金曜日」のようにおっしゃってください。",
        "time": "「19時」や「午後7時半」のようにおっしゃってください。",
        "party_size": "「2名」のように人数をおっしゃってください。",
        "name": "「田中です」のようにお名前をおっしゃってください。",
        "phone": "「090、1234、5678」のように、数字をひとつずつおっしゃってください。",
        "note": "ご要望がなければ「特にありません」とおっしゃってください。",
        "confirm": "よろしければ「はい」、訂正がある場合は訂正内容をおっしゃってください。",
    },
    "en": {
        "date": "You can say a date like \"December 24th\" or \"next Friday\".",
        "time": "You can say a time like \"7 pm\" or \"half past seven\".",
        "party_size": "Please tell me the number of people, like \"two people\".",
        "name": "Please tell me your name, like \"My name is Smith\".",
        "phone": "Please say the digits one by one, like \"zero nine zero, one two three four, five six seven eight\".",
        "note": "If you have none, just say \"no requests\".",
        "confirm": "Please say \"yes\" if it is correct, or tell me what to change.",
    },
}

PHRASES = {
    "ja": {
        "greeting": "お電話ありがとうございます。{name}でございます。ご予約を承ります。ご来店のご希望日をお聞かせください。",
        "sorry_again": "恐れ入ります、もう一度お願いできますか。",
        "give_up": "申し訳ございません、うまくお伺いできませんでした。お手数ですが、お店の電話番号{phone}まで直接おかけいただくか、"
                   "時間をおいておかけ直しください。お電話ありがとうございました。",
        "booked": "ありがとうございます。ご予約を承りました。予約番号は{id}です。{when}、{name}様のご来店を心よりお待ちしております。"
                  "ほかに何かございますか。",
        "which_fix": "失礼いたしました。どちらを訂正いたしましょうか。",
        "ask_new_value": "{label}をどのように変更いたしましょうか。",
        "changed": "{label}を{value}に変更いたしました。",
        "declined_end": "承知いたしました。今回のご予約はお取りしておりません。またのお電話をお待ちしております。失礼いたします。",
        "goodbye_booked": "お電話ありがとうございました。ご来店をお待ちしております。失礼いたします。",
        "goodbye": "お電話ありがとうございました。失礼いたします。",
        "goodbye_unbooked": "承知いたしました。ご予約はお取りしておりません。またのお電話をお待ちしております。失礼いたします。",
        "anything_else": "ほかに何かございますか。",
        "after_booking_change": "ご予約はすでに確定しております。変更やキャンセルは、お店の電話番号{phone}までお願いいたします。",
        "back_to_booking": "",
        "ack_note": "ご要望を承りました。",
        "ack_no_note": "かしこまりました。",
        "ack_phone": "お電話番号を承りました。",
        "ack_name": "{name}様ですね。",
        "ack_when": "{when}ですね。",
        "available_dates": "ご予約可能な日は、{dates}です。",
        "free_times": "{date}は、{times}にお席をご用意できます。",
        "no_free": "申し訳ございません、しばらく空きがございません。",
    },
    "en": {
        "greeting": "Thank you for calling {name}. I can take your reservation. What date would you like to come?",
        "sorry_again": "I'm sorry, could you say that again?",
        "give_up": "I'm sorry, I couldn't get that. Please call the restaurant directly at {phone}, or try again later. "
                   "Thank you for calling.",
        "booked": "Thank you, your table is booked. Your reservation number is {id}. We look forward to seeing you, "
                  "{name}, {when}. Is there anything else?",
        "which_fix": "I'm sorry. What would you like to change?",
        "ask_new_value": "What should the {label} be?",
        "changed": "I've changed the {label} to {value}.",
        "declined_end": "All right, I haven't made a booking. Thank you for calling, goodbye.",
        "goodbye_booked": "Thank you for calling. We look forward to seeing you. Goodbye.",
        "goodbye": "Thank you for calling. Goodbye.",
        "goodbye_unbooked": "All right, no booking has been made. Thank you for calling, goodbye.",
        "anything_else": "Is there anything else?",
        "after_booking_change": "Your booking is already confirmed. To change or cancel it, please call the restaurant at {phone}.",
        "back_to_booking": "",
        "ack_note": "Noted.",
        "ack_no_note": "All right.",
        "ack_phone": "Thank you, I have your phone number.",
        "ack_name": "Thank you, {name}.",
        "ack_when": "{when}, got it.",
        "available_dates": "We have tables on {dates}.",
        "free_times": "On {date} we have tables at {times}.",
        "no_free": "I'm sorry, there are no free tables for a while.",
    },
}

def stock_phrases(lang: str) -> list[str]:
    """Every question, hint and phrase the rules agent says in ``lang``, placeholders and all."""
    return [text for table in (QUESTIONS, HINTS, PHRASES) for text in table.get(lang, {}).values() if text]


_END_WORDS = re.compile(
    r"(さようなら|さよなら|失礼します|失礼いたします|切ります|やめます|やめておきます|やめとき|やめる|もういいです|結構です|"
    r"予約はいいです|予約しません|予約は大丈夫|\bbye\b|goodbye|never ?mind|forget it|cancel (?:it|this|that)|"
    r"don'?t want to book|no longer|hang up)",
    re.IGNORECASE,
)
_NOTHING_ELSE = re.compile(
    r"(以上です|ないです|ありません|大丈夫です|大丈夫|特にない|結構です|けっこうです|それだけ|ありがとう|"
    r"\bno\b|nothing|that'?s all|that'?s it|i'?m good|all good|thank)",
    re.IGNORECASE,
)
_AVAILABILITY = re.compile(r"(空いて|空き|あいて|予約できる日|いつなら|available|free|open slots|any tables)", re.IGNORECASE)
_SLOT_WORDS = {
    "date": r"(日にち|日付|日程|来店日|何日|\bdate\b|\bday\b)",
    "time": r"(時間|時刻|\btime\b)",
    "party_size": r"(人数|何名|何人|\bpeople\b|\bparty\b|\bguests?\b|\bpersons?\b)",
    "name": r"(名前|\bname\b)",
    "phone": r"(電話|番号|\bphone\b|\bnumber\b)",
    "note": r"(要望|リクエスト|備考|\brequests?\b|\bnote\b)",
}


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
        return self.p("greeting", name=self.tools.restaurant.name)

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
        if not re.search(r"[0-9A-Za-z\u3040-\u30ff\u3400-\u9fff\u3005\u3007]", norm):
            return self._fail(st.asking, self.p("sorry_again"))
        if st.reservation is not None:
            return self._after_booking(norm)
        if st.awaiting_confirmation or st.asking == "correction":
            return self._confirming(norm)
        return self._collecting(norm)

    def _faq_answer(self, norm: str, extracted: bool) -> str | None:
        match = self.tools.faq.match(norm, self.lang)
        if match is None:
            return None
        if extracted and not looks_like_question(norm):
            return None
        return match.answer

    def _end(self, key: str, **kw) -> str:
        self.tools.end_call()
        self.state.asking = None
        return self.p(key, **kw)

    def _fail(self, slot: str | None, lead: str) -> str:
        st = self.state
        key = slot or "general"
        st.failures[key] = st.failures.get(key, 0) + 1
        if st.failures[key] >= self.max_failures:
            if slot == "note":
                st.slots.note_done = True
                return self._next(self.p("ack_no_note"))
            log.info("giving up on %s after %d failures", key, st.failures[key])
            return self._end("give_up", phone=self.tools.restaurant.cfg.phone)
        hint = HINTS[self.lang].get(slot or "", "")
        if slot in QUESTIONS[self.lang] or slot == "confirm":
            return self._join(lead, hint or self.question(slot))
        return lead

    def _next(self, lead: str = "") -> str:
        """Ask for the next missing item, or read the reservation back when nothing is missing."""
        missing = self.tools.missing()
        if missing:
            self.state.asking = missing[0]
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
            parts.append(self.p("ack_name", name=a["name"]))
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
        return f"{value}様" if slot == "name" and self.lang == "ja" else str(value)

    def _extract(self, norm: str, expecting: str | None) -> dict:
        return parse.extract_slots(
            norm, self.tools.today(), expecting=expecting,
            is_open=lambda t: self.tools.restaurant.is_open_at(t, self.state.slots.date),
        )

    # ------------------------------------------------------------------ states
    def _collecting(self, norm: str) -> str:
        st = self.state
        asking = st.asking
        if _END_WORDS.search(norm) and not looks_like_question(norm):
            return self._end("goodbye_unbooked")
        values = self._extract(norm, asking if asking in QUESTIONS["ja"] else None)
        if asking != "note" and "note" in values and not parse.parse_note(norm):
            values.pop("note")
        if asking == "note" and "note" not in values:
            if parse.is_no_request(norm) or _NOTHING_ELSE.fullmatch(norm.strip("。.! ")):
                values["note"] = "none"
            elif not values and not looks_like_question(norm) and len(norm) >= 4:
                values["note"] = norm  # whatever they asked for, in their words
        faq = self._faq_answer(norm, bool(values))
        if faq is None and not values and _AVAILABILITY.search(norm):
            return self._join(self._availability_answer(), self.question(asking or "date"))
        r = self.tools.update(values) if values else UpdateResult()
        lead = self._join(faq or "", self._ack(r), *(i.message for i in r.issues))
        asked_issues = [i for i in r.issues if i.slot == asking]
        if not r.applied and not faq:
            if r.issues and not asked_issues:
                return self._next(lead)
            if not asked_issues or any(i.code == "unparsed" for i in asked_issues):
                return self._fail(asking, lead or self.p("sorry_again"))
        if asked_issues and asking:
            return self._refused(asking, lead)
        # a problem with a slot is answered by asking for that slot again, alternatives included
        for issue in r.issues:
            if issue.slot in QUESTIONS[self.lang] and not st.slots.is_filled(issue.slot):
                return self._refused(issue.slot, lead, count=False)
        return self._next(lead)

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

    def _confirming(self, norm: str) -> str:
        st = self.state
        values = self._extract(norm, None)
        if "note" in values and not parse.parse_note(norm):
            values.pop("note")
        yes_no = parse.parse_yes_no(norm)
        if values:
            r = self.tools.update(values)
            lead = self._join(self._ack(r), *(i.message for i in r.issues))
            if r.applied:
                st.failures.pop("confirm", None)
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
                self.tools.read_back()
                st.asking = "confirm"
                return self._next()
            if _END_WORDS.search(norm) or yes_no is False:
                return self._end("declined_end")
            return self._fail("confirm", self.p("which_fix"))
        if yes_no is True:
            result = self.tools.book()
            if result.ok and result.reservation:
                return self.booked_message()
            if result.code == "store_error":
                return self._join(result.message, self._end("goodbye"))
            st.asking = "time" if not st.slots.time else st.asking
            return self._join(result.message, self._next() if st.slots.missing() else "")
        if _END_WORDS.search(norm):
            return self._end("declined_end")
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
        return self.p("booked", id=res["id"], when=when, name=res["name"])

    def _slot_named(self, norm: str) -> str | None:
        for slot, pattern in _SLOT_WORDS.items():
            if re.search(pattern, norm, re.IGNORECASE):
                return slot
        return None

    def _after_booking(self, norm: str) -> str:
        faq = self._faq_answer(norm, False)
        if faq:
            return self._join(faq, self.p("anything_else"))
        if _END_WORDS.search(norm) or _NOTHING_ELSE.search(norm) or parse.parse_yes_no(norm) is False:
            return self._end("goodbye_booked")
        if self._extract(norm, None):
            return self._join(self.p("after_booking_change", phone=self.tools.restaurant.cfg.phone), self.p("anything_else"))
        return self._end("goodbye_booked")
