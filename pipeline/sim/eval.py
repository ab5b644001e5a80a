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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sim.personas import (
    Caller,
    Persona,
    PersonaError,
    PersonaSet,
    Said,
    Utterance,
    apply_changes,
    intended_booking,
    load_personas,
    min_turns,
)
from pipeline.sim.score import ErrorCount, error_count, spoken_units

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
#: the bot's audio running dry for this long in the middle of a reply is a stall
STALL_S = 1.0
SERVER_START_S = 300.0
#: how long the calls wait for the server to render its fixed phrases (a loaded machine is slow)
PRERENDER_WAIT_S = 900.0
#: the server's log line that says its fixed phrases are rendered (pipeline.call.VoiceRuntime)
PRERENDERED = ("rendered ahead of the calls", "cannot render")


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


# ====================================================================================== the bookings
def snapshot(store_url: str) -> dict[str, dict[str, Any]]:
    """The active reservations by id, as ``voicebot reservations --json`` lists them."""
    from pipeline.store import ReservationStore

    with ReservationStore(store_url) as store:
        return {r.id: r.to_json() for r in store.all()}


def _same_name(wanted: str, got: str, language: str) -> bool:
    strip = str.maketrans("", "", " 　様")
    return spoken_units(wanted.translate(strip), language) == spoken_units((got or "").translate(strip), language)


def field_errors(wanted: dict[str, Any], got: dict[str, Any], language: str) -> list[str]:
    """What of ``got`` is not what was ``wanted``, one phrase per item."""
    out = []
    for key in ("date", "time", "party_size", "phone"):
        if str(wanted.get(key)) != str(got.get(key)):
            out.append(f"{key} {got.get(key)} (wanted {wanted.get(key)})")
    if not _same_name(wanted["name"], got.get("name") or "", language):
        out.append(f"name {got.get('name')!r} (wanted {wanted['name']!r})")
    note, kept = wanted.get("note"), got.get("note")
    if not note and kept:
        out.append(f"note {kept!r} (wanted none)")
    elif note and (not kept or (error_count(note, kept, language).rate or 0) > 0.5):
        out.append(f"note {kept!r} (wanted {note!r})")
    return out


@dataclass
class Verdict:
    right: bool
    why: str = ""
    booking_id: str | None = None  # the booking the call made, changed or cancelled


def judge(wants: str, expected: dict[str, Any] | None, target: str | None, before: dict[str, dict[str, Any]],
          after: dict[str, dict[str, Any]], language: str) -> Verdict:
    """Whether the database went from ``before`` to ``after`` exactly as the caller wanted."""
    added = [after[i] for i in after if i not in before]
    removed = [i for i in before if i not in after]
    changed = [i for i in before if i in after and before[i] != after[i]]
    if wants == "book":
        if removed or changed:
            return Verdict(False, f"also removed {removed} / changed {changed}")
        if not added:
            return Verdict(False, "no booking made")
        if len(added) > 1:
            return Verdict(False, f"{len(added)} bookings made", added[0]["id"])
        errors = field_errors(expected or {}, added[0], language)
        return Verdict(not errors, "; ".join(errors), added[0]["id"])
    if wants == "nothing":
        touched = [*(a["id"] for a in added), *removed, *changed]
        return Verdict(not touched, f"touched {touched}" if touched else "")
    if target is None:
        return Verdict(False, "no booking to act on")
    others = [i for i in [*removed, *changed] if i != target] + [a["id"] for a in added]
    if others:
        return Verdict(False, f"touched other bookings {others}", target)
    if wants == "cancel":
        return Verdict(target in removed, "" if target in removed else "not cancelled", target)
    if target in removed:
        return Verdict(False, "cancelled instead of changed", target)
    if target not in changed:
        return Verdict(False, "not changed", target)
    errors = field_errors(expected or {}, after[target], language)
    return Verdict(not errors, "; ".join(errors), target)


@dataclass
class Plan:
    """One persona's call: what it wants and the booking it acts on."""

    persona: Persona
    caller: Caller
    expected: dict[str, Any] | None  # the booking that should stand after the call (cancel: the one to go)
    target: str | None = None  # the id of the booking a change or cancel acts on
    seeded: bool = False


