"""The reply ready at the turn's end: its first clause synthesised while the caller's pause is still
being timed.

At a short pause the early transcript is back long before the turn may end (200 ms after a
"complete", 450 ms on the silence rule, 1.5 s after an "incomplete"), and on these CPUs the first
clause of a reply that reads a date or a name back costs kokoro 0.5-0.9 s. So once the early words
do not leave the sentence hanging, the agent answers them here on a **copy** of the dialog state,
and the reply's first clause is synthesised into the TTS's phrase cache. When the turn ends on the
same words, the real agent answers them (the call's state changes only then), and the same first
clause is found in the cache; when the caller goes on, nothing was changed and the clause ages out
of the cache.

The rules agent gives the same reply to the same words on the same state, so its reply is made
again at the turn's end (and finds its first clause cached). The LLM agent's turn is asked of the
model at once, on copies of its conversation and state (:meth:`pipeline.agents.llm.LLMAgent.prepare`):
the tools that read or fill the copied state run, one that would book, change, cancel or transfer
waits for the committed turn; the committed turn replays what was prepared (no second wait for the
model's first token, nor for what the tools gave) and runs the tools for real. When the caller goes
on, its request is closed (:func:`went_on`). The copy's store only reads (a reply that would book,
change or cancel is not prepared: :class:`ReadOnlyStore`).
"""

from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reply-ahead")
#: what a whole sentence ends with, for a completion that ends before the next text shows it
SENTENCE_ENDS = ("。", "！", "？", "!", "?", ".")


class WriteRefused(RuntimeError):
    """A reply prepared ahead tried to change the bookings."""


class ReadOnlyStore:
    """The reservation store as a prepared reply may use it: the reads the booking tools make."""

    READS = frozenset({"free_tables", "tables_taken", "count_for_slot", "get", "find", "for_date", "all"})

    def __init__(self, store: Any):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in self.READS:
            return getattr(self._store, name)
        raise WriteRefused(f"store.{name} is not for a reply prepared ahead")


def first_clause(text: str, first_clause_chars: int) -> str | None:
    """The piece the reply's audio starts with, as the call splits it."""
    from pipeline.speech.tts import SentenceSplitter

    splitter = SentenceSplitter(first_clause_chars=first_clause_chars)
    for piece in [*splitter.feed(text), splitter.flush()]:
        if piece:
            return piece
    return None


def prepare(call: Any, words: str) -> str | None:
    """Answer ``words`` (a raw transcript) on a copy of ``call``'s dialog state and render the reply's
    first clause into the TTS cache; returns that clause (None: not prepared)."""
    from pipeline.dialog.understand.transcript import clean_transcript

    return _prepare(call, clean_transcript(words, call.language))


def _prepare(call: Any, text: str) -> str | None:
    from pipeline.dialog.rules import RulesAgent
    from pipeline.dialog.tools import BookingTools

    agent = call.agent
    if getattr(agent, "kind", None) != "rules" or call.ended or not text.strip():
        return None
    tools = agent.tools
    ahead = RulesAgent(BookingTools(tools.restaurant, ReadOnlyStore(tools.store), copy.deepcopy(agent.state),
                                    tools.clock, call_id=tools.call_id, faq=tools.faq),
                       max_failures=agent.max_failures)
    try:
        reply = "".join(ahead.respond(text))
    except WriteRefused:
        return None
    clause = first_clause(reply, call.runtime.cfg.tts.first_clause_chars)
    if clause is None:
        return None
    call.runtime.tts.synthesize(clause, ahead.state.language)
    log.debug("call %s: first clause ready ahead: %r", call.id, clause)
    return clause


def prepare_soon(call: Any, words: str) -> Future:
    """:func:`prepare` in the worker (one at a time for the process: it is spare work), noted on the
    call (``call.ahead``) so that its turn on the same words waits for it rather than render the
    same clause beside it; a failure is logged and comes to nothing. With the LLM agent the future
    is that of the first clause (see :func:`_prepare_llm`); cancelling it cancels the turn ahead."""
    from pipeline.dialog.understand.transcript import clean_transcript

    text = clean_transcript(words, call.language)
    went_on(call)
    if getattr(call.agent, "kind", None) == "llm":
        future = _prepare_llm(call, text)
        call.ahead = (text, future)
        return future

    def run() -> str | None:
        try:
            return _prepare(call, text)
        except Exception:
            log.warning("call %s: preparing the reply ahead failed", getattr(call, "id", "?"), exc_info=True)
            return None

    future = _pool.submit(run)
    call.ahead = (text, future)
    return future


def went_on(call: Any) -> None:
    """The caller went on after the words a reply was being prepared for: drop it (the LLM's
    request in flight is closed; a rules reply not yet started is not made)."""
    ahead, call.ahead = call.ahead, None
    if ahead is not None:
        ahead[1].cancel()
    drop = getattr(call.agent, "drop_prepared", None)
    if drop is not None:
        drop()  # its first clause may be rendered already: the request for the rest is closed all the same


def _prepare_llm(call: Any, text: str) -> Future:
    """The LLM agent's turn on ``text`` asked ahead; the future is done once the reply's first
    clause is in the TTS cache (None: no clause, the turn ahead ended without one) and, cancelled,
    cancels the turn ahead."""
    from pipeline.speech.tts import SentenceSplitter

    done: Future = Future()
    agent = call.agent
    if call.ended or not text.strip():
        done.set_result(None)
        return done
    splitter = SentenceSplitter(first_clause_chars=call.runtime.cfg.tts.first_clause_chars)
    claimed = threading.Lock()
    prepared: Any = None

    def settle(clause: str | None) -> None:
        if not done.done():
            try:
                done.set_result(clause)
            except InvalidStateError:  # cancelled meanwhile
                pass

    def render(clause: str) -> None:
        try:
            call.runtime.tts.synthesize(clause, getattr(prepared, "language", "") or call.language)
            log.debug("call %s: first clause ready ahead: %r", call.id, clause)
        except Exception:
            log.warning("call %s: rendering the clause prepared ahead failed", call.id, exc_info=True)
        settle(clause)

    def on_text(delta: str | None) -> None:
        if done.done() or claimed.locked():
            return
        if delta:
            clause = next((p for p in splitter.feed(delta) if p), None)
        elif delta is not None:  # a completion ended: a sentence it ended with is whole
            held = splitter.flush()
            clause = held if held.endswith(SENTENCE_ENDS) else None
            if clause is None:
                splitter.feed(held)
        else:
            clause = splitter.flush() if prepared is not None and prepared.outcome == "finished" else None
        if clause and claimed.acquire(blocking=False):
            log.debug("call %s: first clause ahead: %r", call.id, clause)
            _pool.submit(render, clause)
        elif delta is None:
            settle(None)

    try:
        prepared = agent.prepare(text, ReadOnlyStore(agent.tools.store), on_text)
    except Exception:
        log.warning("call %s: asking the model ahead failed", call.id, exc_info=True)
        prepared = None
    if prepared is None:
        settle(None)
        return done
    done.add_done_callback(lambda f: prepared.cancel() if f.cancelled() else None)
    return done
