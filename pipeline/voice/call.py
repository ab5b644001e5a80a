"""One phone call: the caller's turns through STT -> agent -> TTS, the history, and per-turn timings.

``VoiceRuntime`` holds what every call of the process shares (config, store, models) and a
registry of live calls keyed by FastRTC's connection id (the Twilio streamSid on the phone).
``VoiceCall.turn()`` is a plain synchronous generator: FastRTC runs sync reply generators in a
worker thread, so the blocking STT, LLM streaming and TTS in it never touch the event loop.

What the caller actually heard matters after a barge-in: the agent must not believe it said
sentences that were cut off. Every reply keeps a record of the audio handed out and when, and
estimates the playback position from it (real time from the moment each chunk was handed out).

A phone call carries a :class:`PhoneLine`: the caller's number and Twilio's CallSid from the signed
webhook. Its agent is offered the caller's number and the keypad, and may hand the call to a person
(``restaurant.transfer_number``, through Twilio's REST API: :meth:`VoiceRuntime.transfer`); a turn
that books, changes or cancels a booking may text the caller (``twilio.sms_confirmations``), in a
worker thread, never holding up the reply nor touching the booking when it fails.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from fastrtc import AdditionalOutputs

from pipeline.agents.factory import (
    Agent,
    AgentKind,
    AgentUnavailable,
    Services,
    new_agent,
    open_services,
    resolve_kind,
)
from pipeline.config import Config
from pipeline.dialog.rules import QUESTIONS, stock_phrases
from pipeline.dialog.understand.sound import expectation, restaurant_ranges
from pipeline.dialog.understand.transcript import clean_transcript
from pipeline.privacy import append_call_log, call_log_record
from pipeline.speech.tts import CACHE_MAX_CHARS, TTS, SentenceSplitter, split_sentences
from pipeline.stt import STT, STTContext, Transcript, is_silent, listening_for
from pipeline.transport.twilio.rest import (
    TwilioREST,
    TwilioRESTError,
    confirmation_text,
    confirmations_due,
    is_mobile,
    japanese_e164,
    standing,
)

log = logging.getLogger(__name__)

#: said when a turn could not be heard or voiced; it asks again, so the call never goes silent
APOLOGY = {
    "ja": "申し訳ございません、もう一度お願いできますか。",
    "en": "I'm sorry, could you say that again?",
}
#: audio is handed to FastRTC in pieces this long, so a barge-in can drop what was not yet sent
CHUNK_S = 0.5
#: an early transcription not back after this long is the turn's STT failure (an apology), not a call
#: stuck for good on a wedged worker or a hung server
EARLY_TRANSCRIPT_TIMEOUT_S = 30.0
#: longest wait for a reply prepared ahead to finish its first clause
AHEAD_WAIT_S = 2.0
#: said instead of answering when every line is taken (``server.max_calls``); rendered at start-up
BUSY = {
    "ja": "ただいま大変混み合っております。恐れ入りますが、しばらくしてからおかけ直しください。",
    "en": "We're sorry, all our lines are busy right now. Please call again a little later.",
}
#: what the bot says on its own when the call is too long or the caller has gone quiet
LIMIT_GOODBYE = {
    "ja": "申し訳ございません、通話時間の上限となりましたので、お電話を終了させていただきます。",
    "en": "I'm sorry, we've reached the time limit for this call, so I have to end it now.",
}
SILENCE_PROMPT = {
    "ja": "もしもし、お電話聞こえておりますでしょうか。",
    "en": "Hello, can you hear me?",
}
SILENCE_GOODBYE = {
    "ja": "お電話が遠いようですので、失礼させていただきます。",
    "en": "I can't hear you, so I'll end the call now.",
}
#: how a closing line ends: whether the caller's booking stands or they need to call back
KEPT = {
    "ja": "ご予約は承っておりますので、ご安心ください。お電話ありがとうございました。",
    "en": "Your reservation is confirmed. Thank you for calling.",
}
CALL_AGAIN = {
    "ja": "お手数ですが、もう一度おかけ直しください。お電話ありがとうございました。",
    "en": "Please call us again to finish your booking. Thank you for calling.",
}
#: said when the call could not be put through to a person after the bot said it would be
TRANSFER_FAILED = {
    "ja": "申し訳ございません、ただいまおつなぎできませんでした。お手数ですが、{phone}までおかけ直しください。",
    "en": "I'm sorry, I couldn't put you through. Please call us at {phone}.",
}
#: a turn this long (seconds, with its closing silence) in which whisper found no words was speech
#: not understood, not a cough or a click: the caller is asked to say it again
UNHEARD_S = 1.2
#: what the silence prompt re-asks when the bot's last line gives nothing to repeat
REASK = {
    "ja": "ご用件をお聞かせいただけますか。",
    "en": "How can I help you?",
}
#: Whisper's well-known inventions on silence or breath, never a caller's answer
_HALLUCINATIONS = frozenset(
    s.casefold()
    for s in (
        "ご視聴ありがとうございました", "ご視聴ありがとうございました。", "ありがとうございました。",
        "おやすみなさい。", "Thank you for watching.", "Thanks for watching!", "Thank you.",
        "字幕は自動生成されています", "(字幕:", "[音楽]", "[Music]",
    )
)
_SAYABLE = re.compile(r"[0-9A-Za-z\u3040-\u30ff\u3400-\u9fff\u3005\u3007\uff10-\uff19\uff21-\uff5a]")


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _pick(texts: dict[str, str], lang: str) -> str:
    return texts.get(lang) or texts["en"]


def _join(lang: str, *parts: str) -> str:
    return ("" if lang == "ja" else " ").join(p for p in parts if p)


def meaningful(text: str) -> bool:
    """Whether a transcript is words rather than silence, noise marks or a Whisper hallucination."""
    t = (text or "").strip()
    return bool(t) and bool(_SAYABLE.search(t)) and t.casefold() not in _HALLUCINATIONS


# ================================================================================== timings
_STAMPS = ("speech_end", "turn_detected", "transcript_ready", "first_text", "first_audio_synth",
           "first_audio_sent", "reply_done")


@dataclass
class TurnTimeline:
    """Monotonic timestamps (``time.monotonic()``) of one caller turn, and what was said.

    ``speech_end`` is the caller's last voiced moment: the end of the last 32 ms window the
    handler's VAD took for speech, in the time of the frame that completed it.
    """

    call_id: str = ""
    turn: int = 0
    speech_end: float | None = None
    turn_detected: float | None = None
    transcript_ready: float | None = None
    first_text: float | None = None
    first_audio_synth: float | None = None
    first_audio_sent: float | None = None
    reply_done: float | None = None
    transcript: str = ""
    reply: str = ""
    #: what of the reply reached the caller, when they barged in (None: all of it)
    heard: str | None = None
    skipped: bool = False
    error: str | None = None
    audio_s: float = 0.0  # seconds of caller audio in the turn
    stt_s: float | None = None  # seconds transcription took
    #: the transcript came from transcribing the utterance early, at a short pause
    speculative: bool = False
    #: whisper looped on its shortened window and the turn was decoded again on 30 s
    stt_retried: bool = False
    #: what the recogniser wrote, when ``transcript`` (what the agent read) is a cleaned version of it
    transcript_raw: str | None = None
    #: the caller answered on the keypad (the transcript is what the keys stood for)
    keypad: bool = False

    def stamp(self, name: str, when: float | None = None) -> None:
        """Set a timestamp once; later calls keep the first (``first_*`` mean first)."""
        if getattr(self, name) is None:
            setattr(self, name, time.monotonic() if when is None else when)

    @property
    def gap_ms(self) -> float | None:
        """Caller stops talking -> first audio of the reply handed to FastRTC."""
        if self.speech_end is None or self.first_audio_sent is None:
            return None
        return round((self.first_audio_sent - self.speech_end) * 1000, 1)

    def to_json(self) -> dict[str, Any]:
        origin = self.speech_end if self.speech_end is not None else self.turn_detected
        ms: dict[str, float | None] = {}
        for name in _STAMPS:
            value = getattr(self, name)
            ms[name] = None if value is None or origin is None else round((value - origin) * 1000, 1)
        return {
            "call_id": self.call_id,
            "turn": self.turn,
            "ms": ms,
            "gap_ms": self.gap_ms,
            "transcript": self.transcript,
            "reply": self.reply,
            "heard": self.heard,
            "skipped": self.skipped,
            "error": self.error,
            "audio_s": round(self.audio_s, 3),
            "stt_s": None if self.stt_s is None else round(self.stt_s, 3),
            "speculative": self.speculative,
            "stt_retried": self.stt_retried,
            "transcript_raw": self.transcript_raw,
            "keypad": self.keypad,
        }


# ================================================================================== playback record
@dataclass
class _Sentence:
    text: str
    raw_end: int  # end of this sentence in the agent's raw text
    sample_start: int
    sample_end: int


@dataclass
class _Reply:
    """The audio of one reply as handed out, to tell what the caller has heard at a given moment."""

    sample_rate: int
    raw: str = ""
    sentences: list[_Sentence] = field(default_factory=list)
    #: (monotonic time handed out, first sample, end sample) per chunk, in order
    sends: list[tuple[float, int, int]] = field(default_factory=list)
    samples: int = 0
    #: a barge-in froze the record: later sends were dropped by the handler
    frozen: bool = False
    done: bool = False  # the generator producing it has finished or was closed
    applied: bool = False  # the agent has been told what was heard
    heard: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, text: str, raw_end: int, n: int) -> _Sentence:
        s = _Sentence(text, raw_end, self.samples, self.samples + n)
        self.sentences.append(s)
        self.samples += n
        return s

    def sent(self, start: int, end: int, when: float) -> None:
        with self.lock:
            if not self.frozen:
                self.sends.append((when, start, end))

    def played(self, now: float) -> int:
        """Samples played by ``now``, if playback runs in real time from each hand-out."""
        cursor: float | None = None
        pos = 0
        for t, s0, s1 in self.sends:
            start = t if cursor is None else max(t, cursor)
            dur = (s1 - s0) / self.sample_rate
            if now <= start:
                break
            pos = s0 + int(min(dur, now - start) * self.sample_rate)
            cursor = start + dur
        return pos

    def playing_until(self) -> float:
        cursor: float | None = None
        for t, s0, s1 in self.sends:
            start = t if cursor is None else max(t, cursor)
            cursor = start + (s1 - s0) / self.sample_rate
        return cursor or 0.0

    def heard_text(self, now: float) -> str:
        """The agent's raw text up to the end of the last sentence whose playback had started."""
        pos = self.played(now)
        raw_end = 0
        for s in self.sentences:
            if s.sample_start < pos and s.sample_end > s.sample_start:
                raw_end = max(raw_end, s.raw_end)
        return self.raw[:raw_end]


