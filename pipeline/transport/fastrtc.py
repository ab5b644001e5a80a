"""The ``ReplyOnPause`` subclass FastRTC drives, one copy per connection (browser or phone).

What it changes in FastRTC 0.0.34's ``ReplyOnPause``, and why:

- **Streaming end of turn** instead of a pause check every 0.6 s chunk: each frame goes to the
  call's :class:`~pipeline.voice.listener.Listener` as it arrives (silero on every 32 ms window,
  the early transcript at a short pause, the end-of-turn model, speech said over the bot judged
  before it stops the bot). ``ReplyOnPause`` stays the base class for FastRTC's plumbing; its
  chunked ``process_audio``/``state.stream`` are not used.
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
  boundary. On the phone (``phone_mode``) this handler takes Twilio's 8 kHz audio as it is
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
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
from fastrtc import AdditionalOutputs, CloseStream, ReplyOnPause, get_current_context
from fastrtc.utils import create_message, split_output

from pipeline.audio import PHONE_RATE, Resampler, to_int16, to_mono_float32
from pipeline.dialog.keypad import keypad_text
from pipeline.speech.vad import algo_options as vad_algo_options
from pipeline.speech.vad import silero_options
from pipeline.transport.twilio.media import Mark
from pipeline.voice.call import DueLine, PhoneLine, VoiceCall
from pipeline.voice.detector import MAX_TURN_S, VAD_RATE
from pipeline.voice.listener import Listener
from pipeline.voice.phrases import TRANSFER_FAILED
from pipeline.voice.playback import in_chunks
from pipeline.voice.runtime import VoiceRuntime
from pipeline.voice.timeline import TurnTimeline

log = logging.getLogger(__name__)

#: how often an idle emit() looks for keys pressed and lines due (the silence prompt, a hang-up)
IDLE_WAIT_S = 0.05
#: longest an idle emit() blocks before returning None to FastRTC's loop (it returns at once when
#: woken). On the phone FastRTC queues every None behind the audio it still has to send (it sends
#: ahead of real time, at 0.75 x each piece's length) and pays 20 ms for each: a None every 50 ms
#: while a 25 s read-back was being sent queued seconds of them before the next reply's first audio.
IDLE_RETURN_S = 1.0
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
    handler runs the model window by window in its
    :class:`~pipeline.voice.detector.TurnDetector`.
    """

    def __init__(self, model: Any):
        self.model = model

    def vad(self, audio: tuple[int, np.ndarray], options: Any = None):
        return self.model.vad(audio, options)

    def warmup(self) -> None:
        self.model.warmup()


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
            # 16 kHz in: what silero and Whisper take (on the phone, 8 kHz: see phone_mode)
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
        self._bad_frames = 0
        self._resampler: Resampler | None = None  # the caller's audio to VAD_RATE, when it comes at another rate
        #: keys pressed and not yet answered, when the last one came, and when they are due as a turn
        self._keys = ""
        self._keys_at = 0.0
        self._keys_due = 0.0
        self._handing_over = False  # the call is being put through to a person: the caller is not listened to
        self._line_gone = threading.Event()
        #: the caller's audio: end of turn, the early transcript, speech said over the bot
        self._listener = Listener(runtime, call=lambda: self.call, current=lambda: self._call_obj,
                                  bot_audible=self._bot_audible, name=lambda: self._call_key)

    def attach(self, loop: asyncio.AbstractEventLoop | None, clear_queue: Callable[[], None] | None = None) -> None:
        """What FastRTC's stream gives its handler, for a driver of its own (the bench, tests): the
        event loop messages are posted to, and the callback that drops audio queued to play."""
        if loop is not None:
            self._loop = loop
        if clear_queue is not None:
            self._clear_queue = clear_queue

    def copy(self) -> CallHandler:
        return CallHandler(self.runtime, input_sample_rate=self.input_sample_rate, idle_wait_s=self.idle_wait_s)

    @ReplyOnPause.phone_mode.setter
    def phone_mode(self, value: bool) -> None:
        """On the phone (FastRTC's own ``/telephone/handler`` and ours), Twilio's 8 kHz frames are
        taken as they come and resampled here as one stream: at any other rate FastRTC resamples
        each 20 ms frame on its own (a seam at every one), and its first frame imports and compiles
        librosa, which held the caller's audio for seconds, past the greeting it talked over."""
        ReplyOnPause.phone_mode.fset(self, value)
        if value:
            self.input_sample_rate = PHONE_RATE

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
        with self._lock:
            events, utterance = self._listener.hear(pcm, arrived)
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

    # ------------------------------------------------------------------ the caller's audio and keys
    def _bot_audible(self, now: float) -> bool:
        """Under the lock: the bot is talking (or about to), so speech is judged (backchannel or
        barge-in) rather than stopping it at once."""
        if not self.vad_cfg.backchannels:
            return False
        call = self._call_obj
        return self.generator is not None or (call is not None and call.playing(now))

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

    # ------------------------------------------------------------------ FastRTC's emit loop
    def emit(self) -> Any:
        if not self.event.is_set():
            # Block (in FastRTC's worker thread) rather than spin its emit loop; set() wakes us at once.
            # Even when woken, return: this call's FastRTC context was captured before the wait,
            # and on the phone that can be from before Twilio's "start" (no streamSid yet). The
            # loop calls again at once, with a fresh context.
            give_back = time.monotonic() + IDLE_RETURN_S
            while not self._keys_turn() and not self._start_own_line():
                if self.event.wait(self.idle_wait_s) or time.monotonic() >= give_back:
                    break
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
        return VAD_RATE, self._listener.take().reshape(1, -1)

    def reset(self) -> None:
        """FastRTC's clean-up after a WebRTC connection: forget the caller's audio too."""
        super().reset()
        with self._lock:
            spec = self._listener.reset()
            self._pending = None
            self._resampler = None
            self._keys = ""
        if spec is not None:
            spec.cancel()

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
            for _start, piece in in_chunks(audio, sr):
                yield sr, piece
        yield CloseStream("all lines are busy")

    def _start_own_line(self) -> bool:
        """From emit()'s idle branch (every IDLE_WAIT_S): start what the bot says unasked (the
        silence prompt, the goodbye at ``server.max_call_s``), or hang up a call that has ended
        but is still connected. True when a generator was started."""
        call = self._call_obj
        if call is None or self._ended or self._handing_over:
            return False
        with self._lock:
            if self.generator is not None or self._pending is not None or self.event.is_set():
                return False
            talking = self._listener.detector.in_utterance or bool(self._keys)
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
