"""The ``ReplyOnPause`` subclass FastRTC drives, one copy per connection (browser or phone).

What it changes in FastRTC 0.0.34's ``ReplyOnPause``, and why:

- **Streaming end of turn** instead of a pause check every 0.6 s chunk (which ended turns
  0.6-1.1 s after the caller stopped and lost a short 「はい」 straddling two chunks): silero runs on
  every 32 ms window as frames arrive, with its state kept per call and hysteresis on the speech
  probability. The turn ends after ``vad.end_silence_ms`` of trailing silence, longer while a phone
  number is read (callers pause between digit groups) unless the early transcript already holds a
  whole valid number, shorter after a yes/no question. ``ReplyOnPause`` stays the base class for
  FastRTC's plumbing; its chunked ``process_audio``/``state.stream`` are not used.
- **Speculative STT**: at the first short pause the utterance so far is transcribed in a worker
  thread; when the turn ends with nothing voiced since, that transcript is the turn's.
- **Barge-in when the caller starts talking**, not at their next pause (the stock behaviour, which
  lets the bot talk over the caller for a whole utterance): the reply generator is closed, FastRTC's
  outbound queue dropped, Twilio told to ``clear`` its playback buffer, and the agent told what the
  caller actually heard.
- **No idle spin**: FastRTC calls ``emit()`` in a loop (a worker thread per call on both the
  WebRTC and the phone path) and an ``emit()`` that returns ``None`` at once makes it spin a core
  (~16k ``None`` a second on the phone). ``emit()`` is synchronous here, so it blocks on the
  pause event with a short timeout: idle costs ~20 wake-ups a second and a detected pause still
  starts the reply the moment it is set.
- **Its own ``emit()``/``receive()`` bookkeeping under a lock**: ``receive()`` and ``emit()`` run in
  different threads, and the stock code can close a generator that is executing (silently
  failing), queue audio produced after a barge-in, or wipe the caller's new utterance when an old
  generator ends (``reset()``). Here a reply abandoned mid-``next()`` is closed by the emit thread
  and its last piece dropped.
- **Phone audio resampled as one stream**: FastRTC's phone path resamples each 20 ms frame
  coming in, and each piece of a reply going out, on its own, with a filter edge at every
  boundary. The phone route hands this handler Twilio's 8 kHz audio as it is
  (``input_sample_rate`` 8000), resampled to 16 kHz here by one :class:`~pipeline.audio.Resampler`
  per call; on the phone the bot's audio leaves at 8 kHz, resampled by one per reply, so FastRTC
  has only the mu-law encoding left to do.
- **A spoken greeting** on connect (``start_up`` runs on both paths), a turn timeline stamped
  from the audio side, ``CloseStream`` after the goodbye, and the call ended in the runtime when
  the connection goes (``shutdown()`` on WebRTC; the phone path never calls it, so the websocket
  is watched instead).
- **The phone's keypad and a person**: the phone route hands the handler the call's
  :class:`~pipeline.voice.call.PhoneLine` and the keys the caller presses (:meth:`CallHandler.press`).
  The first key stops the bot talking; the keys end at # or after ``twilio.dtmf_pause_s`` (a lone
  1 or 2 at once when a yes/no is awaited) and become a caller turn of what they stand for
  (:func:`~pipeline.dialog.keypad.keypad_text`), answered like speech. When the agent hands the call
  to a person, the goodbye is played out (Twilio echoes a mark sent after it) before the live call
  is put through with Twilio's REST API; if that fails the caller is given the restaurant's number.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastrtc import AdditionalOutputs, CloseStream, ReplyOnPause, get_current_context
from fastrtc.utils import create_message, split_output

from pipeline.audio import PHONE_RATE, Resampler, to_int16, to_mono_float32
from pipeline.config import VADConfig
from pipeline.dialog.keypad import keypad_text
from pipeline.dialog.parse import is_valid_phone, parse_phone
from pipeline.speech.vad import WINDOW as VAD_WINDOW
from pipeline.speech.vad import EnergyVAD, silero_options
from pipeline.speech.vad import algo_options as vad_algo_options
from pipeline.transport.twilio.media import Mark
from pipeline.voice.backchannel import Burst, BurstJudge, rms_db
from pipeline.voice.call import DueLine, PhoneLine, VoiceCall
from pipeline.voice.phrases import TRANSFER_FAILED
from pipeline.voice.playback import CHUNK_S
from pipeline.voice.runtime import VoiceRuntime
from pipeline.voice.speculation import prepare_soon
from pipeline.voice.timeline import TurnTimeline
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

#: longest an idle emit() blocks before returning None to FastRTC's loop
IDLE_WAIT_S = 0.05
#: the VAD's chunk offsets and windows are in samples at this rate (silero resamples to it)
VAD_RATE = 16000
#: a "turn" longer than this is a stuck line or steady noise: answer it rather than buffer forever
MAX_TURN_S = 30.0
#: audio kept from before the first voiced window: silero's probability rises a window or two
#: after the onset, and Whisper misses a first mora it gets without lead-in
PREROLL_S = 0.3
#: silence kept after the last voiced window in the audio given to STT
TAIL_S = 0.2
#: longest wait for the words of a burst said over the bot before the caller is given the floor
BURST_WORDS_TIMEOUT_S = 1.5
#: a window this quiet is no speech on any line: silero is not run on it (on an idle call, silero on
#: every window would be most of the call's CPU)
QUIET_DBFS = -60.0
#: quiet windows (0.5 s) silero is given before the next sound: without them its state is cold and
#: it rates the onset of a short 「はい」 too low to be speech
QUIET_CONTEXT = 16
#: a closing line the caller talks over is said again when they stop, this many times at most,
#: and not for longer than this: a line that never falls quiet is hung up on
FAREWELL_TRIES = 3
FAREWELL_PATIENCE_S = 20.0
#: keys pressed in one go, at most: a longer run is answered as it stands
MAX_KEYS = 32
#: the mark sent after the last words before a transfer, and how long past the audio's estimated end
#: Twilio may take to echo it before the call is put through anyway
HANDOVER_MARK = "handover"
HANDOVER_GRACE_S = 5.0
#: after the transfer, how long Twilio may take to end the media stream before the bot closes it
HANDOVER_CLOSE_S = 5.0


class SharedVAD:
    """The runtime's silero model as ``ReplyOnPause``'s ``model``.

    FastRTC's chunked pause detection, the only user of ``vad()``, is not driven any more: each
    handler runs the model window by window in its :class:`TurnDetector`.
    """

    def __init__(self, model: Any):
        self.model = model

    def vad(self, audio: tuple[int, np.ndarray], options: Any = None):
        return self.model.vad(audio, options)

    def warmup(self) -> None:
        self.model.warmup()


class TurnDetector:
    """One call's end of turn: silero on every 512-sample window as the audio arrives.

    Not thread-safe: the handler feeds it under its lock. Times are ``time.monotonic()``; a
    window's time is when the frame completing it arrived, less the samples after it.
    """

    def __init__(self, model: Any, cfg: VADConfig):
        self.model = model
        self.enter = cfg.threshold
        self.leave = cfg.threshold - cfg.hysteresis
        self.window_s = VAD_WINDOW / VAD_RATE
        self.min_speech = self._windows(cfg.min_speech_ms)
        self.onset = self._windows(cfg.onset_ms)
        self.end_after = self._windows(cfg.end_silence_ms)  # the handler sets it per frame
        #: (above the threshold, level dBFS) of the last frame's windows from the utterance's first
        #: voiced one on; without the hysteresis, whose tail would make a short 「はい」 look long
        self.windows: list[tuple[bool, float]] = []
        self.reset()

    def _windows(self, ms: float) -> int:
        return max(1, int(round(ms / 1000 / self.window_s)))

    def set_end_silence(self, ms: float) -> None:
        self.end_after = self._windows(ms)

    def reset(self) -> None:
        self.state = self.model.get_initial_state(1)
        self._left = np.zeros(0, np.float32)  # samples short of a whole window
        #: the last quiet windows silero was not run on, run before the next sound
        self._skipped: deque[np.ndarray] = deque(maxlen=QUIET_CONTEXT)
        self.speaking = False
        self.total = 0  # samples received since reset
        self.processed = 0  # samples the VAD has seen
        self._idle()
        self._buffer: list[np.ndarray] = []
        self._buffer_start = 0  # absolute sample offset of the buffer's first sample

    def _idle(self) -> None:
        self.in_utterance = False
        self.voiced = 0  # voiced windows in the utterance
        self.silence = 0  # unvoiced windows since its last voiced one
        self.onset_fired = False
        self.last_voiced_end = 0  # absolute sample offset of the end of the last voiced window
        self.speech_end: float | None = None

    def feed(self, pcm: np.ndarray, arrived: float) -> set[str]:
        """Take a frame (int16 mono at 16 kHz); returns the events it caused: ``"start"`` (a first
        voiced window), ``"onset"`` (the caller has been talking for ``onset_ms``) and/or ``"end"``
        (the turn is over: ``take()``)."""
        events: set[str] = set()
        self.windows = []
        self._buffer.append(pcm)
        self.total += pcm.size
        self._left = np.concatenate([self._left, pcm.astype(np.float32) / 32768.0])
        while self._left.size >= VAD_WINDOW:
            window, self._left = self._left[:VAD_WINDOW], self._left[VAD_WINDOW:]
            self.processed += VAD_WINDOW
            level = rms_db(window)
            if level > QUIET_DBFS:
                for quiet in self._skipped:  # silero's state wants the quiet just before the sound
                    self._prob(quiet)
                self._skipped.clear()
                prob = self._prob(window)
            else:
                self._skipped.append(window)
                prob = 0.0
            self.speaking = prob >= (self.leave if self.speaking else self.enter)
            if self.speaking and not self.in_utterance:
                events.add("start")
            if self.speaking or self.in_utterance:
                self.windows.append((prob >= self.enter, level))
            if self.speaking:
                self.in_utterance = True
                self.voiced += 1
                self.silence = 0
                self.last_voiced_end = self.processed
                self.speech_end = arrived - (self.total - self.processed) / VAD_RATE
                if not self.onset_fired and self.voiced >= self.onset:
                    self.onset_fired = True
                    events.add("onset")
            elif self.in_utterance:
                self.silence += 1
                if self.silence >= self.end_after:
                    if self.voiced >= self.min_speech:
                        events.add("end")
                        break  # the rest of the frame belongs to what comes next
                    self._idle()  # a click or a breath, not a turn
        if self.in_utterance and "end" not in events and self.total - self._buffer_start >= MAX_TURN_S * VAD_RATE:
            events.add("end")
        if not self.in_utterance:
            self._trim()
        return events

    def _prob(self, window: np.ndarray) -> float:
        try:
            prob, self.state = self.model(window, self.state, VAD_RATE)
            return float(np.asarray(prob).ravel()[0])
        except Exception:
            # A fault, not silence: taking every window as silence would leave the call deaf (and an
            # exception on the audio path would end it). The rest of the call is heard by level.
            if isinstance(self.model, EnergyVAD):
                log.exception("the fallback VAD failed on a window; taking it as silence")
                return 0.0
            log.error("the VAD model failed; this call goes on with the level-based detector (EnergyVAD)",
                      exc_info=True)
            self.model = EnergyVAD()
            self.state = self.model.get_initial_state(1)
            return self._prob(window)

    def _trim(self) -> None:
        """Keep only the pre-roll while nobody talks."""
        keep = int(PREROLL_S * VAD_RATE) + VAD_WINDOW
        excess = self.total - self._buffer_start - keep
        while excess > 0 and self._buffer:
            first = self._buffer[0]
            if first.size <= excess:
                self._buffer.pop(0)
                self._buffer_start += first.size
                excess -= first.size
            else:
                self._buffer[0] = first[excess:]
                self._buffer_start += excess
                excess = 0

    def audio(self, upto: int | None = None) -> np.ndarray:
        """The utterance so far, pre-roll included (the buffer is trimmed only between
        utterances), up to absolute sample ``upto``."""
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.int16)
        if upto is None:
            return audio
        return audio[: max(0, min(audio.size, upto - self._buffer_start))]

    def take(self) -> tuple[np.ndarray, float | None, int]:
        """End the utterance: its audio (to the last voiced window plus a little silence), when
        speech ended, and how many windows were voiced. What follows the cut stays as pre-roll."""
        whole = self.audio()
        if self.in_utterance:
            cut = max(0, min(whole.size, self.last_voiced_end + int(TAIL_S * VAD_RATE) - self._buffer_start))
        else:  # trigger_response() with nobody talking
            cut = whole.size
        audio, rest = whole[:cut], whole[cut:]
        self._buffer = [rest] if rest.size else []
        self._buffer_start += cut
        speech_end, voiced = self.speech_end, self.voiced
        self._idle()
        self._trim()
        return audio, speech_end, voiced


@dataclass
class _Speculation:
    """An early transcription of the utterance, started at a short pause."""

    future: Future
    voiced: int  # the utterance's voiced windows when it started: more since, and it is stale
    phone: str | None = None  # a whole valid phone number in its transcript, once looked at
    checked: bool = False
    prepared: bool = False  # its words were looked at for a reply prepared ahead
    leads_on: bool | None = None  # its words leave the caller going on (None: not judged yet)


class CallHandler(ReplyOnPause):
    """One connection's turn-taking, driving a :class:`~pipeline.voice.call.VoiceCall` from the runtime."""

    # The limits' state (server.max_calls, max_call_s, silence_*), as class defaults so that the
    # turn-taking's __init__ stays as it is.
    _line: str | None = None  # the connection id holding one of server.max_calls lines
    _farewell: DueLine | None = None  # the closing line being said, to say again if talked over
    _farewell_tries = 0
    _farewell_since = 0.0
    #: the phone route's: what it knows of the call, and Twilio's mark echoes (name -> event set when played)
    phone_line: PhoneLine | None = None
    mark_echoes: Callable[[str], threading.Event] | None = None

    def __init__(self, runtime: VoiceRuntime, *, input_sample_rate: int = 16000, idle_wait_s: float = IDLE_WAIT_S):
        vad_cfg = runtime.cfg.vad
        super().__init__(
            self._reply,
            startup_fn=self._greet,
            algo_options=vad_algo_options(vad_cfg),
            model_options=silero_options(vad_cfg),
            can_interrupt=True,
            # 16 kHz in: what silero and Whisper take (the phone route sets 8 kHz on its copy and
            # this handler resamples the call as one stream)
            input_sample_rate=input_sample_rate,
            output_sample_rate=int(runtime.tts.sample_rate),
            model=SharedVAD(runtime.vad),
        )
        self.algo_options.max_continuous_speech_s = min(self.algo_options.max_continuous_speech_s, MAX_TURN_S)
        self.runtime = runtime
        self.idle_wait_s = idle_wait_s
        self._lock = threading.RLock()
        self._own_id = "local-" + uuid.uuid4().hex[:8]
        self._call_key: str | None = None
        self._call_obj: VoiceCall | None = None
        #: the utterance a pause just ended, with its timeline and early transcript (or the words keys
        #: pressed stand for), waiting for emit()
        self._pending: tuple[TurnTimeline, tuple[int, np.ndarray], Future | str | None] | None = None
        self._gen_timeline: TurnTimeline | None = None  # the turn the current generator answers
        self._gen_sent_audio = False
        self._ended = False
        self._websocket: Any = None
        self._watch: Future | None = None
        self.vad_cfg = vad_cfg
        self._detector = TurnDetector(runtime.vad, vad_cfg)
        #: this utterance's early transcription, and the last one started (at most one runs per call)
        self._spec: _Speculation | None = None
        self._spec_running: Future | None = None
        self._bad_frames = 0
        self._resampler: Resampler | None = None  # the caller's audio to VAD_RATE, when it comes at another rate
        #: keys pressed and not yet answered, when the last one came, and when they are due as a turn
        self._keys = ""
        self._keys_at = 0.0
        self._keys_due = 0.0
        self._handing_over = False  # the call is being put through to a person: the caller is not listened to
        self._line_gone = threading.Event()
        self._policy = TurnPolicy(vad_cfg)
        self._turn_model = end_of_turn_model(vad_cfg, runtime.cfg.path)
        #: the end-of-turn model's verdict on the utterance as it stood at its last short pause
        self._verdict: tuple[int, Future] | None = None
        #: a burst said over the bot, being judged; the words asked of it; an utterance it ended
        self._burst: BurstJudge | None = None
        self._burst_words: Future | None = None
        self._burst_asked_at = 0.0
        self._burst_held: tuple[np.ndarray, float | None, Future | None] | None = None
        self._caller_db: float | None = None  # the caller's usual speaking level (dBFS)

    def copy(self) -> CallHandler:
        return CallHandler(self.runtime, input_sample_rate=self.input_sample_rate, idle_wait_s=self.idle_wait_s)

    # ------------------------------------------------------------------ the call
    def _call_id(self) -> str:
        if self._call_key is not None:
            return self._call_key
        try:
            return get_current_context().webrtc_id or self._own_id
        except RuntimeError:  # driven directly (tests, benchmarks): no FastRTC context
            return self._own_id

    @property
    def call(self) -> VoiceCall:
        """This connection's call, created in the runtime on first use."""
        if self._call_obj is None:
            key = self._call_id()
            self._call_obj = self.runtime.get_call(key, line=self.phone_line)
            self._call_key = key
        return self._call_obj

    @property
    def call_id(self) -> str | None:
        return self._call_key

    # ------------------------------------------------------------------ FastRTC entry points
    def start_up(self) -> None:
        with self._lock:
            if self.generator is None and not self._ended and self.startup_fn is not None:
                if self._claim_line():
                    self.generator = self._for_line(self.startup_fn())
                else:
                    # Every line is taken: the busy message and hang up, with no call and no agent.
                    # Ended at once, so nothing the caller says is listened to.
                    self.generator = self._for_line(self._busy())
                    self._ended = True
                self._gen_timeline = None
                self._gen_sent_audio = False
                self.event.set()

    def receive(self, frame: tuple[int, np.ndarray]) -> None:
        if self._ended or self._handing_over:
            return
        arrived = time.monotonic()
        pcm = self._pcm16(frame)
        if pcm is None:
            return
        utterance = None
        with self._lock:
            det = self._detector
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
                log.debug("call %s: end of turn after %d ms of silence", self._call_key,
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
        if "onset" in events:
            self._send_log("started_talking")
            self._barge_in(arrived, "caller started talking")
        if utterance is not None:
            audio, speech_end, spec = utterance
            tl = TurnTimeline(speech_end=speech_end, turn_detected=time.monotonic())
            with self._lock:
                busy = self.generator is not None
            if busy:
                # a reply that started while this utterance was already under way (the greeting)
                self._barge_in(arrived, "pause during a reply")
            with self._lock:
                self._pending = (tl, (VAD_RATE, audio.reshape(1, -1)), spec)
                self.event.set()

    # ------------------------------------------------------------------ bursts said over the bot
    def _bot_audible(self, now: float) -> bool:
        """Under the lock: the bot is talking (or about to), so speech is judged (backchannel or
        barge-in) rather than stopping it at once."""
        if not self.vad_cfg.backchannels:
            return False
        call = self._call_obj
        return self.generator is not None or (call is not None and call.playing(now))

    def _judge_burst(self, now: float) -> Burst | None:
        """Under the lock: the burst's new windows (and its words, when back) to a verdict, once."""
        judge = self._burst
        if judge is None:
            return None
        det = self._detector
        for voiced, level in det.windows:
            if judge.decided:
                break
            if judge.window(voiced, level) is Burst.TRANSCRIBE:
                if self._burst_words is not None:
                    self._burst_words.cancel()
                self._burst_words = self.runtime.transcribe_soon(det.audio(det.processed), VAD_RATE,
                                                                 context=self.call.stt_context())
                self._burst_asked_at = now
        words = self._burst_words
        if not judge.decided and judge.asked is not None and words is not None:
            if words.done():
                self._burst_words = None
                try:
                    text = words.result().text or ""
                except Exception:  # cancelled or failed
                    text = None
                log.debug("call %s: %s words of speech over the bot: %r", self._call_key, judge.asked, text)
                judge.transcript(text)
            elif judge.asked == "final" and now - self._burst_asked_at > BURST_WORDS_TIMEOUT_S:
                judge.timed_out()
        if not judge.decided:
            return None
        log.debug("call %s: speech over the bot: %s (%.0f ms, %.0f ms voiced, peak %.1f dB, caller %s dB)",
                  self._call_key, judge.verdict.value, judge.elapsed_ms, judge.voiced_ms, judge.peak_db,
                  None if self._caller_db is None else round(self._caller_db, 1))
        self._burst = None
        if self._burst_words is not None:
            self._burst_words.cancel()
            self._burst_words = None
        return judge.verdict

    def _drop_burst(self, ended: tuple[np.ndarray, float | None, Future | None] | None) -> None:
        """Under the lock: a backchannel is not a turn: forget its audio and what was started on it."""
        held, self._burst_held = self._burst_held, None
        futures = [u[2] for u in (held, ended) if u is not None and u[2] is not None]
        det = self._detector
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
        for voiced, level in self._detector.windows:
            if voiced:
                self._caller_db = level if self._caller_db is None else max(level, self._caller_db - 0.02)

    def press(self, key: str) -> None:
        """A key the caller pressed on the phone (0-9, *, #). The first of a run stops the bot talking;
        the run becomes a turn at #, after ``twilio.dtmf_pause_s`` without a key, or at once when a
        lone 1 or 2 answers the yes/no the bot awaits."""
        call = self._call_obj
        if self._ended or self._handing_over or call is None or call.ended or len(key) != 1:
            return
        now = time.monotonic()
        with self._lock:
            first = not self._keys
            self._keys = (self._keys + key)[:MAX_KEYS]
            self._keys_at = now
            self._keys_due = now + self.runtime.cfg.twilio.dtmf_pause_s
            whole = key == "#" or len(self._keys) >= MAX_KEYS
            if not whole and len(self._keys) == 1:
                try:
                    whole = keypad_text(call.agent.state, self._keys) not in (None, self._keys)  # a yes or a no
                except Exception:
                    log.exception("call %s: reading a key failed", self._call_key)
            if whole:
                self._keys_due = now
        if first:
            self._barge_in(now, "caller pressed a key")
        # emit()'s idle branch makes the turn (within IDLE_WAIT_S)

    def _keys_turn(self) -> bool:
        """From emit()'s idle branch: the keys pressed, once due, become the caller's next turn. True
        when a turn was queued."""
        with self._lock:
            if not self._keys or time.monotonic() < self._keys_due:
                return False
            if self.generator is not None or self._pending is not None:
                return False  # answered once what runs now is done
            keys, self._keys = self._keys, ""
            call = self._call_obj
            if call is None or call.ended:
                return False
            try:
                text = keypad_text(call.agent.state, keys)
            except Exception:
                log.exception("call %s: reading the keys failed", self._call_key)
                return False
            if not text:
                return False
            log.debug("call %s: %d keys pressed", self._call_key, len(keys))
            tl = TurnTimeline(speech_end=self._keys_at, turn_detected=time.monotonic(), keypad=True)
            self._pending = (tl, (VAD_RATE, np.zeros((1, 0), np.int16)), text)
            self.event.set()
        return True

    def _pcm16(self, frame: tuple[int, np.ndarray]) -> np.ndarray | None:
        """A frame as int16 mono at 16 kHz: as it comes from WebRTC (FastRTC resamples to
        ``input_sample_rate``), else through this call's resampler, which carries the filter's
        history from frame to frame (the phone's 8 kHz frames are 20 ms each)."""
        try:
            sr, array = frame
            array = np.asarray(array)
            if sr == VAD_RATE and array.dtype == np.int16:
                return array.reshape(-1) if array.ndim == 1 or 1 in array.shape else array.mean(
                    axis=0 if array.shape[0] <= array.shape[1] else 1).astype(np.int16)
            x = to_mono_float32(array)
            rate = int(sr)
            if rate == VAD_RATE:
                return to_int16(x)
            if self._resampler is None or self._resampler.rate_in != rate:
                self._resampler = Resampler(rate, VAD_RATE)  # a new stream: the old one's tail is moot
            return to_int16(self._resampler.process(x))
        except Exception as e:  # whatever a transport hands over, receive() must not raise
            # a malformed frame must not end the call; say so once in a while, not 50 times a second,
            # and without a traceback: it is bad input, not a bug here
            if self._bad_frames % 500 == 0:
                log.warning("call %s: dropping malformed audio frames (%s: %s)", self._call_key,
                            type(e).__name__, str(e)[:200])
            self._bad_frames += 1
            return None

    # ------------------------------------------------------------------ end of turn
    def _end_silence_ms(self) -> int:
        """How much silence ends the caller's turn, given what the bot asked and, when one is
        configured, the end-of-turn model's verdict on the utterance as it stands."""
        call = self._call_obj
        state = getattr(getattr(call, "agent", None), "state", None)
        asking = getattr(state, "asking", None)
        asking = asking if isinstance(asking, str) else None
        pending = getattr(state, "pending", None)
        if isinstance(pending, dict) and pending.get("kind") in YES_NO_PENDING:
            # 「今おかけの番号でよろしいでしょうか」 is asked while the phone number is the item asked
            # for: its answer is a yes or a no, not digits read out in groups
            asking = "confirm"
        det = self._detector
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
            if yes_no and spec is not None and spec.voiced == self._detector.voiced and not spec.future.done():
                return False
            return False if self._words_lead_on() else None
        det = self._detector
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
        if spec is None or spec.voiced != self._detector.voiced or not spec.future.done():
            return False
        if spec.leads_on is None:
            try:
                text = spec.future.result().text or ""
            except Exception:  # failed or cancelled: the turn's own STT will say
                text = ""
            spec.leads_on = bool(text.strip()) and (sounds_unfinished(text) or self.call.words_lead_on(text))
        return spec.leads_on

    def _speculated_phone(self) -> bool:
        spec = self._spec
        if spec is None or spec.voiced != self._detector.voiced or not spec.future.done():
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
        det = self._detector
        spec = self._spec
        if spec is not None and spec.voiced != det.voiced:
            spec.future.cancel()  # the caller went on: that transcript is of half the sentence
            self._spec = spec = None
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
        future = self.runtime.transcribe_soon(det.audio(det.processed), VAD_RATE, context=self.call.stt_context())
        self._spec = _Speculation(future, det.voiced)
        self._spec_running = future

    def _maybe_prepare_reply(self) -> None:
        """Under the lock: once the early words of the utterance as it stands are back and leave
        nothing hanging, have the reply to them prepared ahead (``pipeline/voice/speculation.py``)."""
        spec = self._spec
        if (not self.vad_cfg.prepare_reply or spec is None or spec.prepared or spec.voiced != self._detector.voiced
                or not spec.future.done()):
            return
        spec.prepared = True
        try:
            text = spec.future.result().text or ""
        except Exception:  # failed or cancelled: nothing to prepare
            return
        asking = getattr(self.call.agent.state, "asking", None)
        reading_phone = asking == "phone" and not self._speculated_phone() and holds_digits(text)
        if text.strip() and not sounds_unfinished(text) and not reading_phone:
            prepare_soon(self.call, text)

    def _take_speculation(self, voiced: int) -> Future | None:
        """Under the lock: the early transcription if it heard the whole utterance."""
        spec, self._spec = self._spec, None
        if spec is None:
            return None
        if spec.voiced != voiced:
            spec.future.cancel()
            return None
        return spec.future

    def emit(self) -> Any:
        if not self.event.is_set():
            # Block (in FastRTC's worker thread) rather than spin its emit loop; set() wakes us at once.
            # Even when woken, return: this call's FastRTC context was captured before the wait,
            # and on the phone that can be from before Twilio's "start" (no streamSid yet). The
            # loop calls again at once, with a fresh context.
            if self._keys_turn() or self._start_own_line():
                return None
            self.event.wait(self.idle_wait_s)
            return None
        if self._watch is None:
            self._watch_websocket()
        started = False
        with self._lock:
            if not self.event.is_set():
                return None
            gen = self.generator
            if gen is None:
                if self._ended:
                    self.event.clear()
                    return None
                gen = self._new_turn()
                started = True
            self.state.responding = True
            timeline = self._gen_timeline
        if started:
            self._send_log("pause_detected")
        try:
            output = next(gen)
        except StopIteration:
            self._finished(gen)
            return None
        except Exception:
            # Raising would end FastRTC's emit loop and leave the caller in silence for good.
            log.exception("call %s: the reply failed", self._call_key)
            self._finished(gen)
            return None
        with self._lock:
            abandoned = self.generator is not gen
        if abandoned:
            # A barge-in came while this piece was being made: it must not be played.
            self._close(gen)
            return None
        audio, _extra = split_output(output)
        if audio is not None and not self._gen_sent_audio:
            self._gen_sent_audio = True
            if timeline is not None:
                timeline.stamp("first_audio_sent")
            self._send_log("response_starting")
        return output

    def shutdown(self) -> None:
        """WebRTC connection closed (FastRTC's ``clean_up``); the phone path uses the watcher."""
        self._gone("hangup")
        self.runtime.release_line(self._line)  # also when it went before its call was created

    # ------------------------------------------------------------------ reply generators
    def _reply(self, audio: tuple[int, np.ndarray]) -> Iterator[Any]:
        """FastRTC's ``fn``: one utterance to its reply (``emit()`` calls ``_run_turn`` directly)."""
        return self._run_turn(audio, TurnTimeline())

    def _utterance(self) -> tuple[int, np.ndarray]:
        """Under the lock: whatever the caller has said so far, ending their turn now."""
        audio, _speech_end, voiced = self._detector.take()
        spec = self._take_speculation(voiced)
        if spec is not None:
            spec.cancel()  # cut short by request: the audio goes on past what it heard
        return VAD_RATE, audio.reshape(1, -1)

    def reset(self) -> None:
        """FastRTC's clean-up after a WebRTC connection: forget the caller's audio too."""
        super().reset()
        with self._lock:
            self._detector.reset()
            spec, self._spec = self._spec, None
            self._pending = None
            self._resampler = None
            self._keys = ""
            self._burst = self._burst_held = self._verdict = None
        if spec is not None:
            spec.future.cancel()

    def _new_turn(self) -> Generator[Any, None, None]:
        """Under the lock: the utterance just ended becomes a reply generator."""
        if self._pending is not None:
            tl, audio, transcript = self._pending
            self._pending = None
        else:  # trigger_response(): FastRTC's way to answer what was said so far without a pause
            now = time.monotonic()
            tl, audio, transcript = TurnTimeline(speech_end=now, turn_detected=now), self._utterance(), None
            self.state = self.state.new()
        gen = self._for_line(self._run_turn(audio, tl, transcript))
        self.generator = gen
        self._gen_timeline = tl
        self._gen_sent_audio = False
        return gen

    def _greet(self) -> Iterator[Any]:
        call = self.call
        yield from call.greeting()
        yield AdditionalOutputs(call.snapshot())

    def _run_turn(self, audio: tuple[int, np.ndarray], timeline: TurnTimeline,
                  transcript: Future | str | None = None) -> Iterator[Any]:
        call = self.call
        if call.ended:
            if isinstance(transcript, Future):
                transcript.cancel()
            return
        yield from call.turn(audio, timeline, transcript=transcript)
        if call.agent.state.ended:
            if self._transferring(call):
                yield from self._hand_over(call)
                return
            # the goodbye has been handed out; CloseStream lets FastRTC play it out, then hang up
            self._ended = True
            self.runtime.end_call(call.id, "completed")
            yield CloseStream("call ended")

    # ------------------------------------------------------------------ a person
    def _transferring(self, call: VoiceCall) -> bool:
        """The agent has said it is putting the caller through, on a phone line that can be."""
        return bool(call.agent.state.transfer_requested and self.phone_mode and call.line is not None
                    and self.runtime.can_transfer(call.line) and call.closed is None)

    def _hand_over(self, call: VoiceCall) -> Iterator[Any]:
        """Put the call through to a person once the caller has heard the bot say so: a mark after the
        goodbye, Twilio's echo of it, then the live call updated through the REST API (Twilio ends the
        stream itself and dials). A failed transfer gets an apology with the restaurant's number."""
        self._handing_over = True
        played = self.mark_echoes(HANDOVER_MARK) if self.mark_echoes is not None else None
        # in order after the goodbye's audio: FastRTC's send loop passes it on once that has been sent
        yield AdditionalOutputs(Mark(HANDOVER_MARK))
        if played is not None:
            patience = max(0.0, call.playing_until() - time.monotonic()) + HANDOVER_GRACE_S
            if not played.wait(patience):
                log.info("call %s: Twilio did not report the goodbye played within %.1f s; transferring anyway",
                         call.id, patience)
        if self._line_gone.is_set():
            return  # the caller hung up meanwhile
        if self.runtime.transfer(call):
            self.runtime.end_call(call.id, "transferred")
            self._line_gone.wait(HANDOVER_CLOSE_S)  # Twilio stops the stream to dial
            self._ended = True
            yield CloseStream("call transferred")
            return
        lang = call.language
        yield from call.say((TRANSFER_FAILED.get(lang) or TRANSFER_FAILED["en"]).format(
            phone=self.runtime.cfg.restaurant.phone))
        self._ended = True
        self.runtime.end_call(call.id, "transfer_failed")
        yield CloseStream("call ended (transfer failed)")

    # ------------------------------------------------------------------ barge-in and endings
    def _barge_in(self, now: float, why: str) -> None:
        with self._lock:
            gen = self.generator
            if gen is not None:
                self.generator = None
                if self._pending is None:
                    self.event.clear()  # else emit() would answer the half-said utterance at once
                self.state.responding = False
        call = self._call_obj
        playing = call is not None and call.playing(now)
        if gen is None and not playing:
            return
        log.debug("call %s: barge-in (%s)", self._call_key, why)
        if call is not None:
            call.barge_in(now)  # freeze what was heard before the generator unwinds
        if gen is not None:
            self._close(gen)
        if self._clear_queue is not None:
            self._clear_queue()
        if self.phone_mode:
            self._twilio_clear()

    def _close(self, gen: Generator) -> None:
        try:
            gen.close()
        except ValueError:
            pass  # executing in the emit thread right now: emit() closes it when next() returns
        except Exception:
            log.exception("call %s: closing the reply failed", self._call_key)

    def _finished(self, gen: Generator) -> None:
        with self._lock:
            if self.generator is gen:
                self.generator = None
                if self._pending is None:
                    self.event.clear()
                self.state.responding = False
                self.state.responded_audio = False

    def _gone(self, reason: str) -> None:
        self._line_gone.set()
        with self._lock:
            gen, self.generator = self.generator, None
            self._ended = True
            self.event.set()  # wake a blocked emit() so the worker thread is released
        if gen is not None:
            self._close(gen)
        if self._call_key is not None:
            self.runtime.end_call(self._call_key, reason)

    # ------------------------------------------------------------------ limits: lines, length, silence
    def _claim_line(self) -> bool:
        """Take one of ``server.max_calls`` lines for this connection (the phone route has already
        taken it for a phone call: claiming again is a no-op)."""
        try:
            key = get_current_context().webrtc_id
        except RuntimeError:
            return True  # driven directly (tests, benchmarks): no connection to count
        if not key:
            return True
        if not self.runtime.claim_line(key):
            return False
        self._line = key
        return True

    def _busy(self) -> Iterator[Any]:
        message = self.runtime.busy_message()
        if message is not None:
            sr, audio = message
            step = max(1, int(CHUNK_S * sr))
            for i in range(0, audio.size, step):
                yield sr, audio[i : i + step]
        yield CloseStream("all lines are busy")

    def _start_own_line(self) -> bool:
        """From emit()'s idle branch (~20 times a second): start what the bot says unasked (the
        silence prompt, the goodbye at ``server.max_call_s``), or hang up a call that has ended
        but is still connected. True when a generator was started."""
        call = self._call_obj
        if call is None or self._ended or self._handing_over:
            return False
        with self._lock:
            if self.generator is not None or self._pending is not None or self.event.is_set():
                return False
            talking = self._detector.in_utterance or bool(self._keys)
        now = time.monotonic()
        if call.ended and self._farewell is None and self._transferring(call):
            # the caller talked over the bot saying it puts them through: once they stop, put them through
            if not self._farewell_since:
                self._farewell_since = now
            if talking and now - self._farewell_since < FAREWELL_PATIENCE_S:
                return False
            gen = self._for_line(self._hand_over(call))
        elif self._farewell is not None or call.ended:
            # The closing line, or the agent's goodbye, was talked over (a barge-in closed it before
            # the hang-up): say it again once the caller stops, within limits, then hang up.
            if not self._farewell_since:
                self._farewell_since = now
            patient = now - self._farewell_since < FAREWELL_PATIENCE_S
            if talking and patient:
                return False
            again = self._farewell if patient and self._farewell_tries < FAREWELL_TRIES else None
            reason = "completed" if call.agent.state.ended else (call.closed or "ended")
            gen = self._for_line(self._say_line(again, reason))
        else:
            line = call.due_line(now, caller_talking=talking)
            if line is None:
                return False
            gen = self._for_line(self._say_line(line))
        with self._lock:
            if self.generator is not None or self._pending is not None or self.event.is_set() or self._ended:
                return False  # a turn got in first; the line is looked at again when idle
            self.generator = gen
            self._gen_timeline = None
            self._gen_sent_audio = False
            self.event.set()
        return True

    def _say_line(self, line: DueLine | None, reason: str = "ended") -> Iterator[Any]:
        """Say ``line`` (None: nothing); after a closing line, hang up once it has been played."""
        call = self.call
        if line is not None:
            if line.final:
                if not self._farewell_since:
                    self._farewell_since = time.monotonic()
                self._farewell = line
                self._farewell_tries += 1
            yield from call.speak_line(line)
            if not line.final:
                return
            reason = line.kind
        # as after the agent's goodbye: CloseStream lets FastRTC play the audio out, then hang up
        self._ended = True
        self.runtime.end_call(call.id, reason)
        yield CloseStream(f"call ended ({reason})")

    # ------------------------------------------------------------------ phone specifics
    def _for_line(self, gen: Iterator[Any]) -> Iterator[Any]:
        """The reply as this connection plays it: on the phone, its audio at Twilio's 8 kHz."""
        return _at_phone_rate(gen) if self.phone_mode else gen

    def _websocket_now(self) -> Any:
        try:
            ws = get_current_context().websocket
        except RuntimeError:
            ws = None
        if ws is not None:
            self._websocket = ws
        return self._websocket

    def _twilio_clear(self) -> None:
        """Flush Twilio's playback buffer: FastRTC sends phone audio ahead of real time."""
        ws = self._websocket_now()
        sid = self._call_key
        if ws is None or sid is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(ws.send_json({"event": "clear", "streamSid": sid}), self.loop)
        except Exception:
            log.warning("call %s: could not send Twilio's clear", sid, exc_info=True)

    def _watch_websocket(self) -> None:
        """FastRTC's websocket paths (the phone's included) never call ``shutdown()``: notice the
        socket closing ourselves. WebRTC connections have no websocket and get ``shutdown()``."""
        ws = self._websocket_now()
        if ws is None:
            return
        _ = self.call  # bind the call id while the context is here
        try:
            self._watch = asyncio.run_coroutine_threadsafe(self._watch_loop(ws), self.loop)
        except Exception:
            log.warning("call %s: cannot watch the phone socket", self._call_key, exc_info=True)

    async def _watch_loop(self, ws: Any) -> None:
        from starlette.websockets import WebSocketState

        while not self._ended:
            if WebSocketState.DISCONNECTED in (ws.client_state, ws.application_state):
                break
            await asyncio.sleep(0.5)
        self._gone("hangup")  # a no-op for a call that already ended itself

    def _send_log(self, what: str) -> None:
        # the browser client animates on these; there is no channel when driven directly
        if self.channel is not None:
            self.send_message_sync(create_message("log", what))

    def send_message_sync(self, msg: str) -> None:
        # On the phone FastRTC's "data channel" is Twilio's media socket: its UI log messages
        # ({"type": "log", ...}) are not Twilio events, so they are not sent there.
        if self.phone_mode or self.channel is None:
            return
        loop = getattr(self, "_loop", None)
        if loop is None:
            return
        # Fire and forget: FastRTC's version waits for the event loop, and it is called from
        # receive() under this handler's lock, which shutdown() on the loop thread also takes.
        coro = self.send_message(msg)
        try:
            asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop is closed: the connection is going anyway
            coro.close()


def _at_phone_rate(reply: Iterator[Any]) -> Generator[Any, None, None]:
    """``reply``'s audio resampled to 8 kHz as one stream, the rest passed on as it is.

    FastRTC would resample each piece on its own (``convert_to_mulaw``), with a filter edge at
    both ends of every piece; given 8 kHz audio it only encodes it. The filter's last few
    milliseconds come out when the reply ends, before its ``CloseStream`` (after which FastRTC
    sends nothing), or before a Twilio :class:`~pipeline.transport.twilio.media.Mark` (which marks them too).
    """
    resampler: Resampler | None = None
    try:
        for item in reply:
            audio, extra = split_output(item)
            pcm = np.zeros(0, np.float32)
            if audio is not None:
                sr, samples = int(audio[0]), to_mono_float32(np.asarray(audio[1]))
                if resampler is None or resampler.rate_in != sr:
                    resampler = Resampler(sr, PHONE_RATE)
                pcm = resampler.process(samples)
            ending = isinstance(extra, CloseStream) or _is_mark(extra)
            if ending and resampler is not None:
                # the filter's tail goes before a hang-up, and before a mark (it is of the audio marked)
                pcm = np.concatenate([pcm, resampler.flush()])
                resampler = None  # what comes after a mark is a stream of its own
            if audio is None and not pcm.size:
                yield item
                continue
            # clipped: FastRTC scales floats to int16 without clipping, and a filter overshoots
            frame = (PHONE_RATE, np.clip(pcm, -1.0, 1.0))
            if ending:
                if pcm.size:
                    yield frame
                yield extra
            elif not pcm.size:  # the filter's first milliseconds: nothing to send yet
                if extra is not None:
                    yield extra
            else:
                yield frame if extra is None else (frame, extra)
        if resampler is not None:
            tail = resampler.flush()
            if tail.size:
                yield PHONE_RATE, np.clip(tail, -1.0, 1.0)
    finally:
        close = getattr(reply, "close", None)
        if close is not None:
            close()  # a barge-in closes this one: the reply's own clean-up must run too


def _is_mark(extra: Any) -> bool:
    return isinstance(extra, AdditionalOutputs) and any(isinstance(a, Mark) for a in extra.args)


def make_handler(runtime: VoiceRuntime, **kwargs: Any) -> CallHandler:
    """The handler to give ``fastrtc.Stream``; FastRTC copies it per connection."""
    return CallHandler(runtime, **kwargs)