class Bookings:
    """The run's memory of who booked what, so a later call can change or cancel it."""

    def __init__(self, pset: PersonaSet, store_url: str, today: dt.date, tables: int):
        self.pset, self.store_url, self.today, self.tables = pset, store_url, today, tables
        self.made: dict[str, str] = {}  # persona id -> booking id

    def intended(self, p: Persona) -> dict[str, Any]:
        assert p.booking is not None
        return intended_booking(p.booking, self.today)

    def plan(self, p: Persona) -> Plan:
        cues, defaults = self.pset.cues[p.language], self.pset.defaults[p.language]
        if p.wants == "book":
            expected = self.intended(p)
            return Plan(p, Caller(p, cues, defaults, expected, self.today), expected)
        if p.wants == "nothing":
            return Plan(p, Caller(p, cues, defaults, None, self.today), None)
        ref = self.pset.by_id(p.of or "")
        wanted = self.intended(ref)
        if p.wants == "change" and p.changes is not None:
            wanted = apply_changes(wanted, p.changes, self.today)
        plan = Plan(p, Caller(p, cues, defaults, wanted, self.today), wanted)
        current = snapshot(self.store_url)
        plan.target = self.made.get(ref.id)
        if plan.target not in current:
            # the earlier call did not leave its booking (or did not run): put it there, so that this
            # call is judged on its own
            plan.target, plan.seeded = self._seed(ref), True
        row = current.get(plan.target) or snapshot(self.store_url)[plan.target]
        # judged against the booking as it stands, whatever the earlier call made of it
        plan.expected = row
        if p.wants == "change" and p.changes is not None:
            when = {k: row[k] for k in ("date", "time", "party_size")}
            plan.expected = {**row, **apply_changes(when, p.changes, self.today)}
        return plan

    def _seed(self, ref: Persona) -> str:
        from pipeline.store import ReservationStore

        b = self.intended(ref)
        with ReservationStore(self.store_url) as store:
            row = store.book(date=dt.date.fromisoformat(b["date"]), time=dt.time.fromisoformat(b["time"]),
                             party_size=b["party_size"], name=b["name"], phone=b["phone"], note=b["note"],
                             capacity=self.tables, idempotency_key=f"eval-seed-{ref.id}-{secrets.token_hex(4)}",
                             call_id=f"eval-seed-{ref.id}")
        self.made[ref.id] = row.id
        return row.id

    def record(self, p: Persona, verdict: Verdict) -> None:
        if p.wants == "book" and verdict.booking_id:
            self.made[p.id] = verdict.booking_id


# ====================================================================================== results
@dataclass
class Backchannel:
    start: float
    end: float
    cleared: bool = False


@dataclass
class LineResult:
    kind: str
    text: str
    start: float
    voice_end: float
    end: float
    first_audio: float | None = None  # the bot's first audio after the line began
    cut_off: bool = False
    gap_s: float | None = None
    over_2s: bool = False
    heard: str = ""  # what whisper heard (the call log's transcripts)
    reply: str = ""  # what the bot said back (what of it the caller heard, after a barge-in)
    turns_logged: int = 0
    cleared: bool = False  # the bot stopped its reply (Twilio clear) during this line
    stalls: int = 0  # times the bot's audio ran dry for over STALL_S and then went on
    backchannel: Backchannel | None = None
    stt: ErrorCount = field(default_factory=ErrorCount)
    bot_audio: np.ndarray | None = None  # 8 kHz, what arrived until the next line
    pronunciation: ErrorCount | None = None
    bot_heard: str | None = None

    def to_json(self, t0: float) -> dict[str, Any]:
        def at(t: float | None) -> float | None:
            return None if t is None else round(t - t0, 3)

        return {"kind": self.kind, "said": self.text, "heard": self.heard, "reply": self.reply,
                "at_s": at(self.start), "voice_end_s": at(self.voice_end), "first_audio_s": at(self.first_audio),
                "gap_ms": None if self.gap_s is None else round(self.gap_s * 1000),
                "cut_off": self.cut_off, "over_2s": self.over_2s, "stalls": self.stalls,
                "turns_logged": self.turns_logged,
                "cleared": self.cleared, "stt_error": self.stt.rate,
                "backchannel": None if self.backchannel is None else {"at_s": at(self.backchannel.start),
                                                                      "cleared": self.backchannel.cleared},
                "bot_heard": self.bot_heard,
                "bot_error": None if self.pronunciation is None else self.pronunciation.rate}


