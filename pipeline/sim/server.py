"""``voicebot serve`` run for an evaluation: a subprocess on 127.0.0.1 with a database, call log and
Twilio token of its own, and its call log read as it grows."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVER_START_S = 300.0
#: how long the calls wait for the server to render its fixed phrases (a loaded machine is slow)
PRERENDER_WAIT_S = 900.0
#: the server's log line that says its fixed phrases are rendered (pipeline.voice.runtime.VoiceRuntime)
PRERENDERED = ("rendered ahead of the calls", "cannot render")


class ServerError(RuntimeError):
    """The server would not start or died; the message says why in one line."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``voicebot serve`` in a subprocess on 127.0.0.1, its output in ``workdir/server.log``."""

    def __init__(self, workdir: Path, now: str, config: str | None = None, *, store_url: str | None = None,
                 token: str | None = None, env: dict[str, str] | None = None, args: tuple[str, ...] = ()):
        """``store_url``, ``token`` (Twilio's auth token): shared with other servers when given (several
        workers on one database); ``env``: more settings (``VOICEBOT__...``); ``args``: more flags."""
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.token = token or secrets.token_hex(16)
        self.log_path = workdir / "server.log"
        self.store_url = store_url or f"sqlite:///{workdir / 'reservations.db'}"
        self.call_log = workdir / "calls.jsonl"
        command = [sys.executable, "-m", "pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--no-download", "--now", now, *(["--config", config] if config else []), *args]
        env = {**os.environ,
               "VOICEBOT__STORE__URL": self.store_url,
               "VOICEBOT__LOGGING__CALL_LOG": str(self.call_log),
               "VOICEBOT__LOGGING__CALL_LOG_MASK_PII": "false",  # the transcripts are what is scored
               "VOICEBOT__LOGGING__CALL_LOG_RETENTION_DAYS": "null",
               "VOICEBOT__LOGGING__LEVEL": "INFO",
               # Twilio's checks on, against a token only this run knows
               "VOICEBOT__TWILIO__VALIDATE": "true", "VOICEBOT__TWILIO__PUBLIC_URL": "null",
               "VOICEBOT__TWILIO__TRUST_PROXY": "false", "TWILIO_AUTH_TOKEN": self.token,
               "HF_HUB_OFFLINE": "1", **(env or {})}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_error(self) -> str:
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or ["(no output)"])[-1][:400]

    def wait_ready(self, timeout_s: float = SERVER_START_S, prerender: bool = True) -> tuple[float, bool]:
        """Until ``/healthz`` answers and (``prerender``) the fixed phrases are rendered: the seconds
        it took, and whether the phrases were done by then."""
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"voicebot serve exited ({self.proc.returncode}): {self.last_error()} "
                                f"(log: {self.log_path})")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"voicebot serve did not answer within {timeout_s:.0f} s (log: {self.log_path})")
            time.sleep(0.25)
        # The phrases rendered in the background at start-up would take the CPU from the first calls.
        done = not prerender
        deadline = time.monotonic() + PRERENDER_WAIT_S
        while not done and time.monotonic() < deadline and self.proc.poll() is None:
            done = any(mark in self.log_text() for mark in PRERENDERED)
            time.sleep(0.5)
        if not done:
            log.warning("the server was still rendering its fixed phrases after %.0f s: calling anyway",
                        PRERENDER_WAIT_S)
        return time.monotonic() - start, done

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown; the runtime logs call ends
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class CallLog:
    """The server's call log (JSONL), read as it is appended."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""
        self.records: list[dict[str, Any]] = []

    def poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self._offset:  # rewritten (pruned): read it again
            self._offset, self._partial, self.records = 0, b"", []
        if size == self._offset:
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict):
                    self.records.append(record)

    def turns(self, call_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "turn" and r.get("call_id") == call_id]

    def call_end(self, call_id: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("event") == "call_end" and r.get("call_id") == call_id), None)
