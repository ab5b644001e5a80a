"""``voicebot eval``: the bot phoned by simulated callers, judged on what they wanted.

It starts the real ``voicebot serve`` (a subprocess on 127.0.0.1, with the clock fixed by ``--now``,
its own database and call log in a work folder, and Twilio's signature check on with a token of its
own) and phones it as Twilio does: the incoming-call webhook, signed; then the media websocket with
the one-time token from the TwiML; the caller's audio in 20 ms mu-law frames, in real time, all
call long (silence, or line noise at ``--noise-db``, between lines). One persona per call
(:mod:`pipeline.sim.personas`), one call at a time, in the order of the persona file.

The caller reacts to the bot's words, read from the server's call log as each turn is appended
(its ``reply``, or what of it was heard when the caller cut in), and speaks with Open JTalk
(Japanese) or espeak-ng (English). Per call it measures:

- booked right: the database after the call against the one before: exactly the booking the
  persona wanted was made (date, time, party and phone exact; the name by its reading; a request
  kept), changed or cancelled, and nothing else touched;
- turns: the caller's lines, against the fewest the persona needs;
- the gap: from the caller's last voiced frame sent to the bot's first audio frame received;
- cut-offs: bot audio arriving while a caller's line was still being sent;
- false barge-ins: a ``clear`` from the bot while the caller said only a backchannel (はい);
- silences over 2 s: a line with no bot audio within 2 s of its end;
- STT error: what whisper heard (the call log's transcripts) against what the caller said, by
  sound (:func:`pipeline.sim.score.error_count`: CER on the reading for Japanese, WER for English);
- the bot's pronunciation: its audio, as the caller received it, transcribed by whisper after the
  calls (the configured model, whisper's full 30 s window) against the text it meant to say.

``--text`` runs the same callers typed into the agent instead (no audio, no models): the dialog
alone, in seconds.

The parts: :mod:`pipeline.sim.server` (the server and its call log), :mod:`pipeline.sim.caller`
(the caller's voice on the live line), :mod:`pipeline.sim.personas` (what they want and how they
react), :mod:`pipeline.sim.judge` (the database before and after), :mod:`pipeline.sim.report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sim.caller import CallerLine, Rendered, Voices
from pipeline.sim.judge import Bookings, Plan, judge, snapshot
from pipeline.sim.personas import (
    Caller,
    Persona,
    PersonaError,
    PersonaSet,
    Said,
    load_personas,
    min_turns,
)
from pipeline.sim.report import Backchannel, CallResult, LineResult, build_report, format_report, stalls
from pipeline.sim.score import ErrorCount, error_count, spoken_units
from pipeline.sim.server import CallLog, ServeProcess, ServerError

log = logging.getLogger(__name__)

#: the clock the calls run at by default: a Tuesday morning, every persona's date bookable
DEFAULT_NOW = "2026-12-01T10:00"
#: a line answered later than this (or not at all) is a silence
SILENCE_S = 2.0
#: a ``clear`` this long after a backchannel ended still counts as caused by it
BARGE_WINDOW_S = 1.2
#: the caller takes the bot to have finished once its audio has played out and none has come for
#: this long, and the turn is in the call log (or, with no log line coming, after NO_RECORD_S)
QUIET_S = 0.8
GREETING_QUIET_S = 1.2
NO_RECORD_S = 8.0


class EvalError(RuntimeError):
    """The eval could not run; the message is one line for the user."""


@dataclass
class EvalOptions:
    config: str | None = None
    personas: str | None = None
    calls: int | None = None
    only: list[str] | None = None
    noise_db: float | None = None
    now: str = DEFAULT_NOW
    workdir: str | None = None
    text: bool = False
    #: how long a caller waits for any answer to a line
    answer_timeout_s: float = 10.0
    #: caller lines per call at most; a call that needs more hangs up
    max_lines: int = 24
    call_limit_s: float = 360.0
    reply_limit_s: float = 60.0
    seed: int = 0


# ====================================================================================== one phone call
class PhoneEval:
    """The calls over the real websocket to a running server."""

    def __init__(self, opts: EvalOptions, server: ServeProcess):
        self.opts, self.server = opts, server
        self.log = CallLog(server.call_log)
        self.voices = Voices()

    async def _render(self, persona: Persona, said: Said) -> Rendered:
        return await asyncio.to_thread(self.voices.render, persona, said.line, said.repeat)

    async def _wait_done(self, tw: Any, sid: str, logged_before: int, quiet: float = QUIET_S,
                         expect_record: bool = True) -> None:
        """Until the bot's reply has played out here and its turn is in the call log."""
        deadline = time.monotonic() + self.opts.reply_limit_s
        while time.monotonic() < deadline and not tw.closed:
            self.log.poll()
            now = time.monotonic()
            played = now >= tw.play_end + 0.35 and now >= tw.last_media + quiet
            if played and (not expect_record or len(self.log.turns(sid)) > logged_before):
                return
            if played and now >= tw.last_media + NO_RECORD_S:
                return  # nothing will be logged: a skipped turn, a prompt of the bot's own
            await asyncio.sleep(0.05)

    async def _backchannel(self, tw: Any, line: CallerLine, plan: Plan, first_audio: float) -> Backchannel | None:
        """The caller's はい while the bot talks, ``at_s`` into its reply, if it is still talking."""
        spec = plan.persona.backchannel
        assert spec is not None
        await asyncio.sleep(max(0.0, first_audio + spec.at_s - time.monotonic()))
        if tw.closed or not tw.playing(time.monotonic() + 0.6):
            return None
        rendered = await asyncio.to_thread(self.voices.render, plan.persona, plan.caller.backchannel())
        spoken = await line.say(rendered)
        if spoken is None:
            return None
        return Backchannel(spoken.start, spoken.end)

    async def call(self, plan: Plan) -> CallResult:
        import websockets

        from pipeline.sim.phone import LineNoise
        from pipeline.sim.twilio_client import TwilioCaller, local_socket_url, new_sids, place_call

        opts, persona = self.opts, plan.persona
        result = CallResult(persona, min_turns=min_turns(persona), seeded=plan.seeded)
        stream_sid, call_sid = new_sids()
        result.sid = stream_sid
        phone = (plan.expected or {}).get("phone")
        from_number = "+81" + phone[1:] if phone else "+815000000000"
        answer = await asyncio.to_thread(place_call, self.server.base_url, self.server.token, call_sid,
                                         caller=from_number)
        url = local_socket_url(answer.stream_url, self.server.base_url)
        noise = None if opts.noise_db is None else LineNoise(opts.noise_db, seed=opts.seed + len(persona.id))
        async with websockets.connect(url, open_timeout=10, close_timeout=5, max_queue=None) as ws:
            tw = TwilioCaller(ws, stream_sid, call_sid)
            line = CallerLine(tw, noise)
            t0 = result.t0 = time.monotonic()
            await tw.start(answer.parameters)
            line.start()
            try:
                await asyncio.wait_for(self._converse(tw, line, plan, result), opts.call_limit_s)
            except TimeoutError:
                result.ended_by = "limit"
            finally:
                if not tw.closed:
                    await tw.stop()
                await tw.wait_closed(10)
                await line.stop()
                await tw.close()
            result.duration_s = time.monotonic() - t0
            self._collect_audio(tw, result)
        await self._settle(result)
        return result

    async def _converse(self, tw: Any, line: CallerLine, plan: Plan, result: CallResult) -> None:
        opts, persona, caller = self.opts, plan.persona, plan.caller
        sid = tw.stream_sid
        first = await tw.wait_answer(result.t0, opts.answer_timeout_s, keep_talking=False)
        result.greeting_first_audio = first
        if first is None:
            result.ended_by, result.error = "error", "no greeting"
            return
        if persona.backchannel is not None and persona.backchannel.during == "greeting":
            result.greeting_backchannel = await self._backchannel(tw, line, plan, first)
        await self._wait_done(tw, sid, 0, quiet=GREETING_QUIET_S, expect_record=False)
        said: Said | None = caller.opening()
        while said is not None:
            if tw.closed:
                result.ended_by = "bot"
                return
            if len(result.lines) >= opts.max_lines:
                result.ended_by = "limit"
                return
            t_decide = time.monotonic()
            rendered = await self._render(persona, said)
            await asyncio.sleep(max(0.0, persona.reaction_s - (time.monotonic() - t_decide)))
            self.log.poll()
            logged_before = len(self.log.turns(sid))
            spoken = await line.say(rendered)
            if spoken is None:
                result.ended_by = "bot"
                return
            ln = LineResult(said.kind, said.line.text, spoken.start, spoken.voice_end, spoken.end)
            result.lines.append(ln)
            ln.first_audio = tw.first_media_after(spoken.start)
            ln.cut_off = ln.first_audio is not None and ln.first_audio < spoken.voice_end
            answer = tw.first_media_after(spoken.voice_end) if ln.cut_off else ln.first_audio
            if answer is None:
                answer = await tw.wait_answer(spoken.voice_end, opts.answer_timeout_s, keep_talking=False)
            if ln.first_audio is None:
                ln.first_audio = answer
            if not ln.cut_off and answer is not None:
                ln.gap_s = answer - spoken.voice_end
            ln.over_2s = not ln.cut_off and (ln.gap_s is None or ln.gap_s > SILENCE_S)
            spec = persona.backchannel
            if spec is not None and spec.during == said.kind and answer is not None and ln.backchannel is None:
                ln.backchannel = await self._backchannel(tw, line, plan, answer)
            await self._wait_done(tw, sid, logged_before)
            self.log.poll()
            records = self.log.turns(sid)[logged_before:]
            ln.turns_logged = len(records)
            ln.acked = any((r.get("ms") or {}).get("acked") is not None for r in records)
            self._attribute(ln, records, persona.language, caller)
            text = ""
            if records:
                last = records[-1]
                text = last.get("heard") if last.get("heard") is not None else (last.get("reply") or "")
            ln.reply = text
            said = caller.react(text)
        # the bot said goodbye: it hangs up once its audio has played
        result.ended_by = "bot"
        await tw.wait_closed(15)

    def _attribute(self, ln: LineResult, records: list[dict[str, Any]], language: str, caller: Caller) -> None:
        """The transcripts of the turns this line made (a backchannel's own turn left out)."""
        transcripts = [str(r.get("transcript") or "") for r in records]
        if ln.backchannel is not None and len(transcripts) > 1:
            said = caller.backchannel().text
            closest = min(range(len(transcripts)),
                          key=lambda k: error_count(said, transcripts[k], language).edits)
            transcripts.pop(closest)
        ln.heard = "".join(transcripts) if language == "ja" else " ".join(transcripts)
        ln.stt = error_count(ln.text, ln.heard, language)

    def _collect_audio(self, tw: Any, result: CallResult) -> None:
        """What the bot said to each line (until the next line began), and the clears."""
        clears = [t for t, m in tw.received if m.get("event") == "clear"]
        starts = [ln.start for ln in result.lines]
        end = time.monotonic()
        if result.greeting_first_audio is not None:
            result.greeting_audio = tw.bot_audio(result.t0, starts[0] if starts else end)
        for k, ln in enumerate(result.lines):
            until = starts[k + 1] if k + 1 < len(starts) else end
            ln.cleared = any(ln.start <= t < until for t in clears)
            if ln.first_audio is not None:
                ln.bot_audio = tw.bot_audio(ln.start, until)
                ln.stalls = stalls(tw.received, ln.first_audio, until)
        for b in result.backchannels:
            b.cleared = any(b.start <= t <= b.end + BARGE_WINDOW_S for t in clears)

    async def _settle(self, result: CallResult) -> None:
        """Until the server has written the call's end (its booking is then in the database)."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.log.poll()
            end = self.log.call_end(result.sid)
            if end is not None:
                bots = [e.get("text", "") for e in end.get("transcript") or [] if e.get("role") == "bot"]
                result.greeting = bots[0] if bots else ""
                return
            await asyncio.sleep(0.1)


# ====================================================================================== the bot's pronunciation
def _language_of(text: str) -> str:
    """The language a reply is in, by its script: the bot speaks Japanese to an English caller it
    has not understood."""
    return "ja" if _JAPANESE.search(text) else "en"


_JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


def pronunciation(results: list[CallResult], cfg: Any) -> str:
    """Whisper (the configured model, its 30 s window) on the bot's audio as the caller got it, against
    the text it said: greetings, and replies that went out whole (no barge-in, cut-off or second turn),
    in the language of the text. A transcript more than twice as long as the text is whisper looping
    (on a run of digits, say), not the bot's speech: it is kept in the details, not scored.
    Returns the model path used."""
    from pipeline.audio import PHONE_RATE
    from pipeline.speech.models import model_resolver
    from pipeline.speech.stt import make_stt

    stts: dict[str, Any] = {}

    def score(text: str, audio: np.ndarray | None) -> tuple[str | None, ErrorCount | None]:
        if not text or audio is None or audio.size < PHONE_RATE // 4:
            return None, None
        language = _language_of(text)
        if language not in stts:
            stts[language] = make_stt(cfg.stt.model_copy(update={"language": language, "window_s": None}),
                                      model_resolver(cfg))
        heard = stts[language].transcribe(audio, PHONE_RATE).text
        count = error_count(text, heard, language)
        if len(spoken_units(heard, language)) > 2 * count.total + 10:
            return heard + " [whisper looped: not scored]", None
        return heard, count

    for r in results:
        if not any(b.cleared for b in ([r.greeting_backchannel] if r.greeting_backchannel else [])):
            _, r.greeting_pronunciation = score(r.greeting, r.greeting_audio)
        for ln in r.lines:
            if ln.turns_logged == 1 and not ln.cut_off and not ln.cleared:
                ln.bot_heard, ln.pronunciation = score(ln.reply, ln.bot_audio)
    return str(model_resolver(cfg)(cfg.stt.model))


# ====================================================================================== text only
def run_text(opts: EvalOptions, pset: PersonaSet, personas: list[Persona], cfg: Any, workdir: Path) -> list[CallResult]:
    """The callers typed into the agent (``voicebot chat``'s code path): the dialog without audio."""
    from pipeline.agents.factory import make_clock, new_agent, open_services, parse_now

    fixed = parse_now(opts.now, cfg.restaurant.timezone)
    cfg = cfg.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{workdir / 'reservations.db'}"
    bookings = Bookings(pset, cfg.store_url(), fixed.date(), cfg.restaurant.tables_per_slot)
    results = []
    services = open_services(cfg)
    try:
        for p in personas:
            before = snapshot(cfg.store_url())
            plan = bookings.plan(p)
            before = snapshot(cfg.store_url()) if plan.seeded else before
            result = CallResult(p, min_turns=min_turns(p), seeded=plan.seeded)
            # no caller ID: the phone path does not pass Twilio's From to the agent (yet)
            agent = new_agent(services, language=p.language, clock=make_clock(fixed))
            result.greeting = agent.greeting()
            said: Said | None = plan.caller.opening()
            result.ended_by = "bot"
            while said is not None:
                if agent.state.ended:
                    break
                if len(result.lines) >= opts.max_lines:
                    result.ended_by = "limit"
                    break
                reply = "".join(agent.respond(said.line.text))
                result.lines.append(LineResult(said.kind, said.line.text, 0, 0, 0, heard=said.line.text, reply=reply))
                said = plan.caller.react(reply)
            result.verdict = judge(p.wants, plan.expected, plan.target, before, snapshot(cfg.store_url()),
                                   p.language)
            bookings.record(p, result.verdict)
            results.append(result)
    finally:
        services.close()
    return results


# ====================================================================================== the run
def select(pset: PersonaSet, only: list[str] | None, calls: int | None) -> list[Persona]:
    personas = list(pset.personas)
    if only:
        known = {p.id for p in personas}
        unknown = [i for i in only if i not in known]
        if unknown:
            raise EvalError(f"--only: no persona {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        personas = [p for p in personas if p.id in only]
    return personas[:calls] if calls else personas


def run_eval(opts: EvalOptions) -> dict[str, Any]:
    """Run the calls and return the report (see :func:`format_report`)."""
    from pipeline.agents.factory import parse_now
    from pipeline.config import load_config

    started = time.monotonic()
    cfg = load_config(opts.config)
    try:
        fixed = parse_now(opts.now, cfg.restaurant.timezone)
    except ValueError as e:
        raise EvalError(str(e)) from None
    try:
        pset = load_personas(opts.personas)
    except PersonaError as e:
        raise EvalError(str(e)) from None
    personas = select(pset, opts.only, opts.calls)
    with contextlib.ExitStack() as stack:
        if opts.workdir:
            workdir = Path(opts.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            for stale in ("reservations.db", "calls.jsonl"):
                (workdir / stale).unlink(missing_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="voicebot-eval-")))
        if opts.text:
            results = run_text(opts, pset, personas, cfg, workdir)
            settings = {"mode": "text"}
        else:
            results, settings = _run_phone(opts, pset, personas, cfg, workdir, fixed.date())
    settings.update({"now": fixed.isoformat(), "personas": str(Path(opts.personas) if opts.personas else "default"),
                     "config": opts.config or "default", "noise_db": opts.noise_db,
                     "agent": _agent_kind(cfg)})
    return build_report(results, settings, time.monotonic() - started)


def _agent_kind(cfg: Any) -> str:
    from pipeline.agents.factory import resolve_kind

    return resolve_kind(cfg, None)


def _run_phone(opts: EvalOptions, pset: PersonaSet, personas: list[Persona], cfg: Any, workdir: Path,
               today: dt.date) -> tuple[list[CallResult], dict[str, Any]]:
    server = ServeProcess(workdir, opts.now, opts.config)
    results: list[CallResult] = []
    try:
        ready_s, prerendered = server.wait_ready(prerender=bool(cfg.tts.cache_size))
        log.info("voicebot serve ready on %s after %.1f s", server.base_url, ready_s)
        bookings = Bookings(pset, server.store_url, today, cfg.restaurant.tables_per_slot)
        runner = PhoneEval(opts, server)
        for p in personas:
            plan = bookings.plan(p)
            before = snapshot(server.store_url)
            log.info("call %d of %d: %s", len(results) + 1, len(personas), p.id)
            try:
                result = asyncio.run(runner.call(plan))
            except Exception as e:  # one broken call is reported, the others still run
                log.warning("call %s failed", p.id, exc_info=True)
                result = CallResult(p, min_turns=min_turns(p), seeded=plan.seeded, ended_by="error",
                                    error=f"{type(e).__name__}: {e}")
                if not server.alive():
                    raise ServerError(f"voicebot serve died during call {p.id}: {server.last_error()}") from None
            result.verdict = judge(p.wants, plan.expected, plan.target, before, snapshot(server.store_url),
                                   p.language)
            bookings.record(p, result.verdict)
            results.append(result)
    except ServerError as e:
        raise EvalError(str(e)) from None
    finally:
        server.stop()
    model = pronunciation(results, cfg)
    settings = {"mode": "phone", "stt_model": model, "tts_model": str(cfg.path(cfg.tts.model)),
                "server_log": str(server.log_path) if opts.workdir else None, "server_ready_s": round(ready_s, 1),
                "phrases_prerendered": prerendered}
    return results, settings


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``voicebot eval``."""
    p = subparsers.add_parser(
        "eval", help="phone the bot with simulated callers and judge the calls",
        description="Starts voicebot serve on 127.0.0.1 with a fixed clock and phones it over Twilio's media-stream "
                    "protocol, one simulated caller (persona) per call, in real time; prints, per call and overall, "
                    "whether the booking came out right, turns, the answer gap, cut-offs, false barge-ins, "
                    "silences over 2 s, what whisper heard and how the bot's speech transcribes back.")
    p.add_argument("--config", help="path to config.yaml (its models are used)")
    p.add_argument("--personas", help="a persona file (default: the one shipped, pipeline/sim/personas.yaml)")
    p.add_argument("--calls", type=int, help="only the first N personas")
    p.add_argument("--only", help="only these personas (ids, comma-separated)")
    p.add_argument("--noise-db", type=float, help="line noise at this signal-to-noise ratio, in dB (default: none)")
    p.add_argument("--now", default=DEFAULT_NOW, help=f"the clock of the calls, ISO-8601 (default {DEFAULT_NOW})")
    p.add_argument("--workdir", help="keep the database, call log and server log here (default: a temporary folder)")
    p.add_argument("--text", action="store_true", help="type the callers' lines into the agent instead (no audio)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.calls is not None and args.calls < 1:
        print("error: --calls must be at least 1", file=sys.stderr)
        return 2
    opts = EvalOptions(config=args.config, personas=args.personas, calls=args.calls,
                       only=[x.strip() for x in args.only.split(",") if x.strip()] if args.only else None,
                       noise_db=args.noise_db, now=args.now, workdir=args.workdir, text=args.text)
    try:
        report = run_eval(opts)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, ensure_ascii=False, default=str) if args.json else format_report(report))
    return 0
