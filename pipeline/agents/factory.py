"""Building a call's agent: the restaurant, store and FAQ shared by all calls, and one agent per call."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from pipeline.config import Config
from pipeline.dialog.faq import FAQ
from pipeline.dialog.parse import caller_number
from pipeline.dialog.restaurant import Restaurant
from pipeline.dialog.rules import RulesAgent
from pipeline.dialog.state import DialogState
from pipeline.dialog.tools import BookingTools
from pipeline.privacy import register_pii
from pipeline.store import ReservationStore

log = logging.getLogger(__name__)

AgentKind = Literal["auto", "rules", "llm"]


class Agent(Protocol):
    """One verb per turn: the caller's words in, the bot's reply out as text chunks."""

    kind: str
    state: DialogState
    tools: BookingTools

    def greeting(self) -> str: ...

    def respond(self, text: str) -> Iterator[str]: ...

    def interrupted(self, heard: str) -> None:
        """The caller barged in: only ``heard`` of the last reply reached them."""
        ...


class AgentUnavailable(RuntimeError):
    """The requested agent cannot run with this configuration; the message says why."""


@dataclass
class Services:
    """What every call of one process shares."""

    cfg: Config
    restaurant: Restaurant
    store: ReservationStore
    faq: FAQ

    def close(self) -> None:
        self.store.close()


def open_services(cfg: Config) -> Services:
    return Services(cfg, Restaurant(cfg.restaurant), ReservationStore(cfg.store_url()), FAQ(cfg.restaurant.faq))


def parse_now(value: str, tz: str) -> dt.datetime:
    """``--now``: an ISO-8601 instant; a naive one is read in the restaurant's timezone."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        try:
            when = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(12))
        except ValueError:
            raise ValueError(f"--now expects an ISO-8601 date-time such as 2026-12-01T10:00, got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(tz))
    return when


def make_clock(fixed: dt.datetime | None = None) -> Callable[[], dt.datetime]:
    if fixed is not None:
        return lambda: fixed
    return lambda: dt.datetime.now(dt.UTC)


def resolve_kind(cfg: Config, kind: AgentKind | None) -> Literal["rules", "llm"]:
    kind = kind or cfg.agent.kind
    if kind == "auto":
        return "llm" if cfg.llm.base_url else "rules"
    return kind


def new_agent(
    services: Services,
    *,
    kind: AgentKind | None = None,
    language: str | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    call_id: str | None = None,
    caller_id: str | None = None,
) -> Agent:
    """One call's agent. ``caller_id`` is the number the phone network gave for the caller (withheld,
    foreign or malformed numbers are dropped here): the bot offers it as the booking's number and
    finds the caller's bookings by it."""
    cfg = services.cfg
    state = DialogState(language=(language or cfg.agent.language))  # type: ignore[arg-type]
    state.caller_id = caller_number(caller_id)
    if state.caller_id:
        register_pii(state.caller_id)
    call_id = call_id or uuid.uuid4().hex[:12]
    tools = BookingTools(services.restaurant, services.store, state, clock or make_clock(), call_id=call_id,
                         faq=services.faq)
    resolved = resolve_kind(cfg, kind)
    if resolved == "llm":
        if not cfg.llm.base_url:
            raise AgentUnavailable("--agent llm needs llm.base_url in config.yaml (or VOICEBOT__LLM__BASE_URL)")
        try:
            from pipeline.agents.llm import LLMAgent
        except ImportError:
            raise AgentUnavailable("the LLM agent is not built yet; use --agent rules") from None
        return LLMAgent(tools, cfg, fallback=RulesAgent(tools, max_failures=cfg.agent.max_failures))
    return RulesAgent(tools, max_failures=cfg.agent.max_failures)
