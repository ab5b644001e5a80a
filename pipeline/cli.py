"""The `voicebot` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from typing import TextIO

from pipeline.config import ConfigError, load_config

log = logging.getLogger(__name__)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_chat(
    cfg,
    lines: Iterable[str],
    out: TextIO,
    *,
    kind: str | None = None,
    now: str | None = None,
    language: str | None = None,
    as_json: bool = False,
    interactive: bool = False,
) -> int:
    """The text chat: one caller utterance per line until EOF or the call ends. Returns the exit code."""
    from pipeline.agents import AgentUnavailable, make_clock, new_agent, open_services, parse_now

    try:
        fixed = parse_now(now, cfg.restaurant.timezone) if now else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    services = open_services(cfg)
    try:
        try:
            agent = new_agent(services, kind=kind, language=language, clock=make_clock(fixed))  # type: ignore[arg-type]
        except AgentUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

        def emit(user: str | None, bot: str) -> None:
            st = agent.state
            if as_json:
                obj = {"user": user, "bot": bot, "state": st.slots.to_json(), "reservation": st.reservation,
                       "ended": st.ended}
                out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            else:
                out.write(f"bot: {bot}\n")
                if st.reservation and user is not None and st.ended:
                    out.write(f"(reservation {st.reservation['id']} saved)\n")
            out.flush()

        emit(None, agent.greeting())
        for raw in lines:
            if agent.state.ended:
                break
            user = raw.rstrip("\r\n")
            if not user.strip():
                continue
            bot = "".join(agent.respond(user))
            emit(user, bot)
            if agent.state.ended:
                break
            if interactive:
                out.write("you: ")
                out.flush()
        return 0
    finally:
        services.close()


def _stdin_lines(interactive: bool, out: TextIO) -> Iterable[str]:
    if interactive:
        out.write("you: ")
        out.flush()
    yield from sys.stdin


def cmd_chat(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _setup_logging(cfg.logging.level if args.verbose else "WARNING")
    interactive = sys.stdin.isatty() and not args.json
    return run_chat(cfg, _stdin_lines(interactive, sys.stdout), sys.stdout, kind=args.agent, now=args.now,
                    language=args.language, as_json=args.json, interactive=interactive)


def cmd_reservations(args: argparse.Namespace) -> int:
    import datetime as dt

    from pipeline.store import ReservationStore

    cfg = load_config(args.config)
    store = ReservationStore(cfg.store_url())
    try:
        if args.date:
            try:
                day = dt.date.fromisoformat(args.date)
            except ValueError:
                print(f"error: --date expects YYYY-MM-DD, got {args.date!r}", file=sys.stderr)
                return 2
            rows = store.for_date(day)
        else:
            rows = store.all()
    finally:
        store.close()
    if args.json:
        for r in rows:
            print(json.dumps(r.to_json(), ensure_ascii=False))
        return 0
    if not rows:
        print("no reservations")
        return 0
    for r in rows:
        note = f"  note: {r.note}" if r.note else ""
        print(f"{r.id}  {r.date.isoformat()} {r.time:%H:%M}  {r.party_size} people  {r.name}  {r.phone}{note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="A phone voicebot that takes restaurant reservations.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at the configured level")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="text chat with the bot (same agent and tools as a call)")
    chat.add_argument("--config", help="path to config.yaml")
    chat.add_argument("--agent", choices=["auto", "rules", "llm"], default=None,
                      help="auto: the LLM when llm.base_url is set, else the rules agent")
    chat.add_argument("--now", help="the clock, ISO-8601 (e.g. 2026-12-01T10:00), for reproducible dates")
    chat.add_argument("--language", choices=["ja", "en"], default=None)
    chat.add_argument("--json", action="store_true", help="one JSON object per bot turn")
    chat.set_defaults(func=cmd_chat)

    res = sub.add_parser("reservations", help="list the reservations in the database")
    res.add_argument("--config", help="path to config.yaml")
    res.add_argument("--date", help="only this day (YYYY-MM-DD)")
    res.add_argument("--json", action="store_true", help="one JSON object per reservation")
    res.set_defaults(func=cmd_reservations)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the last line of defence: a message, never a traceback
        from pipeline.store import StoreError

        if isinstance(e, StoreError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        print(f"error: {type(e).__name__}: {e} (run with -v for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
