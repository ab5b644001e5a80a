"""``voicebot bench``: how long a caller waits for the bot, stage by stage, against the naive cascade.

Simulated calls: Japanese caller lines spoken by Open JTalk, passed through a phone line (8 kHz,
mu-law) and fed in 20 ms frames, paced by the wall clock in one thread, to the real
:class:`~pipeline.transport.fastrtc.CallHandler` with the real bundled silero VAD, while another thread drains
``emit()`` as FastRTC does. The same clips then go through the naive cascade: stock FastRTC
``ReplyOnPause`` whose reply function transcribes the whole turn, gets the whole reply from the
agent, synthesises it in one piece and yields it.

The gap is measured from outside: from the wall time the last voiced frame of a clip was fed (the
end of speech is found in each clip beforehand) to the moment ``emit()`` returned the first audio
of the reply. The stages in between come from the pipeline's own :class:`~pipeline.voice.timeline.TurnTimeline`
and, for the naive cascade, from stamps inside its reply function.

Whisper runs with the real dimensions of the configured size: real weights when they are in
``models/``, otherwise random weights of the same shape (built once into a cache folder) with a
real-size vocabulary and decoding capped to a realistic token count. Random weights hear garbage,
so the agent is always given the scripted line while the real STT is still run and timed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from pipeline.config import Config, ConfigError, load_config
from pipeline.sim.phone import phone_line
from pipeline.sim.testmodels import build_fake_kokoro, build_voices, build_whisper
from pipeline.sim.voices import openjtalk, speech_end

log = logging.getLogger(__name__)

SR = 16000  # what the handler takes (the phone path resamples Twilio's 8 kHz to this)
FRAME = SR // 50  # 20 ms, a WebRTC / Twilio frame
#: the clock the calls run at, so that the scripted date is always bookable
NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
#: Whisper emits about one token per 0.1 s of Japanese speech
TOKENS_PER_S = 10
#: how long after its line a turn may take to be answered in full before it counts as unanswered
REPLY_TIMEOUT_S = 10.0
#: idle poll of emit(): stock ReplyOnPause returns None at once and FastRTC would spin a core on it
POLL_S = 0.002
#: after something said over the bot, how long the line listens for the bot to stop
OVER_LISTEN_S = 2.5
#: multilingual Whisper's text tokens (byte-level BPE ranks plus the empty token at 50256)
WHISPER_TEXT_TOKENS = 50257
WHISPER_DIMS = {
    "tiny": {"d_model": 384, "layers": 4, "heads": 6},
    "base": {"d_model": 512, "layers": 6, "heads": 8},
    "small": {"d_model": 768, "layers": 12, "heads": 12},
}
#: a real kokoro model is tens of MB; the test fixture is a few KB
REAL_KOKORO_MIN_BYTES = 5_000_000


@dataclass(frozen=True)
class Over:
    """Something the caller says over the bot's reply, ``delay_s`` after its first audio."""

    kind: str  # "backchannel" (must not stop the bot) or "interruption" (must)
    text: str
    spoken: str
    delay_s: float = 0.4


@dataclass(frozen=True)
class Line:
    text: str  # what the caller says, as the agent is given it
    spoken: str  # the same in kana, as the caller's voice reads it; " | " marks a pause inside the line
    pauses_ms: tuple[int, ...] = ()  # the pauses at the " | " marks (a caller thinking, digit groups)
    over: tuple[Over, ...] = ()  # said over the bot's reply to this line

    @property
    def hesitant(self) -> bool:
        return bool(self.pauses_ms)


#: one booking from start to goodbye; the rules agent fills every slot from these. Real callers
#: hesitate inside a line (a filler, 400-900 ms pauses), say 「はい」 over the bot while it reads back,
#: and sometimes cut in: each of those is here, and counted.
SCRIPT = (
    Line("12月24日の19時に2名でお願いします", "じゅうにがつ にじゅうよっかの | えーと | じゅうくじに にめいで おねがいします",
         (600, 700), (Over("backchannel", "はい", "はい", 0.5),)),
    Line("田中です", "たなかです", (),
         (Over("interruption", "すみません、もう一度お願いします", "すみません、もういちど おねがいします", 0.4),)),
    Line("ゼロキューゼロ、イチニーサンヨン、ゴーロクナナハチ", "ゼロキューゼロ | イチニーサンヨン | ゴーロクナナハチ", (700, 500),
         (Over("backchannel", "はいはい", "はいはい", 0.6),)),
    Line("特にありません", "とくに | ありません", (800,), (Over("backchannel", "ええ", "ええ", 0.8),)),
    Line("はい", "はい"),
    Line("以上です", "いじょうです"),
)
LEAD_S = 0.3  # silence before each line: a caller draws breath after the bot stops


# ============================================================================================ audio
@dataclass
class Clip:
    line: Line
    audio: np.ndarray  # int16 at SR: lead silence, then the line
    speech_end_s: float  # offset of the last voiced sample
    last_part_s: float = 0.0  # offset where the line's last part starts (after its last pause)
    over: tuple[Clip, ...] = ()  # clips of what is said over the reply (their line is an Over)

    @property
    def speech_s(self) -> float:
        return self.speech_end_s - LEAD_S


def voice(spoken: str) -> np.ndarray:
    """The caller's voice (Open JTalk) through a phone line, at SR."""
    return phone_line(*openjtalk(spoken))


def speech_start(audio: np.ndarray, below_peak_db: float = 35.0) -> float:
    """Seconds to the first 10 ms window within ``below_peak_db`` of the loudest one."""
    w = SR // 100
    n = audio.size // w
    rms = np.sqrt(np.mean((audio[: n * w].astype(np.float64).reshape(n, w) / 32768.0) ** 2, axis=1))
    voiced = np.flatnonzero(rms > rms.max() * 10 ** (-below_peak_db / 20)) if n and rms.max() > 0 else []
    return float(voiced[0] * w / SR) if len(voiced) else 0.0


