"""One call: the caller's turns through STT -> agent -> TTS, the history, and the lines the bot says
of its own accord (the silence prompt, the goodbye at the call's limits).

``VoiceCall.turn()`` is a plain synchronous generator: FastRTC runs sync reply generators in a
worker thread, so the blocking STT, LLM streaming and TTS in it never touch the event loop. Each turn
is timed in a :class:`~pipeline.voice.timeline.TurnTimeline`; each reply keeps a
:class:`~pipeline.voice.playback.Playback` record, so that after a barge-in the agent is told only
what the caller heard. The calls of a process share a :class:`~pipeline.voice.runtime.VoiceRuntime`.

A phone call carries a :class:`PhoneLine`: the caller's number and Twilio's CallSid from the signed
webhook. Its agent is offered the caller's number and the keypad, and may hand the call to a person
(``restaurant.transfer_number``, through Twilio's REST API:
:meth:`~pipeline.voice.runtime.VoiceRuntime.transfer`); a turn that books, changes or cancels a
booking may text the caller (``twilio.sms_confirmations``), in a worker thread, never holding up the
reply nor touching the booking when it fails.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
from fastrtc import AdditionalOutputs

from pipeline.agents.factory import Agent
from pipeline.dialog.rules import QUESTIONS
from pipeline.dialog.understand.sound import expectation, restaurant_ranges
from pipeline.dialog.understand.transcript import clean_transcript
from pipeline.speech.stt import (
    DETECT_MIN_S,
    WHISPER_SAMPLE_RATE,
    STTContext,
    is_silent,
    listening_for,
    prepare_audio,
)
from pipeline.speech.tts import SentenceSplitter, split_sentences
from pipeline.transport.twilio.rest import confirmations_due, standing
from pipeline.voice.phrases import (
    APOLOGY,
    CALL_AGAIN,
    KEPT,
    LIMIT_GOODBYE,
    REASK,
    SILENCE_GOODBYE,
    SILENCE_PROMPT,
)
from pipeline.voice.playback import Playback, in_chunks
from pipeline.voice.timeline import TurnTimeline, now_iso
from pipeline.voice.turns import YES_NO_PENDING

if TYPE_CHECKING:
    from pipeline.voice.runtime import VoiceRuntime

log = logging.getLogger(__name__)

#: an early transcription not back after this long is the turn's STT failure (an apology), not a call
#: stuck for good on a wedged worker or a hung server
EARLY_TRANSCRIPT_TIMEOUT_S = 30.0
#: longest wait for a reply prepared ahead to finish its first clause
AHEAD_WAIT_S = 2.0
#: a turn this long (seconds, with its closing silence) in which whisper found no words was speech
#: not understood, not a cough or a click: the caller is asked to say it again
UNHEARD_S = 1.2
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


def _pick(texts: dict[str, str], lang: str) -> str:
    return texts.get(lang) or texts["en"]


def _join(lang: str, *parts: str) -> str:
    return ("" if lang == "ja" else " ").join(p for p in parts if p)


#: what a reply handed to a worker gives back when it has nothing more
_DONE = object()
#: a turn that ends after its acknowledgement was due (the caller's words led on, so the turn
#: waited) still gets this long for its reply before the acknowledgement: one prepared ahead is ready
ACK_GRACE_S = 0.15


def _close(reply: Iterator[Any]) -> None:
    close = getattr(reply, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.exception("closing a reply failed")


def meaningful(text: str) -> bool:
    """Whether a transcript is words rather than silence, noise marks or a Whisper hallucination."""
    t = (text or "").strip()
    return bool(t) and bool(_SAYABLE.search(t)) and t.casefold() not in _HALLUCINATIONS


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
        self.started_at = now_iso()
        self.closed: str | None = None
        self._reply: Playback | None = None
        self._turns = 0
        #: the last turn had no words and the caller was asked to say it again (once in a row)
        self._asked_unheard = False
        #: the last turn the agent was given; the words of a turn cut short before that (the caller
        #: went on at once), to be put before the next turn's
        self._agent_turn = 0
        self._carried: str | None = None
        #: the latest reply of any kind (``_reply`` is reset when a turn starts, even a skipped one)
        self._last_reply: Playback | None = None
        self._prompt_reply: Playback | None = None  # the silence prompt, while nothing came after it
        self._own_entries: list[dict[str, Any]] = []  # transcript lines the bot said on its own
        #: the reply to these words being prepared ahead (``pipeline/voice/speculation.py``)
        self.ahead: tuple[str, Future] | None = None
        #: the caller's words so far (16 kHz), while too little has been heard to tell their language
        #: by ear; None once it has been (``stt.detect_languages``)
        self._opening: np.ndarray | None = (np.zeros(0, np.float32) if len(runtime.cfg.stt.detect_languages) > 1
                                            else None)
        self._heard_in: str | None = None  # the language the last turn was decoded in

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

        A reply with no audio ``tts.ack_after_s`` after the caller stopped starts with the
        acknowledgement (「はい。」): the turn's first steps run on a reply worker meanwhile.
        """
        tl = timeline or TurnTimeline()
        ack = self.runtime.ack_audio.get(self.language) if self.runtime.cfg.tts.ack_after_s else None
        if ack is None:
            yield from self._turn(audio, tl, transcript)
            return
        stopped = tl.speech_end if tl.speech_end is not None else time.monotonic()
        yield from self._acknowledged(self._turn(audio, tl, transcript), tl, ack,
                                      stopped + self.runtime.cfg.tts.ack_after_s)

    def _acknowledged(self, reply: Iterator[Any], tl: TurnTimeline, ack: np.ndarray,
                      due: float) -> Iterator[Any]:
        """``reply``, its items up to its first audio made on a reply worker; if none has come by
        ``due``, the acknowledgement is handed out first (once). Closed early (a barge-in), ``reply``
        is closed as soon as the worker lets go of it."""
        step: Future | None = None
        try:
            while True:
                step = self.runtime.run_soon(next, reply, _DONE)
                try:
                    item = step.result(timeout=max(ACK_GRACE_S, due - time.monotonic())) if due else step.result()
                except FutureTimeout:
                    due = 0.0  # once
                    tl.stamp("acked")
                    log.debug("call %s: turn %d: no reply after %.1f s: acknowledged", self.id, tl.turn,
                              time.monotonic() - (tl.speech_end or tl.turn_detected or 0.0))
                    for _start, piece in in_chunks(ack, self.sample_rate):
                        yield self.sample_rate, piece
                    item = step.result()
                step = None
                if item is _DONE:
                    return
                yield item
                if not isinstance(item, AdditionalOutputs):
                    break  # the reply's audio has begun: the rest comes as it is made, here
            yield from reply
        finally:
            if step is not None and not step.done():
                step.add_done_callback(lambda _f: _close(reply))
            else:
                _close(reply)

    def _turn(
        self,
        audio: tuple[int, np.ndarray],
        tl: TurnTimeline,
        transcript: str | Future | None = None,
    ) -> Iterator[tuple[int, np.ndarray] | AdditionalOutputs]:
        self._turns += 1
        self._reply = None  # a barge-in from here on stops this turn, not the previous reply
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
                if tl.audio_s >= UNHEARD_S and not self._asked_unheard and not self._over_the_bot(tl):
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
            self._heard_opening(sr, samples)
            self.timelines.append(tl)
            self.transcript.append({"role": "user", "text": text})
            log.debug("call %s: caller: %s", self.id, text)
            carried, self._carried = self._carried, None
            if carried:
                # the caller went on before the agent read their last words: they are this turn's start
                text = f"{carried} {text}" if self.language == "en" else f"{carried}、{text}"
            tl.prepared = self._await_ahead(text)
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

    def _over_the_bot(self, tl: TurnTimeline) -> bool:
        """The turn began while the bot's last reply was still playing (a backchannel whisper found no
        words in is no utterance to ask about)."""
        reply = self._last_reply
        if reply is None or tl.speech_end is None:
            return False
        with reply.lock:
            return reply.playing_until() > tl.speech_end - tl.audio_s

    def _await_ahead(self, text: str) -> bool:
        """The reply to ``text`` is being prepared ahead: let its first clause finish rendering
        rather than render it a second time beside it. True when one was prepared on these words."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return False
        if ahead[0] != text:
            ahead[1].cancel()  # prepared for other words: an LLM's request ahead is closed
            return False
        try:
            ahead[1].result(timeout=AHEAD_WAIT_S)
        except Exception:  # slow or failed: the clause is rendered as usual
            pass
        return True

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

    def assume_played(self, ago_s: float = 1.0) -> None:
        """Take everything handed out so far as already heard, its playback over ``ago_s`` seconds ago
        (a transport that plays before it returns, or a test that does not want to wait it out)."""
        reply = self._last_reply
        if reply is None:
            return
        with reply.lock:
            shift = max(0.0, reply.playing_until() - time.monotonic())
            reply.sends = [(t - shift - ago_s, s0, s1) for t, s0, s1 in reply.sends]

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
        pending = getattr(state, "pending", None)
        pending = pending if isinstance(pending, dict) else {}
        expect = expectation(asking, self.language, today=self._today(), party=party, hours=hours,
                             yes_no=pending.get("kind") in YES_NO_PENDING,
                             choices=pending.get("options", ()) if pending.get("kind") == "choose" else (),
                             heard_wrong=tuple(heard_wrong.get(asking, ())) if isinstance(heard_wrong, dict) else ())
        if hasattr(state, "guess"):
            state.guess = None  # a guess belongs to the turn it was made on
            state.guess_also = None

        def guessed(text: str) -> None:
            if state.guess is None:
                state.guess = text
            else:
                state.guess_also = text
        # the caller may open in another language than the greeting's: heard by ear until enough of
        # their speech has been (a hesitant opener comes in pieces: "Um," / "December 24th," / ...)
        opening = self._opening
        detect = tuple(self.runtime.cfg.stt.detect_languages) if opening is not None else ()
        return STTContext(asking=asking, language=self.language, words=(self.runtime.cfg.restaurant.name,),
                          expect=expect, detect=detect, guessed=guessed if hasattr(state, "guess") else None,
                          heard_before=opening if opening is not None and opening.size else None)

    def _heard_opening(self, sr: int, samples: np.ndarray) -> None:
        """A turn with words in it, while the caller's language is not settled: kept to be heard with
        the next turns, or, once there is enough of it for whisper to tell (it was told on this
        turn), the language is settled; a turn decoded in another language switches the call."""
        opening = self._opening
        if opening is None:
            return
        heard = self._heard_in
        if heard and heard != self.language:
            log.info("call %s: the caller speaks %s (heard by ear): switching from %s", self.id, heard, self.language)
            self.agent.state.language = heard
        try:
            opening = np.concatenate([opening, prepare_audio(samples, sr)])
        except ValueError:
            return
        self._opening = None if opening.size >= DETECT_MIN_S * WHISPER_SAMPLE_RATE else opening

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
        self._heard_in = None
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
                self._heard_in = result.language
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
            self._heard_in = result.language
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

    def _begin_reply(self) -> Playback:
        reply = Playback(self.sample_rate)
        self._reply = reply
        self._last_reply = reply
        return reply

    def _end_reply(self, reply: Playback, entry: dict[str, Any], tell_agent: bool = True) -> None:
        with reply.lock:
            reply.done = True
            if reply.frozen:
                self._apply_heard(reply, tell_agent)
        if not reply.frozen:
            entry["text"] = reply.raw

    def _apply_heard(self, reply: Playback, tell_agent: bool = True) -> None:
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
        reply: Playback,
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

    def _mark_partial(self, reply: Playback) -> None:
        """After a TTS fault the agent must know the caller heard only the sentences voiced before it."""
        with reply.lock:
            if reply.frozen:
                return
            voiced = [s for s in reply.sentences if s.text != "\0fallback"]
            reply.heard = reply.raw[: max((s.raw_end for s in voiced), default=0)]
            reply.frozen = True

    def _fallback(self, reply: Playback, lang: str) -> Iterator[tuple[int, np.ndarray]]:
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

    def _chunks(self, reply: Playback, audio: np.ndarray, start: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        base = reply.samples - audio.size if start is None else start
        for i, piece in in_chunks(np.clip(audio, -1.0, 1.0), self.sample_rate):
            reply.sent(base + i, base + i + piece.size, time.monotonic())
            yield self.sample_rate, piece

    @staticmethod
    def _raw_end(raw: str, sentence: str, pos: int) -> int:
        """Where ``sentence`` ends in the agent's raw text (the splitter strips the spaces between)."""
        i = raw.find(sentence, pos)
        return len(raw) if i < 0 else i + len(sentence)

    def _log_turn(self, tl: TurnTimeline) -> None:
        record = tl.to_json()
        log.info("call %s: turn %d gap %s ms (stt %s s)", self.id, tl.turn, record["gap_ms"], record["stt_s"])
        self.runtime.write_log({"event": "turn", **record})
