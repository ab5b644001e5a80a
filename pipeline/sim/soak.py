"""The fault soak: many simulated phone calls over the real websocket, with faults injected at random.

One process: real uvicorn on 127.0.0.1 serving ``build_app(runtime, validate_twilio=False)``, whose
runtime runs the test models (real faster-whisper, kokoro-onnx and silero code) with the LLM agent
pointed at a :class:`~pipeline.sim.openai_server.ScriptedOpenAI` on loopback. Callers are Twilio
media-stream clients (:class:`~pipeline.sim.twilio_client.TwilioCaller`) speaking espeak-ng Japanese
in 20 ms mu-law frames at real time, several at once, all wanting the same few tables. At random (seeded):

- the model answers 500 or 429, hangs past the silence budget, or streams malformed data;
- speech recognition raises (after running the real Whisper, so its code path is exercised);
- speech synthesis raises;
- a caller hangs up in the middle of a reply, or just after speaking while the turn is still being
  worked out (a TCP abort or a close frame, never ``stop``).

Afterwards it counts what must never happen: crashes (server ERROR records or tracebacks not caused
by an injected fault), silent calls (a caller line that got no audio back within ``silent_s``; a
spoken apology is an answer), lost reservations (announced or held in a call's state but not in the
database), duplicate reservations (two rows for one call) and slots over capacity (more rows than
tables, or a slot counter that disagrees with the rows).

The random test Whisper hears junk, so the recogniser reports the line the caller is speaking (as
``tests/test_handler.py``'s ``ScriptedEars``), looked up by the call's streamSid. The simulated caller
answers what the bot is waiting for, read from the call's dialog state in this process, as a person
who understood the question would: the point is the plumbing under faults, not the dialog.

With ``--workers 2`` (``SoakOptions.workers``) it runs two workers, each its own runtime, store
connections and uvicorn server, on one database (``--store-url``, e.g. PostgreSQL), with Twilio's
checks on: each call's webhook is signed by one worker and its media stream served by the other.
They share this process (the callers read the dialog state and the faults are injected here);
``tests/test_workers.py`` runs separate ``voicebot serve`` processes.

``python -m pipeline.sim.soak --calls 60 --seed 3 [--concurrency 8] [--workers 2] [--json]`` runs it (it needs
espeak-ng, and the dev dependency ``onnx`` to build the test models); the exit status is 1 when any
of the five counters is not zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import random
import re
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from pipeline.sim.openai_server import ScriptedOpenAI, Step, booking_policy, error, hang, text, tool
from pipeline.sim.twilio_client import TwilioCaller, place_call
from pipeline.store import FullyBooked, ReservationStore

log = logging.getLogger(__name__)

#: the restaurant's clock during the soak: bookings are for late December, open weekdays
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
RESERVATION_ID = re.compile(r"R-[A-Z0-9]{6}")
LLM_FAULTS = ("llm_500", "llm_429", "llm_hang", "llm_malformed")
FAULT_KINDS = (*LLM_FAULTS, "stt", "tts", "drop")


class InjectedFault(RuntimeError):
    """Raised on purpose by the soak: errors logged because of it are expected, not crashes."""


__all__ = ["FAILURE_COUNTERS", "FAULT_KINDS", "InjectedFault", "SoakOptions", "audit", "failed", "format_report",
           "main", "run_soak", "watching"]


# ====================================================================================== options
@dataclass
class SoakOptions:
    calls: int = 30
    concurrency: int = 8
    seed: int = 1
    #: per model request, per transcription, per synthesized sentence, per call
    llm_fault_rate: float = 0.15
    stt_fault_rate: float = 0.08
    tts_fault_rate: float = 0.05
    drop_rate: float = 0.25
    #: tables per slot: small, so that calls race for the last ones
    tables_per_slot: int = 2
    #: a caller line with no audio back within this long went unanswered
    silent_s: float = 6.0
    #: a model request that hangs stalls this long: well past the silence budget
    hang_s: float = 5.0
    #: caller lines per call at most (a stuck dialog hangs up rather than talk forever)
    max_lines: int = 12
    #: longest one reply may keep playing, and one whole call may last
    reply_limit_s: float = 40.0
    call_limit_s: float = 240.0
    #: ``voicebot serve`` workers on one database (each its own runtime, store connections and server):
    #: from 2, Twilio's checks are on and each call's webhook is signed by one worker and its media
    #: stream served by the next, so tokens, the line cap and the bookings cross workers
    workers: int = 1
    #: the database (SQLAlchemy URL); None: a SQLite file in the work folder
    store_url: str | None = None


# ====================================================================================== the caller's lines
@dataclass(frozen=True)
class Line:
    spoken: str  # what espeak-ng says, in kana (read reliably), kept short: only its sound reaches the server
    heard: str  # what the recogniser reports the caller said
    slots: tuple[tuple[str, str], ...] = ()  # what the scripted model records from it

    def slot_dict(self) -> dict[str, str]:
        return dict(self.slots)


_DATES = {24: ("じゅうにがつにじゅうよっか", "12月24日"), 25: ("じゅうにがつにじゅうごにち", "12月25日")}
_TIMES = {19: ("じゅうくじ", "19時"), 20: ("にじゅうじ", "20時"), 21: ("にじゅういちじ", "21時")}
_PARTY = {2: ("ふたり", "2名"), 3: ("さんにん", "3名")}
_NAMES = (("たなかです", "田中です"), ("さとうです", "佐藤です"), ("すずきです", "鈴木です"),
          ("たかはしです", "高橋です"), ("いとうです", "伊藤です"), ("わたなべです", "渡辺です"))
_PHONES = ("09012345678", "08023456789", "07034567890", "09045678901")
_KANA_DIGITS = dict(zip("0123456789", ("ゼロ", "イチ", "ニー", "サン", "ヨン", "ゴー", "ロク", "ナナ", "ハチ", "キュー"),
                        strict=True))
YES = Line("はい、おねがいします", "はい、お願いします")
BYE = Line("いじょうです", "以上です、ありがとうございました")
GIVE_UP = Line("けっこうです", "やっぱり結構です、失礼します")
NO_NOTE = Line("とくにありません", "特にありません", (("note", "特にありません"),))


def booking_line(day: int, hour: int, party: int) -> Line:
    (sd, hd), (st, ht), (sp, hp) = _DATES[day], _TIMES[hour], _PARTY[party]
    return Line(f"{sd}の{st}に{sp}で", f"{hd}の{ht}に{hp}でお願いします",
                (("date", hd), ("time", ht), ("party_size", hp)))


def time_line(hour: int) -> Line:
    st, ht = _TIMES[hour]
    return Line(f"{st}で", f"では{ht}でお願いします", (("time", ht),))


def name_line(i: int) -> Line:
    spoken, heard = _NAMES[i % len(_NAMES)]
    return Line(spoken, heard, (("name", heard),))


def phone_line(i: int) -> Line:
    """The number read digit by digit, in the usual 3-4-4 groups."""
    digits = _PHONES[i % len(_PHONES)]
    groups = (digits[:3], digits[3:7], digits[7:])
    spoken = " ".join("".join(_KANA_DIGITS[d] for d in g) for g in groups)
    heard = "-".join(groups)
    return Line(spoken, heard, (("phone", heard),))


def all_lines() -> list[Line]:
    lines = [YES, BYE, GIVE_UP, NO_NOTE]
    lines += [booking_line(d, h, p) for d in _DATES for h in _TIMES for p in _PARTY]
    lines += [time_line(h) for h in _TIMES]
    lines += [name_line(i) for i in range(len(_NAMES))] + [phone_line(i) for i in range(len(_PHONES))]
    return lines


@dataclass
class CallPlan:
    """One caller: what they want, and whether (and when) they hang up mid-reply."""

    index: int
    sid: str
    day: int
    hours: list[int]
    party: int
    name: int
    phone: int
    #: hang up during the reply to this caller line (1-based), or to the "yes" with "confirm"
    drop_at: int | str | None = None
    drop_mode: str = "abort"
    drop_after_s: float = 0.3
    #: hang up before the answer starts (the turn still running on the server), not during it
    drop_early: bool = False
    _hour: int = 0
    _time_said: bool = False
    _said: Counter = field(default_factory=Counter)

    @classmethod
    def make(cls, index: int, rng: random.Random, drop_rate: float) -> CallPlan:
        # Most callers want the same evening: with two tables a slot, they race for them.
        day = 24 if rng.random() < 0.7 else 25
        hours = [19, 20, 21] if rng.random() < 0.75 else rng.sample([19, 20, 21], 3)
        plan = cls(index, f"MZsoak{index:04d}{rng.getrandbits(40):010x}", day, hours, rng.choice([2, 3]),
                   rng.randrange(len(_NAMES)), rng.randrange(len(_PHONES)))
        if rng.random() < drop_rate:
            # a third of the drops land on the booking itself: the reservation must survive the hang-up
            plan.drop_at = "confirm" if rng.random() < 0.3 else rng.randint(1, 4)
            plan.drop_mode = rng.choice(["abort", "close"])
            plan.drop_after_s = rng.uniform(0.0, 1.2)
            plan.drop_early = rng.random() < 0.25
        return plan

    def next_line(self, state: Any) -> Line | None:
        """What a caller who understood the bot says next, given the call's dialog state."""
        if state is None or state.ended:
            return None
        if state.reservation is not None:
            line = BYE
        elif state.awaiting_confirmation:
            line = YES
        else:
            missing = state.slots.missing()
            first = missing[0] if missing else None
            if first in ("date", "party_size"):
                line = booking_line(self.day, self.hours[self._hour], self.party)
                self._time_said = True
            elif first == "time":
                if self._time_said:  # the time was refused (a full slot): try the next one
                    self._hour += 1
                if self._hour >= len(self.hours):
                    line = GIVE_UP
                else:
                    line = time_line(self.hours[self._hour])
                    self._time_said = True
            elif first == "name":
                line = name_line(self.name)
            elif first == "phone":
                line = phone_line(self.phone)
            elif first == "note":
                line = NO_NOTE
            else:  # all given, not yet read back (that turn fell to a fault): the bot reads back on a yes
                line = YES
        self._said[line] += 1
        if self._said[line] > 3 and line not in (BYE, GIVE_UP):
            line = GIVE_UP  # the dialog is stuck: a real caller would give up too
        return line


