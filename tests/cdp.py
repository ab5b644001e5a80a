"""A small Chrome DevTools Protocol client for the browser tests: headless Chromium, one page.

Not a conftest: import it. :class:`Chromium` starts the browser (Debian's ``chromium``) on a fresh
profile with the debugging port on loopback, and :meth:`Chromium.page` attaches to a new tab over
the browser's websocket (``websockets``, flat sessions). The page offers what the tests need:
``goto``, ``evaluate`` (awaiting promises), ``wait_for`` a JavaScript condition, ``screenshot``,
and the console messages and uncaught exceptions it has seen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: where Debian puts it (``apt-get install chromium``); ``VOICEBOT_CHROMIUM`` names another binary
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ENV = "VOICEBOT_CHROMIUM"

#: what a headless Chromium needs on a machine with no screen, no GPU and no network but loopback
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
)


def find_chromium() -> str | None:
    """The Chromium binary to test with: ``$VOICEBOT_CHROMIUM``, else the first on ``PATH``."""
    named = os.environ.get(CHROMIUM_ENV, "").strip()
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class CDPError(RuntimeError):
    """A DevTools command answered with an error, or the browser went away."""


class Page:
    """One tab, driven over a flat CDP session of the browser's websocket."""

    def __init__(self, browser: Chromium, session_id: str, target_id: str):
        self.browser = browser
        self.session_id = session_id
        self.target_id = target_id
        self.console: list[str] = []
        self.exceptions: list[str] = []

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            args = params.get("args") or []
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            self.console.append(f"{params.get('type', 'log')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            exc = details.get("exception") or {}
            self.exceptions.append(str(exc.get("description") or details.get("text") or details))

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        """Open ``url`` and wait until its document has loaded."""
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'",
                            timeout=timeout, what=f"{url} to load")

    async def evaluate(self, expression: str, *, await_promise: bool = True) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = await self.send("Runtime.evaluate", {
            "expression": expression,
            "awaitPromise": await_promise,
            "returnByValue": True,
            "userGesture": True,
        })
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            exc = details.get("exception") or {}
            raise CDPError(f"page script failed: {exc.get('description') or details.get('text')}")
        return (result.get("result") or {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float, what: str, interval: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; return its value, or raise TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(interval)

    async def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the first element matching ``selector``."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        if not box:
            raise CDPError(f"nothing on the page matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent",
                            {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1})

    async def screenshot(self, path: Path) -> Path:
        """The page as a PNG at ``path``."""
        data = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path = Path(path)
        path.write_bytes(base64.b64decode(data["data"]))
        return path


class Chromium:
    """Headless Chromium with its DevTools socket on loopback; an async context manager.

    ``extra_flags`` are added to :data:`HEADLESS_FLAGS` (a fake microphone, say). The profile is a
    fresh folder under ``profile_dir``; the browser is killed at exit if it does not quit.
    """

    def __init__(self, binary: str, profile_dir: Path, extra_flags: Sequence[str] = (),
                 window: tuple[int, int] = (1280, 1000)):
        self.binary = binary
        self.profile_dir = Path(profile_dir)
        self.flags = [*HEADLESS_FLAGS, f"--window-size={window[0]},{window[1]}", *extra_flags]
        self.proc: subprocess.Popen | None = None
        self.ws: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._pages: dict[str, Page] = {}
        self._reader: asyncio.Task | None = None
        self.stderr_path = self.profile_dir / "chromium.stderr.log"

    async def __aenter__(self) -> Chromium:
        from websockets.asyncio.client import connect

        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        args = [self.binary, *self.flags, f"--user-data-dir={self.profile_dir}",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"]
        log.debug("starting %s", " ".join(args))
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        # With port 0 Chromium picks a free port and writes it, and the browser socket's path, here.
        deadline = time.monotonic() + 30
        while True:
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                break
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with {self.proc.returncode} at start: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise CDPError(f"chromium did not open its DevTools port in 30 s: {self.stderr_tail()}")
            await asyncio.sleep(0.05)
        url = f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
        self.ws = await connect(url, max_size=None, ping_interval=None, open_timeout=10)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                # The whole process group: Chromium's renderers and utilities are its children.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg:
                    future = self._pending.pop(msg["id"], None)
                    if future is not None and not future.done():
                        future.set_result(msg)
                elif msg.get("sessionId") in self._pages:
                    self._pages[msg["sessionId"]]._event(msg.get("method", ""), msg.get("params") or {})
        except Exception as e:  # the socket closed: every waiting command fails
            log.debug("DevTools socket closed: %s", e)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CDPError("the browser's DevTools socket closed"))
            self._pending.clear()

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
        """One DevTools command; its result, or CDPError with the browser's message."""
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self.ws.send(json.dumps(message))
        try:
            answer = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(msg_id, None)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error'].get('message')} {answer['error'].get('data', '')}".strip())
        return answer.get("result") or {}

    async def page(self) -> Page:
        """A new tab, attached, with its console and exceptions recorded."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"], target["targetId"])
        self._pages[page.session_id] = page
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page
