"""The `voicebot` command."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from pipeline.config import ConfigError, load_config
from pipeline.speech.models import ModelsMissing

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A flag or path the command cannot use; the message is meant for the user (exit status 2)."""


def _setup_logging(level: str, mask_pii: bool = True) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if mask_pii:
        from pipeline.privacy import install_pii_filter

        # On the handlers, not the root logger: a logger's filters never see its children's records.
        install_pii_filter()


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
    caller_id: str | None = None,
) -> int:
    """The text chat: one caller utterance per line until EOF or the call ends. Returns the exit code."""
    from pipeline.agents.factory import AgentUnavailable, make_clock, new_agent, open_services, parse_now

    try:
        fixed = parse_now(now, cfg.restaurant.timezone) if now else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    services = open_services(cfg)
    try:
        try:
            agent = new_agent(services, kind=kind, language=language, clock=make_clock(fixed),  # type: ignore[arg-type]
                              caller_id=caller_id)
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
                    language=args.language, as_json=args.json, interactive=interactive, caller_id=args.caller_id)


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
    table = [["ID", "DATE", "TIME", "PARTY", "NAME", "PHONE", "NOTE"]]
    table += [[r.id, r.date.isoformat(), f"{r.time:%H:%M}", party_size_text(r.party_size), _cell(r.name),
               _cell(r.phone), _cell(r.note or "")] for r in rows]
    for line in format_table(table):
        print(line)
    return 0


def party_size_text(n: int) -> str:
    """``1 person``, ``2 people``."""
    return f"{n} person" if n == 1 else f"{n} people"


def _cell(text: str) -> str:
    # One row per line whatever a caller said: line breaks and control characters become spaces.
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text).strip()


