"""The ``ReplyOnPause`` subclass FastRTC drives, one copy per connection (browser or phone).

What it changes in FastRTC 0.0.34's ``ReplyOnPause``, and why:

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
- **A spoken greeting** on connect (``start_up`` runs on both paths), a turn timeline stamped
  from the audio side, ``CloseStream`` after the goodbye, and the call ended in the runtime when
  the connection goes (``shutdown()`` on WebRTC; the phone path never calls it, so the websocket
  is watched instead).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
from fastrtc import AdditionalOutputs, CloseStream, ReplyOnPause, get_current_context
from fastrtc.utils import create_message, split_output

from pipeline.call import TurnTimeline, VoiceCall, VoiceRuntime
from pipeline.vad import WINDOW as VAD_WINDOW
from pipeline.vad import algo_options as vad_algo_options
from pipeline.vad import silero_options

log = logging.getLogger(__name__)

#: longest an idle emit() blocks before returning None to FastRTC's loop
IDLE_WAIT_S = 0.05
#: the VAD's chunk offsets and windows are in samples at this rate (silero resamples to it)
VAD_RATE = 16000
#: a "turn" longer than this is a stuck line or steady noise: answer it rather than buffer forever
MAX_TURN_S = 30.0


class TailVAD:
    """The shared VAD model, remembering how much silence ends the audio it has seen.

    ``ReplyOnPause`` decides a pause on 0.6 s chunks and says nothing of when speech ended; the
    speech chunks of the last ``vad()`` calls do. One per handler (the model itself is shared).
    """

    def __init__(self, model: Any):
        self.model = model
        self.trailing_s = 0.0

    def vad(self, audio: tuple[int, np.ndarray], options: Any = None):
        sr, x = audio
        seconds, chunks = self.model.vad(audio, options)
        length = np.asarray(x).reshape(-1).size / sr if sr else 0.0
        if chunks:
            self.trailing_s = float(self._tail(np.asarray(x).reshape(-1), sr, options, length, chunks[-1]["end"]))
        else:
            self.trailing_s += length
        return seconds, chunks

    def _tail(self, x: np.ndarray, sr: int, options: Any, length: float, chunk_end: int) -> float:
        """Silence after the last voiced window of a chunk that had speech.

        The speech chunks alone say too little: silero's ``min_silence_duration_ms`` (500 ms)
        stretches a segment to the end of a 0.6 s chunk whenever less silence than that follows.
        """
        by_chunk = max(0.0, length - chunk_end / VAD_RATE)
        probs_of = getattr(self.model, "speech_probs", None)
        if probs_of is None:
            return by_chunk
        try:
            probs = probs_of(x, sr)
        except Exception:
            return by_chunk
        threshold = getattr(options, "threshold", None) or getattr(getattr(self.model, "options", None),
                                                                      "threshold", 0.5)
        voiced = np.flatnonzero(probs >= threshold)
        if voiced.size == 0:
            return by_chunk
        return max(0.0, length - (voiced[-1] + 1) * VAD_WINDOW / VAD_RATE)

    def warmup(self) -> None:
        self.model.warmup()


class CallHandler(ReplyOnPause):
    """One connection's turn-taking, driving a :class:`~pipeline.call.VoiceCall` from the runtime."""

    def __init__(self, runtime: VoiceRuntime, *, input_sample_rate: int = 16000, idle_wait_s: float = IDLE_WAIT_S):
        vad_cfg = runtime.cfg.vad
        super().__init__(
            self._reply,
            startup_fn=self._greet,
            algo_options=vad_algo_options(vad_cfg),
            model_options=silero_options(vad_cfg),
            can_interrupt=True,
            # 16 kHz in: what silero and Whisper take, and the phone path resamples 8 kHz to this
            # once per frame instead of to FastRTC's default 48 kHz
            input_sample_rate=input_sample_rate,
            output_sample_rate=int(runtime.tts.sample_rate),
            model=TailVAD(runtime.vad),
        )
        self.algo_options.max_continuous_speech_s = min(self.algo_options.max_continuous_speech_s, MAX_TURN_S)
        self.runtime = runtime
        self.idle_wait_s = idle_wait_s
        self._lock = threading.RLock()
        self._own_id = "local-" + uuid.uuid4().hex[:8]
        self._call_key: str | None = None
        self._call_obj: VoiceCall | None = None
        #: the utterance a pause just ended, with its timeline, waiting for emit()
        self._pending: tuple[TurnTimeline, tuple[int, np.ndarray]] | None = None
        self._gen_timeline: TurnTimeline | None = None  # the turn the current generator answers
        self._gen_sent_audio = False
        self._ended = False
        self._websocket: Any = None
        self._watch: Future | None = None

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
            self._call_obj = self.runtime.get_call(key)
            self._call_key = key
        return self._call_obj

    @property
    def call_id(self) -> str | None:
        return self._call_key

    # ------------------------------------------------------------------ FastRTC entry points
    def start_up(self) -> None:
        with self._lock:
            if self.generator is None and not self._ended and self.startup_fn is not None:
                self.generator = self.startup_fn()
                self._gen_timeline = None
                self._gen_sent_audio = False
                self.event.set()

    def receive(self, frame: tuple[int, np.ndarray]) -> None:
        if self._ended:
            return
        arrived = time.monotonic()
        utterance = None
        with self._lock:
            was_talking = self.state.started_talking
            self.process_audio(frame, self.state)
            onset = self.state.started_talking and not was_talking and not self.state.pause_detected
            if self.state.pause_detected:
                # Take the utterance now: left in the state until emit() runs, the next chunk of
                # silence would be read as the same pause again (FastRTC appends to it meanwhile).
                utterance = self._utterance()
                self.state = self.state.new()
        if onset:
            self._barge_in(arrived, "caller started talking")
        if utterance is not None:
            tl = TurnTimeline(speech_end=arrived - self.model.trailing_s, turn_detected=time.monotonic())
            with self._lock:
                busy = self.generator is not None
            if busy:
                # a reply that started while this utterance was already under way (the greeting)
                self._barge_in(arrived, "pause during a reply")
            with self._lock:
                self._pending = (tl, utterance)
                self.event.set()

    def emit(self) -> Any:
        if not self.event.is_set():
            # Block (in FastRTC's worker thread) rather than spin its emit loop; set() wakes us at once.
            # Even when woken, return: this call's FastRTC context was captured before the wait,
            # and on the phone that can be from before Twilio's "start" (no streamSid yet). The
            # loop calls again at once, with a fresh context.
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

    # ------------------------------------------------------------------ reply generators
    def _reply(self, audio: tuple[int, np.ndarray]) -> Iterator[Any]:
        """FastRTC's ``fn``: one utterance to its reply (``emit()`` calls ``_run_turn`` directly)."""
        return self._run_turn(audio, TurnTimeline())

    def _utterance(self) -> tuple[int, np.ndarray]:
        stream = self.state.stream
        audio = stream.reshape(1, -1) if stream is not None and stream.size else np.zeros((1, 0), np.int16)
        return self.state.sampling_rate or self.input_sample_rate, audio

    def _new_turn(self) -> Generator[Any, None, None]:
        """Under the lock: the utterance just ended becomes a reply generator."""
        if self._pending is not None:
            tl, audio = self._pending
            self._pending = None
        else:  # trigger_response(): FastRTC's way to answer what is in the state without a pause
            now = time.monotonic()
            tl, audio = TurnTimeline(speech_end=now, turn_detected=now), self._utterance()
            self.state = self.state.new()
        gen = self._run_turn(audio, tl)
        self.generator = gen
        self._gen_timeline = tl
        self._gen_sent_audio = False
        return gen

    def _greet(self) -> Iterator[Any]:
        call = self.call
        yield from call.greeting()
        yield AdditionalOutputs(call.snapshot())

    def _run_turn(self, audio: tuple[int, np.ndarray], timeline: TurnTimeline) -> Iterator[Any]:
        call = self.call
        if call.ended:
            return
        yield from call.turn(audio, timeline)
        if call.agent.state.ended:
            # the goodbye has been handed out; CloseStream lets FastRTC play it out, then hang up
            self._ended = True
            self.runtime.end_call(call.id, "completed")
            yield CloseStream("call ended")

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
        with self._lock:
            gen, self.generator = self.generator, None
            self._ended = True
            self.event.set()  # wake a blocked emit() so the worker thread is released
        if gen is not None:
            self._close(gen)
        if self._call_key is not None:
            self.runtime.end_call(self._call_key, reason)

    # ------------------------------------------------------------------ phone specifics
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


def make_handler(runtime: VoiceRuntime, **kwargs: Any) -> CallHandler:
    """The handler to give ``fastrtc.Stream``; FastRTC copies it per connection."""
    return CallHandler(runtime, **kwargs)
