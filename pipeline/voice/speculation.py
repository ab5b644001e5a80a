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

Only the rules agent is asked: the same words on the same state give the same reply. The copy's
store only reads (a reply that would book, change or cancel is not prepared: :class:`ReadOnlyStore`).
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reply-ahead")


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
    same clause beside it; a failure is logged and comes to nothing."""
    from pipeline.dialog.understand.transcript import clean_transcript

    text = clean_transcript(words, call.language)

    def run() -> str | None:
        try:
            return _prepare(call, text)
        except Exception:
            log.warning("call %s: preparing the reply ahead failed", getattr(call, "id", "?"), exc_info=True)
            return None

    future = _pool.submit(run)
    call.ahead = (text, future)
    return future
