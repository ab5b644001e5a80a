"""One call's listening: the caller's utterances, what is started on them while they pause, and
what is said over the bot.

- **End of turn** (:class:`~pipeline.voice.detector.TurnDetector`): the turn ends after
  ``vad.end_silence_ms`` of trailing silence, longer while a phone number is read (callers pause
  between digit groups) unless the early transcript already holds a whole valid number, shorter after
  a yes/no question, and after the end-of-turn model's verdict when one is configured
  (:mod:`pipeline.voice.turns`).
- **Early transcript**: at the first short pause the utterance so far is transcribed in a worker
  thread; when the turn ends with nothing voiced since, that transcript is the turn's. Once its
  words leave nothing hanging, the reply to them is prepared ahead (:mod:`pipeline.voice.speculation`).
- **Speech over the bot** (:mod:`pipeline.voice.backchannel`): a burst said while the bot is audible
  is judged before it stops the bot: a backchannel is neither a barge-in nor a turn.

Not thread-safe: the transport calls it under its own lock, and tells it how to reach the call and
whether the bot is audible.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from pipeline.dialog.parse import is_valid_phone, parse_phone
from pipeline.voice.backchannel import Burst, BurstJudge
from pipeline.voice.call import VoiceCall
from pipeline.voice.detector import VAD_RATE, TurnDetector
from pipeline.voice.runtime import VoiceRuntime
from pipeline.voice.speculation import prepare_soon, went_on
from pipeline.voice.turns import (
    SHORT_ANSWER,
    YES_NO_PENDING,
    Pause,
    TurnPolicy,
    end_of_turn_model,
    holds_digits,
    sounds_finished,
    sounds_unfinished,
)

log = logging.getLogger(__name__)

#: longest wait for the words of a burst said over the bot before the caller is given the floor
BURST_WORDS_TIMEOUT_S = 1.5
#: an utterance the turn-taking ended: its audio (int16 at 16 kHz), when speech ended, its early transcription
Utterance = tuple[np.ndarray, float | None, Future | None]


@dataclass
class _Speculation:
    """An early transcription of the utterance, started at a short pause."""

    future: Future
    voiced: int  # the utterance's voiced windows when it started: more since, and it is stale
    phone: str | None = None  # a whole valid phone number in its transcript, once looked at
    checked: bool = False
    prepared: bool = False  # its words were looked at for a reply prepared ahead
    leads_on: bool | None = None  # its words leave the caller going on (None: not judged yet)


class Listener:
    """One call's turn-taking on the caller's audio (see the module's doc)."""

    def __init__(self, runtime: VoiceRuntime, *, call: Callable[[], VoiceCall],
                 current: Callable[[], VoiceCall | None], bot_audible: Callable[[float], bool],
                 name: Callable[[], str | None]):
        """``call``: the call, created on first use; ``current``: the call if it exists yet;
        ``bot_audible``: whether the bot is talking (or about to) at a time; ``name``: the call's id
        for the log."""
        self.runtime = runtime
        self._call, self._current, self._bot_audible, self._name = call, current, bot_audible, name
        vad_cfg = runtime.cfg.vad
        self.vad_cfg = vad_cfg
        self.detector = TurnDetector(runtime.vad, vad_cfg)
        #: this utterance's early transcription, and the last one started (at most one runs per call)
        self._spec: _Speculation | None = None
        self._spec_running: Future | None = None
        self._policy = TurnPolicy(vad_cfg)
        self._turn_model = end_of_turn_model(vad_cfg, runtime.cfg.path)
        #: the end-of-turn model's verdict on the utterance as it stood at its last short pause
        self._verdict: tuple[int, Future] | None = None
        #: a burst said over the bot, being judged; the words asked of it; an utterance it ended
        self._burst: BurstJudge | None = None
        self._burst_words: Future | None = None
        self._burst_asked_at = 0.0
        self._burst_held: Utterance | None = None
        self._caller_db: float | None = None  # the caller's usual speaking level (dBFS)

    def hear(self, pcm: np.ndarray, arrived: float) -> tuple[set[str], Utterance | None]:
        """Under the caller's lock: a frame (int16 mono at 16 kHz) heard at ``arrived``. Returns the
        detector's events (``"onset"``: the caller is barging in) and the utterance it ended, if any:
        its audio, when speech ended, and its early transcription when that heard all of it. A burst
        said over the bot is held until judged: a backchannel is dropped, a barge-in becomes an onset."""
        utterance = None
        det = self.detector
        if det.in_utterance:  # nobody talking: nothing to end (and an idle call does no more per frame)
            det.set_end_silence(self._end_silence_ms())
        events = det.feed(pcm, arrived)
        if "start" in events and self._burst is None and self._bot_audible(arrived):
            self._burst = BurstJudge(self.vad_cfg, det.window_s * 1000, caller_db=self._caller_db)
        verdict = self._judge_burst(arrived)
        if self._burst is not None:
            events.discard("onset")  # said over the bot: not a barge-in until judged one
        elif verdict is None and det.in_utterance:
            self._note_level()
        if "end" in events:
            log.debug("call %s: end of turn after %d ms of silence", self._name(),
                      det.silence * det.window_s * 1000)
            audio, speech_end, voiced = det.take()
            utterance = (audio, speech_end, self._take_speculation(voiced))
            if self._burst is not None:
                self._burst_held, utterance = utterance, None  # its verdict says what it was
        elif self._burst is None:
            self._maybe_speculate()
            self._maybe_prepare_reply()
        if verdict is Burst.BACKCHANNEL and self._bot_audible(arrived):
            self._drop_burst(utterance)
            utterance = None
        elif verdict is not None:
            # a barge-in; or a 「はい」 that outlasted the bot's words: after the read-back it is the answer
            if verdict is Burst.BARGE_IN:
                events.add("onset")
            utterance, self._burst_held = utterance or self._burst_held, None
        return events, utterance

    def take(self) -> np.ndarray:
        """Under the caller's lock: whatever the caller has said so far, ending their turn now."""
        audio, _speech_end, voiced = self.detector.take()
        spec = self._take_speculation(voiced)
        if spec is not None:
            spec.cancel()  # cut short by request: the audio goes on past what it heard
        return audio

    def reset(self) -> Future | None:
        """Under the caller's lock: forget the caller's audio and what was started on it; returns the
        early transcription to cancel (outside the lock)."""
        self.detector.reset()
        spec, self._spec = self._spec, None
        self._burst = self._burst_held = self._verdict = None
        return None if spec is None else spec.future

    # ------------------------------------------------------------------ bursts said over the bot
    def _judge_burst(self, now: float) -> Burst | None:
        """Under the lock: the burst's new windows (and its words, when back) to a verdict, once."""
        judge = self._burst
        if judge is None:
            return None
        det = self.detector
        for voiced, level in det.windows:
            if judge.decided:
                break
            if judge.window(voiced, level) is Burst.TRANSCRIBE:
                if self._burst_words is not None:
                    self._burst_words.cancel()
                self._burst_words = self.runtime.transcribe_soon(det.audio(det.processed), VAD_RATE,
                                                                 context=self._call().stt_context())
                self._burst_asked_at = now
        words = self._burst_words
        if not judge.decided and judge.asked is not None and words is not None:
            if words.done():
                self._burst_words = None
                try:
                    text = words.result().text or ""
                except Exception:  # cancelled or failed
                    text = None
                log.debug("call %s: %s words of speech over the bot: %r", self._name(), judge.asked, text)
                judge.transcript(text)
            elif judge.asked == "final" and now - self._burst_asked_at > BURST_WORDS_TIMEOUT_S:
                judge.timed_out()
        if not judge.decided:
            return None
        log.debug("call %s: speech over the bot: %s (%.0f ms, %.0f ms voiced, peak %.1f dB, caller %s dB)",
                  self._name(), judge.verdict.value, judge.elapsed_ms, judge.voiced_ms, judge.peak_db,
                  None if self._caller_db is None else round(self._caller_db, 1))
        self._burst = None
        if self._burst_words is not None:
            self._burst_words.cancel()
            self._burst_words = None
        return judge.verdict

    def _drop_burst(self, ended: Utterance | None) -> None:
        """Under the lock: a backchannel is not a turn: forget its audio and what was started on it."""
        held, self._burst_held = self._burst_held, None
        futures = [u[2] for u in (held, ended) if u is not None and u[2] is not None]
        det = self.detector
        if det.in_utterance:
            _audio, _end, voiced = det.take()
            futures.append(self._take_speculation(voiced))
        for future in futures:
            if future is not None:
                future.cancel()
        self._verdict = None

    def _note_level(self) -> None:
        """Under the lock: the caller's speaking level, from their loudest windows (slowly forgotten),
        for the energy rule of bursts said over the bot."""
        for voiced, level in self.detector.windows:
            if voiced:
                self._caller_db = level if self._caller_db is None else max(level, self._caller_db - 0.02)

    # ------------------------------------------------------------------ end of turn
    def _end_silence_ms(self) -> int:
        """How much silence ends the caller's turn, given what the bot asked and, when one is
        configured, the end-of-turn model's verdict on the utterance as it stands."""
        call = self._current()
        state = getattr(getattr(call, "agent", None), "state", None)
        asking = getattr(state, "asking", None)
        asking = asking if isinstance(asking, str) else None
        pending = getattr(state, "pending", None)
        if isinstance(pending, dict) and pending.get("kind") in YES_NO_PENDING:
            # 「今おかけの番号でよろしいでしょうか」 is asked while the phone number is the item asked
            # for: its answer is a yes or a no, not digits read out in groups
            asking = "confirm"
        det = self.detector
        phone_heard = asking == "phone" and self._speculated_phone()
        pause = Pause(det.voiced, det.silence * det.window_s * 1000, asking, phone_heard)
        return self._policy.end_silence_ms(pause, self._complete(asking == "phone", phone_heard,
                                                                 yes_no=asking in SHORT_ANSWER))

    def _complete(self, asking_phone: bool = False, phone_heard: bool = False, *, yes_no: bool = False) -> bool | None:
        """Under the lock: whether the utterance as it stands is a finished turn. None: the silence
        rule decides (no model, a failed one, or the words and the model disagree that it is
        unfinished). Until the model's verdict is back, and while the early transcript that can
        overrule it is still being made, it is not finished."""
        if self._turn_model is None or self._turn_model.failed:
            # no model: the silence rule, unless the early words say the caller is going on; after a
            # yes-or-no question the turn is not over while they are being made (the reply needs them
            # anyway, and its 300 ms would otherwise end 「いいえ、」 before its words are back)
            spec = self._spec
            if yes_no and spec is not None and spec.voiced == self.detector.voiced and not spec.future.done():
                return False
            return False if self._words_lead_on() else None
        det = self.detector
        verdict = self._verdict
        if verdict is None or verdict[0] != det.voiced or not verdict[1].done():
            return False
        try:
            complete = verdict[1].result()
        except Exception:  # cancelled
            return False
        if complete is None:
            return None  # the model failed just now: silence alone
        spec = self._spec
        if spec is None or spec.voiced != det.voiced:
            return complete  # no early transcript of it (one still runs): the model alone
        if not spec.future.done():
            return False
        try:
            text = spec.future.result().text or ""
        except Exception:
            return complete
        if complete:
            return not (sounds_unfinished(text) or (asking_phone and not phone_heard and holds_digits(text))
                        or self._words_lead_on())
        return None if phone_heard or sounds_finished(text) else False

    def _words_lead_on(self) -> bool:
        """Under the lock: the early transcript of the utterance as it stands is back and leaves the
        caller going on: hanging on a particle or a filler, or not yet an answer to what the bot asked
        (:meth:`VoiceCall.words_lead_on`). Judged once per early transcript."""
        spec = self._spec
        if spec is None or spec.voiced != self.detector.voiced or not spec.future.done():
            return False
        if spec.leads_on is None:
            try:
                text = spec.future.result().text or ""
            except Exception:  # failed or cancelled: the turn's own STT will say
                text = ""
            spec.leads_on = bool(text.strip()) and (sounds_unfinished(text) or self._call().words_lead_on(text))
        return spec.leads_on

    def _speculated_phone(self) -> bool:
        spec = self._spec
        if spec is None or spec.voiced != self.detector.voiced or not spec.future.done():
            return False
        if not spec.checked:
            spec.checked = True
            try:
                text = spec.future.result().text or ""
            except Exception:  # failed or cancelled: the turn's own STT will say
                return False
            digits = parse_phone(text)
            spec.phone = digits if digits and is_valid_phone(digits) else None
        return spec.phone is not None

    def _maybe_speculate(self) -> None:
        """Under the lock: transcribe the utterance so far once the caller pauses briefly."""
        cfg = self.vad_cfg
        pause_ms = cfg.speculative_pause_ms
        det = self.detector
        spec = self._spec
        if spec is not None and spec.voiced != det.voiced:
            spec.future.cancel()  # the caller went on: that transcript is of half the sentence
            self._spec = spec = None
            went_on(self._call())  # and so is a reply prepared on it
        if not det.in_utterance or det.voiced < det.min_speech:
            return
        silence_ms = det.silence * det.window_s * 1000
        verdict = self._verdict
        if (self._turn_model is not None and (verdict is None or verdict[0] != det.voiced)
                and silence_ms >= (pause_ms or cfg.turn_complete_silence_ms // 2)):
            # the end-of-turn model on the utterance so far, in its own pool
            self._verdict = (det.voiced, self._turn_model.classify_soon(det.audio(det.processed)))
        if not pause_ms or spec is not None or silence_ms < pause_ms:
            return
        if self._spec_running is not None and not self._spec_running.done():
            return  # at most one per call: a stale one still runs; try again on the next frame
        future = self.runtime.transcribe_soon(det.audio(det.processed), VAD_RATE, context=self._call().stt_context())
        self._spec = _Speculation(future, det.voiced)
        self._spec_running = future

    def _maybe_prepare_reply(self) -> None:
        """Under the lock: once the early words of the utterance as it stands are back and leave
        nothing hanging, have the reply to them prepared ahead (``pipeline/voice/speculation.py``)."""
        spec = self._spec
        if (not self.vad_cfg.prepare_reply or spec is None or spec.prepared or spec.voiced != self.detector.voiced
                or not spec.future.done()):
            return
        spec.prepared = True
        try:
            text = spec.future.result().text or ""
        except Exception:  # failed or cancelled: nothing to prepare
            return
        asking = getattr(self._call().agent.state, "asking", None)
        reading_phone = asking == "phone" and not self._speculated_phone() and holds_digits(text)
        if text.strip() and not sounds_unfinished(text) and not reading_phone:
            prepare_soon(self._call(), text)

    def _take_speculation(self, voiced: int) -> Future | None:
        """Under the lock: the early transcription if it heard the whole utterance."""
        spec, self._spec = self._spec, None
        if spec is None:
            return None
        if spec.voiced != voiced:
            spec.future.cancel()
            return None
        return spec.future
