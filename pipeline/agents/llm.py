"""The LLM agent: an OpenAI-compatible chat model that talks, and the deterministic tools that decide.

The model streams its reply; text deltas are yielded as they arrive so TTS can start on the first
sentence while the rest is still being generated. Every fact and every booking goes through
:class:`~pipeline.dialog.tools.BookingTools`, which validates what the model proposes and refuses to
book without a read-back and the caller's own "yes". When the model's server fails (connection,
timeout, 5xx, rate limit, a broken stream) the turn is handed to the rules agent over the same
tools and state, so the caller always gets an answer and the next turn tries the model again.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from pipeline.config import Config, RestaurantConfig
from pipeline.dialog import parse
from pipeline.dialog.rules import PHRASES, RulesAgent
from pipeline.dialog.state import DialogState
from pipeline.dialog.tools import BookingTools

log = logging.getLogger(__name__)

#: messages kept besides the system prompt; older turns are dropped whole
MAX_HISTORY = 40
#: a retry with less time than this left could not get an answer anyway
_MIN_WAIT_S = 0.25

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_TOO_MANY_STEPS = {
    "ja": "申し訳ございません、確認に時間がかかっております。もう一度おっしゃっていただけますか。",
    "en": "I'm sorry, I'm having trouble with that. Could you say it once more?",
}
_STUCK = {
    "ja": "申し訳ございません、もう一度お願いできますか。",
    "en": "I'm sorry, could you say that again?",
}

_LANGUAGE_RULES = {
    "ja": "This call is in Japanese. Reply in short, polite, natural spoken Japanese (丁寧語, as restaurant staff "
          "speak on the phone), and ask one question at a time. If the caller clearly speaks English instead, "
          "reply in English.",
    "en": "This call is in English. Reply in short, polite, natural spoken English, and ask one question at a "
          "time. If the caller clearly speaks Japanese instead, reply in Japanese.",
}


class LLMFault(RuntimeError):
    """The model's server could not produce this turn's reply."""


def _hours(h) -> str:
    return f"{h.open:%H:%M}-{h.close:%H:%M}"


def build_system_prompt(rc: RestaurantConfig, now: dt.datetime, language: str) -> str:
    """The instructions and the restaurant's facts. Stable for a whole call (same date, same language)
    so that servers with prefix caching reuse it and the first token comes sooner."""
    closures = [f"{p.start} to {p.end} every year" + (f" ({p.reason.replace('_', ' ')})" if p.reason else "")
                for p in rc.closed_periods]
    closures += [f"every {_WEEKDAYS[d]}" for d in sorted(rc.closed_weekdays)]
    facts = [
        f"- Opening hours: weekdays {_hours(rc.weekday_hours)}; Saturdays, Sundays and public holidays "
        f"{_hours(rc.weekend_hours)}. Tables start every {rc.slot_minutes} minutes; the last booking is "
        f"{rc.last_booking_before_close_minutes} minutes before closing.",
        f"- Closed: {'; '.join(closures) if closures else 'no regular closures'}.",
        f"- Party size: {rc.min_party_size} to {rc.max_party_size} people. Bookings up to "
        f"{rc.booking_horizon_days} days ahead.",
        f"- The restaurant's phone number: {rc.phone}.",
    ]
    return "\n".join([
        f'You take table reservations on the phone for the restaurant "{rc.name}". Everything you write is '
        "converted to speech and played to the caller.",
        f"Today is {now:%Y-%m-%d} ({_WEEKDAYS[now.weekday()]}), and it is now {now:%H:%M} local time.",
        "",
        "Restaurant facts:",
        *facts,
        "",
        _LANGUAGE_RULES.get(language, _LANGUAGE_RULES["ja"]),
        "",
        "Rules:",
        "1. Never invent availability, opening days, prices or other facts: use the tools. If no tool tells "
        "you something, say you don't know.",
        "2. As soon as the caller gives any detail (date, time, party size, name, phone number, special "
        "requests), call update_reservation with it in the caller's own words (e.g. 明日, 夜7時, 3名, "
        "next Friday); the tool parses and checks it.",
        "3. When a tool reports a problem, tell the caller briefly and offer the alternatives it returns.",
        "4. Ask for what is still missing, one item at a time: date, time, party size, name, phone number, "
        "special requests.",
        "5. When nothing is missing, call read_back_reservation and say its say_exactly text word for word.",
        "6. Call confirm_booking only after the caller says yes to the read-back, in their next turn. If they "
        "correct something, record it with update_reservation and read back again.",
        "7. After booking, tell the caller the reservation number.",
        "8. For questions about the restaurant, call answer_faq and relay its answer. A question fills no "
        "detail. Numbers inside a request (\"two of us are vegetarian\") belong to the request.",
        "9. A caller who wants to hear, change or cancel an existing booking: call find_reservations with the "
        "phone number they booked with (or the reservation number), then propose_change or propose_cancel and "
        "say its say_exactly text; call apply_change or apply_cancel only after the caller's yes in their next turn.",
        "10. When the caller asks for a person (staff, a human), call transfer_to_person and say its say_exactly text.",
        "11. When the caller says goodbye or needs nothing else, say a short goodbye and call end_call.",
        "",
        "Style: 1-2 short sentences per reply; this is a phone call. Plain spoken text only: no markdown, "
        "no lists, no emoji, no URLs.",
    ])


_clients: dict[tuple[str, str, float], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def shared_client(cfg: Config) -> openai.OpenAI:
    """One client per endpoint for the whole process: calls reuse its warm connections, which saves
    a TCP (and TLS) handshake on every first turn."""
    key_value = cfg.llm.api_key().get_secret_value()
    key = (str(cfg.llm.base_url), key_value, float(cfg.llm.timeout_s))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            # retries would multiply the caller's wait; a failed turn goes to the rules agent instead
            client = openai.OpenAI(base_url=cfg.llm.base_url, api_key=key_value, timeout=cfg.llm.timeout_s,
                                   max_retries=0)
            _clients[key] = client
        return client


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Completion:
    text: str = ""
    calls: dict[int, _PendingCall] = field(default_factory=dict)
    finish_reason: str | None = None


class LLMAgent:
    kind = "llm"

    def __init__(self, tools: BookingTools, cfg: Config, *, fallback: RulesAgent,
                 client: openai.OpenAI | None = None):
        self.tools = tools
        self.state: DialogState = tools.state
        self.cfg = cfg
        self.fallback = fallback
        self.client = client or shared_client(cfg)
        self.history: list[dict[str, Any]] = []
        self._prompt_key: tuple[str, str] | None = None
        self._prompt = ""
        #: the assistant message being said right now (already in the history)
        self._speaking: dict[str, Any] | None = None
        #: turns in a row the model failed (faults) or ignored the tools while the caller gave details
        self._faulty_turns = 0
        self._toolless_turns = 0
        #: set when the model has let the call down often enough that the rules agent finishes it
        self.degraded: str | None = None

    # ------------------------------------------------------------------ Agent interface
    @property
    def lang(self) -> str:
        return self.state.language

    def greeting(self) -> str:
        # deterministic and instant: the caller hears it while nothing has been said to the model yet
        text = self.fallback.greeting()
        self.history.append({"role": "assistant", "content": text})
        return text

    def interrupted(self, heard: str) -> None:
        """Barge-in: the last reply's assistant messages keep only what the caller heard."""
        start = 0
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i]["role"] == "user":
                start = i + 1
                break
        spoken = [m for m in self.history[start:] if m["role"] == "assistant" and m.get("content")]
        if not spoken:
            return
        remaining = heard or ""
        for m in spoken:
            n = len(m["content"])
            m["content"], remaining = remaining[:n], remaining[n:]
        spoken[-1]["content"] += remaining
        for m in spoken:
            if not m["content"] and m.get("tool_calls"):
                m["content"] = None

    def respond(self, text: str) -> Iterator[str]:
        if self.state.ended:
            return
        self.tools.begin_turn(text)
        self.tools.follow_language(text)
        self.history.append({"role": "user", "content": text})
        self._speaking = None
        try:
            if not (text or "").strip():
                # nothing to understand: the deterministic "once more, please" is faster and as good
                yield from self._hand_over(text)
                return
            if self.degraded:
                yield from self._hand_over(text)
                return
            yield from self._turn(text)
        finally:
            self._speaking = None
            self._trim()

    # ------------------------------------------------------------------ the turn
    def _turn(self, text: str) -> Iterator[str]:
        llm = self.cfg.llm
        steps = 0
        tools_called = False
        booked_before = self.state.reservation is not None
        # while nothing has been said this turn the caller hears silence: bound it
        deadline = time.monotonic() + llm.silence_budget_s
        while True:
            try:
                completion = yield from self._attempts(allow_tools=steps < llm.max_tool_steps, deadline=deadline)
            except LLMFault as e:
                self._faulty_turns += 1
                log.warning("call %s: LLM failed (%s); the rules agent answers this turn", self.tools.call_id, e)
                self._maybe_degrade()
                if not booked_before and self.state.reservation is not None:
                    # the booking went through before the model could announce it
                    yield from self._say(self.fallback.booked_message())
                else:
                    yield from self._hand_over(text)
                return
            if not completion.calls:
                if not completion.text.strip():
                    self._faulty_turns += 1
                    log.warning("call %s: the model returned an empty reply", self.tools.call_id)
                    self._maybe_degrade()
                    yield from self._hand_over(text)
                    return
                self._faulty_turns = 0
                self._check_tool_use(text, tools_called)
                return
            if steps >= llm.max_tool_steps:
                log.warning("call %s: still calling tools after %d rounds; giving up on this turn",
                            self.tools.call_id, steps)
                yield from self._say(_TOO_MANY_STEPS[self.lang])
                return
            steps += 1
            tools_called = True
            self._run_tools(completion)
            if self.state.ended:
                self._faulty_turns = 0
                if not self._said_this_turn():
                    goodbye = "goodbye_booked" if self.state.reservation is not None else "goodbye"
                    yield from self._say(PHRASES[self.lang][goodbye])
                return

    def _attempts(self, *, allow_tools: bool, deadline: float) -> Generator[str, None, _Completion]:
        """One completion, retried within the silence budget when it fails before saying anything."""
        llm = self.cfg.llm
        tries = 0
        while True:
            completion = _Completion()
            said_before = bool(self._said_this_turn())
            wait = llm.first_token_timeout_s
            if not said_before:
                wait = min(wait, deadline - time.monotonic())
                if wait < _MIN_WAIT_S:
                    raise LLMFault(f"silence budget of {llm.silence_budget_s} s spent")
            try:
                for delta in self._stream(completion, allow_tools=allow_tools, first_token_timeout=wait):
                    self._speak(delta)
                    yield delta
                return completion
            except LLMFault as e:
                tries += 1
                if completion.text or completion.calls or tries > llm.retries:
                    raise
                log.info("call %s: LLM request failed (%s); retrying", self.tools.call_id, e)

    def _maybe_degrade(self) -> None:
        if self._faulty_turns >= self.cfg.llm.max_consecutive_faults and not self.degraded:
            self.degraded = f"{self._faulty_turns} failed turns in a row"
            log.warning("call %s: the rules agent finishes this call (%s)", self.tools.call_id, self.degraded)

    def _check_tool_use(self, text: str, tools_called: bool) -> None:
        """A model that answers details without recording them would book nothing: after two such
        turns the rules agent, which always records them, takes the call over."""
        if tools_called or self.state.reservation is not None:
            self._toolless_turns = 0
            return
        details = parse.extract_slots(parse.normalize(text), self.tools.today(), expecting=self.state.asking)
        if not details:
            return
        self._toolless_turns += 1
        if self._toolless_turns >= 2 and not self.degraded:
            self.degraded = "the model does not call the tools"
            log.warning("call %s: the rules agent finishes this call (%s)", self.tools.call_id, self.degraded)
            # the details of this turn must not be lost: record them as the rules agent would
            self.tools.update({k: v for k, v in details.items() if k != "note"})

    def _speak(self, delta: str) -> None:
        """Record text as said the moment it is handed out, so the history is right even if the
        consumer stops reading (barge-in) or calls ``interrupted`` before closing us."""
        if self._speaking is None:
            self._speaking = {"role": "assistant", "content": ""}
            self.history.append(self._speaking)
        self._speaking["content"] += delta

    def _said_this_turn(self) -> str:
        out = []
        for m in reversed(self.history):
            if m["role"] == "user":
                break
            if m["role"] == "assistant" and m.get("content"):
                out.append(m["content"])
        return "".join(reversed(out))

    def _run_tools(self, completion: _Completion) -> None:
        calls = [completion.calls[i] for i in sorted(completion.calls)]
        for n, call in enumerate(calls):
            call.id = call.id or f"call_{self.state.turn}_{n}"
        # the text said before the tool calls belongs to the same assistant message
        message = self._speaking or {"role": "assistant", "content": None}
        if self._speaking is None:
            self.history.append(message)
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ]
        self._speaking = None
        for call in calls:
            result = self.tools.call(call.name, call.arguments)
            log.debug("call %s: tool %s(%s) -> %s", self.tools.call_id, call.name, call.arguments, result)
            self.history.append({"role": "tool", "tool_call_id": call.id, "content": result})

    def _stream(self, completion: _Completion, *, allow_tools: bool, first_token_timeout: float) -> Iterator[str]:
        """One streamed completion: yields text deltas, fills ``completion``; raises LLMFault."""
        llm = self.cfg.llm
        started = time.monotonic()
        first = True
        kwargs: dict[str, Any] = {}
        if not allow_tools:
            # the last round: tools stay declared (the history refers to them) but may not be called
            kwargs["tool_choice"] = "none"
        try:
            # the read timeout bounds the wait for the first piece and every piece after it
            timeout = httpx.Timeout(llm.timeout_s, connect=first_token_timeout, read=first_token_timeout)
            stream = self.client.chat.completions.create(
                model=llm.model, messages=self._messages(), tools=self.tools.schemas(), stream=True,
                temperature=llm.temperature, max_tokens=llm.max_tokens, timeout=timeout, **kwargs,
            )
            with stream:
                for chunk in stream:
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    delta = choice.delta
                    if delta is not None:
                        if delta.content:
                            if first:
                                first = False
                                log.debug("call %s: first token after %.3f s", self.tools.call_id,
                                          time.monotonic() - started)
                            completion.text += delta.content
                            yield delta.content
                        for tc in delta.tool_calls or []:
                            _add_tool_delta(completion, tc)
                    if choice.finish_reason:
                        completion.finish_reason = choice.finish_reason
        except openai.APITimeoutError as e:
            raise LLMFault(f"no answer within {first_token_timeout:.2f} s") from e
        except openai.APIConnectionError as e:
            raise LLMFault(f"connection error: {e}") from e
        except openai.RateLimitError as e:
            raise LLMFault("rate limited (429)") from e
        except openai.APIStatusError as e:
            raise LLMFault(f"HTTP {e.status_code}: {e.message}") from e
        except Exception as e:
            # anything else from the client or the stream (bad SSE, bad JSON, odd chunk shapes, a read
            # timeout mid-stream) must not cost the caller their answer
            raise LLMFault(f"{type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ helpers
    def _say(self, line: str) -> Iterator[str]:
        if not line:
            return
        # a line following text already spoken needs a separator in English
        if self.lang == "en" and self._speaking and not self._speaking["content"].endswith((" ", "\n")):
            line = " " + line
        self._speak(line)
        yield line

    def _hand_over(self, text: str) -> Iterator[str]:
        """This turn goes to the rules agent (the turn is already counted) over the same state."""
        self._sync_rules_state()
        try:
            reply = self.fallback.handle(text)
        except Exception:
            log.exception("call %s: the rules agent failed too", self.tools.call_id)
            reply = ""
        yield from self._say(reply or _STUCK[self.lang])

    def _sync_rules_state(self) -> None:
        """The rules agent reads the caller's words as an answer to what it last asked; tell it what
        the conversation is really waiting for."""
        st = self.state
        if st.reservation is not None:
            st.asking = "anything_else"
        elif st.awaiting_confirmation:
            st.asking = "confirm"
        elif st.asking != "correction":
            missing = self.tools.missing()
            st.asking = missing[0] if missing else None

    def system_prompt(self) -> str:
        now = self.tools.now()
        key = (now.date().isoformat(), self.lang)
        if key != self._prompt_key:
            self._prompt_key = key
            self._prompt = build_system_prompt(self.cfg.restaurant, now, self.lang)
        return self._prompt

    def _messages(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system_prompt()}, *self.history]

    def _trim(self) -> None:
        """Drop the oldest turns whole: the history restarts at a user message, so no tool result is
        ever separated from the assistant message that asked for it."""
        if len(self.history) <= MAX_HISTORY:
            return
        cut = None
        for i in range(len(self.history) - MAX_HISTORY, len(self.history)):
            if self.history[i]["role"] == "user":
                cut = i
                break
        if cut is None:
            # one turn longer than the limit: keep that turn whole
            cut = max((i for i, m in enumerate(self.history) if m["role"] == "user"), default=0)
        del self.history[:cut]


def _add_tool_delta(completion: _Completion, tc: Any) -> None:
    index = tc.index if isinstance(getattr(tc, "index", None), int) else len(completion.calls)
    call = completion.calls.setdefault(index, _PendingCall())
    if tc.id and not call.id:
        call.id = tc.id
    fn = tc.function
    if fn is None:
        return
    if fn.name and fn.name != call.name:
        # most servers send the name once; some repeat it in every piece (skipped), a few split it
        call.name += fn.name
    if fn.arguments:
        call.arguments += fn.arguments