@dataclass
class CallResult:
    persona: Persona
    sid: str = ""
    lines: list[LineResult] = field(default_factory=list)
    t0: float = 0.0
    duration_s: float = 0.0
    greeting_first_audio: float | None = None
    greeting: str = ""
    greeting_audio: np.ndarray | None = None
    greeting_pronunciation: ErrorCount | None = None
    greeting_backchannel: Backchannel | None = None
    ended_by: str = ""  # bot, caller, limit, error
    verdict: Verdict = field(default_factory=lambda: Verdict(False, "not run"))
    min_turns: int = 0
    seeded: bool = False
    error: str | None = None

    @property
    def backchannels(self) -> list[Backchannel]:
        out = [ln.backchannel for ln in self.lines if ln.backchannel is not None]
        return [self.greeting_backchannel, *out] if self.greeting_backchannel else out

    def summary(self) -> dict[str, Any]:
        gaps = [ln.gap_s for ln in self.lines if ln.gap_s is not None]
        stt = sum((ln.stt for ln in self.lines), ErrorCount())
        bot = ErrorCount()
        for count in [self.greeting_pronunciation, *(ln.pronunciation for ln in self.lines)]:
            if count is not None:
                bot.add(count)
        return {
            "id": self.persona.id, "language": self.persona.language, "wants": self.persona.wants,
            "booked_right": self.verdict.right, "why": self.verdict.why, "booking_id": self.verdict.booking_id,
            "seeded": self.seeded, "turns": len(self.lines), "min_turns": self.min_turns,
            "gap_p50_ms": _ms(_pct(gaps, 0.5)), "gap_p90_ms": _ms(_pct(gaps, 0.9)),
            "gaps_ms": [_ms(g) for g in gaps],
            "cut_offs": sum(ln.cut_off for ln in self.lines),
            "false_barge_ins": sum(b.cleared for b in self.backchannels),
            "backchannels": len(self.backchannels),
            "silences_over_2s": sum(ln.over_2s for ln in self.lines),
            "stalls": sum(ln.stalls for ln in self.lines),
            "stt_error": stt.rate, "stt_units": stt.total, "stt_edits": stt.edits,
            "bot_error": bot.rate, "bot_units": bot.total, "bot_edits": bot.edits,
            "ended_by": self.ended_by, "duration_s": round(self.duration_s, 1), "error": self.error,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "greeting": self.greeting,
                "lines": [ln.to_json(self.t0) for ln in self.lines]}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