def make_clips(lines: tuple[Line, ...] | list[Line]) -> list[Clip]:
    clips = []
    for line in lines:
        parts = [p.strip() for p in line.spoken.split("|")]
        pieces: list[np.ndarray] = [np.zeros(int(LEAD_S * SR), np.int16)]
        last_part = LEAD_S
        for k, part in enumerate(parts):
            if k:
                pause = line.pauses_ms[k - 1] if k - 1 < len(line.pauses_ms) else 600
                pieces.append(np.zeros(int(pause * SR / 1000), np.int16))
                last_part = sum(x.size for x in pieces) / SR
            pieces.append(voice(part))
        audio = np.concatenate(pieces)
        over = []
        for o in line.over:
            a = voice(o.spoken)
            over.append(Clip(o, a, speech_end(a), speech_start(a)))  # type: ignore[arg-type]
        clips.append(Clip(line, audio, speech_end(audio), last_part, tuple(over)))
    return clips


# ============================================================================================ models
def build_random_whisper(out_dir: Path, size: str, seed: int = 0) -> Path:
    """Random weights with whisper-``size``'s real dimensions and vocabulary size, in CTranslate2 int8.

    The tokenizer is byte-level (no merges) padded with unreachable tokens to real multilingual
    Whisper's 51866 ids, so the decoder's output projection, the bulk of a decoding step, costs what
    it costs with real weights.
    """
    dims = WHISPER_DIMS[size]
    # Built beside, renamed when complete: an interrupted build never looks like a model.
    tmp = out_dir.with_name(out_dir.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_whisper(tmp, d_model=dims["d_model"], layers=dims["layers"], heads=dims["heads"],
                                        eot_bias=None, seed=seed, n_text=WHISPER_TEXT_TOKENS)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir


def whisper_model(cfg: Config, size: str | None, cache_dir: Path) -> tuple[Path, str]:
    """``(model directory, "real" | "random-weights")`` for whisper-``size``; sets ``cfg.stt.model``.
    With no size, the configured model when its files are there (``stt.model`` naming a model
    directory, or a size already downloaded), else base."""
    from pipeline.speech.models import models_status, whisper_dir

    if size is None:
        if models_status(cfg)[0][2]:
            return whisper_dir(cfg), "real"
        size = "base"
    cfg.stt.model = size
    real = whisper_dir(cfg)
    if models_status(cfg)[0][2]:
        return real, "real"
    path = cache_dir / f"whisper-{size}-random-weights"
    if not (path / "model.bin").is_file():
        start = time.perf_counter()
        log.warning("no whisper-%s model in %s: building random weights of its dimensions into %s (once)",
                    size, real, path)
        build_random_whisper(path, size)
        log.info("built %s in %.1f s", path, time.perf_counter() - start)
    cfg.stt.model = str(path)
    return path, "random-weights"


def kokoro_model(cfg: Config, cache_dir: Path) -> str:
    """"real" when the configured kokoro files are there, else points ``cfg.tts`` at the test model."""
    model, voices = cfg.path(cfg.tts.model), cfg.path(cfg.tts.voices)
    if model.is_file() and voices.is_file() and model.stat().st_size >= REAL_KOKORO_MIN_BYTES:
        return "real"
    fake, fake_voices = cache_dir / "kokoro-test-model.onnx", cache_dir / "kokoro-test-voices.bin"
    if not (fake.is_file() and fake_voices.is_file()):
        build_fake_kokoro(fake)
        build_voices(fake_voices)
    cfg.tts.model, cfg.tts.voices = str(fake), str(fake_voices)
    cfg.tts.voice = {"ja": "jf_alpha", "en": "af_heart"}
    return "test-model"


# ============================================================================================ STT
#: the caller's line being spoken on this call (a dict per call, {"clip": Clip | None}); a context
#: variable because several calls share one STT, and early transcriptions run in worker threads
#: that inherit the context of the call that started them
CALLER: contextvars.ContextVar[dict[str, Clip | None]] = contextvars.ContextVar("bench_caller")


class ScriptedTranscripts:
    """The real faster-whisper run (and timed) on the caller's audio; the line the caller was
    scripted to say reported as what it heard.

    Random weights decode garbage until ``max_new_tokens``: the cap is set from the length of
    speech in the audio so that the decoder does the work real speech would give it. Otherwise the
    decoding is ``FasterWhisperSTT``'s own (its encoder window included).

    Audio shorter than the line's speech (an early transcription at a pause inside the line) is
    reported as what real weights heard of it (the turn-taking reads those words: 「12月24日の」
    leaves the sentence hanging), and with random weights as the same fraction of the line's text:
    half a phone number is not a phone number.
    """

    def __init__(self, stt: Any, random_weights: bool, current: Callable[[], Clip | None] | None = None):
        self.stt = stt
        self.random_weights = random_weights
        self.current = current or (lambda: CALLER.get({}).get("clip"))
        self.heard: list[str] = []
        self.tokens: list[int] = []
        self.calls = 0

    def transcribe(self, audio: np.ndarray, sample_rate: int, *, stock: bool = False):
        """``stock``: whisper's own 30 s window whatever the config says (the naive cascade)."""
        from pipeline.speech.stt import WHISPER_SAMPLE_RATE, Transcript, prepare_audio, token_cap

        clip = self.current()
        start = time.perf_counter()
        self.calls += 1
        x = prepare_audio(audio, sample_rate)
        duration = x.size / WHISPER_SAMPLE_RATE
        if self.random_weights:
            # no repeat check: random weights always run to the cap, so it would always retry
            speech = min(clip.speech_s, duration) if clip else duration
            segments, _ = self.stt.decode(x, window_s=None if stock else self.stt.cfg.window_s,
                                          max_new_tokens=max(4, round(speech * TOKENS_PER_S)))
            self.tokens.append(sum(len(s.tokens) for s in segments))
            heard = "".join(s.text for s in segments).strip()
        elif stock:
            segments, _ = self.stt.decode(x, window_s=None, max_new_tokens=token_cap(duration))
            heard = "".join(s.text for s in segments).strip()
        else:
            heard = self.stt.transcribe(x, WHISPER_SAMPLE_RATE).text
        self.heard.append(heard)
        text = heard
        if clip is not None and isinstance(clip.line, Over) and not self.random_weights:
            text = heard  # what is said over the bot is judged on what whisper really heard
        elif clip is not None and duration < clip.speech_s and not self.random_weights:
            text = heard  # part of the line (a pause inside it): what whisper made of that part
        elif clip is not None:
            text = clip.line.text
            if duration < clip.speech_s:
                text = text[: int(len(text) * duration / (clip.speech_s + 0.5))]
        return Transcript(text, self.stt.language, duration, time.perf_counter() - start)

    def warmup(self) -> None:
        self.stt.warmup()


# ============================================================================================ one call
@dataclass
class Turn:
    """One caller line and what became of it; times are ``time.monotonic()``."""

    cascade: str
    call: int
    index: int
    text: str
    speech_s: float
    speech_end: float | None = None  # when the last voiced frame was fed
    turn_detected: float | None = None
    transcript_ready: float | None = None
    first_text: float | None = None
    agent_done: float | None = None
    first_audio_synth: float | None = None
    first_audio_sent: float | None = None  # emit() returned the reply's first audio
    reported_gap_ms: float | None = None  # the pipeline's own TurnTimeline.gap_ms
    reported_speech_end: float | None = None
    detections: int = 0  # pauses detected in this line (more than one: the turn was cut in two)
    hesitant: bool = False  # the line has pauses inside it
    cut_off: bool = False  # a turn was detected before the line's last part had been said
    over: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # what was said over the reply
    reply: str = ""
    error: str | None = None
    prepared: bool = False  # the pipeline's reply was prepared ahead on the line's words

    def stamp(self, name: str, when: float | None = None) -> None:
        if getattr(self, name) is None:
            setattr(self, name, time.monotonic() if when is None else when)

    def ms(self) -> dict[str, float | None]:
        """Each stage's duration, and the gap, in ms."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        return {
            "endpoint_ms": span(self.speech_end, self.turn_detected),
            "stt_ms": span(self.turn_detected, self.transcript_ready),
            "agent_ms": span(self.transcript_ready, self.first_text),
            "tts_ms": span(self.first_text, self.first_audio_synth),
            "send_ms": span(self.first_audio_synth, self.first_audio_sent),
            "gap_ms": span(self.speech_end, self.first_audio_sent),
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cascade": self.cascade, "call": self.call, "turn": self.index, "text": self.text,
                               "speech_s": round(self.speech_s, 2), **self.ms()}
        if self.cascade.startswith("pipeline"):
            out["prepared"] = self.prepared
            out["reported_gap_ms"] = self.reported_gap_ms
            out["speech_end_estimate_error_ms"] = (
                None if self.reported_speech_end is None or self.speech_end is None
                else round((self.reported_speech_end - self.speech_end) * 1000, 1))
        else:
            out["agent_done_ms"] = (None if self.agent_done is None or self.speech_end is None
                                    else round((self.agent_done - self.speech_end) * 1000, 1))
        out.update(detections=self.detections, hesitant=self.hesitant, cut_off=self.cut_off, over=self.over,
                   reply=self.reply, error=self.error)
        return out


class PhoneLine:
    """A phone line in real time: the feeder pushes frames at the wall clock's pace, a second
    thread drains ``emit()`` and notes when the first audio of each reply comes out."""

    def __init__(self, handler: Any, cursor: dict[str, Clip | None], on_idle: Callable[[], None] | None = None):
        self.h = handler
        self.cursor = cursor
        self.turn: Turn | None = None
        self.on_idle = on_idle
        self._stop = threading.Event()
        self._next = time.monotonic()
        self._thread = threading.Thread(target=self._drain, name="bench-emit", daemon=True)
        self.closed = False
        self.audio_out = 0
        self.clears: list[float] = []  # when the handler dropped the bot's queued audio (FastRTC's clear_queue)
        handler._clear_queue = self.clear  # what FastRTC's stream sets on its handler

    def clear(self) -> None:
        self.clears.append(time.monotonic())

    def __enter__(self) -> PhoneLine:
        CALLER.set(self.cursor)  # the feeding thread starts early transcriptions: they inherit it
        self._next = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.h.event.set()  # wake a blocked emit()
        self._thread.join(timeout=10)

    def _drain(self) -> None:
        from fastrtc.utils import split_output

        CALLER.set(self.cursor)  # replies (and the naive cascade's STT) run in this thread
        while not self._stop.is_set():
            try:
                item = self.h.emit()
            except Exception:
                log.exception("emit() raised")
                item = None
            if item is None:
                time.sleep(POLL_S)
                continue
            now = time.monotonic()
            audio, extra = split_output(item)
            if audio is not None:
                self.audio_out += 1
                turn = self.turn
                if turn is not None and turn.speech_end is not None:
                    turn.stamp("first_audio_sent", now)
            if type(extra).__name__ == "CloseStream":
                self.closed = True

    def _frame(self, frame: np.ndarray) -> float:
        """Feed one frame at its time; returns when it was fed."""
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fed = time.monotonic()
        was_set = self.h.event.is_set()
        self.h.receive((SR, frame.reshape(1, -1)))
        if not was_set and self.h.event.is_set() and self.turn is not None:
            self.turn.detections += 1
            self.turn.stamp("turn_detected")
        self._next += FRAME / SR
        return fed

    def idle(self) -> bool:
        h = self.h
        return h.generator is None and not h.event.is_set() and getattr(h, "_pending", None) is None

    def silence_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Feed silence (a quiet line keeps sending frames) until ``done()`` or the timeout."""
        zeros = np.zeros(FRAME, np.int16)
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            self._frame(zeros)
        return True

    def _feed(self, clip: Clip, mark: dict[int, Callable[[float], None]] | None = None) -> None:
        marks = mark or {}
        for start in range(0, clip.audio.size, FRAME):
            fed = self._frame(np.pad(clip.audio[start : start + FRAME], (0, max(0, start + FRAME - clip.audio.size))))
            for sample, note in marks.items():
                if start < sample <= start + FRAME:
                    note(fed)

    def say(self, clip: Clip, turn: Turn) -> None:
        """Feed the clip, then silence until its reply has been handed out in full; what the caller
        says over the reply (a backchannel, an interruption) is fed while it plays."""
        self.turn = turn
        turn.hesitant = clip.line.hesitant
        self.cursor["clip"] = clip  # both cascades' STT report this clip's line as heard
        last_part = int(clip.last_part_s * SR)

        def last_part_starts(_fed: float) -> None:
            turn.cut_off = turn.cut_off or (turn.hesitant and turn.detections > 0)

        def speech_ends(fed: float) -> None:
            turn.speech_end = fed
            # a reply to a fragment cut off in a pause is not the answer to the line: time the one after
            for name in ("turn_detected", "transcript_ready", "first_text", "agent_done", "first_audio_synth",
                         "first_audio_sent"):
                setattr(turn, name, None)

        self._feed(clip, {last_part: last_part_starts, int(clip.speech_end_s * SR): speech_ends})
        for over in clip.over:
            if not self.silence_until(lambda: turn.first_audio_sent is not None, REPLY_TIMEOUT_S):
                break
            self.silence_until(lambda: False, max(0.0, turn.first_audio_sent + over.line.delay_s - time.monotonic()))
            self._over(over, turn)
        ok = self.silence_until(lambda: turn.first_audio_sent is not None and self.idle(), REPLY_TIMEOUT_S)
        if ok and clip.over:
            self._settle()
        if not ok:
            turn.error = "no reply audio" if turn.first_audio_sent is None else "reply did not finish"
        if self.on_idle is not None:
            self.on_idle()

    def _over(self, clip: Clip, turn: Turn) -> None:
        """Say ``clip`` over the bot's reply; note when the bot's audio was dropped after its onset."""
        self.cursor["clip"] = clip
        seen = len(self.clears)
        onset: dict[str, float] = {}
        self._feed(clip, {max(1, int(clip.last_part_s * SR)): lambda fed: onset.setdefault("t", fed)})
        # the verdict (or the naive cascade's pause detection) may come after the burst: listen on
        self.silence_until(lambda: False, OVER_LISTEN_S)
        start = onset.get("t")
        clears = [t for t in self.clears[seen:] if start is not None and t >= start - FRAME / SR]
        turn.over.append({"kind": clip.line.kind, "text": clip.line.text,
                          "stopped": bool(clears),
                          "stop_ms": round((clears[0] - start) * 1000, 1) if clears and start is not None else None})

    def _settle(self) -> None:
        """Idle for a while in a row: a reply to an interruption may follow the first one."""
        quiet_since = time.monotonic()

        def settled() -> bool:
            nonlocal quiet_since
            if not self.idle():
                quiet_since = time.monotonic()
            return time.monotonic() - quiet_since > 0.5

        self.silence_until(settled, REPLY_TIMEOUT_S * 2)


def _event_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A running loop, as the transports give a handler (stock ReplyOnPause posts messages to it)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True)
    thread.start()
    return loop, thread