# ================================================================================== runtime
@dataclass(frozen=True)
class PhoneLine:
    """What the phone transport knows of a call beyond its audio. ``call_sid`` and ``caller`` come from
    Twilio's signed webhook (bound to the media stream's one-time token), never from the websocket:
    without validation both are None."""

    #: Twilio's CallSid: the live call a transfer updates
    call_sid: str | None = None
    #: the caller's number as Twilio gave it (``From``); the agent keeps it only as a Japanese number
    caller: str | None = None

    def __repr__(self) -> str:  # the caller's number stays out of reprs and tracebacks
        return f"PhoneLine(call_sid={self.call_sid!r}, caller={'...' if self.caller else None})"


class VoiceRuntime:
    """What all calls of the process share: config, store, STT/TTS/VAD, the live calls, the call log."""

    def __init__(
        self,
        cfg: Config,
        *,
        stt: STT,
        tts: TTS,
        vad: Any,
        services: Services | None = None,
        agent_kind: AgentKind | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        call_log: str | Path | None | bool = True,
        prerender: bool = True,
        twilio_rest: TwilioREST | None | bool = True,
    ):
        self.cfg = cfg
        self.services = services or open_services(cfg)
        self.stt = stt
        self.tts = tts
        self.vad = vad
        self.agent_kind: AgentKind = agent_kind or cfg.agent.kind
        if resolve_kind(cfg, self.agent_kind) == "llm" and not cfg.llm.base_url:
            raise AgentUnavailable("the LLM agent needs llm.base_url in config.yaml (or VOICEBOT__LLM__BASE_URL)")
        self.clock = clock
        if call_log is True:
            call_log = cfg.logging.call_log
        self.call_log: Path | None = cfg.path(call_log) if call_log else None
        self._log_lock = threading.Lock()
        self._calls: dict[str, VoiceCall] = {}
        self._calls_lock = threading.Lock()
        #: calls holding a line (``server.max_calls``), phone and browser, by connection id
        self._lines: set[str] = set()
        self._lines_lock = threading.Lock()
        #: the busy message per language, rendered once: a call refused for capacity costs no TTS
        self.busy_audio: dict[str, np.ndarray] = {}
        # Early (speculative) transcriptions run here, off the audio path. Twice faster-whisper's
        # workers: a call waiting on its transcription must not keep another's from starting.
        self._stt_pool = ThreadPoolExecutor(max_workers=max(2, 2 * cfg.stt.num_workers),
                                            thread_name_prefix="stt-early")
        #: the apology per language, rendered now so it can still be played when TTS breaks later
        self.fallback_audio: dict[str, np.ndarray] = {}
        self._closed = False
        #: Twilio's REST API for phone calls (transfers, texts): True = from the config and environment
        self.twilio: TwilioREST | None = TwilioREST.from_config(cfg) if twilio_rest is True else (twilio_rest or None)
        self._rest_pool: ThreadPoolExecutor | None = None
        self._rest_lock = threading.Lock()
        self._report_phone_features()
        if prerender:
            self.prerender_fallbacks()
            self.prerender_busy()

    @classmethod
    def load(
        cls,
        cfg: Config,
        download: bool,
        *,
        progress: bool = True,
        agent_kind: AgentKind | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> VoiceRuntime:
        """Models ensured (fetched when ``download``; else ``ModelsMissing``), loaded and warmed up."""
        from pipeline.speech.models import model_resolver
        from pipeline.speech.remote import ensure_local_models
        from pipeline.speech.tts import make_tts
        from pipeline.speech.vad import make_vad
        from pipeline.stt import make_stt

        start = time.perf_counter()
        paths = ensure_local_models(cfg, download, progress=progress)  # none for a stage on a speech server
        stt = make_stt(cfg.stt, paths.whisper)
        tts = make_tts(cfg.tts, model_resolver(cfg))
        vad = make_vad(cfg.vad)
        for name, part in (("VAD", vad), ("STT", stt), ("TTS", tts)):
            t0 = time.perf_counter()
            part.warmup()
            log.info("%s warmed up in %.2f s", name, time.perf_counter() - t0)
        runtime = cls(cfg, stt=stt, tts=tts, vad=vad, agent_kind=agent_kind, clock=clock)
        log.info("voice runtime ready in %.2f s (agent %s)", time.perf_counter() - start,
                 resolve_kind(cfg, runtime.agent_kind))
        if cfg.tts.cache_size:
            # in the background: calls are taken at once, and the first ones find more phrases ready
            threading.Thread(target=runtime.prerender_phrases, name="tts-prerender", daemon=True).start()
        return runtime

    def prerender_phrases(self) -> int:
        """Synthesise the bot's fixed sentences (the rules agent's questions, hints and phrases)
        into the TTS's cache, as the calls will cut them: whole, and as a reply's first clause.
        Returns how many pieces were rendered; stops when the runtime closes."""
        start, done = time.perf_counter(), 0
        for lang in self.cfg.tts.voice:
            pieces: dict[str, None] = {}
            for phrase in stock_phrases(lang):
                for sentence in split_sentences(phrase):
                    if "{" in sentence:
                        continue  # filled in per call: a date, a name
                    first = SentenceSplitter(first_clause_chars=self.cfg.tts.first_clause_chars)
                    for piece in [sentence, *first.feed(sentence), first.flush()]:
                        if piece and len(piece) <= CACHE_MAX_CHARS:
                            pieces[piece] = None
            for piece in pieces:
                if self._closed:
                    return done
                try:
                    self.tts.synthesize(piece, lang)
                except Exception:
                    log.exception("TTS cannot render %r ahead of the calls", piece)
                    return done
                done += 1
        log.info("TTS: %d fixed phrases rendered ahead of the calls in %.1f s", done, time.perf_counter() - start)
        return done

    # ------------------------------------------------------------------ fallback audio
    def prerender_fallbacks(self) -> None:
        self.fallback_audio.update(self._render_per_language(
            APOLOGY, "apology", "a TTS fault in a call will be silent", logging.ERROR))

    def prerender_busy(self) -> None:
        self.busy_audio.update(self._render_per_language(
            BUSY, "busy message", "callers over server.max_calls hear nothing before the hang-up", logging.WARNING))

    def _render_per_language(self, texts: dict[str, str], what: str, otherwise: str,
                             level: int) -> dict[str, np.ndarray]:
        """``texts[lang]`` synthesised now for each configured voice; a failure is logged at ``level``
        with what it means (``otherwise``) and leaves that language out."""
        rendered: dict[str, np.ndarray] = {}
        for lang in self.cfg.tts.voice:
            text = texts.get(lang)
            if not text:
                continue
            try:
                audio = np.asarray(self.tts.synthesize(text, lang), dtype=np.float32).reshape(-1)
            except Exception:
                log.log(level, "TTS cannot render the %s %s: %s", lang, what, otherwise, exc_info=True)
                continue
            if audio.size == 0:
                log.log(level, "TTS rendered the %s %s as no audio: %s", lang, what, otherwise)
                continue
            rendered[lang] = audio
        return rendered

    def busy_message(self) -> tuple[int, np.ndarray] | None:
        """The pre-rendered busy message in the configured language (another one rather than none)."""
        audio = self.busy_audio.get(self.cfg.agent.language)
        if audio is None and self.busy_audio:
            audio = next(iter(self.busy_audio.values()))
        return None if audio is None else (int(self.tts.sample_rate), audio)

    # ------------------------------------------------------------------ lines (server.max_calls)
    def claim_line(self, key: str, *, new: bool = False) -> bool:
        """Take one of ``server.max_calls`` lines for connection ``key``; True if it has one
        (already had one, unless ``new``: a second connection under a live id gets none).

        Separate from the call registry: the phone route must refuse a call before any
        ``VoiceCall`` (and its agent) exists, and two calls starting at once must not both see
        the last free line.
        """
        with self._lines_lock:
            if key in self._lines:
                return not new
            cap = self.cfg.server.max_calls or self.cfg.server.concurrency_limit
            if len(self._lines) >= cap:
                log.warning("call %s: refused, all %d lines are taken (server.max_calls)", key, cap)
                return False
            self._lines.add(key)
            return True

    def release_line(self, key: str | None) -> None:
        if key is None:
            return
        with self._lines_lock:
            self._lines.discard(key)

    @property
    def lines_in_use(self) -> int:
        with self._lines_lock:
            return len(self._lines)

    # ------------------------------------------------------------------ calls
    def new_agent(self, call_id: str, language: str | None = None, *, caller_id: str | None = None) -> Agent:
        return new_agent(self.services, kind=self.agent_kind, language=language, clock=self.clock, call_id=call_id,
                         caller_id=caller_id)

    def get_call(self, call_id: str | None = None, *, language: str | None = None,
                 line: PhoneLine | None = None) -> VoiceCall:
        """The live call ``call_id``, created on first use (a fresh id when None); ``line`` makes it
        a phone call (the caller's number offered, the keypad, a person when the call allows it)."""
        call_id = call_id or uuid.uuid4().hex[:12]
        with self._calls_lock:
            call = self._calls.get(call_id)
            if call is None:
                if line is None:
                    agent = self.new_agent(call_id, language)
                else:
                    agent = self.new_agent(call_id, language, caller_id=line.caller)
                    agent.state.keypad = True
                    agent.state.can_transfer = self.can_transfer(line)
                call = VoiceCall(self, call_id, agent, line=line)
                self._calls[call_id] = call
                st = agent.state
                phone = [what for what, on in (("phone", line), ("caller ID", st.caller_id),
                                               ("transfer", st.can_transfer)) if on]
                log.info("call %s: started (%s)", call_id, ", ".join([f"agent {agent.kind}", call.language, *phone]))
            return call

    def find_call(self, call_id: str) -> VoiceCall | None:
        with self._calls_lock:
            return self._calls.get(call_id)

    @property
    def calls(self) -> dict[str, VoiceCall]:
        with self._calls_lock:
            return dict(self._calls)

    def end_call(self, call_id: str, reason: str = "hangup") -> VoiceCall | None:
        """Forget a call and log its end; calling it again for the same id does nothing."""
        self.release_line(call_id)  # a call the bot ended frees its line before the socket is gone
        with self._calls_lock:
            call = self._calls.pop(call_id, None)
        if call is None:
            return None
        call.close(reason)
        self.write_log({"event": "call_end", **call.summary()})
        log.info("call %s: ended (%s) after %d turns; reservation %s", call_id, reason, len(call.timelines),
                 (call.agent.state.reservation or {}).get("id"))
        return call

    def close(self) -> None:
        self._closed = True
        for call_id in list(self.calls):
            self.end_call(call_id, "shutdown")
        self._stt_pool.shutdown(wait=False, cancel_futures=True)
        if self._rest_pool is not None:
            self._rest_pool.shutdown(wait=False)  # texts under way are still sent
        self.services.close()

    # ------------------------------------------------------------------ Twilio's REST API
    def _report_phone_features(self) -> None:
        cfg = self.cfg
        wanted = [what for what, on in (("restaurant.transfer_number", cfg.restaurant.transfer_number),
                                        ("twilio.sms_confirmations", cfg.twilio.sms_confirmations)) if on]
        if wanted and self.twilio is None:
            log.warning("%s set, but Twilio's REST API has no credentials (TWILIO_ACCOUNT_SID or "
                        "twilio.account_sid, and TWILIO_AUTH_TOKEN): phone calls will not use it",
                        " and ".join(wanted))

    def can_transfer(self, line: PhoneLine | None) -> bool:
        """Whether a call on ``line`` can be put through to ``restaurant.transfer_number``."""
        return bool(line is not None and line.call_sid and self.twilio is not None
                    and self.cfg.restaurant.transfer_number)

    def transfer(self, call: VoiceCall) -> bool:
        """Put the live phone call through to ``restaurant.transfer_number`` (Twilio then ends the media
        stream and dials). Blocks for the REST request; False when it failed (logged)."""
        line, number = call.line, self.cfg.restaurant.transfer_number
        if self.twilio is None or line is None or not line.call_sid or not number:
            log.warning("call %s: cannot be transferred (no phone line, transfer number or REST credentials)", call.id)
            return False
        try:
            self.twilio.transfer(line.call_sid, number)
        except TwilioRESTError as e:
            log.warning("call %s: the transfer to the restaurant failed: %s", call.id, e)
            return False
        log.info("call %s: put through to the restaurant", call.id)
        return True

    def text_confirmation(self, call: VoiceCall, kind: str, booking: dict[str, Any]) -> Future | None:
        """Text the caller of a phone call what became of ``booking`` (``kind``: booked, changed,
        cancelled), in a worker thread; None when no text is due (texts off, no caller ID, not a
        mobile number, no REST credentials). The future's result is the message SID, or None when
        sending failed (logged, masked); the booking is never touched."""
        settings = self.cfg.twilio
        number = call.agent.state.caller_id if call.line is not None else None
        if not settings.sms_confirmations or self.twilio is None or not settings.sms_from or not number:
            return None
        if not is_mobile(number):
            log.info("call %s: no confirmation text: the caller's number is not a mobile one", call.id)
            return None
        body = confirmation_text(kind, booking, call.language, self.cfg.restaurant)
        with self._rest_lock:
            if self._rest_pool is None:
                self._rest_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="twilio-rest")
            pool = self._rest_pool
        try:
            return pool.submit(self._send_text, call.id, kind, str(booking.get("id")), japanese_e164(number), body)
        except RuntimeError:  # the runtime is closing
            log.warning("call %s: no confirmation text for %s: shutting down", call.id, booking.get("id"))
            return None

    def _send_text(self, call_id: str, kind: str, reservation: str, to: str, body: str) -> str | None:
        assert self.twilio is not None and self.cfg.twilio.sms_from
        try:
            sid = self.twilio.send_text(to, body, self.cfg.twilio.sms_from)
        except TwilioRESTError as e:
            log.warning("call %s: the confirmation text (%s %s) could not be sent: %s", call_id, kind, reservation, e)
            return None
        except Exception:  # a bug here must not vanish into the pool's future
            log.exception("call %s: the confirmation text (%s %s) failed", call_id, kind, reservation)
            return None
        log.info("call %s: confirmation text sent (%s %s, %s)", call_id, kind, reservation, sid)
        return sid

    # ------------------------------------------------------------------ early transcription
    def transcribe_soon(self, samples: np.ndarray, sample_rate: int, context: STTContext | None = None) -> Future:
        """Transcribe in a worker thread; the future's result is a ``Transcript``. ``context`` is
        what the call expects of the turn (``VoiceCall.stt_context()``).

        The submitter's context variables go with it (FastRTC's call context, a benchmark's
        caller script), as they would with ``asyncio.to_thread``.
        """
        ctx = contextvars.copy_context()
        return self._stt_pool.submit(ctx.run, self._transcribe_now, samples, sample_rate, context)

    def _transcribe_now(self, samples: np.ndarray, sample_rate: int, context: STTContext | None = None) -> Transcript:
        if samples.size == 0 or is_silent(samples):
            return Transcript("", None, samples.size / max(sample_rate, 1), 0.0)
        if context is None:
            return self.stt.transcribe(samples, sample_rate)
        with listening_for(context):  # reaches the engine through wrappers that take two arguments
            return self.stt.transcribe(samples, sample_rate)

    # ------------------------------------------------------------------ call log
    def write_log(self, record: dict[str, Any]) -> None:
        if self.call_log is None:
            return
        if self.cfg.logging.call_log_retention_days == 0:  # no transcripts: the raw one no more than the clean
            record = {k: v for k, v in record.items() if k != "transcript_raw"}
        record = call_log_record(self.cfg.logging, record)  # privacy: retention 0 / masking (pipeline.privacy)
        line = json.dumps({"at": _now_iso(), **record}, ensure_ascii=False, default=str)
        try:
            with self._log_lock:
                append_call_log(self.call_log, line)  # under the lock the pruner takes (pipeline.privacy)
        except OSError as e:
            log.warning("cannot write the call log %s: %s", self.call_log, e)