# ====================================================================================== the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``voicebot serve`` in a subprocess on 127.0.0.1, its output in ``workdir/server.log``."""

    def __init__(self, opts: EvalOptions, workdir: Path):
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.log_path = workdir / "server.log"
        self.store_url = f"sqlite:///{workdir / 'reservations.db'}"
        self.call_log = workdir / "calls.jsonl"
        command = [sys.executable, "-m", "pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--no-download", "--now", opts.now, *(["--config", opts.config] if opts.config else [])]
        env = {**os.environ,
               "VOICEBOT__STORE__URL": self.store_url,
               "VOICEBOT__LOGGING__CALL_LOG": str(self.call_log),
               "VOICEBOT__LOGGING__CALL_LOG_MASK_PII": "false",  # the transcripts are what is scored
               "VOICEBOT__LOGGING__CALL_LOG_RETENTION_DAYS": "null",
               "VOICEBOT__LOGGING__LEVEL": "INFO",
               # Twilio's checks on, against a token only this run knows
               "VOICEBOT__TWILIO__VALIDATE": "true", "VOICEBOT__TWILIO__PUBLIC_URL": "null",
               "VOICEBOT__TWILIO__TRUST_PROXY": "false", "TWILIO_AUTH_TOKEN": self.token,
               "HF_HUB_OFFLINE": "1"}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _last_error(self) -> str:
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or ["(no output)"])[-1][:400]

    def wait_ready(self, timeout_s: float = SERVER_START_S, prerender: bool = True) -> tuple[float, bool]:
        """Until ``/healthz`` answers and (``prerender``) the fixed phrases are rendered: the seconds
        it took, and whether the phrases were done by then."""
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise EvalError(f"voicebot serve exited ({self.proc.returncode}): {self._last_error()} "
                                f"(log: {self.log_path})")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise EvalError(f"voicebot serve did not answer within {timeout_s:.0f} s (log: {self.log_path})")
            time.sleep(0.25)
        # The phrases rendered in the background at start-up would take the CPU from the first calls.
        done = not prerender
        deadline = time.monotonic() + PRERENDER_WAIT_S
        while not done and time.monotonic() < deadline and self.proc.poll() is None:
            done = any(mark in self.log_text() for mark in PRERENDERED)
            time.sleep(0.5)
        if not done:
            log.warning("the server was still rendering its fixed phrases after %.0f s: calling anyway",
                        PRERENDER_WAIT_S)
        return time.monotonic() - start, done

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown; the runtime logs call ends
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class CallLog:
    """The server's call log (JSONL), read as it is appended."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""
        self.records: list[dict[str, Any]] = []

    def poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self._offset:  # rewritten (pruned): read it again
            self._offset, self._partial, self.records = 0, b"", []
        if size == self._offset:
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict):
                    self.records.append(record)

    def turns(self, call_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "turn" and r.get("call_id") == call_id]

    def call_end(self, call_id: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("event") == "call_end" and r.get("call_id") == call_id), None)


# ====================================================================================== the caller's line
@dataclass
class Rendered:
    pcm: np.ndarray  # 8 kHz int16, at the talking level
    first_voiced: int  # frame indices
    last_voiced: int


@dataclass
class Spoken:
    start: float
    voice_start: float
    voice_end: float
    end: float


class Voices:
    """Each persona's lines rendered once, at 8 kHz and the talking level."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, str], Rendered] = {}

    def render(self, persona: Persona, line: Utterance) -> Rendered:
        from pipeline.audio import PHONE_RATE
        from pipeline.sim.phone import FRAME_SAMPLES, at_level, to_phone_rate

        voice = persona.voice.voice(persona.language)
        key = (voice, line.raw)
        if key in self._cache:
            return self._cache[key]
        parts = []
        for part in line.parts:
            if isinstance(part, int):
                parts.append(np.zeros(part * PHONE_RATE // 1000, np.int16))
            else:
                parts.append(to_phone_rate(*voice.render(part)))
        pcm = at_level(np.concatenate(parts))
        window = PHONE_RATE // 100
        n = pcm.size // window
        rms = np.sqrt(np.mean((pcm[: n * window].astype(np.float64) / 32768.0).reshape(n, window) ** 2, axis=1))
        voiced = np.flatnonzero(rms > max(rms.max(), 1e-9) * 10 ** (-35 / 20))
        first = int(voiced[0]) * window // FRAME_SAMPLES if voiced.size else 0
        last = int(voiced[-1] + 1) * window // FRAME_SAMPLES if voiced.size else 0
        rendered = Rendered(pcm, first, min(last, max(0, -(-pcm.size // FRAME_SAMPLES) - 1)))
        self._cache[key] = rendered
        return rendered


class CallerLine:
    """The caller's side of the line: a 20 ms frame every 20 ms for the whole call, speech when
    there is a line to say, else silence (with the line's noise, if any)."""

    def __init__(self, tw: Any, noise: Any = None):
        self.tw, self.noise = tw, noise
        self._queue: asyncio.Queue[tuple[Rendered, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        from pipeline.sim.phone import FRAME_S, FRAME_SAMPLES, frames

        silence = np.zeros(FRAME_SAMPLES, np.int16)
        job: list[np.ndarray] | None = None
        current: tuple[Rendered, asyncio.Future] | None = None
        stamps: dict[str, float] = {}
        i = 0
        t_next = time.monotonic()
        try:
            while not self.tw.closed:
                if job is None and not self._queue.empty():
                    current = self._queue.get_nowait()
                    job, i, stamps = frames(current[0].pcm), 0, {}
                frame = job[i] if job is not None else silence
                if self.noise is not None:
                    frame = self.noise.add(frame)
                ok = await self.tw.media(frame)
                now = time.monotonic()
                if job is not None and current is not None:
                    rendered, done = current
                    if i == 0:
                        stamps["start"] = now
                    if i == rendered.first_voiced:
                        stamps["voice_start"] = now
                    if i == rendered.last_voiced:
                        stamps["voice_end"] = now
                    i += 1
                    if i >= len(job):
                        stamps.setdefault("voice_start", stamps["start"])
                        stamps.setdefault("voice_end", now)
                        if not done.done():
                            done.set_result(Spoken(stamps["start"], stamps["voice_start"], stamps["voice_end"], now))
                        job = current = None
                if not ok:
                    break
                t_next += FRAME_S
                delay = t_next - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.2:
                    t_next = time.monotonic()  # fell behind (a busy machine): no burst to catch up
        finally:
            pending = [current] if current is not None else []
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
            for _, fut in pending:
                if not fut.done():
                    fut.set_result(None)

    async def say(self, rendered: Rendered) -> Spoken | None:
        """Speak the line (after any before it); when it has been sent, its times; None if the line closed."""
        if self._task is None or self._task.done():
            return None
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((rendered, fut))
        return await fut

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


# ====================================================================================== one phone call
class PhoneEval:
    """The calls over the real websocket to a running server."""

    def __init__(self, opts: EvalOptions, server: ServeProcess):
        self.opts, self.server = opts, server
        self.log = CallLog(server.call_log)
        self.voices = Voices()

    async def _render(self, persona: Persona, said: Said) -> Rendered:
        return await asyncio.to_thread(self.voices.render, persona, said.line)

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


def stalls(received: list[tuple[float, dict[str, Any]]], since: float, until: float) -> int:
    """How often the bot's audio, played in real time as it arrived, ran dry for over
    :data:`STALL_S` between ``since`` and ``until`` and then went on."""
    from pipeline.audio import PHONE_RATE
    from pipeline.sim.phone import decode_payload

    count, playing_until = 0, None
    for t, m in received:
        if not since <= t < until:
            continue
        if m.get("event") == "clear":
            playing_until = t
        elif m.get("event") == "media":
            seconds = len(decode_payload(m["media"]["payload"])) / PHONE_RATE
            if playing_until is not None and t > playing_until + STALL_S:
                count += 1
            playing_until = max(playing_until or t, t) + seconds
    return count


# ====================================================================================== the bot's pronunciation
def pronunciation(results: list[CallResult], cfg: Any) -> str:
    """Whisper (the configured model, its 30 s window) on the bot's audio as the caller got it, against
    the text it said: greetings, and replies that went out whole (no barge-in, cut-off or second turn).
    Returns the model path used."""
    from pipeline.audio import PHONE_RATE
    from pipeline.models import model_resolver
    from pipeline.stt import make_stt

    stts: dict[str, Any] = {}

    def heard(audio: np.ndarray, language: str) -> str:
        if language not in stts:
            stts[language] = make_stt(cfg.stt.model_copy(update={"language": language, "window_s": None}),
                                      model_resolver(cfg))
        return stts[language].transcribe(audio, PHONE_RATE).text

    for r in results:
        lang = r.persona.language
        if r.greeting and r.greeting_audio is not None and r.greeting_audio.size > PHONE_RATE // 4 and not any(
                b.cleared for b in ([r.greeting_backchannel] if r.greeting_backchannel else [])):
            text = heard(r.greeting_audio, lang)
            r.greeting_pronunciation = error_count(r.greeting, text, lang)
        for ln in r.lines:
            whole = ln.turns_logged == 1 and not ln.cut_off and not ln.cleared and ln.reply
            if whole and ln.bot_audio is not None and ln.bot_audio.size > PHONE_RATE // 4:
                ln.bot_heard = heard(ln.bot_audio, lang)
                ln.pronunciation = error_count(ln.reply, ln.bot_heard, lang)
    return str(model_resolver(cfg)(cfg.stt.model))


# ====================================================================================== text only
def run_text(opts: EvalOptions, pset: PersonaSet, personas: list[Persona], cfg: Any, workdir: Path) -> list[CallResult]:
    """The callers typed into the agent (``voicebot chat``'s code path): the dialog without audio."""
    from pipeline.agents import make_clock, new_agent, open_services, parse_now

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
    from pipeline.agents import parse_now
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
    from pipeline.agents import resolve_kind

    return resolve_kind(cfg, None)


def _run_phone(opts: EvalOptions, pset: PersonaSet, personas: list[Persona], cfg: Any, workdir: Path,
               today: dt.date) -> tuple[list[CallResult], dict[str, Any]]:
    server = ServeProcess(opts, workdir)
    results: list[CallResult] = []
    ready_s, prerendered = 0.0, False
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
                if server.proc.poll() is not None:
                    raise EvalError(f"voicebot serve died during call {p.id}: {server._last_error()}") from None
            result.verdict = judge(p.wants, plan.expected, plan.target, before, snapshot(server.store_url),
                                   p.language)
            bookings.record(p, result.verdict)
            results.append(result)
    finally:
        server.stop()
    model = pronunciation(results, cfg)
    settings = {"mode": "phone", "stt_model": model, "tts_model": str(cfg.path(cfg.tts.model)),
                "server_log": str(server.log_path) if opts.workdir else None, "server_ready_s": round(ready_s, 1), "phrases_prerendered": prerendered}
    return results, settings


def build_report(results: list[CallResult], settings: dict[str, Any], elapsed: float) -> dict[str, Any]:
    calls = [r.summary() for r in results]
    gaps = [g for r in results for g in (ln.gap_s for ln in r.lines) if g is not None]
    stt = sum((ln.stt for r in results for ln in r.lines), ErrorCount())
    bot = ErrorCount()
    for r in results:
        for count in [r.greeting_pronunciation, *(ln.pronunciation for ln in r.lines)]:
            if count is not None:
                bot.add(count)
    right = sum(c["booked_right"] for c in calls)
    overall = {
        "calls": len(calls), "booked_right": right,
        "booked_right_pct": round(100 * right / len(calls), 1) if calls else None,
        "turns": sum(c["turns"] for c in calls), "min_turns": sum(c["min_turns"] for c in calls),
        "gap_p50_ms": _ms(_pct(gaps, 0.5)), "gap_p90_ms": _ms(_pct(gaps, 0.9)),
        "cut_offs": sum(c["cut_offs"] for c in calls), "false_barge_ins": sum(c["false_barge_ins"] for c in calls),
        "backchannels": sum(c["backchannels"] for c in calls),
        "silences_over_2s": sum(c["silences_over_2s"] for c in calls),
        "stalls": sum(c["stalls"] for c in calls),
        "stt_error": stt.rate, "bot_error": bot.rate,
        "unanswered_calls": sum(r.greeting_first_audio is None for r in results) if settings.get("mode") == "phone"
        else 0,
    }
    return {"overall": overall, "calls": calls, "settings": settings, "machine": _machine(),
            "elapsed_s": round(elapsed, 1), "details": [r.to_json() for r in results]}


def _machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "system": platform.platform(), "python": platform.python_version()}


# ====================================================================================== output
def _pct_cell(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}%"


def _gap_cell(p50: int | None, p90: int | None) -> str:
    return "-" if p50 is None else f"{p50}/{p90}"


def format_report(report: dict[str, Any]) -> str:
    from pipeline.cli import format_table

    unit = "CER/WER"
    rows = [["CALL", "LANG", "WANTS", "BOOKED RIGHT", "TURNS/MIN", "GAP p50/p90 ms", "CUT-OFFS", "FALSE BARGE-INS",
             "SILENCES>2s", "STALLS", f"STT {unit}", f"BOT {unit}"]]
    for c in report["calls"]:
        rows.append([c["id"], c["language"], c["wants"], "yes" if c["booked_right"] else "NO",
                     f"{c['turns']}/{c['min_turns']}", _gap_cell(c["gap_p50_ms"], c["gap_p90_ms"]),
                     str(c["cut_offs"]), f"{c['false_barge_ins']}/{c['backchannels']}", str(c["silences_over_2s"]),
                     str(c["stalls"]), _pct_cell(c["stt_error"]), _pct_cell(c["bot_error"])])
    o = report["overall"]
    rows.append(["overall", "", "", f"{o['booked_right']}/{o['calls']} ({o['booked_right_pct']}%)",
                 f"{o['turns']}/{o['min_turns']}", _gap_cell(o["gap_p50_ms"], o["gap_p90_ms"]), str(o["cut_offs"]),
                 f"{o['false_barge_ins']}/{o['backchannels']}", str(o["silences_over_2s"]), str(o["stalls"]),
                 _pct_cell(o["stt_error"]), _pct_cell(o["bot_error"])])
    lines = format_table(rows)
    lines.insert(-1, "-" * max(len(x) for x in lines))
    wrong = [c for c in report["calls"] if not c["booked_right"] or c["error"]]
    for c in wrong:
        lines.append(f"{c['id']}: {c['error'] or c['why'] or 'not booked right'} (ended by {c['ended_by']}"
                     f"{', its booking seeded' if c['seeded'] else ''})")
    s = report["settings"]
    lines.append(f"mode {s['mode']}, agent {s['agent']}, clock {s['now']}, noise "
                 f"{'none' if s['noise_db'] is None else str(s['noise_db']) + ' dB SNR'}"
                 + (f", whisper {s['stt_model']}, kokoro {s['tts_model']}" if s["mode"] == "phone" else "")
                 + f"; {report['machine']['cores']} cores, {report['elapsed_s']} s")
    return "\n".join(lines)


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