def _display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: CJK characters take two, combining marks none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def format_table(rows: list[list[str]]) -> list[str]:
    """``rows`` (the header first) as lines of columns aligned on display width, two spaces apart."""
    widths = [max(_display_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell + " " * (w - _display_width(cell)) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


# ------------------------------------------------------------------------------- ui, serve, phone
def voice_clock(args: argparse.Namespace, cfg) -> Callable[[], dt.datetime] | None:
    """``--now`` as the clock of every call's agent (as ``voicebot chat`` has it); None: the real clock."""
    now = getattr(args, "now", None)
    if not now:
        return None
    from pipeline.agents.factory import make_clock, parse_now

    try:
        return make_clock(parse_now(now, cfg.restaurant.timezone))
    except ValueError as e:
        raise UsageError(str(e)) from None


def load_runtime(cfg, args: argparse.Namespace, clock: Callable[[], dt.datetime] | None = None):
    """The voice runtime ``ui``, ``serve`` and ``phone`` run on, as ``args`` ask (``--no-download``,
    ``--now``; ``clock`` when already parsed from them)."""
    # Imported here: the voice stack (onnxruntime, ctranslate2, gradio) is slow to import and
    # `voicebot chat` never needs it.
    from pipeline.voice.runtime import VoiceRuntime

    if clock is None:
        clock = voice_clock(args, cfg)
    download = not getattr(args, "no_download", False)
    if download:
        log.info("checking the model files (missing ones are fetched; --no-download stops instead)")
    return VoiceRuntime.load(cfg, download=download, clock=clock)


def _server_config(args: argparse.Namespace):
    cfg = load_config(args.config)
    _setup_logging(cfg.logging.level, cfg.logging.mask_pii)
    if getattr(args, "host", None):
        cfg.server.host = args.host
    if getattr(args, "port", None):
        cfg.server.port = args.port
    return cfg


def _start_janitor(cfg):
    from pipeline.privacy import start_call_log_janitor

    if cfg.logging.call_log:
        # Made now rather than at the first call's first line: a log that cannot be written is
        # said at start-up, in one line.
        folder = cfg.path(cfg.logging.call_log).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = "a file of that name is in the way" if isinstance(e, FileExistsError) else (e.strerror or str(e))
            raise UsageError(f"logging.call_log: cannot create the folder {folder}: {why}") from None
    return start_call_log_janitor(cfg)


def _stop(janitor) -> None:
    if janitor is not None:
        janitor.stop()


def cmd_ui(args: argparse.Namespace) -> int:
    cfg = _server_config(args)
    clock = voice_clock(args, cfg)
    janitor = _start_janitor(cfg)
    try:
        runtime = load_runtime(cfg, args, clock)
        from pipeline.app import build_stream, build_ui

        # The browser page does not use Twilio's webhooks: twilio.validate does not apply here.
        demo = build_ui(runtime, build_stream(runtime))
        log.info("the page is at http://%s:%d/", cfg.server.host, cfg.server.port)
        try:
            demo.launch(server_name=cfg.server.host, server_port=cfg.server.port, show_api=False)
        finally:
            runtime.close()
    finally:
        _stop(janitor)
    return 0


#: how ``voicebot serve --workers N`` hands its arguments to the worker processes it starts
WORKER_ARGS_ENV = "VOICEBOT_SERVE_WORKER_ARGS"


def _uvicorn_options(cfg) -> dict[str, Any]:
    # log_config=None: uvicorn's records go through the root handlers and their PII filter.
    # Forwarded headers are only believed from a proxy the config says to trust.
    # ws_max_size: Twilio's messages are a few hundred bytes; uvicorn's 16 MiB default would let a
    # peer make the server buffer that much before the phone socket's own 64 KiB check sees it
    return {"host": cfg.server.host, "port": cfg.server.port, "log_level": cfg.logging.level.lower(),
            "log_config": None, "proxy_headers": cfg.twilio.trust_proxy, "ws_max_size": 1 << 20}


def _serving(cfg, workers: int) -> None:
    log.info("serving on http://%s:%d/ (Twilio webhook: POST /telephone/incoming; signatures %s; %d worker%s)",
             cfg.server.host, cfg.server.port, "checked" if cfg.twilio.validate else "NOT checked",
             workers, "" if workers == 1 else "s")


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _server_config(args)
    clock = voice_clock(args, cfg)
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    from pipeline.transport.twilio.auth import MISSING_TOKEN_MESSAGE, auth_token_from_env

    # Before loading the models: a misconfiguration should not take a minute to report.
    if cfg.twilio.validate and not auth_token_from_env():
        print(f"error: {MISSING_TOKEN_MESSAGE}", file=sys.stderr)
        return 2
    if workers > 1:
        return _serve_workers(cfg, args, workers)
    janitor = _start_janitor(cfg)
    try:
        runtime = load_runtime(cfg, args, clock)
        import uvicorn

        from pipeline.app import build_app

        try:
            app = build_app(runtime)
            _serving(cfg, 1)
            uvicorn.run(app, **_uvicorn_options(cfg))
        finally:
            runtime.close()  # ends live calls in the call log and closes the database
    finally:
        _stop(janitor)
    return 0


def _serve_workers(cfg, args: argparse.Namespace, workers: int) -> int:
    """``workers`` processes sharing the port (uvicorn's workers: one socket, bound here), each with
    its own models and runtime, all on ``store.url``: the database holds what they must agree on
    (stream tokens, seen webhooks, the lines in use)."""
    from pipeline.speech.remote import ensure_local_models
    from pipeline.store import ReservationStore, mask_url

    url = cfg.store_url()
    if url.startswith("sqlite") and (":memory:" in url or url.rstrip("/") in ("sqlite:", "sqlite://")
                                     or "mode=memory" in url):
        raise UsageError(f"--workers {workers} needs a database the workers share: store.url {mask_url(url)} "
                         "is in memory, one per process (use a SQLite file or PostgreSQL)")
    # Once here rather than in every worker: the models fetched, the tables created.
    download = not getattr(args, "no_download", False)
    ensure_local_models(cfg, download)
    ReservationStore(url).close()
    os.environ[WORKER_ARGS_ENV] = json.dumps({"config": args.config, "host": cfg.server.host,
                                              "port": cfg.server.port, "now": getattr(args, "now", None)})
    janitor = _start_janitor(cfg)
    try:
        import uvicorn

        _serving(cfg, workers)
        uvicorn.run("pipeline.cli:worker_app", factory=True, workers=workers, **_uvicorn_options(cfg))
    finally:
        _stop(janitor)
    return 0


def worker_app():
    """The app of one ``voicebot serve --workers N`` worker (uvicorn calls this in each process)."""
    raw = os.environ.get(WORKER_ARGS_ENV)
    if not raw:
        raise RuntimeError(f"{WORKER_ARGS_ENV} is not set: worker_app is started by `voicebot serve --workers N`")
    args = argparse.Namespace(**json.loads(raw), no_download=True)
    cfg = _server_config(args)
    from pipeline.app import build_app

    runtime = load_runtime(cfg, args)
    try:
        return build_app(runtime, close_runtime=True)
    except BaseException:
        runtime.close()
        raise


FASTPHONE_API = "https://api.fastrtc.org"


def _hf_token() -> str | None:
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def _offline_reason(timeout: float = 5.0) -> str | None:
    """Why FastPhone's service cannot be reached, or None when it can."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    import httpx

    try:
        httpx.get(FASTPHONE_API, timeout=timeout)
    except httpx.HTTPError as e:
        return f"cannot reach {FASTPHONE_API} ({type(e).__name__})"
    return None


def cmd_phone(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _setup_logging(cfg.logging.level, cfg.logging.mask_pii)
    clock = voice_clock(args, cfg)
    token = _hf_token()
    if not token:
        print("error: `voicebot phone` needs a Hugging Face token for FastPhone's temporary number: set HF_TOKEN "
              "(https://huggingface.co/settings/tokens) or run `huggingface-cli login`", file=sys.stderr)
        return 2
    reason = _offline_reason()
    if reason:
        print(f"error: `voicebot phone` needs the internet for FastPhone's temporary number: {reason}",
              file=sys.stderr)
        return 1
    janitor = _start_janitor(cfg)
    runtime = load_runtime(cfg, args, clock)
    from pipeline.app import build_stream

    # FastPhone's service calls FastRTC's own telephone routes without Twilio's signature or our
    # stream token: the stream is served ungated here, whatever twilio.validate says.
    stream = build_stream(runtime)
    try:
        # Blocks until Ctrl-C, having printed the number to call and the access code.
        stream.fastphone(token=token, host="127.0.0.1", port=cfg.server.port,
                         log_level=cfg.logging.level.lower(), log_config=None)
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        log.debug("fastphone failed", exc_info=True)
        print(f"error: FastPhone could not set up the number: {type(e).__name__}: {e}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        # fastphone() starts its local server on a non-daemon thread before registering and never
        # stops it when registration fails: only leaving the process ends it.
        os._exit(1)
    finally:
        _stop(janitor)
    return 0


# ------------------------------------------------------------------------------------------ models
def cmd_models_status(args: argparse.Namespace) -> int:
    from pipeline.speech.models import models_status

    cfg = load_config(args.config)
    rows = models_status(cfg)
    for what, path, present in rows:
        print(f"{'present' if present else 'MISSING':8} {what}: {path}")
    if not all(present for _, _, present in rows):
        from pipeline.speech.models import OFFLINE_HINT

        print(f"run `voicebot models download` to fetch the missing files\n{OFFLINE_HINT}", file=sys.stderr)
        return 1
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    from pipeline.speech.models import ensure_models

    cfg = load_config(args.config)
    _setup_logging(cfg.logging.level)
    ensure_models(cfg, download=True, progress=True)
    return cmd_models_status(args)


def cmd_models_kokoro_fp32(args: argparse.Namespace) -> int:
    from pipeline.speech.kokoro_fp32 import ConversionError, convert

    try:
        result = convert(args.src, args.dst)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    done = ", ".join(f"{n} {kind}" for kind, n in result.rewritten.items())
    print(f"wrote {result.dst} ({result.bytes_out / 1e6:.0f} MB, float32) in {result.seconds:.1f} s: rewrote {done}")
    print(f"use it with tts.model: {result.dst}")
    return 0


def add_now_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--now", help="fix the clock, ISO-8601 (e.g. 2026-12-01T10:00; "
                                 "no offset: the restaurant's timezone), for reproducible dates")


def _add_voice_commands(sub) -> None:
    def add_server_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="path to config.yaml")
        p.add_argument("--host", help="address to listen on (default: server.host)")
        p.add_argument("--port", type=int, help="port to listen on (default: server.port)")
        p.add_argument("--no-download", action="store_true",
                       help="stop with a message instead of fetching missing model files")
        add_now_arg(p)

    ui = sub.add_parser("ui", help="talk to the bot in the browser (Gradio page)")
    add_server_args(ui)
    ui.set_defaults(func=cmd_ui)

    serve = sub.add_parser("serve", help="the FastAPI app: Twilio routes, /healthz and the Gradio page at /")
    add_server_args(serve)
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N processes sharing the port, each with its own models, agreeing through store.url "
                            "(a SQLite file on one host, PostgreSQL across hosts); default 1")
    serve.set_defaults(func=cmd_serve)

    phone = sub.add_parser("phone", help="a temporary phone number via FastRTC's FastPhone (needs HF_TOKEN)")
    phone.add_argument("--config", help="path to config.yaml")
    phone.add_argument("--no-download", action="store_true",
                       help="stop with a message instead of fetching missing model files")
    add_now_arg(phone)
    phone.set_defaults(func=cmd_phone)

    models = sub.add_parser("models", help="the model files: status, download")
    msub = models.add_subparsers(dest="models_command", required=True)
    status = msub.add_parser("status", help="which model files are present where (exit 1 if any is missing)")
    status.add_argument("--config", help="path to config.yaml")
    status.set_defaults(func=cmd_models_status)
    download = msub.add_parser("download", help="fetch the configured whisper and kokoro files, with progress")
    download.add_argument("--config", help="path to config.yaml")
    download.set_defaults(func=cmd_models_download)
    fp32 = msub.add_parser("kokoro-fp32", help="rewrite kokoro's int8 ONNX file to float32 (the int8 file "
                                               "speaks garbage on some CPUs, and is slower on a CPU)")
    fp32.add_argument("src", metavar="IN", help="the int8 model, e.g. kokoro-v1.0.int8.onnx")
    fp32.add_argument("dst", metavar="OUT", help="where to write the float32 model")
    fp32.set_defaults(func=cmd_models_kokoro_fp32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="A phone voicebot that takes restaurant reservations.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at the configured level")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="text chat with the bot (same agent and tools as a call)")
    chat.add_argument("--config", help="path to config.yaml")
    chat.add_argument("--agent", choices=["auto", "rules", "llm"], default=None,
                      help="auto: the LLM when llm.base_url is set, else the rules agent")
    add_now_arg(chat)
    chat.add_argument("--language", choices=["ja", "en"], default=None)
    chat.add_argument("--json", action="store_true", help="one JSON object per bot turn")
    chat.add_argument("--caller-id", metavar="NUMBER", default=None,
                      help="behave as a phone call from this number (e.g. +819012345678)")
    chat.set_defaults(func=cmd_chat)

    res = sub.add_parser("reservations", help="list the reservations in the database")
    res.add_argument("--config", help="path to config.yaml")
    res.add_argument("--date", help="only this day (YYYY-MM-DD)")
    res.add_argument("--json", action="store_true", help="one JSON object per reservation")
    res.set_defaults(func=cmd_reservations)
    _add_voice_commands(sub)
    from pipeline.sim.bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    from pipeline.sim.sttcheck import add_parser as add_stt_check_parser

    add_stt_check_parser(sub)
    from pipeline.sim.eval import add_parser as add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModelsMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
