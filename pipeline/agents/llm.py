"""The LLM agent: an OpenAI-compatible chat model that talks, and the deterministic tools that decide.

The model streams its reply; text deltas are yielded as they arrive so TTS can start on the first
sentence while the rest is still being generated. Every fact and every booking goes through
:class:`~pipeline.dialog.tools.BookingTools`, which validates what the model proposes and refuses to
book without a read-back and the caller's own "yes". When the model's server fails (connection,
timeout, 5xx, rate limit, a broken stream) the turn is handed to the rules agent over the same
tools and state, so the caller always gets an answer and the next turn tries the model again.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


_clients: dict[tuple[type, str, str, float], Any] = {}
_clients_lock = threading.Lock()


def _client(cfg: Config, kind: type) -> Any:
    key_value = cfg.llm.api_key().get_secret_value()
    key = (kind, str(cfg.llm.base_url), key_value, float(cfg.llm.timeout_s))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            # retries would multiply the caller's wait; a failed turn goes to the rules agent instead
            client = kind(base_url=cfg.llm.base_url, api_key=key_value, timeout=cfg.llm.timeout_s, max_retries=0)
            _clients[key] = client
        return client


def shared_client(cfg: Config) -> openai.OpenAI:
    """One client per endpoint for the whole process: calls reuse its warm connections, which saves
    a TCP (and TLS) handshake on every first turn."""
    return _client(cfg, openai.OpenAI)


def _async_client(cfg: Config) -> openai.AsyncOpenAI:
    """The asyncio twin of :func:`shared_client`, used only on the loop of the turns answered ahead
    (a request there is cancelled at once when the caller goes on)."""
    return _client(cfg, openai.AsyncOpenAI)


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
        #: the turn being answered ahead (:meth:`prepare`), until a turn takes it or drops it
        self._ahead: PreparedTurn | None = None
        #: the prepared turn this turn replays, while it holds; and the completions taken this turn
        self._replay: PreparedTurn | None = None
        self._round = 0

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

    def prepare(self, text: str, store: Any, on_text: Callable[[str | None], None] | None = None) -> PreparedTurn | None:
        """Start answering ``text`` (the caller's words at a pause) ahead, on a copy of this call's
        conversation and dialog state, with ``store`` (a read-only view of the bookings) for the
        tools. The model is asked at once; tools that read or fill the copied state run; a tool that
        would book, change, cancel or transfer is not run: the ahead turn stops there.

        The next :meth:`respond` on the same words, from the same conversation, replays what was
        prepared (its text as soon as it streamed, no second request for what was already asked)
        and runs the tools for real, so the call's state ends as if the turn had run normally; any
        other turn cancels it (its request is closed). ``on_text`` gets each text delta from the
        worker ("" when a completion with text ended), then None once the ahead turn is over. None
        when nothing is prepared."""
        if self.state.ended or self.degraded or not (text or "").strip():
            return None
        self.drop_prepared()
        prepared = PreparedTurn(text, on_text)
        self._ahead = prepared
        _ahead_turns.submit(_answer_ahead, self, store, prepared)
        return prepared

    def drop_prepared(self) -> None:
        """The caller went on: cancel the turn being answered ahead, if any."""
        prepared, self._ahead = self._ahead, None
        if prepared is not None:
            prepared.cancel()

    def _take_prepared(self, text: str) -> PreparedTurn | None:
        """Before the turn changes anything: the prepared turn, if it answered these words from
        exactly this conversation and state; any other is cancelled."""
        prepared, self._ahead = self._ahead, None
        if prepared is None:
            return None
        why = "the rules agent has the call" if self.degraded else prepared.mismatch(text, self.history, self.state)
        if not why:
            log.debug("call %s: replaying the turn prepared ahead", self.tools.call_id)
            return prepared
        log.debug("call %s: the turn prepared ahead is dropped: %s", self.tools.call_id, why)
        prepared.cancel()
        return None

    def respond(self, text: str) -> Iterator[str]:
        if self.state.ended:
            self.drop_prepared()
            return
        self._replay, self._round = self._take_prepared(text), 0
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
            self._drop_replay()

    def _drop_replay(self) -> None:
        replay, self._replay = self._replay, None
        if replay is not None:
            replay.cancel()  # whatever it still does ahead is of no use now

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
                for delta in self._source(completion, allow_tools=allow_tools, first_token_timeout=wait):
                    self._speak(delta)
                    yield delta
                self._round += 1
                return completion
            except LLMFault as e:
                tries += 1
                if completion.text or completion.calls or tries > llm.retries:
                    raise
                log.info("call %s: LLM request failed (%s); retrying", self.tools.call_id, e)

    def _source(self, completion: _Completion, *, allow_tools: bool, first_token_timeout: float) -> Iterator[str]:
        """This round's completion: the one prepared ahead while the replay holds, else asked now."""
        if self._replay is not None:
            try:
                yield from self._replay.follow(self._round, completion, timeout=first_token_timeout)
                return
            except NotPrepared as e:
                log.debug("call %s: round %d not prepared ahead (%s): asking the model now", self.tools.call_id,
                          self._round + 1, e)
                self._drop_replay()
            except LLMFault:
                self._drop_replay()
                raise
        yield from self._stream(completion, allow_tools=allow_tools, first_token_timeout=first_token_timeout)

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

    def _run_tools(self, completion: _Completion) -> list[str]:
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
        results = []
        for call in calls:
            result = self.tools.call(call.name, call.arguments)
            log.debug("call %s: tool %s(%s) -> %s", self.tools.call_id, call.name, call.arguments, result)
            self.history.append({"role": "tool", "tool_call_id": call.id, "content": result})
            results.append(result)
        if self._replay is not None and not self._replay.same_results(self._round - 1, results):
            # the tools answered otherwise than ahead (the bookings or the clock moved): what the
            # model said next was said to other results
            log.debug("call %s: tool results differ from the ones ahead: asking the model now", self.tools.call_id)
            self._drop_replay()
        return results

    def _request(self, *, allow_tools: bool, first_token_timeout: float) -> dict[str, Any]:
        """The arguments of one streamed chat completion."""
        llm = self.cfg.llm
        kwargs: dict[str, Any] = {}
        if not allow_tools:
            # the last round: tools stay declared (the history refers to them) but may not be called
            kwargs["tool_choice"] = "none"
        # the read timeout bounds the wait for the first piece and every piece after it
        timeout = httpx.Timeout(llm.timeout_s, connect=first_token_timeout, read=first_token_timeout)
        return dict(model=llm.model, messages=self._messages(), tools=self.tools.schemas(), stream=True,
                    temperature=llm.temperature, max_tokens=llm.max_tokens, timeout=timeout, **kwargs)

    def _stream(self, completion: _Completion, *, allow_tools: bool, first_token_timeout: float) -> Iterator[str]:
        """One streamed completion: yields text deltas, fills ``completion``; raises LLMFault."""
        try:
            stream = self.client.chat.completions.create(
                **self._request(allow_tools=allow_tools, first_token_timeout=first_token_timeout))
            with stream:
                yield from _pieces(completion, stream, self.tools.call_id, "")
        except Exception as e:
            raise _fault(e, first_token_timeout) from e

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


# ---------------------------------------------------------------------- the turn answered ahead
#: tools a turn answered ahead may run: they read the bookings or fill the call's own (copied) state.
#: Booking, changing, cancelling and transferring wait for the committed turn.
AHEAD_TOOLS = frozenset({"update_reservation", "get_reservation_status", "find_availability", "answer_faq",
                         "read_back_reservation", "find_reservations", "propose_change", "propose_cancel",
                         "end_call"})

#: turns answered ahead wait on the model's server, not on a core: a few at once for the process
_ahead_turns = ThreadPoolExecutor(max_workers=8, thread_name_prefix="llm-ahead")
_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _ahead_loop() -> asyncio.AbstractEventLoop:
    """The event loop the requests ahead stream on: cancelling one there closes its connection at
    once, wherever it is waiting (a blocking read in a thread could not be woken)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="llm-ahead-loop", daemon=True).start()
        return _loop


async def _pump(client: openai.AsyncOpenAI, request: dict[str, Any], out: queue.SimpleQueue) -> None:
    stream = await client.chat.completions.create(**request)
    async with stream:
        async for chunk in stream:
            out.put(chunk)


class NotPrepared(Exception):
    """The round asked for was not prepared ahead, or the prepared turn no longer holds."""


class _AheadOver(Exception):
    """The turn answered ahead ends here (``outcome``: stopped, failed or cancelled)."""

    def __init__(self, outcome: str, why: str = ""):
        super().__init__(why or outcome)
        self.outcome = outcome


@dataclass
class _Round:
    """One completion asked ahead: its text as it streams, the whole of it once over, and the
    results of the tools it called (when they were run ahead)."""

    deltas: list[str] = field(default_factory=list)
    completion: _Completion | None = None
    results: list[str] | None = None
    failed: bool = False


class PreparedTurn:
    """A turn of the LLM agent answered ahead (:meth:`LLMAgent.prepare`).

    ``outcome`` is None while it runs, then "finished" (the whole reply is there), "stopped" (it
    reached a tool that books, changes, cancels or transfers, or a turn the rules agent answers: the
    committed turn goes on from there), "failed" (the model's server failed or was too slow ahead)
    or "cancelled"."""

    def __init__(self, text: str, on_text: Callable[[str | None], None] | None = None):
        self.text = text
        self.outcome: str | None = None
        #: the reply's language, as the copy of the state had it
        self.language = ""
        self._history: list[dict[str, Any]] = []
        self._state: DialogState | None = None
        self._rounds: list[_Round] = []
        self._cond = threading.Condition()
        self._request: Future | None = None
        self._on_text = on_text
        self._told_over = False

    # ------------------------------------------------------------------ what others ask
    @property
    def requests(self) -> int:
        """Completions asked ahead so far."""
        with self._cond:
            return len(self._rounds)

    @property
    def reply(self) -> str:
        """The text prepared so far."""
        with self._cond:
            return "".join(d for r in self._rounds for d in r.deltas)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the turn ahead to be over; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.outcome is not None, timeout)

    def mismatch(self, text: str, history: list[dict[str, Any]], state: DialogState) -> str:
        """Why this turn cannot be replayed for ``text`` from ``history`` and ``state`` ("" if it can)."""
        with self._cond:
            if self.outcome == "cancelled":
                return "cancelled"
            if self._state is None:
                return "not started"
            if text != self.text:
                return "other words"
            if history != self._history:
                return "the conversation moved"
            if state != self._state:
                moved = [f.name for f in dataclasses.fields(state) if getattr(state, f.name) != getattr(self._state, f.name)]
                return f"the state moved ({', '.join(moved)})"
            return ""

    def cancel(self) -> None:
        """Stop it: the request in flight is closed, nothing more is asked."""
        with self._cond:
            if self.outcome is None:
                self.outcome = "cancelled"
            request = self._request
            self._cond.notify_all()
        if request is not None:
            request.cancel()
        self._tell_over()

    def same_results(self, index: int, results: list[str]) -> bool:
        """Whether the tools after round ``index`` gave what they gave ahead (so the rounds after it
        still hold); True when they were not run ahead (nothing after it was prepared)."""
        with self._cond:
            rnd = self._rounds[index] if 0 <= index < len(self._rounds) else None
            return rnd is None or rnd.results is None or rnd.results == results

    def follow(self, index: int, completion: _Completion, timeout: float) -> Iterator[str]:
        """Round ``index`` as prepared: its text deltas as they come, ``completion`` filled at its
        end. Raises NotPrepared when the round was not (or will not be) prepared, before anything
        is yielded; LLMFault when it breaks after some text was yielded. Nothing new for
        ``timeout`` seconds cancels the turn ahead."""
        sent = 0
        while True:
            pieces, done, why = self._progress(index, sent, timeout)
            yield from pieces
            sent += len(pieces)
            if done is not None:
                completion.text, completion.finish_reason = done.text, done.finish_reason
                completion.calls = copy.deepcopy(done.calls)
                return
            if why:
                if why == "stalled":
                    self.cancel()
                if sent:
                    raise LLMFault(f"the request made ahead {why}")
                raise NotPrepared(why)

    def _progress(self, index: int, sent: int, timeout: float) -> tuple[list[str], _Completion | None, str]:
        def moved() -> bool:
            rnd = self._rounds[index] if index < len(self._rounds) else None
            if rnd is None:
                return self.outcome is not None
            return len(rnd.deltas) > sent or rnd.completion is not None or rnd.failed or self.outcome == "cancelled"

        with self._cond:
            in_time = self._cond.wait_for(moved, timeout)
            rnd = self._rounds[index] if index < len(self._rounds) else None
            if rnd is None:
                return [], None, ("stalled" if not in_time else f"{self.outcome} before round {index + 1}")
            if rnd.failed and not sent:
                return [], None, "failed"  # never replay a broken request from its start: ask again
            pieces = rnd.deltas[sent:]
            if rnd.completion is not None:
                return pieces, rnd.completion, ""
            if pieces:
                return pieces, None, ""
            if rnd.failed or self.outcome == "cancelled":
                return [], None, "failed"
            return [], None, "stalled"

    # ------------------------------------------------------------------ what the worker does
    def _begin(self, history: list[dict[str, Any]], state: DialogState) -> None:
        with self._cond:
            self._history, self._state = history, state
            self.language = state.language

    def _open_round(self) -> _Round:
        with self._cond:
            if self.outcome is not None:
                raise _AheadOver("cancelled")
            rnd = _Round()
            self._rounds.append(rnd)
            return rnd

    def _in_flight(self, request: Future | None) -> None:
        with self._cond:
            self._request = request
            cancelled = self.outcome == "cancelled"
        if cancelled and request is not None:
            request.cancel()

    def _add(self, rnd: _Round, piece: str) -> None:
        with self._cond:
            rnd.deltas.append(piece)
            self._cond.notify_all()
        if self._on_text is not None:
            self._on_text(piece)

    def _close_round(self, rnd: _Round, completion: _Completion | None, *, failed: bool = False) -> None:
        with self._cond:
            rnd.completion = None if failed else copy.deepcopy(completion)
            rnd.failed = failed
            self._request = None
            self._cond.notify_all()
        if not failed and rnd.deltas and self._on_text is not None:
            self._on_text("")  # the text of a whole completion: a sentence it ended with is whole

    def _record_results(self, results: list[str]) -> None:
        with self._cond:
            self._rounds[-1].results = list(results)

    def _end(self, outcome: str) -> None:
        with self._cond:
            if self.outcome is None:
                self.outcome = outcome
            self._cond.notify_all()
        self._tell_over()

    def _tell_over(self) -> None:
        with self._cond:
            if self._told_over or self.outcome is None:
                return
            self._told_over = True
        if self._on_text is not None:
            try:
                self._on_text(None)
            except Exception:
                log.exception("the listener of a turn answered ahead failed")


class _AheadAgent(LLMAgent):
    """The call's LLM agent on copies of its conversation and state, answering one turn ahead: its
    completions stream on the ahead loop (cancellable) into a :class:`PreparedTurn`; it stops
    before a tool outside :data:`AHEAD_TOOLS` and before any turn the rules agent would answer."""

    def __init__(self, real: LLMAgent, store: Any, prepared: PreparedTurn):
        history, state = copy.deepcopy(real.history), copy.deepcopy(real.state)
        prepared._begin(copy.deepcopy(history), copy.deepcopy(state))
        t = real.tools
        tools = BookingTools(t.restaurant, store, state, t.clock, call_id=t.call_id, faq=t.faq)
        super().__init__(tools, real.cfg, fallback=RulesAgent(tools, max_failures=real.fallback.max_failures),
                         client=real.client)
        self.history = history
        self._prompt_key, self._prompt = real._prompt_key, real._prompt
        self._faulty_turns, self._toolless_turns = real._faulty_turns, real._toolless_turns
        self.prepared = prepared

    def run(self) -> None:
        prepared = self.prepared
        try:
            for _ in self.respond(prepared.text):
                pass
            outcome = "finished"
        except _AheadOver as e:
            outcome = e.outcome
            log.debug("call %s: the turn ahead ends: %s", self.tools.call_id, e)
        prepared.language = self.state.language
        prepared._end(outcome)

    def _stream(self, completion: _Completion, *, allow_tools: bool, first_token_timeout: float) -> Iterator[str]:
        prepared = self.prepared
        rnd = prepared._open_round()
        prepared.language = self.state.language
        out: queue.SimpleQueue = queue.SimpleQueue()
        request = asyncio.run_coroutine_threadsafe(
            _pump(_async_client(self.cfg), self._request(allow_tools=allow_tools,
                                                         first_token_timeout=first_token_timeout), out),
            _ahead_loop())
        request.add_done_callback(out.put)  # after every chunk, whatever the ending
        prepared._in_flight(request)
        for piece in _pieces(completion, iter(out.get, request), self.tools.call_id, " ahead"):
            prepared._add(rnd, piece)
            yield piece
        if request.cancelled():
            prepared._close_round(rnd, None, failed=True)
            raise _AheadOver("cancelled")
        error = request.exception()
        if error is not None:
            prepared._close_round(rnd, None, failed=True)
            raise _AheadOver("failed", str(_fault(error, first_token_timeout)))  # type: ignore[arg-type]
        prepared._close_round(rnd, completion)

    def _attempts(self, *, allow_tools: bool, deadline: float) -> Generator[str, None, _Completion]:
        # no retries ahead: a failure leaves the rest to the committed turn
        completion = _Completion()
        wait = min(self.cfg.llm.first_token_timeout_s, deadline - time.monotonic())
        if wait < _MIN_WAIT_S:
            raise _AheadOver("failed", "silence budget spent")
        for delta in self._stream(completion, allow_tools=allow_tools, first_token_timeout=wait):
            self._speak(delta)
            yield delta
        return completion

    def _run_tools(self, completion: _Completion) -> list[str]:
        outside = sorted({c.name for c in completion.calls.values()} - AHEAD_TOOLS)
        if outside:
            raise _AheadOver("stopped", f"{', '.join(outside)} waits for the committed turn")
        results = super()._run_tools(completion)
        self.prepared._record_results(results)
        return results

    def _hand_over(self, text: str) -> Iterator[str]:
        raise _AheadOver("stopped", "a turn for the rules agent")
        yield ""  # a generator, as the one it replaces


def _answer_ahead(real: LLMAgent, store: Any, prepared: PreparedTurn) -> None:
    try:
        _AheadAgent(real, store, prepared).run()
    except Exception:
        log.warning("call %s: answering ahead failed", real.tools.call_id, exc_info=True)
        prepared._end("failed")


def _pieces(completion: _Completion, chunks: Iterable[Any], call_id: str, what: str) -> Iterator[str]:
    """The text of each of a stream's ``chunks`` (absorbed into ``completion``), the time to the
    first logged."""
    started = time.monotonic()
    first = True
    for chunk in chunks:
        piece = _absorb(completion, chunk)
        if piece:
            if first:
                first = False
                log.debug("call %s: first token%s after %.3f s", call_id, what, time.monotonic() - started)
            yield piece


def _absorb(completion: _Completion, chunk: Any) -> str:
    """One streamed chunk into ``completion``; returns its text ("" when it has none)."""
    if not chunk.choices:
        return ""
    choice = chunk.choices[0]
    delta = choice.delta
    piece = ""
    if delta is not None:
        if delta.content:
            piece = delta.content
            completion.text += piece
        for tc in delta.tool_calls or []:
            _add_tool_delta(completion, tc)
    if choice.finish_reason:
        completion.finish_reason = choice.finish_reason
    return piece


def _fault(e: Exception, first_token_timeout: float) -> LLMFault:
    """What went wrong with a request, as the fault the turn handles."""
    if isinstance(e, LLMFault):
        return e
    if isinstance(e, openai.APITimeoutError):
        return LLMFault(f"no answer within {first_token_timeout:.2f} s")
    if isinstance(e, openai.APIConnectionError):
        return LLMFault(f"connection error: {e}")
    if isinstance(e, openai.RateLimitError):
        return LLMFault("rate limited (429)")
    if isinstance(e, openai.APIStatusError):
        return LLMFault(f"HTTP {e.status_code}: {e.message}")
    # anything else from the client or the stream (bad SSE, bad JSON, odd chunk shapes, a read timeout
    # mid-stream) must not cost the caller their answer
    return LLMFault(f"{type(e).__name__}: {e}")


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

