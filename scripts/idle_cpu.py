"""What an idle call costs: CPU time of this process over N seconds of a call nobody talks on.

    uv run --no-sync python scripts/idle_cpu.py [--seconds 30] [--path phone|browser|both] [--config CONFIG]

A real :class:`~pipeline.transport.fastrtc.CallHandler` on the real silero VAD, greeted, then fed a quiet line
(faint noise, as a phone line is never digital silence) in 20 ms frames paced by the wall clock,
the way the transports feed it: 8 kHz frames on the phone path (the handler resamples them), 16 kHz
int16 on the browser path (FastRTC resamples WebRTC's 48 kHz itself). A second thread calls
``emit()`` in a loop, as FastRTC's worker does. The silence prompt, the hang-up on silence and the
call-length limit are off, so nothing is said. The process's CPU time over the window, as a share of
one core, is printed, and the part of it spent in ``receive()`` and ``emit()``.
Without ``--config`` the tiny test models are built into a temporary folder (models do no work while
the call is idle).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

FRAME_S = 0.02
NOISE_DBFS = -62.0

log = logging.getLogger("idle_cpu")


def measure(runtime, rate: int, seconds: float) -> tuple[float, float]:
    """CPU share of one core over ``seconds`` of an idle call at ``rate``: the whole process's, and
    the part spent in the handler's ``receive()`` and ``emit()``."""
    from pipeline.transport.fastrtc import make_handler

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    h = make_handler(runtime, input_sample_rate=rate).copy()
    h._loop = loop  # what FastRTC sets on a connection's handler
    stop = threading.Event()
    spent = {"receive": 0.0, "emit": 0.0}

    def drain() -> None:
        while not stop.is_set():
            t0 = time.thread_time()
            h.emit()
            spent["emit"] += time.thread_time() - t0

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    h.start_up()
    n = int(rate * FRAME_S)
    rng = np.random.default_rng(0)
    amp = 32768 * 10 ** (NOISE_DBFS / 20)
    frames = [(rng.standard_normal(n) * amp).astype(np.int16).reshape(1, -1) for _ in range(50)]

    def feed(duration: float) -> None:
        due = time.monotonic()
        end = due + duration
        k = 0
        while due < end:
            k += 1
            t0 = time.thread_time()
            h.receive((rate, frames[k % len(frames)]))
            spent["receive"] += time.thread_time() - t0
            due += FRAME_S
            time.sleep(max(0.0, due - time.monotonic()))

    feed(3.0)  # the greeting is handed out meanwhile
    h.call.assume_played()
    feed(1.0)
    cpu0, wall0 = time.process_time(), time.monotonic()
    spent.update(receive=0.0, emit=0.0)
    feed(seconds)
    wall = time.monotonic() - wall0
    log.info("receive %.3f s, emit %.3f s of CPU over %.1f s", spent["receive"], spent["emit"], wall)
    share = (time.process_time() - cpu0) / wall, (spent["receive"] + spent["emit"]) / wall
    stop.set()
    h.event.set()
    drainer.join(timeout=5)
    h.shutdown()
    loop.call_soon_threadsafe(loop.stop)
    return share


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.voice.runtime import VoiceRuntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--path", choices=("phone", "browser", "both"), default="both")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        if args.config is None:
            from make_test_models import build_test_models

            build_test_models(Path(tmp))
            args.config = Path(tmp) / "config.yaml"
        cfg = load_config(args.config, environ={})
        cfg.store.url = f"sqlite:///{tmp}/idle.db"
        cfg.logging.call_log = None
        cfg.server.silence_prompt_s = 0
        cfg.server.silence_hangup_s = 0
        cfg.server.max_call_s = 0
        runtime = VoiceRuntime.load(cfg, download=False, progress=False)
        try:
            for name, rate in (("phone", 8000), ("browser", 16000)):
                if args.path in (name, "both"):
                    process, handler = measure(runtime, rate, args.seconds)
                    print(f"{name}: idle call {process * 100:.2f}% of a core over {args.seconds:g} s "
                          f"(receive() and emit(): {handler * 100:.2f}%)")
        finally:
            runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
