"""What the calls of an evaluation came to: per line, per call and overall, as JSON and as a table."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.sim.judge import Verdict
from pipeline.sim.personas import Persona
from pipeline.sim.score import ErrorCount

#: the bot's audio running dry for this long in the middle of a reply is a stall
STALL_S = 1.0


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
    #: the reply began with the acknowledgement (「はい。」), being late (``tts.ack_after_s``)
    acked: bool = False
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
                "cut_off": self.cut_off, "over_2s": self.over_2s, "acked": self.acked, "stalls": self.stalls,
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
            "acked": sum(ln.acked for ln in self.lines),
            "stalls": sum(ln.stalls for ln in self.lines),
            "stt_error": stt.rate, "stt_units": stt.total, "stt_edits": stt.edits,
            "bot_error": bot.rate, "bot_units": bot.total, "bot_edits": bot.edits,
            "ended_by": self.ended_by, "last_line": self.last_line(), "duration_s": round(self.duration_s, 1),
            "error": self.error,
        }

    def last_line(self) -> str | None:
        """What the caller said last, and how many times in a row: where a failed call got stuck."""
        if not self.lines:
            return None
        kind, n = self.lines[-1].kind, 0
        for ln in reversed(self.lines):
            if ln.kind != kind:
                break
            n += 1
        return kind if n == 1 else f"{kind} x{n}"

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
        "acked": sum(c["acked"] for c in calls),
        "stalls": sum(c["stalls"] for c in calls),
        "stt_error": stt.rate, "bot_error": bot.rate,
        "unanswered_calls": sum(r.greeting_first_audio is None for r in results) if settings.get("mode") == "phone"
        else 0,
    }
    return {"overall": overall, "calls": calls, "settings": settings, "machine": _machine(),
            "elapsed_s": round(elapsed, 1), "details": [r.to_json() for r in results]}


def _machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # the load at the end (1, 5, 15 minutes): on a shared machine the gaps say as much about it as the bot
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cores": cores, "load_avg": load, "system": platform.platform(), "python": platform.python_version()}


# ====================================================================================== output
def _pct_cell(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.0f}%"


def _gap_cell(p50: int | None, p90: int | None) -> str:
    return "-" if p50 is None else f"{p50}/{p90}"


def format_report(report: dict[str, Any]) -> str:
    from pipeline.cli import format_table

    unit = "CER/WER"
    rows = [["CALL", "LANG", "WANTS", "BOOKED RIGHT", "TURNS/MIN", "GAP p50/p90 ms", "CUT-OFFS", "FALSE BARGE-INS",
             "SILENCES>2s", "ACKED", "STALLS", f"STT {unit}", f"BOT {unit}"]]
    for c in report["calls"]:
        rows.append([c["id"], c["language"], c["wants"], "yes" if c["booked_right"] else "NO",
                     f"{c['turns']}/{c['min_turns']}", _gap_cell(c["gap_p50_ms"], c["gap_p90_ms"]),
                     str(c["cut_offs"]), f"{c['false_barge_ins']}/{c['backchannels']}", str(c["silences_over_2s"]),
                     str(c["acked"]), str(c["stalls"]), _pct_cell(c["stt_error"]), _pct_cell(c["bot_error"])])
    o = report["overall"]
    rows.append(["overall", "", "", f"{o['booked_right']}/{o['calls']} ({o['booked_right_pct']}%)",
                 f"{o['turns']}/{o['min_turns']}", _gap_cell(o["gap_p50_ms"], o["gap_p90_ms"]), str(o["cut_offs"]),
                 f"{o['false_barge_ins']}/{o['backchannels']}", str(o["silences_over_2s"]), str(o["acked"]), str(o["stalls"]),
                 _pct_cell(o["stt_error"]), _pct_cell(o["bot_error"])])
    lines = format_table(rows)
    lines.insert(-1, "-" * max(len(x) for x in lines))
    wrong = [c for c in report["calls"] if not c["booked_right"] or c["error"]]
    for c in wrong:
        lines.append(f"{c['id']}: {c['error'] or c['why'] or 'not booked right'} (ended by {c['ended_by']}"
                     f"{'; last line: ' + c['last_line'] if c['last_line'] else ''}"
                     f"{'; its booking seeded' if c['seeded'] else ''})")
    s = report["settings"]
    lines.append(f"mode {s['mode']}, agent {s['agent']}, clock {s['now']}, noise "
                 f"{'none' if s['noise_db'] is None else str(s['noise_db']) + ' dB SNR'}"
                 + (f", whisper {s['stt_model']}, kokoro {s['tts_model']}" if s["mode"] == "phone" else "")
                 + f"; {report['machine']['cores']} cores (load {report['machine']['load_avg']}), "
                   f"{report['elapsed_s']} s")
    return "\n".join(lines)