def run_pipeline_call(runtime: Any, clips: list[Clip], call_no: int, loop: asyncio.AbstractEventLoop,
                      stt: ScriptedTranscripts, cursor: dict[str, Clip | None], cascade: str = "pipeline") -> list[Turn]:
    from pipeline.transport.fastrtc import make_handler

    h = make_handler(runtime).copy()
    h.attach(loop)
    turns: list[Turn] = []
    with PhoneLine(h, cursor, on_idle=lambda: h.call.assume_played()) as line:
        h.start_up()
        line.silence_until(line.idle, REPLY_TIMEOUT_S)  # the greeting, not timed
        h.call.assume_played()  # as if the caller had listened to it (else their first word barges in)
        for i, clip in enumerate(clips):
            if h.call.ended:
                break
            seen = len(h.call.timelines)
            turn = Turn(cascade, call_no, i + 1, clip.line.text, clip.speech_s)
            turns.append(turn)
            line.say(clip, turn)
            new = h.call.timelines[seen:]
            if new:
                # the line's own turn: not a fragment cut off in a pause before it ended, nor the turn of
                # an interruption over its reply
                ended = [t for t in new if turn.speech_end is None or (t.turn_detected or 0) >= turn.speech_end]
                tl = (ended or new)[0]
                for name in ("transcript_ready", "first_text", "first_audio_synth"):
                    setattr(turn, name, getattr(tl, name))
                turn.turn_detected = tl.turn_detected
                turn.reported_gap_ms = tl.gap_ms
                turn.reported_speech_end = tl.speech_end
                turn.reply = tl.reply
                turn.prepared = tl.prepared
                turn.error = turn.error or tl.error
    runtime.end_call(h.call.id, "bench")
    return turns