# ================================================================================== one call
@dataclass(frozen=True)
class DueLine:
    """A line the bot says of its own accord (``VoiceCall.due_line``).

    ``kind``: ``"silence_prompt"`` (the caller has gone quiet: are you there?), or a closing line
    after which the call ends: ``"silence"`` (still nothing after the prompt) or ``"max_length"``.
    """

    kind: str
    text: str

    @property
    def final(self) -> bool:
        return self.kind != "silence_prompt"


class VoiceCall:
    """One call: the agent, what was said, and a turn's STT -> agent -> TTS as a stream of audio."""

    def __init__(self, runtime: VoiceRuntime, call_id: str, agent: Agent, *, line: PhoneLine | None = None):
        self.runtime = runtime
        self.id = call_id
        self.agent = agent
        #: the phone line this call is on; None in the browser
        self.line = line
        self._standing = standing(agent.state)  # the bookings as of the last turn, to text what changed
        self.transcript: list[dict[str, Any]] = []
        self.timelines: list[TurnTimeline] = []
        self.started = time.monotonic()
        self.started_at = _now_iso()
        self.closed: str | None = None
        self._reply: _Reply | None = None
        self._turns = 0
        #: the last turn had no words and the caller was asked to say it again (once in a row)
        self._asked_unheard = False
        #: the last turn the agent was given; the words of a turn cut short before that (the caller
        #: went on at once), to be put before the next turn's
        self._agent_turn = 0
        self._carried: str | None = None
        #: the latest reply of any kind (``_reply`` is reset when a turn starts, even a skipped one)
        self._last_reply: _Reply | None = None
        self._prompt_reply: _Reply | None = None  # the silence prompt, while nothing came after it
        self._own_entries: list[dict[str, Any]] = []  # transcript lines the bot said on its own
        #: the reply to these words being prepared ahead (``pipeline/voice/speculation.py``)
        self.ahead: tuple[str, Future] | None = None

    # ------------------------------------------------------------------ state
    @property
    def language(self) -> str:
        return self.agent.state.language

    @property
    def ended(self) -> bool:
        return bool(self.agent.state.ended) or self.closed is not None

    @property
    def sample_rate(self) -> int:
        return int(self.runtime.tts.sample_rate)

    def snapshot(self) -> dict[str, Any]:
        """What the UI shows: the conversation, slots, reservation, and the last turn's timings."""
        st = self.agent.state
        last = self.timelines[-1].to_json() if self.timelines else None
        return {
            "call_id": self.id,
            "language": st.language,
            "transcript": [dict(m) for m in self.transcript],
            "slots": st.slots.to_json(),
            "reservation": st.reservation,
            "ended": self.ended,
            "last_turn": last,
        }

    def summary(self) -> dict[str, Any]:
        gaps = [t.gap_ms for t in self.timelines if t.gap_ms is not None]
        return {
            "call_id": self.id,
            "reason": self.closed,
            "started_at": self.started_at,
            "duration_s": round(time.monotonic() - self.started, 3),
            "turns": len(self.timelines),
            "agent": self.agent.kind,
            "language": self.language,
            "reservation": self.agent.state.reservation,
            "slots": self.agent.state.slots.to_json(),
            "ended_by_bot": bool(self.agent.state.ended),
            "gap_ms_median": sorted(gaps)[len(gaps) // 2] if gaps else None,
            "transcript": self.transcript,
        }

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason

    # ------------------------------------------------------------------ speaking
    def greeting(self) -> Iterator[tuple[int, np.ndarray]]:
        """The agent's greeting, spoken sentence by sentence."""
        try:
            text = self.agent.greeting()
        except Exception:
            log.exception("call %s: the agent's greeting failed", self.id)
            text = ""
        if not text:
            return
        reply = self._begin_reply()
        entry = {"role": "bot", "text": text}
        self.transcript.append(entry)
        try:
            yield from self._speak(reply, iter([text]), TurnTimeline(call_id=self.id), entry)
        finally:
            self._end_reply(reply, entry)

    def say(self, text: str) -> Iterator[tuple[int, np.ndarray]]:
        """A line outside the agent (an apology): spoken and shown, not part of the agent's history."""
        reply = self._begin_reply()
        entry = {"role": "bot", "text": text}
        self.transcript.append(entry)
        try:
            yield from self._speak(reply, iter([text]), TurnTimeline(call_id=self.id), entry, tell_agent=False)
        finally:
            self._end_reply(reply, entry, tell_agent=False)

    def turn(
        self,
        audio: tuple[int, np.ndarray],
        timeline: TurnTimeline | None = None,
        transcript: str | Future | None = None,
    ) -> Iterator[tuple[int, np.ndarray] | AdditionalOutputs]:
        """One caller utterance in, the reply out: audio per sentence as soon as it is synthesized.

        Yields ``(sample_rate, float32 audio)`` pieces and ``AdditionalOutputs(snapshot)`` for the UI.
        An empty or noise-only transcript ends the turn quietly. A failed STT or TTS is logged and
        answered with a spoken apology instead of silence.

        ``transcript`` is what ``audio`` says when it is already known or under way: a string, or
        a future of a ``Transcript`` (``VoiceRuntime.transcribe_soon``) started on this audio
        before the turn ended. A future that never started is cancelled and the audio transcribed
        here; one that failed counts as this turn's STT failure.
        """
        self._turns += 1
        self._reply = None  # a barge-in from here on stops this turn, not the previous reply
        tl = timeline or TurnTimeline()
        tl.call_id, tl.turn = self.id, self._turns
        tl.stamp("turn_detected")
        if tl.speech_end is None:
            tl.speech_end = tl.turn_detected
        sr, samples = audio
        samples = np.asarray(samples)
        tl.audio_s = samples.size / sr if sr else 0.0
        logged = False
        try:
            text = self._transcribe(sr, samples, tl, transcript)
            if text is None:  # STT failed: already logged; apologise and let the caller repeat
                self.timelines.append(tl)
                yield from self.say(APOLOGY.get(self.language, APOLOGY["en"]))
                tl.reply = APOLOGY.get(self.language, APOLOGY["en"])
                return
            if not meaningful(text):
                if tl.audio_s >= UNHEARD_S and not self._asked_unheard:
                    # a caller spoke for a while and whisper found no words in it: asked to say it
                    # again (once: noise that goes on is left to the "are you there?" prompt)
                    self._asked_unheard = True
                    log.info("call %s: turn %d (%.1f s) had no words (%r): asked again", self.id, tl.turn,
                             tl.audio_s, text)
                    self.timelines.append(tl)
                    tl.reply = APOLOGY.get(self.language, APOLOGY["en"])
                    yield from self.say(tl.reply)
                    return
                tl.skipped = True
                log.debug("call %s: turn %d skipped (transcript %r)", self.id, tl.turn, text)
                return
            self._asked_unheard = False
            self.timelines.append(tl)
            self.transcript.append({"role": "user", "text": text})
            log.debug("call %s: caller: %s", self.id, text)
            carried, self._carried = self._carried, None
            if carried:
                # the caller went on before the agent read their last words: they are this turn's start
                text = f"{carried} {text}" if self.language == "en" else f"{carried}、{text}"
            self._await_ahead(text)
            try:
                yield AdditionalOutputs(self.snapshot())
            except BaseException:
                self._carried = text  # cut short here: kept for the next turn
                raise
            reply = self._begin_reply()
            entry: dict[str, Any] = {"role": "bot", "text": ""}
            self.transcript.append(entry)
            try:
                yield from self._speak(reply, self._agent_text(text, tl), tl, entry)
            finally:
                if self._agent_turn != tl.turn:
                    self._carried = text  # cut short before the agent read them: kept for the next turn
                self._end_reply(reply, entry)
                tl.reply = reply.raw
                tl.heard = reply.heard
                self._confirm_by_text()  # after the reply, cut short or not: the booking is made
            tl.stamp("reply_done")
            log.debug("call %s: bot: %s", self.id, reply.raw)
            yield AdditionalOutputs(self.snapshot())
            self._log_turn(tl)
            logged = True
        finally:
            if not logged and not tl.skipped:
                self._log_turn(tl)

    def _await_ahead(self, text: str) -> None:
        """The reply to ``text`` is being prepared ahead: let its first clause finish rendering
        rather than render it a second time beside it."""
        ahead, self.ahead = self.ahead, None
        if ahead is None or ahead[0] != text:
            return
        try:
            ahead[1].result(timeout=AHEAD_WAIT_S)
        except Exception:  # slow or failed: the clause is rendered as usual
            pass

    # ------------------------------------------------------------------ barge-in
    def barge_in(self, now: float | None = None) -> str | None:
        """The caller started talking: freeze the current reply at what was heard by ``now``.

        Returns the heard text, or None when nothing was playing. If the reply's generator has
        finished, the agent is told at once; otherwise the generator tells it when it is closed
        (the agent may be mid-stream in another thread until then).
        """
        reply = self._reply
        if reply is None:
            return None
        now = time.monotonic() if now is None else now
        with reply.lock:
            if reply.frozen:
                return reply.heard
            if reply.done and now >= reply.playing_until():
                return None  # everything was played: nothing was cut off
            reply.frozen = True
            reply.heard = reply.heard_text(now)
            if reply.done:
                self._apply_heard(reply)
        log.info("call %s: barge-in after %d of %d characters", self.id, len(reply.heard or ""), len(reply.raw))
        return reply.heard

    def assume_played(self) -> None:
        """Take everything handed out so far as already heard (a transport that plays before it
        returns, or a test that does not want to wait out the playback)."""
        reply = self._reply
        if reply is None:
            return
        with reply.lock:
            shift = max(0.0, reply.playing_until() - time.monotonic())
            reply.sends = [(t - shift - 1.0, s0, s1) for t, s0, s1 in reply.sends]

    def playing_until(self) -> float:
        """When the audio handed out so far ends playing, if it plays in real time from its hand-out."""
        reply = self._last_reply
        return 0.0 if reply is None else reply.playing_until()

    def _confirm_by_text(self) -> None:
        """Text the caller about the bookings this turn made, changed or cancelled (a phone call with
        ``twilio.sms_confirmations`` on); in the background, never failing the turn."""
        try:
            due = confirmations_due(self._standing, self.agent.state)
            self._standing = standing(self.agent.state)
            for kind, booking in due:
                self.runtime.text_confirmation(self, kind, booking)
        except Exception:
            log.exception("call %s: the confirmation text could not be prepared", self.id)

    def playing(self, now: float | None = None) -> bool:
        """Whether reply audio handed out may still be playing at ``now``."""
        reply = self._reply
        if reply is None:
            return False
        now = time.monotonic() if now is None else now
        return not reply.done or now < reply.playing_until()

    # ------------------------------------------------------------------ lines of its own
    def due_line(self, now: float | None = None, *, caller_talking: bool = False) -> DueLine | None:
        """What the bot should say now without being asked, if anything: the goodbye once the call
        has lasted ``server.max_call_s``; the silence prompt once the caller has said nothing
        meaningful for ``server.silence_prompt_s`` after the bot stopped talking; a goodbye after
        ``server.silence_hangup_s`` more. Transcripts of noise never reach the agent, so a caller
        heard only as noise is prompted like a silent one.

        The transport calls this while idle (no reply running), and says the line with
        :meth:`speak_line`. Nothing is due while the bot's audio may still be playing or while
        the caller is talking (``caller_talking``), except the call-length goodbye.
        """
        if self.ended:
            return None
        server = self.runtime.cfg.server
        now = time.monotonic() if now is None else now
        lang = self.language
        if server.max_call_s and now - self.started >= server.max_call_s:
            return DueLine("max_length", self._closing(LIMIT_GOODBYE, lang))
        if caller_talking:
            return None
        since = self._quiet_since(now)
        if since is None:
            return None
        quiet = now - since
        prompted = self._prompt_reply is not None and self._prompt_reply is self._last_reply
        if not prompted and server.silence_prompt_s:
            if quiet >= server.silence_prompt_s:
                return DueLine("silence_prompt", _join(lang, _pick(SILENCE_PROMPT, lang), self._question_again()))
        elif server.silence_hangup_s and quiet >= server.silence_hangup_s:  # after the prompt, or without one
            return DueLine("silence", self._closing(SILENCE_GOODBYE, lang))
        return None

    def speak_line(self, line: DueLine) -> Iterator[tuple[int, np.ndarray]]:
        """Say a :class:`DueLine`. A closing line ends the call for the agent first: whatever the
        caller says over it is no longer answered."""
        if line.final:
            self.close(line.kind)
        log.info("call %s: %s after %.1f s", self.id, line.kind, time.monotonic() - self.started)
        reply = self._begin_reply()
        if line.kind == "silence_prompt":
            self._prompt_reply = reply
        entry = {"role": "bot", "text": line.text}
        self.transcript.append(entry)
        self._own_entries.append(entry)
        try:
            yield from self._speak(reply, iter([line.text]), TurnTimeline(call_id=self.id), entry, tell_agent=False)
        finally:
            self._end_reply(reply, entry, tell_agent=False)

    def _quiet_since(self, now: float) -> float | None:
        """When the line went quiet: the later of the bot's last audio and the caller's last
        meaningful turn (skipped turns leave no timeline); None while the bot may be talking."""
        reply = self._last_reply
        marks = [self.started]
        if reply is not None:
            if not reply.done:
                return None
            until = reply.playing_until()
            if now < until:
                return None
            marks.append(until)
        if self.timelines:
            tl = self.timelines[-1]
            marks.append(tl.speech_end or tl.turn_detected or self.started)
        return max(marks)

    def _question_again(self) -> str:
        """The question the bot last asked: the last sentence of its last line, or the slot's question."""
        own = {id(e) for e in self._own_entries}
        apologies = set(APOLOGY.values())
        for entry in reversed(self.transcript):
            if entry.get("role") != "bot" or id(entry) in own:
                continue
            said = (entry.get("text") or "") + (entry.get("unheard") or "")
            if not said.strip() or said in apologies:
                continue
            sentences = [x for x in split_sentences(said) if meaningful(x)]
            if sentences:
                return sentences[-1]
            break
        asking = getattr(self.agent.state, "asking", None)
        return QUESTIONS.get(self.language, {}).get(asking or "") or _pick(REASK, self.language)

    def _closing(self, lead: dict[str, str], lang: str) -> str:
        booked = bool(self.agent.state.reservation)
        return _join(lang, _pick(lead, lang), _pick(KEPT if booked else CALL_AGAIN, lang))

    def words_lead_on(self, text: str) -> bool:
        """The early words of a turn (``text``, raw) do not answer the bot's question yet, so the caller
        is likely to go on: nothing in them is understood (whisper's 「りね」 for the start of
        「いいえ、加藤です」), or they are a bare no to a yes-or-no question, which a correction usually
        follows. Whisper's text being mangled, a pause after 「いいえ、」 must not end the turn."""
        state = self.agent.state
        asking = getattr(state, "asking", None)
        pending = getattr(state, "pending", None) or getattr(state, "awaiting_confirmation", False)
        if not isinstance(asking, str) and not pending:
            return False  # no question asked: an opening line is whatever it is
        words = clean_transcript(text, self.language)
        if not meaningful(words):
            return False
        from pipeline.dialog.understand import understand

        u = understand(words, self._today(), asking="confirm" if pending else asking)
        if not u.acts and not u.values:
            return True
        return bool(pending) and not u.values and u.acts <= {"deny", "none"}

    def _today(self) -> dt.date:
        clock = self.runtime.clock
        return (clock() if clock is not None else dt.datetime.now(ZoneInfo(self.runtime.cfg.restaurant.timezone))).date()

    # ------------------------------------------------------------------ internals
    def stt_context(self) -> STTContext:
        """What the recogniser should expect of the caller's next turn: an answer to what the bot
        asked, in the call's language, perhaps with the restaurant's name in it."""
        state = self.agent.state
        asking = getattr(state, "asking", None)
        asking = asking if isinstance(asking, str) else None
        party, hours = restaurant_ranges(self.runtime.cfg.restaurant)
        heard_wrong = getattr(state, "heard_wrong", None)
        expect = expectation(asking, self.language, today=self._today(), party=party, hours=hours,
                             yes_no=bool(getattr(state, "pending", None)),
                             heard_wrong=tuple(heard_wrong.get(asking, ())) if isinstance(heard_wrong, dict) else ())
        if hasattr(state, "guess"):
            state.guess = None  # a guess belongs to the turn it was made on

        def guessed(text: str) -> None:
            state.guess = text
        # the caller may open in another language than the greeting's (the agent follows it early on)
        detect = tuple(self.runtime.cfg.stt.detect_languages) if getattr(state, "turn", 0) < 2 else ()
        return STTContext(asking=asking, language=self.language, words=(self.runtime.cfg.restaurant.name,),
                          expect=expect, detect=detect, guessed=guessed if hasattr(state, "guess") else None)

    def _transcribe(self, sr: int, samples: np.ndarray, tl: TurnTimeline,
                    ready: str | Future | None = None) -> str | None:
        """The turn's transcript as the agent reads it: whisper's inventions on silence, its loops
        and its odd digits cleaned away (``clean_transcript``); the raw text stays in the timeline."""
        raw = self._transcribe_raw(sr, samples, tl, ready)
        if raw is None:
            return None
        text = clean_transcript(raw, self.language)
        if text != raw:
            tl.transcript_raw = raw
            log.debug("call %s: transcript %r cleaned to %r", self.id, raw, text)
        tl.transcript = text
        return text

    def _transcribe_raw(self, sr: int, samples: np.ndarray, tl: TurnTimeline,
                        ready: str | Future | None = None) -> str | None:
        if isinstance(ready, str):
            tl.stamp("transcript_ready")
            tl.transcript = ready.strip()
            return tl.transcript
        if isinstance(ready, Future) and not ready.cancel():
            try:
                # a worker stuck (a hung remote server, a wedged thread) is this turn's STT failure
                result = ready.result(timeout=EARLY_TRANSCRIPT_TIMEOUT_S)
            except CancelledError:
                result = None  # cancelled elsewhere (the runtime closing): transcribe here
            except Exception as e:
                tl.stamp("transcript_ready")
                tl.error = f"stt: {type(e).__name__}: {e}"
                log.error("call %s: STT failed on %.2f s of audio", self.id, samples.size / max(sr, 1),
                          exc_info=e)
                return None
            if result is not None:
                tl.stamp("transcript_ready")
                tl.speculative = True
                tl.stt_s = result.elapsed_s
                tl.stt_retried = result.retried
                tl.transcript = (result.text or "").strip()
                return tl.transcript
        if samples.size == 0:
            tl.stamp("transcript_ready")
            return ""
        try:
            if is_silent(samples):
                tl.stamp("transcript_ready")
                return ""
            t0 = time.perf_counter()
            with listening_for(self.stt_context()):
                result = self.runtime.stt.transcribe(samples, sr)
            tl.stt_s = time.perf_counter() - t0
            tl.stt_retried = result.retried
            text = (result.text or "").strip()
        except Exception as e:
            tl.stamp("transcript_ready")
            tl.error = f"stt: {type(e).__name__}: {e}"
            log.exception("call %s: STT failed on %.2f s of audio", self.id, samples.size / max(sr, 1))
            return None
        tl.stamp("transcript_ready")
        tl.transcript = text
        return text

    def _agent_text(self, text: str, tl: TurnTimeline) -> Iterator[str]:
        self._agent_turn = tl.turn
        stream = self.agent.respond(text)
        try:
            for chunk in stream:
                if chunk:
                    tl.stamp("first_text")
                    yield chunk
        except Exception as e:
            # the agents turn their own LLM/tool faults into speech; this is a bug, but the caller
            # must still hear something and be able to go on
            tl.error = f"agent: {type(e).__name__}: {e}"
            log.exception("call %s: the agent failed on %r", self.id, text)
            tl.stamp("first_text")
            yield APOLOGY.get(self.language, APOLOGY["en"])
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _begin_reply(self) -> _Reply:
        reply = _Reply(self.sample_rate)
        self._reply = reply
        self._last_reply = reply
        return reply

    def _end_reply(self, reply: _Reply, entry: dict[str, Any], tell_agent: bool = True) -> None:
        with reply.lock:
            reply.done = True
            if reply.frozen:
                self._apply_heard(reply, tell_agent)
        if not reply.frozen:
            entry["text"] = reply.raw

    def _apply_heard(self, reply: _Reply, tell_agent: bool = True) -> None:
        """Tell the agent (once) that only ``reply.heard`` reached the caller; mark the transcript."""
        if reply.applied:
            return
        reply.applied = True
        heard = reply.heard or ""
        for entry in reversed(self.transcript):
            if entry["role"] == "bot":
                entry["text"] = heard
                entry["interrupted"] = True
                entry["unheard"] = reply.raw[len(heard):]
                break
        if tell_agent:
            try:
                self.agent.interrupted(heard)
            except Exception:
                log.exception("call %s: the agent failed to take the interruption", self.id)

    def _speak(
        self,
        reply: _Reply,
        text: Iterator[str],
        tl: TurnTimeline,
        entry: dict[str, Any],
        tell_agent: bool = True,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Sentences out of ``text`` as they complete, each synthesized and handed out in pieces."""
        splitter = SentenceSplitter(first_clause_chars=self.runtime.cfg.tts.first_clause_chars)
        tts_broken = False
        pos = 0  # how far into reply.raw the sentences have been matched

        def sentences() -> Iterator[tuple[str, int]]:
            nonlocal pos
            for chunk in text:
                reply.raw += chunk
                for s in splitter.feed(chunk):
                    pos = self._raw_end(reply.raw, s, pos)
                    yield s, pos
            rest = splitter.flush()
            if rest:
                yield rest, len(reply.raw)

        pieces = sentences()
        try:
            for sentence, raw_end in pieces:
                entry["text"] = reply.raw
                if tts_broken:
                    continue  # keep reading the agent so its tools run; nothing more is voiced
                lang = self.language
                try:
                    audio = np.asarray(self.runtime.tts.synthesize(sentence, lang), dtype=np.float32).reshape(-1)
                except Exception as e:
                    tts_broken = True
                    tl.error = f"tts: {type(e).__name__}: {e}"
                    log.exception("call %s: TTS failed on %r", self.id, sentence)
                    yield from self._fallback(reply, lang)
                    continue
                if audio.size == 0:
                    continue
                tl.stamp("first_audio_synth")
                reply.add(sentence, raw_end, audio.size)
                yield from self._chunks(reply, audio)
        finally:
            # Closed here, not whenever the garbage collector gets to them: the agent's stream (and
            # its HTTP response) must be finished before the agent is told what was heard.
            pieces.close()
            close = getattr(text, "close", None)
            if close is not None:
                close()
            if tts_broken:
                self._mark_partial(reply)

    def _mark_partial(self, reply: _Reply) -> None:
        """After a TTS fault the agent must know the caller heard only the sentences voiced before it."""
        with reply.lock:
            if reply.frozen:
                return
            voiced = [s for s in reply.sentences if s.text != "\0fallback"]
            reply.heard = reply.raw[: max((s.raw_end for s in voiced), default=0)]
            reply.frozen = True

    def _fallback(self, reply: _Reply, lang: str) -> Iterator[tuple[int, np.ndarray]]:
        rendered = self.runtime.fallback_audio
        audio = rendered.get(lang)
        if audio is None and rendered:
            audio = next(iter(rendered.values()))  # the apology in another language beats silence
        if audio is None:
            log.error("call %s: TTS is down and no fallback phrase was rendered: the caller hears nothing", self.id)
            return
        start = reply.samples
        reply.add("\0fallback", 0, audio.size)
        reply.sentences[-1].raw_end = 0
        yield from self._chunks(reply, audio, start)

    def _chunks(self, reply: _Reply, audio: np.ndarray, start: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        sr = self.sample_rate
        step = max(1, int(CHUNK_S * sr))
        base = reply.samples - audio.size if start is None else start
        audio = np.clip(audio, -1.0, 1.0)
        for i in range(0, audio.size, step):
            piece = audio[i : i + step]
            reply.sent(base + i, base + i + piece.size, time.monotonic())
            yield sr, piece

    @staticmethod
    def _raw_end(raw: str, sentence: str, pos: int) -> int:
        """Where ``sentence`` ends in the agent's raw text (the splitter strips the spaces between)."""
        i = raw.find(sentence, pos)
        return len(raw) if i < 0 else i + len(sentence)

    def _log_turn(self, tl: TurnTimeline) -> None:
        record = tl.to_json()
        log.info("call %s: turn %d gap %s ms (stt %s s)", self.id, tl.turn, record["gap_ms"], record["stt_s"])
        self.runtime.write_log({"event": "turn", **record})
