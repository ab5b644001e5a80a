"""A caller on a live line: their lines rendered in their voice at the phone's 8 kHz, and a sender
that keeps the line going frame by frame in real time for the whole call, as Twilio does."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.sim.personas import Persona, Utterance
from pipeline.sim.voices import trim

log = logging.getLogger(__name__)

#: a caller asked again says the line this much slower each time
SLOWER = 0.85


@dataclass
class Rendered:
    pcm: np.ndarray  # 8 kHz int16, at the talking level
    first_voiced: int  # frame indices
    last_voiced: int


@dataclass
class Spoken:
    start: float
    voice_start: float
    voice_end: float
    end: float


class Voices:
    """Each persona's lines rendered once, at 8 kHz and the talking level."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, str], Rendered] = {}

    def render(self, persona: Persona, line: Utterance, repeat: int = 0) -> Rendered:
        """``line`` in ``persona``'s voice; said for the ``repeat``-th time again, slower (15% a time)."""
        from pipeline.audio import PHONE_RATE
        from pipeline.sim.phone import FRAME_SAMPLES, at_level, to_phone_rate

        voice = persona.voice.voice(persona.language).slower(SLOWER ** min(repeat, 3))
        key = (voice, line.raw)
        if key in self._cache:
            return self._cache[key]
        parts = []
        for part in line.parts:
            if isinstance(part, int):
                parts.append(np.zeros(part * PHONE_RATE // 1000, np.int16))
            else:
                rate, pcm = voice.render(part)
                parts.append(to_phone_rate(rate, trim(pcm, rate)))
        pcm = at_level(np.concatenate(parts))
        window = PHONE_RATE // 100
        n = pcm.size // window
        rms = np.sqrt(np.mean((pcm[: n * window].astype(np.float64) / 32768.0).reshape(n, window) ** 2, axis=1))
        voiced = np.flatnonzero(rms > max(rms.max(), 1e-9) * 10 ** (-35 / 20))
        first = int(voiced[0]) * window // FRAME_SAMPLES if voiced.size else 0
        last = int(voiced[-1] + 1) * window // FRAME_SAMPLES if voiced.size else 0
        rendered = Rendered(pcm, first, min(last, max(0, -(-pcm.size // FRAME_SAMPLES) - 1)))
        self._cache[key] = rendered
        return rendered


class CallerLine:
    """The caller's side of the line: a 20 ms frame every 20 ms for the whole call, speech when
    there is a line to say, else silence (with the line's noise, if any)."""

    def __init__(self, tw: Any, noise: Any = None):
        self.tw, self.noise = tw, noise
        self._queue: asyncio.Queue[tuple[Rendered, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        from pipeline.sim.phone import FRAME_S, FRAME_SAMPLES, frames

        silence = np.zeros(FRAME_SAMPLES, np.int16)
        job: list[np.ndarray] | None = None
        current: tuple[Rendered, asyncio.Future] | None = None
        stamps: dict[str, float] = {}
        i = 0
        t_next = time.monotonic()
        try:
            while not self.tw.closed:
                if job is None and not self._queue.empty():
                    current = self._queue.get_nowait()
                    job, i, stamps = frames(current[0].pcm), 0, {}
                frame = job[i] if job is not None else silence
                if self.noise is not None:
                    frame = self.noise.add(frame)
                ok = await self.tw.media(frame)
                now = time.monotonic()
                if job is not None and current is not None:
                    rendered, done = current
                    if i == 0:
                        stamps["start"] = now
                    if i == rendered.first_voiced:
                        stamps["voice_start"] = now
                    if i == rendered.last_voiced:
                        stamps["voice_end"] = now
                    i += 1
                    if i >= len(job):
                        stamps.setdefault("voice_start", stamps["start"])
                        stamps.setdefault("voice_end", now)
                        if not done.done():
                            done.set_result(Spoken(stamps["start"], stamps["voice_start"], stamps["voice_end"], now))
                        job = current = None
                if not ok:
                    break
                t_next += FRAME_S
                delay = t_next - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.2:
                    t_next = time.monotonic()  # fell behind (a busy machine): no burst to catch up
        finally:
            pending = [current] if current is not None else []
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
            for _, fut in pending:
                if not fut.done():
                    fut.set_result(None)

    async def say(self, rendered: Rendered) -> Spoken | None:
        """Speak the line (after any before it); when it has been sent, its times; None if the line closed."""
        if self._task is None or self._task.done():
            return None
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((rendered, fut))
        return await fut

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this coroutine is being cancelled too (Ctrl-C): not ours to swallow
        except Exception:
            log.debug("the caller's sender failed", exc_info=True)