def run_naive_call(runtime: Any, clips: list[Clip], call_no: int, loop: asyncio.AbstractEventLoop,
                   stt: ScriptedTranscripts, cursor: dict[str, Clip | None], tts: Any = None) -> list[Turn]:
    """The seed-style cascade: stock ReplyOnPause (FastRTC's default options), the whole turn
    transcribed, the whole reply written, synthesised in one piece (by ``tts``, default the
    runtime's), then yielded."""
    from fastrtc import ReplyOnPause

    from pipeline.speech.vad import BundledSileroVAD

    agent = runtime.new_agent(f"naive-{call_no}")
    agent.greeting()
    tts = tts or runtime.tts
    current: dict[str, Turn | None] = {"turn": None}

    def reply(audio: tuple[int, np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        turn = current["turn"]
        stamp = turn.stamp if turn is not None else (lambda name, when=None: None)
        sr, samples = audio
        text = stt.transcribe(np.asarray(samples).reshape(-1), sr, stock=True).text
        stamp("transcript_ready")
        parts = []
        for chunk in agent.respond(text):
            if chunk:
                stamp("first_text")
                parts.append(chunk)
        stamp("agent_done")
        whole = "".join(parts)
        if turn is not None:
            turn.reply = turn.reply or whole  # not overwritten by a reply to what was said over it
        speech = tts.synthesize(whole, agent.state.language)
        stamp("first_audio_synth")
        yield tts.sample_rate, speech

    h = ReplyOnPause(reply, input_sample_rate=SR, output_sample_rate=int(tts.sample_rate),
                     model=BundledSileroVAD())
    h._loop = loop
    turns: list[Turn] = []
    with PhoneLine(h, cursor) as line:
        for i, clip in enumerate(clips):
            if agent.state.ended:
                break
            turn = Turn("naive", call_no, i + 1, clip.line.text, clip.speech_s)
            current["turn"] = turn
            turns.append(turn)
            line.say(clip, turn)
    return turns


#: concurrent calls start this far apart: callers do not all stop talking at the same instant
STAGGER_S = 0.7


def run_concurrent_calls(runtime: Any, clips: list[Clip], n: int, loop: asyncio.AbstractEventLoop,
                         stt: ScriptedTranscripts) -> list[Turn]:
    """``n`` pipeline calls at once, each in its own thread with its own handler and phone line."""
    out: list[list[Turn]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def one(k: int) -> None:
        time.sleep(k * STAGGER_S)
        try:
            out[k] = run_pipeline_call(runtime, clips, k + 1, loop, stt, {"clip": None})
        except BaseException as e:  # reported after the others finish
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,), name=f"bench-call-{k + 1}", daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [turn for turns in out for turn in turns]


def format_concurrent(result: dict[str, Any]) -> str:
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    head = (f"{'calls at once':>13} {'gap p50':>8} {'p90':>6} {'max':>6} {'end of turn p50':>16} {'stt p50':>8}"
            f" {'p90':>6} {'answered':>9} {'split':>6}")
    lines = [head, "-" * len(head)]
    for row in result["concurrent"]:
        g, e, st = row["gap_ms"], row["endpoint_ms"], row["stt_ms"]
        lines.append(f"{row['calls']:>13} {cell(g['p50']):>8} {cell(g['p90']):>6} {cell(g.get('max')):>6}"
                     f" {cell(e['p50']):>16} {cell(st['p50']):>8} {cell(st['p90']):>6}"
                     f" {str(row['answered']) + '/' + str(row['turns']):>9} {row['split_turns']:>6}")
    m, s = result["machine"], result["settings"]
    lines.append("")
    lines.append(f"stt: whisper-{s['stt_size']} ({result['stt']}, cpu_threads {s['stt_cpu_threads']}, "
                 f"num_workers {s['stt_num_workers']}), tts: kokoro ({result['tts']}), agent: {s['agent']}; "
                 f"{m['cores']} cores, {m['cpu']}")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


# ============================================================================================ results
STAGE_KEYS = ("endpoint_ms", "stt_ms", "agent_ms", "tts_ms", "send_ms", "gap_ms")
STAGE_LABELS = {
    "endpoint_ms": "end of turn detected",
    "stt_ms": "transcript ready",
    "agent_ms": "agent's first text",
    "tts_ms": "first audio synthesised",
    "send_ms": "first audio emitted",
    "gap_ms": "GAP (speech end -> audio)",
}


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p90": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p90": round(float(np.percentile(a, 90)), 1),
            "mean": round(float(a.mean()), 1), "max": round(float(a.max()), 1), "n": int(a.size)}


def summarize(turns: list[Turn]) -> dict[str, Any]:
    rows = [t.ms() for t in turns]
    out: dict[str, Any] = {k: _percentiles([r[k] for r in rows if r[k] is not None]) for k in STAGE_KEYS}
    out["turns"] = len(turns)
    out["answered"] = sum(1 for t in turns if t.first_audio_sent is not None)
    out["split_turns"] = sum(1 for t in turns if t.detections > 1)
    out["errors"] = sorted({t.error for t in turns if t.error})
    out["prepared_turns"] = sum(1 for t in turns if t.prepared)
    hesitant = [t for t in turns if t.hesitant]
    out["hesitant_lines"] = len(hesitant)
    out["false_cutoffs"] = sum(1 for t in hesitant if t.cut_off)
    out["false_cutoff_rate"] = round(out["false_cutoffs"] / len(hesitant), 3) if hesitant else None
    bcs = [o for t in turns for o in t.over if o["kind"] == "backchannel"]
    out["backchannels"] = len(bcs)
    out["false_bargeins"] = sum(1 for o in bcs if o["stopped"])
    out["false_bargein_rate"] = round(out["false_bargeins"] / len(bcs), 3) if bcs else None
    cuts = [o for t in turns for o in t.over if o["kind"] == "interruption"]
    out["interruptions"] = len(cuts)
    out["interruptions_stopped"] = sum(1 for o in cuts if o["stopped"])
    out["bargein_stop_ms"] = _percentiles([o["stop_ms"] for o in cuts if o["stop_ms"] is not None])
    return out


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.lower().startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {}
    for mod in ("ctranslate2", "onnxruntime", "faster_whisper", "fastrtc", "kokoro_onnx"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    return {"cores": usable, "cpu_count": os.cpu_count(), "cpu": cpu, "system": platform.platform(),
            "python": platform.python_version(), **versions}


def format_table(result: dict[str, Any]) -> str:
    p, n = result["pipeline"], result["naive"]

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [f"{'stage (ms, each from the previous)':34} {'pipeline p50':>12} {'p90':>7} {'naive p50':>10} {'p90':>7}"
             f" {'naive/pipe':>10}"]
    for key in STAGE_KEYS:
        if key == "gap_ms":
            lines.append("-" * len(lines[0]))
        a, b = p[key], n[key]
        ratio = "-" if not a["p50"] or b["p50"] is None else f"{b['p50'] / a['p50']:.2f}x"
        lines.append(f"{STAGE_LABELS[key]:34} {cell(a['p50']):>12} {cell(a['p90']):>7} {cell(b['p50']):>10}"
                     f" {cell(b['p90']):>7} {ratio:>10}")
    def rate(c: dict[str, Any], key: str, of: str) -> str:
        return "-" if c.get(key) is None else f"{c[key] * 100:.0f}% ({c[key.replace('_rate', 's')]}/{c[of]})"

    lines.append(f"{'false cut-offs (hesitant lines)':34} {rate(p, 'false_cutoff_rate', 'hesitant_lines'):>20}"
                 f" {rate(n, 'false_cutoff_rate', 'hesitant_lines'):>18}")
    lines.append(f"{'false barge-ins (backchannels)':34} {rate(p, 'false_bargein_rate', 'backchannels'):>20}"
                 f" {rate(n, 'false_bargein_rate', 'backchannels'):>18}")
    a, b = p["bargein_stop_ms"], n["bargein_stop_ms"]
    lines.append(f"{'barge-in stop (ms, interruptions)':34} {cell(a['p50']):>12} {cell(a['p90']):>7}"
                 f" {cell(b['p50']):>10} {cell(b['p90']):>7}   stopped {p['interruptions_stopped']}/"
                 f"{p['interruptions']}, naive {n['interruptions_stopped']}/{n['interruptions']}")
    off = result.get("pipeline_no_ahead")
    if off is not None:
        g = off["gap_ms"]
        lines.append(f"{'GAP, reply-ahead off':34} {cell(g['p50']):>12} {cell(g['p90']):>7}"
                     f"   (pipeline above: {p['prepared_turns']}/{p['turns']} replies prepared ahead)")
    m = result["machine"]
    s = result["settings"]
    lines.append("")
    lines.append(f"turns answered: pipeline {p['answered']}/{p['turns']}, naive {n['answered']}/{n['turns']}; "
                 f"split turns: pipeline {p['split_turns']}, naive {n['split_turns']}")
    lines.append(f"stt: whisper-{s['stt_size']} ({result['stt']}), tts: kokoro ({result['tts']}), "
                 f"agent: {s['agent']}; {m['cores']} cores, {m['cpu']}")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


# ============================================================================================ the run
def apply_sets(cfg: Config, sets: list[str]) -> None:
    """``section.key=value`` overrides (values read as YAML), validated by the config's own models."""
    import yaml
    from pydantic import ValidationError

    for item in sets:
        path, sep, raw = item.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not sep or len(keys) < 2:
            raise ConfigError(f"--set {item!r}: expected section.key=value (e.g. vad.audio_chunk_duration=0.2)")
        node: Any = cfg
        for key in keys[:-1]:
            if not hasattr(node, key):
                raise ConfigError(f"--set {item!r}: no config section {key!r}")
            node = getattr(node, key)
        if keys[-1] not in type(node).model_fields:
            raise ConfigError(f"--set {item!r}: no key {keys[-1]!r} in {'.'.join(keys[:-1])}")
        try:
            setattr(node, keys[-1], yaml.safe_load(raw))
        except (ValidationError, yaml.YAMLError) as e:
            raise ConfigError(f"--set {item!r}: {e}") from None


def run_bench(
    cfg: Config,
    *,
    calls: int = 3,
    turns: int | None = None,
    stt_size: str | None = None,
    agent: str = "rules",
    ttft_ms: float = 300.0,
    sets: list[str] | None = None,
    stt_window: float | None = None,
    warmup: bool = True,
    cache_dir: Path | None = None,
    concurrent: list[int] | None = None,
    compare_ahead: bool = False,
) -> dict[str, Any]:
    """Run the simulated calls through the pipeline, then the naive cascade; return the results.

    ``compare_ahead``: also run the pipeline with ``vad.prepare_reply`` off (reported under
    ``pipeline_no_ahead``), in the same run, between the two.

    ``concurrent``: instead, for each N, N calls at once through N handlers on one runtime
    (pipeline only), reporting the gap per N.
    """
    from pipeline.agents.factory import make_clock
    from pipeline.speech.stt import FasterWhisperSTT
    from pipeline.speech.tts import make_tts
    from pipeline.speech.vad import make_vad
    from pipeline.voice.runtime import VoiceRuntime

    if stt_size is not None and stt_size not in WHISPER_DIMS:
        raise ConfigError(f"--stt-size: expected one of {', '.join(WHISPER_DIMS)}, got {stt_size!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
    cfg = cfg.model_copy(deep=True)
    # the bench times the answer itself: a late reply's acknowledgement (「はい。」) would hide it
    # (``--set tts.ack_after_s=1.3`` times the first sound the caller hears instead)
    cfg.tts.ack_after_s = 0.0
    if stt_window:  # the older spelling of --set stt.window_s=SECONDS
        sets = [*(sets or []), f"stt.window_s={stt_window:g}"]
    apply_sets(cfg, sets or [])
    cache = Path(cache_dir) if cache_dir else cfg.path("data") / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    whisper_path, stt_kind = whisper_model(cfg, stt_size, cache)
    if stt_size is None:  # what the config named: a size, or a directory of real weights
        stt_size = "base" if stt_kind == "random-weights" else Path(cfg.stt.model).name
    tts_kind = kokoro_model(cfg, cache)
    work = tempfile.TemporaryDirectory(prefix="voicebot-bench-")
    cfg.store.url = f"sqlite:///{work.name}/reservations.db"
    cfg.restaurant.tables_per_slot = 1000  # every call books the same table; none may find it full
    cfg.agent.kind = agent  # type: ignore[assignment]
    script = list(SCRIPT[: turns or len(SCRIPT)])
    log.info("making the caller's %d lines with Open JTalk", len(script))
    clips = make_clips(script)

    stt_model = FasterWhisperSTT(cfg.stt, whisper_path)
    stt = ScriptedTranscripts(stt_model, stt_kind == "random-weights")
    tts = make_tts(cfg.tts, cfg.path)
    vad = make_vad(cfg.vad)
    if warmup:
        for part in (vad, stt, tts):
            part.warmup()

    server = None
    if agent == "llm":
        from pipeline.sim.openai_server import ScriptedOpenAI, booking_policy

        server = ScriptedOpenAI(responder=booking_policy("ja"), ttft_s=ttft_ms / 1000).start()
        cfg.llm.base_url = server.base_url
    loop, loop_thread = _event_loop()
    results: dict[str, list[Turn]] = {"pipeline": [], "naive": []}
    by_n: dict[int, list[Turn]] = {}
    started = time.perf_counter()
    try:
        runtime = VoiceRuntime(cfg, stt=stt, tts=tts, vad=vad, clock=make_clock(NOW), call_log=False)
        if warmup and cfg.tts.cache_size:
            runtime.prerender_phrases()  # as VoiceRuntime.load() does in the background at start-up
        if concurrent:
            for n in concurrent:
                log.info("%d calls at once", n)
                by_n[n] = run_concurrent_calls(runtime, clips, n, loop, stt)
        else:
            # the naive cascade synthesises every reply: no cache of phrases said before
            naive_tts = make_tts(cfg.tts.model_copy(update={"cache_size": 0}), cfg.path)
            if warmup:
                naive_tts.warmup()
            naive = functools.partial(run_naive_call, tts=naive_tts)
            runs: list[tuple[str, Any, Any]] = [("pipeline", runtime, run_pipeline_call)]
            if compare_ahead:
                off = cfg.model_copy(deep=True)
                off.vad.prepare_reply = False
                # a TTS of its own: the clauses the first run rendered must not be in its phrase cache
                tts_off = make_tts(off.tts, off.path)
                if warmup:
                    tts_off.warmup()
                runtime_off = VoiceRuntime(off, stt=stt, tts=tts_off, vad=vad, clock=make_clock(NOW),
                                           call_log=False)
                if warmup and off.tts.cache_size:
                    runtime_off.prerender_phrases()
                results["pipeline_no_ahead"] = []
                runs.append(("pipeline_no_ahead", runtime_off,
                             functools.partial(run_pipeline_call, cascade="pipeline_no_ahead")))
            runs.append(("naive", runtime, naive))
            for cascade, rt, run in runs:
                for call_no in range(1, calls + 1):
                    log.info("%s: call %d of %d", cascade, call_no, calls)
                    results[cascade] += run(rt, clips, call_no, loop, stt, {"clip": None})
            if compare_ahead:
                runtime_off.close()
        runtime.close()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(timeout=5)
        if server is not None:
            server.stop()
        work.cleanup()
    elapsed = time.perf_counter() - started

    notes.append("audio: Open JTalk Japanese (kana readings of the lines, pauses inside some), through a phone line (8 kHz, mu-law) "
                 "and fed at 16 kHz in 20 ms frames paced by the wall clock; emit() drained in another thread")
    notes.append("gap: from the wall time the last voiced frame was fed (end of speech found in each clip "
                 "beforehand by an energy threshold) to emit() returning the reply's first audio")
    notes.append("transcript: scripted, STT timed (the real faster-whisper runs on every turn's audio; the agent "
                 "is given the line the caller was scripted to say)")
    if stt_kind == "random-weights":
        toks = stt.tokens
        notes.append(f"stt: random weights with whisper-{stt_size}'s dimensions and real multilingual vocabulary "
                     f"size (51866); decoding capped at {TOKENS_PER_S} tokens per second of speech "
                     f"(mean {np.mean(toks) if toks else 0:.0f} tokens per turn), as real Japanese speech gives")
    if cfg.tts.cache_size and not concurrent:
        notes.append(f"tts: the pipeline replays short pieces it said before (tts.cache_size={cfg.tts.cache_size}), "
                     "the bot's fixed phrases rendered at start-up; the naive cascade synthesises every reply")
    if tts_kind == "test-model":
        notes.append("tts: the test model (a tone per phoneme) behind the real kokoro-onnx and Japanese G2P: "
                     "synthesis costs far less than real kokoro's, so tts_ms is a lower bound")
    if cfg.stt.window_s:
        notes.append(f"stt.window_s={cfg.stt.window_s:g}: the pipeline's whisper encodes {cfg.stt.window_s:g} s "
                     "(or the audio, if longer) instead of 30 s; the naive cascade keeps the 30 s window")
    if not warmup:
        notes.append("models not warmed up before the first call")
    if sets:
        notes.append("pipeline config overrides: " + ", ".join(sets))
    notes.append("naive: stock ReplyOnPause with FastRTC's default AlgoOptions and SileroVadOptions "
                 "(0.6 s chunks, min_silence 2000 ms), bundled silero; its emit() returns None at once when idle, "
                 f"polled every {POLL_S * 1000:.0f} ms here (FastRTC would spin a core on it)")
    if agent == "llm":
        notes.append(f"agent: LLM agent against a scripted OpenAI-protocol server on loopback, "
                     f"time to first token {ttft_ms:.0f} ms per request (booking_policy responder)")

    settings = {"calls": calls, "turns_per_call": len(clips), "stt_size": stt_size, "agent": agent,
                "ttft_ms": ttft_ms if agent == "llm" else None, "sets": list(sets or []),
                "stt_window_s": cfg.stt.window_s, "warmup": warmup, "whisper": str(whisper_path),
                "vad": cfg.vad.model_dump(), "stt_cpu_threads": cfg.stt.cpu_threads,
                "stt_num_workers": cfg.stt.num_workers, "elapsed_s": round(elapsed, 1)}
    if concurrent:
        notes.append(f"concurrent: N calls at once through N handlers on one runtime (shared models), "
                     f"started {STAGGER_S:g} s apart; pipeline only")
        return {
            "concurrent": [{"calls": n, **summarize(turns)} for n, turns in by_n.items()],
            "stt": stt_kind, "tts": tts_kind, "machine": machine_info(), "settings": settings, "notes": notes,
            "turns": [{"concurrent": n, **t.to_json()} for n, turns in by_n.items() for t in turns],
        }
    all_turns = [t for turns in results.values() for t in turns]
    pipeline, naive = summarize(results["pipeline"]), summarize(results["naive"])
    ratio = {}
    for key in STAGE_KEYS:
        a, b = pipeline[key], naive[key]
        for q in ("p50", "p90"):
            if a[q] and b[q] is not None:
                ratio[f"{key}_{q}"] = round(b[q] / a[q], 2)
    extra = {}
    if "pipeline_no_ahead" in results:
        extra["pipeline_no_ahead"] = summarize(results["pipeline_no_ahead"])
        notes.append("pipeline_no_ahead: the same pipeline with vad.prepare_reply off (no reply prepared at a "
                     "pause), run between the pipeline and the naive cascade on the same models, with a TTS "
                     "instance (and phrase cache) of its own, fixed phrases prerendered as for the first")
    return {
        "pipeline": pipeline,
        **extra,
        "naive": naive,
        "ratio_naive_to_pipeline": ratio,
        "stt": stt_kind,
        "tts": tts_kind,
        "machine": machine_info(),
        "settings": settings,
        "notes": notes,
        "turns": [t.to_json() for t in all_turns],
    }


# ============================================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``voicebot bench``."""
    p = subparsers.add_parser(
        "bench", help="latency of simulated calls, stage by stage, against the naive cascade",
        description="Simulated Japanese calls in real time through the real handler, VAD, STT, agent and TTS, "
                    "then through the naive cascade (stock ReplyOnPause, whole reply at once); prints p50/p90 "
                    "of every stage and of the gap. See docs/benchmarks.md.")
    p.add_argument("--config", help="path to config.yaml")
    p.add_argument("--calls", type=int, default=3, help="calls per cascade (default 3)")
    p.add_argument("--turns", type=int, default=None, help=f"caller lines per call (default all {len(SCRIPT)})")
    p.add_argument("--stt-size", choices=list(WHISPER_DIMS), default=None,
                   help="whisper size; real files in models/ when present, else random weights of its dimensions "
                        "(default: the config's stt.model when its files are there, e.g. a model directory, "
                        "else base)")
    p.add_argument("--agent", choices=["rules", "llm"], default="rules",
                   help="llm: the LLM agent against a scripted OpenAI-protocol server on loopback")
    p.add_argument("--ttft-ms", type=float, default=300.0, help="the scripted LLM's time to first token (default 300)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value for this run, e.g. vad.audio_chunk_duration=0.3 (repeatable); "
                        "the naive cascade keeps FastRTC's defaults for turn-taking")
    p.add_argument("--stt-window", type=float, default=None, metavar="SECONDS",
                   help="the same as --set stt.window_s=SECONDS: the pipeline's whisper encodes this many seconds "
                        "(or the audio, if longer) instead of 30 s")
    p.add_argument("--concurrent", default=None, metavar="N[,N...]",
                   help="instead of the comparison: N calls at once through N handlers on one runtime, for each N "
                        "(e.g. 1,2,3,4); reports the gap per N")
    p.add_argument("--compare-ahead", action="store_true",
                   help="also run the pipeline with vad.prepare_reply off (the reply not prepared at a pause), "
                        "in the same run, and report both")
    p.add_argument("--no-warmup", action="store_true", help="do not warm the models up before the first call")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where random-weight models are built (default: data/bench beside the config)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.calls < 1 or (args.turns is not None and args.turns < 1):
        print("error: --calls and --turns must be at least 1", file=sys.stderr)
        return 2
    concurrent = None
    if args.concurrent:
        try:
            concurrent = [int(n) for n in args.concurrent.split(",") if n.strip()]
        except ValueError:
            concurrent = []
        if not concurrent or min(concurrent) < 1 or max(concurrent) > 64:
            print(f"error: --concurrent expects numbers of calls from 1 to 64, e.g. 1,2,4; got {args.concurrent!r}",
                  file=sys.stderr)
            return 2
    try:
        result = run_bench(cfg, calls=args.calls, turns=args.turns, stt_size=args.stt_size, agent=args.agent,
                           ttft_ms=args.ttft_ms, sets=args.sets, stt_window=args.stt_window,
                           warmup=not args.no_warmup, cache_dir=args.cache_dir, concurrent=concurrent,
                           compare_ahead=args.compare_ahead)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif concurrent:
        print(format_concurrent(result))
    else:
        print(format_table(result))
    return 0