# ====================================================================================== fault injection
class Faults:
    """One seeded die for every injection, and a count per kind of what was injected."""

    def __init__(self, seed: int):
        self._rng = random.Random(f"soak-faults-{seed}")
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        #: off while the runtime renders its fallback phrases at start-up
        self.armed = False

    def roll(self, kind: str, rate: float) -> bool:
        if not self.armed or rate <= 0:
            return False
        with self._lock:
            hit = self._rng.random() < rate
            if hit:
                self.counts[kind] += 1
        return hit

    def pick(self, kinds: tuple[str, ...], rate: float) -> str | None:
        if not self.armed or rate <= 0:
            return None
        with self._lock:
            if self._rng.random() >= rate:
                return None
            kind = self._rng.choice(kinds)
            self.counts[kind] += 1
        return kind

    def note(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1


def _current_call_id() -> str | None:
    from fastrtc import get_current_context

    try:
        return get_current_context().webrtc_id
    except RuntimeError:
        return None


class SoakEars:
    """The real STT runs on every request; then it fails at random, or reports the caller's line."""

    def __init__(self, stt: Any, faults: Faults, rate: float):
        self.stt, self.faults, self.rate = stt, faults, rate
        #: streamSid -> the line that caller is speaking now (set by the caller before it speaks)
        self.lines: dict[str, str] = {}
        self.unattributed = 0

    def transcribe(self, audio: np.ndarray, sample_rate: int):
        result = self.stt.transcribe(audio, sample_rate)
        if self.faults.roll("stt", self.rate):
            raise InjectedFault("injected STT fault: the decoder crashed")
        line = self.lines.get(_current_call_id() or "")
        if line is None:
            # without FastRTC's context the caller is unknown: the junk transcript goes through as is
            self.unattributed += 1
            return result
        return dataclasses.replace(result, text=line)

    def warmup(self) -> None:
        self.stt.warmup()


class SoakTTS:
    """The real TTS, failing at random."""

    def __init__(self, tts: Any, faults: Faults, rate: float):
        self.tts, self.faults, self.rate = tts, faults, rate
        self.sample_rate = tts.sample_rate

    def synthesize(self, text: str, language: str) -> np.ndarray:
        if self.faults.roll("tts", self.rate):
            raise InjectedFault("injected TTS fault: the session is gone")
        return self.tts.synthesize(text, language)

    def stream(self, text: str, language: str) -> Iterator[tuple[int, np.ndarray]]:
        yield self.sample_rate, self.synthesize(text, language)

    def warmup(self) -> None:
        self.tts.warmup()


def _last_tool(messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The latest tool message's tool name and parsed result."""
    last = messages[-1]
    name = ""
    for m in reversed(messages):
        for c in m.get("tool_calls") or []:
            if c.get("id") == last.get("tool_call_id"):
                name = c.get("function", {}).get("name", "")
        if name:
            break
    try:
        result = json.loads(last.get("content") or "{}")
    except ValueError:
        result = {}
    return name, result if isinstance(result, dict) else {}


class SoakModel:
    """A responder in the manner of :func:`booking_policy` that knows which slots each scripted line
    gives, books on a yes, recovers from refused bookings; and fails at random."""

    _ASK = {"date": "ご来店のご希望日をお聞かせください。", "time": "ご希望のお時間をお知らせください。",
            "party_size": "何名様でいらっしゃいますか。", "name": "ご予約のお名前をお伺いできますか。",
            "phone": "ご連絡先のお電話番号をお願いいたします。", "note": "何かご要望はございますか。"}

    def __init__(self, lines: list[Line], faults: Faults, rate: float, hang_s: float):
        self.slots = {line.heard: line.slot_dict() for line in lines if line.slots}
        self.policy = booking_policy("ja")
        self.faults, self.rate, self.hang_s = faults, rate, hang_s

    def __call__(self, body: dict[str, Any]) -> Step:
        step = self.reply(body)
        kind = self.faults.pick(LLM_FAULTS, self.rate)
        if kind == "llm_500":
            return error(500)
        if kind == "llm_429":
            return error(429)
        if kind == "llm_hang":
            return hang(self.hang_s)
        if kind == "llm_malformed":
            return dataclasses.replace(step, malformed=True)  # its text, if any, then garbage
        return step

    def _ask(self, missing: list[str] | None) -> Step:
        return text(self._ASK.get((missing or ["date"])[0], self._ASK["date"]))

    def reply(self, body: dict[str, Any]) -> Step:
        messages: list[dict[str, Any]] = body.get("messages") or []
        last = messages[-1] if messages else {}
        if last.get("role") == "tool":
            name, result = _last_tool(messages)
            if name == "confirm_booking" and not result.get("ok"):
                if result.get("code") in ("not_read_back", "no_explicit_yes"):
                    return tool("read_back_reservation")
                return text(result.get("message") or self._ASK["time"])
            if name == "read_back_reservation" and not result.get("ok"):
                return self._ask(result.get("missing"))
            return self.policy(body)
        said = str(last.get("content") or "")
        if said == YES.heard:
            return tool("confirm_booking")
        if said in (BYE.heard, GIVE_UP.heard):
            return tool("end_call", {"reason": "caller done"}, say="お電話ありがとうございました。失礼いたします。")
        if said in self.slots:
            return tool("update_reservation", self.slots[said])
        return self.policy(body)


# ====================================================================================== watching the server
@dataclass
class Incident:
    kind: str  # "error record", "traceback", "thread exception", "server hung up", ...
    detail: str
    call: str | None = None


def _injected(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, InjectedFault):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class _Records(logging.Handler):
    """Every WARNING and above, from the app, FastRTC, uvicorn and the libraries, as it happens."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[Incident] = []
        self.expected_errors = 0
        self.warnings: Counter[str] = Counter()
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        with self._guard:
            if record.levelno < logging.ERROR:
                # the template, not the message: one line per kind of warning in the report
                self.warnings[f"{record.name}: {str(record.msg)[:90]}"] += 1
                return
            exc = record.exc_info[1] if record.exc_info else None
            if _injected(exc):
                self.expected_errors += 1
                return
            detail = f"{record.name} {record.levelname}: {message[:300]}"
            if exc is not None:
                detail += f" [{type(exc).__name__}: {str(exc)[:200]}]"
            self.errors.append(Incident("error record", detail))


class _Tee(io.TextIOBase):
    """sys.stderr that still writes through, and keeps what was written: FastRTC prints some
    tracebacks with ``traceback.print_exc()`` rather than logging them."""

    LIMIT = 4_000_000

    def __init__(self, through: Any):
        self.through = through
        self.parts: list[str] = []
        self.size = 0
        self._guard = threading.Lock()

    def write(self, s: str) -> int:
        with self._guard:
            if self.size < self.LIMIT:
                self.parts.append(s)
                self.size += len(s)
        try:
            return self.through.write(s)
        except Exception:
            return len(s)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.through.flush()

    def tracebacks(self) -> list[str]:
        out = "".join(self.parts)
        blocks = out.split("Traceback (most recent call last):")[1:]
        return [b.strip()[-400:] for b in blocks if "InjectedFault" not in b]


@contextlib.contextmanager
def watching() -> Iterator[tuple[_Records, _Tee, list[Incident]]]:
    records = _Records()
    thread_errors: list[Incident] = []
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]  # uvicorn's do not reach the root
    for lg in loggers:
        lg.addHandler(records)
    root_level = logging.getLogger().level
    if root_level > logging.WARNING or root_level == logging.NOTSET:
        logging.getLogger().setLevel(logging.WARNING)
    tee = _Tee(sys.stderr)
    old_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not _injected(args.exc_value):
            thread_errors.append(Incident("thread exception", f"{getattr(args.thread, 'name', '?')}: "
                                          f"{type(args.exc_value).__name__}: {args.exc_value}"))
        old_hook(args)

    threading.excepthook = hook
    try:
        with contextlib.redirect_stderr(tee):
            yield records, tee, thread_errors
    finally:
        threading.excepthook = old_hook
        for lg in loggers:
            lg.removeHandler(records)
        logging.getLogger().setLevel(root_level)


# ====================================================================================== the callers
@dataclass
class CallResult:
    sid: str
    lines: list[str] = field(default_factory=list)
    silent_lines: list[str] = field(default_factory=list)
    dropped: str | None = None  # how the caller hung up mid-reply
    ended_by_bot: bool = False
    server_closed: bool = False  # the server closed the line before the caller said stop
    stopped: bool = False
    incidents: list[Incident] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    timed_out: bool = False


class Soak:
    def __init__(self, opts: SoakOptions, config_path: Path, workdir: Path):
        self.opts = opts
        self.config_path = Path(config_path)
        self.workdir = Path(workdir)
        self.faults = Faults(opts.seed)
        self.results: list[CallResult] = []
        self.lines = all_lines()

    # ---------------------------------------------------------------- setup
    def _config(self, base_url: str, worker: int = 0):
        from pipeline.config import load_config

        cfg = load_config(self.config_path, environ={}).model_copy(deep=True)
        cfg.store.url = self.opts.store_url or f"sqlite:///{self.workdir / 'reservations.db'}"
        cfg.logging.call_log = str(self.workdir / ("calls.jsonl" if worker == 0 else f"calls-{worker}.jsonl"))
        cfg.agent.kind = "llm"
        cfg.llm.base_url = base_url
        cfg.restaurant.tables_per_slot = self.opts.tables_per_slot
        # Every caller gets a line: a busy message is not what this soak is about. Room to spare, as
        # the server frees a line a moment after the socket of the call before has closed.
        server = cfg.server
        if getattr(server, "max_calls", None) is not None:
            server.max_calls = max(server.max_calls, 2 * self.opts.concurrency + 2)
        return cfg

    def _runtimes(self, llm_url: str) -> list[Any]:
        """One runtime per worker; the models are loaded once and shared (each ``serve`` process
        would hold its own copy: nothing of the shared state is in them)."""
        from pipeline.speech.models import model_resolver
        from pipeline.speech.stt import make_stt
        from pipeline.speech.tts import make_tts
        from pipeline.speech.vad import make_vad

        cfg = self._config(llm_url)
        stt = make_stt(cfg.stt, model_resolver(cfg))
        tts = make_tts(cfg.tts, model_resolver(cfg))
        vad = make_vad(cfg.vad)
        for part in (stt, tts, vad):
            part.warmup()
        self.ears = SoakEars(stt, self.faults, self.opts.stt_fault_rate)
        tts = SoakTTS(tts, self.faults, self.opts.tts_fault_rate)
        self.stores = []
        return [self._runtime(self._config(llm_url, i), tts, vad) for i in range(max(1, self.opts.workers))]

    def _runtime(self, cfg, tts, vad):
        from pipeline.agents.factory import Services, make_clock
        from pipeline.dialog.faq import FAQ
        from pipeline.dialog.restaurant import Restaurant
        from pipeline.voice.runtime import VoiceRuntime

        store = CountingStore(cfg.store_url())  # a worker's own connections to the shared database
        self.stores.append(store)
        services = Services(cfg, Restaurant(cfg.restaurant), store, FAQ(cfg.restaurant.faq))
        return VoiceRuntime(cfg, stt=self.ears, tts=tts, vad=vad, services=services, agent_kind="llm",
                            clock=make_clock(NOW))

    # ---------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        from pipeline.app import build_app
        from pipeline.sim.loopback import LoopbackServer
        from pipeline.sim.voices import speech as espeak_speech

        start = time.monotonic()
        speech = {line: espeak_speech(line.spoken, "ja") for line in self.lines}  # rendered once, cached
        rng = random.Random(f"soak-calls-{self.opts.seed}")
        plans = [CallPlan.make(i, rng, self.opts.drop_rate) for i in range(self.opts.calls)]
        model = SoakModel(self.lines, self.faults, self.opts.llm_fault_rate, self.opts.hang_s)
        with watching() as (records, tee, thread_errors), ScriptedOpenAI(responder=model) as llm:
            runtimes = self._runtimes(llm.base_url)
            cfg = runtimes[0].cfg
            # Several workers check Twilio's signatures and stream tokens, as in production.
            self.twilio_token = secrets.token_hex(16) if len(runtimes) > 1 else None
            try:
                self.faults.armed = True
                with contextlib.ExitStack() as stack:
                    servers = [stack.enter_context(LoopbackServer(
                        build_app(rt, validate_twilio=self.twilio_token is not None,
                                  twilio_auth_token=self.twilio_token), name=f"soak-{i}"))
                        for i, rt in enumerate(runtimes)]
                    asyncio.run(self._calls([s.port for s in servers], plans, speech, runtimes))
                    leaked = self._wait_ended(runtimes)
                    dead = [i for i, s in enumerate(servers) if not s.thread.is_alive()]
                self.faults.armed = False
            finally:
                for rt in runtimes:
                    rt.close()
            incidents = [*records.errors, *thread_errors]
            incidents += [Incident("traceback", tb) for tb in tee.tracebacks()]
            incidents += [Incident("server", f"the uvicorn thread of worker {i} died") for i in dead]
            for r in self.results:
                incidents += r.incidents
            llm_errors = list(llm.errors)
        logs = [rt.call_log for rt in runtimes if rt.call_log is not None]
        report = self._report(cfg, logs, incidents, records, leaked, llm_errors, time.monotonic() - start)
        return report

    async def _calls(self, ports: list[int], plans: list[CallPlan], speech: dict, runtimes: list[Any]) -> None:
        gate = asyncio.Semaphore(max(1, self.opts.concurrency))

        async def one(plan: CallPlan) -> None:
            async with gate:
                result = CallResult(plan.sid)
                self.results.append(result)
                try:
                    await asyncio.wait_for(self._call(ports, plan, speech, runtimes, result),
                                           self.opts.call_limit_s)
                except TimeoutError:
                    result.timed_out = True
                    result.incidents.append(Incident("call timed out", f"still going after {self.opts.call_limit_s} s",
                                                     plan.sid))
                except Exception as e:
                    log.warning("call %s: the caller failed", plan.sid, exc_info=True)
                    result.incidents.append(Incident("caller failed", f"{type(e).__name__}: {e}", plan.sid))

        await asyncio.gather(*(one(p) for p in plans))

    async def _call(self, ports: list[int], plan: CallPlan, speech: dict, runtimes: list[Any],
                    result: CallResult) -> None:
        import websockets

        opts = self.opts
        lead = np.zeros(int(0.3 * 16000), np.int16)
        call_sid = "CA" + plan.sid[2:]
        custom = None
        port = ports[plan.index % len(ports)]
        if self.twilio_token is not None:
            # signed by one worker, streamed to the next
            answer = await asyncio.to_thread(place_call, f"http://127.0.0.1:{port}", self.twilio_token, call_sid)
            custom = answer.parameters
            port = ports[(plan.index + 1) % len(ports)]
        async with websockets.connect(f"ws://127.0.0.1:{port}/telephone/handler", open_timeout=10,
                                      close_timeout=5, max_queue=None) as ws:
            caller = TwilioCaller(ws, plan.sid, call_sid)
            t0 = time.monotonic()
            await caller.start(custom)
            if await caller.wait_answer(t0, opts.silent_s) is None:
                result.silent_lines.append("(greeting)")
                return await self._finish(caller, result)
            await caller.wait_played(opts.reply_limit_s)
            for n in range(1, opts.max_lines + 1):
                if caller.closed:
                    break
                call = next((c for rt in runtimes if (c := rt.find_call(plan.sid)) is not None), None)
                line = plan.next_line(call.agent.state if call is not None else None)
                if line is None:
                    result.ended_by_bot = True
                    break
                self.ears.lines[plan.sid] = line.heard  # before a word of it reaches the server
                result.lines.append(line.heard)
                t_line = time.monotonic()
                if not await caller.audio(np.concatenate([lead, speech[line]])):
                    break
                t_spoken = time.monotonic()
                drop_here = plan.drop_at == n or (plan.drop_at == "confirm" and line == YES)
                if drop_here and plan.drop_early:
                    # the turn has just ended on the server: STT, the model and the booking are under way
                    await caller.audio(np.zeros(int(0.5 * 16000), np.int16))
                    return await self._drop(caller, plan, result)
                answered = await caller.wait_answer(t_line, opts.silent_s)
                if answered is None:
                    if caller.closed:
                        break  # the server hung up: judged in _finish
                    result.silent_lines.append(line.heard)
                    log.warning("call %s: no answer to %r within %.1f s", plan.sid, line.heard, opts.silent_s)
                    break
                result.gaps_s.append(answered - t_spoken)
                if drop_here:
                    await asyncio.sleep(plan.drop_after_s)
                    return await self._drop(caller, plan, result)
                if not await caller.wait_played(opts.reply_limit_s):
                    result.incidents.append(Incident("endless reply", f"audio still coming after "
                                                     f"{opts.reply_limit_s} s", plan.sid))
                    break
            await self._finish(caller, result)

    async def _drop(self, caller: TwilioCaller, plan: CallPlan, result: CallResult) -> None:
        result.dropped = plan.drop_mode + (" before the answer" if plan.drop_early else " mid-reply")
        self.faults.note("drop")
        await caller.hang_up(plan.drop_mode)

    async def _finish(self, caller: TwilioCaller, result: CallResult) -> None:
        """A call that was not dropped ends with ``stop`` (unless the bot hung up first); the server
        then closes the socket."""
        if not caller.closed:
            result.stopped = await caller.stop()
        else:
            result.server_closed = True  # fine if the bot had ended the call: the call log says
        if not await caller.wait_closed(10):
            result.incidents.append(Incident("socket left open", "10 s after stop", result.sid))
            await caller.close()

    def _wait_ended(self, runtimes: list[Any], limit: float = 15.0) -> list[str]:
        deadline = time.monotonic() + limit
        while any(rt.calls for rt in runtimes) and time.monotonic() < deadline:
            time.sleep(0.1)
        return sorted(sid for rt in runtimes for sid in rt.calls)

    # ---------------------------------------------------------------- verdict
    def _report(self, cfg, call_logs: list[Path], incidents: list[Incident], records: _Records, leaked: list[str],
                llm_errors: list[str], elapsed: float) -> dict[str, Any]:
        sids = {r.sid for r in self.results}
        found = audit(cfg.store_url(), call_logs, sids, cfg.restaurant.tables_per_slot)
        ended, lost, duplicates, over = found.ended, found.lost, found.duplicates, found.over_capacity
        rows, unannounced = found.rows, found.unannounced

        for r in self.results:
            if r.server_closed and not r.dropped and not (ended.get(r.sid) or {}).get("ended_by_bot"):
                incidents.append(Incident("server hung up", f"on a caller who had said {len(r.lines)} lines "
                                          "to a bot that had not ended the call", r.sid))
            if r.server_closed and (ended.get(r.sid) or {}).get("ended_by_bot"):
                r.ended_by_bot = True
        silent = [r for r in self.results if r.silent_lines]
        faults = {k: self.faults.counts.get(k, 0) for k in FAULT_KINDS}
        gaps = sorted(g for r in self.results for g in r.gaps_s)
        report = {
            "calls": len(self.results),
            "turns": sum(len(r.lines) for r in self.results),
            "seed": self.opts.seed,
            "concurrency": self.opts.concurrency,
            "workers": max(1, self.opts.workers),
            "faults": faults,
            "crashes": len(incidents),
            "silent_calls": len(silent),
            "lost_reservations": len(lost),
            "duplicate_reservations": len(duplicates),
            "over_capacity_slots": len(over),
            "bookings": len(rows),
            "full_slot_refusals": sum(store.refused for store in self.stores),
            "dropped_calls": sum(1 for r in self.results if r.dropped),
            "completed_calls": sum(1 for r in self.results if r.ended_by_bot),
            "calls_not_ended": len(leaked),
            "calls_not_logged": len(sids - set(ended)),
            "expected_fault_errors": records.expected_errors,
            "answer_gap_s": {"median": _pct(gaps, 0.5), "p95": _pct(gaps, 0.95), "max": gaps[-1] if gaps else None},
            "elapsed_s": round(elapsed, 1),
            "details": {
                "crashes": [dataclasses.asdict(i) for i in incidents][:50],
                "silent": {r.sid: r.silent_lines for r in silent},
                "lost": lost,
                "duplicates": duplicates,
                "over_capacity": over,
                "booked_unannounced": unannounced,
                "calls_not_ended": leaked,
                "calls_without_call_end": sorted(sids - set(ended)),
                "unattributed_transcriptions": self.ears.unattributed,
                "scripted_model_errors": llm_errors,
                "warnings": dict(records.warnings.most_common(20)),
            },
        }
        return report


@dataclass
class Audit:
    """What the database and the call log say about the soak's calls."""

    rows: list[Any]  # active reservations
    ended: dict[str, dict[str, Any]]  # call id -> its call_end record
    lost: list[str]
    duplicates: list[str]
    over_capacity: list[str]
    unannounced: list[str]  # booked, but the call never said so (a caller who hung up during it)


def audit(store_url: str, call_log: Path | list[Path], sids: set[str], capacity: int) -> Audit:
    """Lost reservations (announced in a reply, or held in a call's state at its end, but not in the
    database as that call's, with the same details), duplicates (two rows for one call, or one call
    announcing two ids) and slots over capacity (more rows than tables, or a slot counter that
    disagrees with the rows)."""
    from sqlalchemy import select

    from pipeline.store import slots

    log_records = []
    for path in [call_log] if isinstance(call_log, Path) else call_log:  # one per worker
        if path.exists():
            for raw in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    log_records.append(json.loads(raw))
    announced: dict[str, set[str]] = {sid: set() for sid in sids}
    held: dict[str, dict[str, Any]] = {}
    ended: dict[str, dict[str, Any]] = {}
    for rec in log_records:
        sid = rec.get("call_id")
        if sid not in sids:
            continue
        if rec.get("event") == "turn":
            announced[sid] |= set(RESERVATION_ID.findall(str(rec.get("reply") or "")))
        elif rec.get("event") == "call_end":
            ended[sid] = rec
            if rec.get("reservation"):
                held[sid] = rec["reservation"]
                announced[sid].add(rec["reservation"].get("id"))

    with ReservationStore(store_url) as store:
        rows = store.all()
        with store.engine.connect() as conn:
            counters = {(r.date, r.time): r.taken for r in conn.execute(select(slots))}
    by_id = {r.id: r for r in rows}
    lost: list[str] = []
    for sid, ids in sorted(announced.items()):
        for rid in sorted(ids):
            row = by_id.get(rid)
            if row is None:
                lost.append(f"{sid}: {rid} announced but not in the database")
            elif row.call_id != sid:
                lost.append(f"{sid}: {rid} announced, but the database has it for call {row.call_id}")
        booking = held.get(sid)
        row = by_id.get((booking or {}).get("id"))
        if booking and row is not None:
            stored = row.to_json()
            diff = [k for k in ("date", "time", "party_size", "name", "phone") if stored[k] != booking.get(k)]
            if diff:
                lost.append(f"{sid}: {row.id} differs from the call's reservation in {diff}")
    per_call = Counter(r.call_id for r in rows)
    duplicates = [f"{sid}: {n} reservations {sorted(r.id for r in rows if r.call_id == sid)}"
                  for sid, n in sorted(per_call.items(), key=lambda kv: str(kv[0])) if n > 1]
    duplicates += [f"{sid}: announced {sorted(ids)}" for sid, ids in sorted(announced.items())
                   if len(ids) > 1 and per_call.get(sid, 0) <= 1]
    per_slot = Counter((r.date, r.time) for r in rows)
    over = [f"{d} {t:%H:%M}: {n} reservations for {capacity} tables" for (d, t), n in sorted(per_slot.items())
            if n > capacity]
    over += [f"{d} {t:%H:%M}: counter says {taken}, {per_slot.get((d, t), 0)} reservations"
             for (d, t), taken in sorted(counters.items()) if taken != per_slot.get((d, t), 0)]
    unannounced = sorted(f"{r.call_id}: {r.id}" for r in rows if r.id not in announced.get(r.call_id or "", ()))
    return Audit(rows, ended, lost, duplicates, over, unannounced)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


class CountingStore(ReservationStore):
    """The real store, counting the bookings refused for a full slot (the races a call lost)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.refused = 0
        self._count_lock = threading.Lock()

    def book(self, **kwargs: Any):
        try:
            return super().book(**kwargs)
        except FullyBooked:
            with self._count_lock:
                self.refused += 1
            raise


# ====================================================================================== entry points
FAILURE_COUNTERS = ("crashes", "silent_calls", "lost_reservations", "duplicate_reservations", "over_capacity_slots")


def failed(report: dict[str, Any]) -> bool:
    return any(report[k] for k in FAILURE_COUNTERS)


def run_soak(opts: SoakOptions, *, config_path: str | Path | None = None,
             workdir: str | Path | None = None) -> dict[str, Any]:
    """Run the soak and return its report. Without ``config_path`` the test models are built first
    (:func:`pipeline.sim.testmodels.build_test_models`); without ``workdir`` everything goes to a
    temporary folder."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="voicebot-soak-"))
        workdir = Path(workdir)
        if config_path is None:
            from pipeline.sim.testmodels import build_test_models

            config_path = build_test_models(workdir / "models")
        return Soak(opts, Path(config_path), workdir).run()


def format_report(report: dict[str, Any]) -> str:
    faults = ", ".join(f"{k} {v}" for k, v in report["faults"].items())
    gap = report["answer_gap_s"]
    lines = [
        f"fault soak: {report['calls']} calls ({report['concurrency']} at once, {report['workers']} worker(s)), "
        f"{report['turns']} caller turns, "
        f"seed {report['seed']}, {report['elapsed_s']} s",
        f"faults injected: {faults}",
        f"bookings {report['bookings']}, full-slot refusals {report['full_slot_refusals']}, "
        f"dropped calls {report['dropped_calls']}, calls the bot ended {report['completed_calls']}",
        f"answer after the caller's line: median {gap['median']} s, p95 {gap['p95']} s, max {gap['max']} s",
        f"crashes                 {report['crashes']}",
        f"silent calls            {report['silent_calls']}",
        f"lost reservations       {report['lost_reservations']}",
        f"duplicate reservations  {report['duplicate_reservations']}",
        f"over-capacity slots     {report['over_capacity_slots']}",
    ]
    details = report["details"]
    for key in ("crashes", "silent", "lost", "duplicates", "over_capacity", "calls_not_ended",
                "calls_without_call_end", "scripted_model_errors"):
        if details.get(key):
            lines.append(f"{key}: {json.dumps(details[key], ensure_ascii=False, default=str)[:4000]}")
    lines.append("PASS" if not failed(report) else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sim.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=SoakOptions.concurrency)
    parser.add_argument("--workers", type=int, default=1,
                        help="workers on one database; from 2 each call is signed by one and streamed to another")
    parser.add_argument("--store-url", help="the shared database (default: a SQLite file in the work folder)")
    parser.add_argument("--config", type=Path, help="a config whose models to use (default: build the test models)")
    parser.add_argument("--workdir", type=Path, help="keep the database and call log here (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--verbose", action="store_true", help="the server's log on stderr")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.concurrency < 1 or args.workers < 1:
        parser.error("--calls, --concurrency and --workers must be at least 1")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        # the report says what went wrong; the injected faults' expected tracebacks stay out of sight
        logging.getLogger().addHandler(logging.NullHandler())
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    opts = SoakOptions(calls=args.calls, seed=args.seed, concurrency=args.concurrency, workers=args.workers,
                       store_url=args.store_url)
    try:
        report = run_soak(opts, config_path=args.config, workdir=args.workdir)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, ensure_ascii=False, default=str) if args.json else format_report(report))
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
