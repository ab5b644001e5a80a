"""What every call of the process shares: the config, the store and the agents' services, the speech
models (STT, TTS, VAD) and the pool that transcribes early, the live calls keyed by the transport's
connection id (the Twilio streamSid on the phone), the ``server.max_calls`` lines, Twilio's REST API,
the pre-rendered apology and busy message, and the call log."""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

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
from pipeline.dialog.rules import stock_phrases
from pipeline.privacy import append_call_log, call_log_record
from pipeline.speech.stt import STT, STTContext, Transcript, is_silent, listening_for
from pipeline.speech.tts import CACHE_MAX_CHARS, TTS, SentenceSplitter, split_sentences
from pipeline.transport.twilio.rest import (
    TwilioREST,
    TwilioRESTError,
    confirmation_text,
    is_mobile,
    japanese_e164,
)
from pipeline.voice.call import PhoneLine, VoiceCall
from pipeline.voice.phrases import ACK, APOLOGY, BUSY
from pipeline.voice.timeline import now_iso

log = logging.getLogger(__name__)


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
        #: the acknowledgement that starts a late reply (``tts.ack_after_s``), per language
        self.ack_audio: dict[str, np.ndarray] = {}
        # A turn's steps before its first audio run here when the reply may be late, so that the
        # acknowledgement can be handed out meanwhile: one worker a call at most, and a spare.
        self._reply_pool = ThreadPoolExecutor(
            max_workers=(cfg.server.max_calls or cfg.server.concurrency_limit) + 1, thread_name_prefix="reply")
        self._closed = False
        #: Twilio's REST API for phone calls (transfers, texts): True = from the config and environment
        self.twilio: TwilioREST | None = TwilioREST.from_config(cfg) if twilio_rest is True else (twilio_rest or None)
        self._rest_pool: ThreadPoolExecutor | None = None
        self._rest_lock = threading.Lock()
        self._report_phone_features()
        if prerender:
            self.prerender_fallbacks()
            self.prerender_busy()
            if cfg.tts.ack_after_s:
                self.ack_audio.update(self._render_per_language(
                    ACK, "acknowledgement", "a late reply is silent until it comes", logging.WARNING))

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
        from pipeline.speech.stt import make_stt
        from pipeline.speech.tts import make_tts
        from pipeline.speech.vad import make_vad

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
        self._reply_pool.shutdown(wait=False, cancel_futures=True)
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
    def run_soon(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` on a reply worker (see ``VoiceCall.turn``), in the caller's context."""
        return self._reply_pool.submit(contextvars.copy_context().run, fn, *args)

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
        line = json.dumps({"at": now_iso(), **record}, ensure_ascii=False, default=str)
        try:
            with self._log_lock:
                append_call_log(self.call_log, line)  # under the lock the pruner takes (pipeline.privacy)
        except OSError as e:
            log.warning("cannot write the call log %s: %s", self.call_log, e)
