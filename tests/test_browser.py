"""A real browser call: headless Chromium with a fake microphone calls ``voicebot ui`` over WebRTC.

``voicebot ui`` runs as a subprocess on the test models (random-weight whisper, fake kokoro, the
rules agent, a fixed ``--now``) on 127.0.0.1; Chromium plays a caller's WAV (Open JTalk speech)
as its microphone and is driven over the DevTools protocol (``tests/cdp.py``). The test models'
whisper writes nonsense, so what is asserted is what any call must do: the call connects, the
greeting is heard in the browser before the caller speaks, the caller's speech reaches the
server and makes a turn (a transcript line on the page, the bot's reply in text and in audio, a
latency row), the page's text is what the call log says was heard and said, and hanging up in the
browser ends the call on the server.

What the browser hears and sends is measured in the page: a script installed before the page's
own wraps ``RTCPeerConnection`` and puts an ``AnalyserNode`` on the bot's remote stream and on the
microphone's track, noting every 50 ms window louder than :data:`LOUD_RMS`.

Chromium is Debian's ``chromium`` (``scripts/test.sh`` installs it as root); without it the test
fails and says how to get it, unless ``VOICEBOT_TEST_BROWSER=0`` skips it. A screenshot of the
page mid-call is left in the test's ``tmp_path`` (``call.png``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
from cdp import CHROMIUM_ENV, CDPError, Chromium, Page, find_chromium

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-12-01T10:00"
#: set to 0 to skip the browser test where no Chromium can be had (never in CI)
BROWSER_ENV = "VOICEBOT_TEST_BROWSER"
#: what the caller says, after LEAD_S of silence (the greeting plays first), then TAIL_S of silence
CALLER_LINE = "明日の19時に3名でお願いします"
LEAD_S = 6.0
TAIL_S = 40.0
#: a 50 ms window of the bot's or the microphone's audio louder than this (-40 dBFS) counts as sound
LOUD_RMS = 0.01
#: the reply must start this soon after the caller stops (well before the bot's 8 s silence prompt)
REPLY_WITHIN_S = 5.0

FAKE_MEDIA_FLAGS = (
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
)

# Runs in the page before its own scripts: every peer connection is kept, the bot's audio (the
# remote stream, which FastRTC also plays in an <audio> element) and the microphone's track (as
# FastRTC adds it) each get an analyser, and the loud 50 ms windows are noted with their time.
PROBE_SCRIPT = """
(() => {
  const probe = window.__voicebotProbe = {pcs: [], bot: [], mic: [], errors: []};
  let context = null;
  const watch = (stream, into) => {
    try {
      context = context || new AudioContext();
      context.resume();
      const analyser = context.createAnalyser();
      analyser.fftSize = 2048;
      context.createMediaStreamSource(stream).connect(analyser);
      const buffer = new Float32Array(analyser.fftSize);
      setInterval(() => {
        analyser.getFloatTimeDomainData(buffer);
        let sum = 0;
        for (const v of buffer) sum += v * v;
        const rms = Math.sqrt(sum / buffer.length);
        if (rms > LOUD_RMS) into.push([performance.now(), rms]);
      }, 50);
    } catch (e) { probe.errors.push(String(e)); }
  };
  const Native = window.RTCPeerConnection;
  class Probed extends Native {
    constructor(...args) {
      super(...args);
      probe.pcs.push(this);
      this.addEventListener('track', (event) => {
        if (event.track.kind === 'audio') watch(event.streams[0] || new MediaStream([event.track]), probe.bot);
      });
    }
    addTrack(track, ...streams) {
      if (track.kind === 'audio') watch(new MediaStream([track]), probe.mic);
      return super.addTrack(track, ...streams);
    }
  }
  window.RTCPeerConnection = Probed;
})();
""".replace("LOUD_RMS", repr(LOUD_RMS))

# The page as the test reads it: the call's state, the chat's messages in order, the tables' rows
# under their headers, the status line, and the probe's loud windows.
READ_PAGE = """
(() => {
  const probe = window.__voicebotProbe || {pcs: [], bot: [], mic: [], errors: []};
  const tables = {};
  for (const table of document.querySelectorAll('table')) {
    const head = [...table.querySelectorAll('thead th')].map(th => th.innerText.trim()).join('|');
    const rows = [...table.querySelectorAll('tbody tr')].map(tr => [...tr.querySelectorAll('td')]
      .map(td => td.innerText.trim())).filter(r => r.some(c => c));
    if (head && (!tables[head] || rows.length > tables[head].length)) tables[head] = rows;
  }
  const messages = [...document.querySelectorAll('[data-testid="user"], [data-testid="bot"]')]
    .map(e => ({role: e.getAttribute('data-testid'), text: e.innerText.trim()}));
  return {
    now: performance.now(),
    connection: probe.pcs.map(pc => pc.connectionState),
    messages,
    tables,
    text: document.body.innerText,
    bot: probe.bot.map(w => w[0]),
    mic: probe.mic.map(w => w[0]),
    errors: probe.errors,
  };
})()
"""


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def chromium_binary() -> str:
    if os.environ.get(BROWSER_ENV, "").strip() == "0":
        pytest.skip(f"browser test switched off ({BROWSER_ENV}=0)")
    binary = find_chromium()
    named = os.environ.get(CHROMIUM_ENV, "").strip()
    if binary is None and named:
        pytest.fail(f"{CHROMIUM_ENV}={named} is not a program: point it at Chromium, or unset it to use "
                    f"Debian's chromium; {BROWSER_ENV}=0 skips this test", pytrace=False)
    if binary is None:
        pytest.fail("Chromium is not installed, so the browser call cannot be tested: `bash scripts/test.sh` "
                    "installs it as root (apt-get install chromium); VOICEBOT_CHROMIUM names another binary; "
                    f"{BROWSER_ENV}=0 skips this test", pytrace=False)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def ui_server(tmp_path):
    """``voicebot ui`` on the test models, on a free port of 127.0.0.1: (page URL, models folder, log file)."""
    from make_test_models import build_test_models

    models = tmp_path / "models"
    config = build_test_models(models)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT__")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "ui.log"
    args = [sys.executable, "-m", "pipeline.cli", "ui", "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--no-download", "--now", NOW]
    with open(log_path, "wb") as out:
        # cwd outside the repository: whatever Gradio writes next to itself lands in tmp_path.
        proc = subprocess.Popen(args, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while not _answers(url):
            if proc.poll() is not None:
                pytest.fail(f"voicebot ui exited with {proc.returncode}:\n{_tail(log_path)}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"voicebot ui did not serve {url} in 60 s:\n{_tail(log_path)}", pytrace=False)
            time.sleep(0.2)
        yield url, models, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@pytest.fixture
def caller_wav(tmp_path) -> Path:
    """The caller's microphone: silence while the bot greets, one line of Open JTalk speech, silence."""
    from pipeline.sim.voices import openjtalk

    rate, line = openjtalk(CALLER_LINE)
    pcm = np.concatenate([np.zeros(int(LEAD_S * rate), np.int16), line, np.zeros(int(TAIL_S * rate), np.int16)])
    path = tmp_path / "caller.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


# -------------------------------------------------------------------------------------------- helpers
def _call_log(models: Path) -> list[dict]:
    path = models / "data" / "calls.jsonl"
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line still being appended
            entries.append(json.loads(line))
    return entries


async def _wait(page: Page, check, *, timeout: float, what: str, context) -> dict:
    """Read the page until ``check(state)`` is truthy; fail with what the page and server showed."""
    deadline = time.monotonic() + timeout
    while True:
        state = await page.evaluate(READ_PAGE)
        if check(state):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{context(state)}", pytrace=False)
        await asyncio.sleep(0.1)


async def _click_button(page: Page, text: str, timeout: float = 15.0) -> None:
    find = f"[...document.querySelectorAll('button')].find(b => b.offsetParent && b.innerText.trim() === {json.dumps(text)})"
    await page.wait_for(f"!!{find}", timeout=timeout, what=f"a {text!r} button")
    await page.evaluate(f"{find}.click()")


def _latency_rows(state: dict) -> list[list[str]]:
    return next((rows for head, rows in state["tables"].items() if "gap (ms)" in head), [])


def _slot_rows(state: dict) -> dict[str, str]:
    rows = next((rows for head, rows in state["tables"].items() if head.startswith("slot|value")), [])
    return {r[0]: r[1] for r in rows if len(r) >= 2}


# ------------------------------------------------------------------------------------------------ test
def test_a_browser_call_over_webrtc_hears_the_greeting_and_gets_a_spoken_reply(chromium_binary, ui_server,
                                                                                caller_wav, tmp_path):
    url, models, server_log = ui_server
    screenshot = tmp_path / "call.png"
    flags = [*FAKE_MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={caller_wav}"]

    async def call() -> None:
        async with Chromium(chromium_binary, tmp_path / "profile", flags) as browser:
            page = await browser.page()

            def context(state: dict) -> str:
                shown = {k: state.get(k) for k in ("connection", "messages", "tables", "errors")}
                shown["loud windows"] = {"bot": len(state.get("bot", [])), "mic": len(state.get("mic", []))}
                return (f"page: {json.dumps(shown, ensure_ascii=False)}\nconsole: {page.console[-15:]}\n"
                        f"page errors: {page.exceptions}\nserver log:\n{_tail(server_log)}\n"
                        f"screenshot: {screenshot}")

            await page.send("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE_SCRIPT})
            await page.goto(url)
            # FastRTC's audio component: allow the microphone, then start the call.
            await _click_button(page, "Click to Access Microphone")
            await _click_button(page, "Record")
            try:
                await _wait(page, lambda s: "connected" in s["connection"], timeout=20,
                            what="the WebRTC call to connect (the server's aiortc offers no loopback "
                            "address: the machine needs another interface address)", context=context)

                # The greeting: its text on the page and its sound in the browser, before the caller speaks.
                state = await _wait(page, lambda s: s["bot"] and any(m["role"] == "bot" for m in s["messages"]),
                                    timeout=15, what="the greeting (text and audio)", context=context)
                assert state["messages"][0]["role"] == "bot"
                assert not state["mic"] or state["bot"][0] < state["mic"][0], "the bot did not speak first"
                assert "In a call" in state["text"]
                slots = _slot_rows(state)
                assert list(slots) == ["date", "time", "party size", "name", "phone", "note"], state["tables"]

                # The caller's line goes out, is transcribed and answered: a transcript line, a reply after
                # it and the turn's latency row.
                state = await _wait(
                    page,
                    lambda s: any(m["role"] == "user" for m in s["messages"]) and s["messages"][-1]["role"] == "bot"
                    and _latency_rows(s),
                    timeout=30, what="the caller's turn and the bot's reply on the page", context=context)
                assert state["mic"], "the microphone sent no sound"
                # The reply's audio: the bot sounds again once the caller has stopped (the WAV says one line).
                state = await _wait(page, lambda s: s["mic"] and s["bot"] and s["bot"][-1] > s["mic"][-1] + 200,
                                    timeout=15, what="the reply's audio in the browser", context=context)
                spoken_end = state["mic"][-1]
                reply_start = min(t for t in state["bot"] if t > spoken_end)
                assert reply_start - spoken_end < REPLY_WITHIN_S * 1000, (
                    f"the reply came {reply_start - spoken_end:.0f} ms after the caller stopped")
                assert state["errors"] == [], state["errors"]

                turn, gap, stages = _latency_rows(state)[0]
                assert turn == "1" and float(gap) > 0, _latency_rows(state)
                assert "stt" in stages and "send" in stages, stages
                await page.screenshot(screenshot)

                # What the page shows is what the server heard and said, and it sent the reply's audio.
                turns = [e for e in _call_log(models) if e.get("event") == "turn"]
                assert turns, f"no turn in the call log\n{_tail(server_log)}"
                first = turns[0]
                assert first["ms"].get("first_audio_sent") is not None, first
                users = [m["text"] for m in state["messages"] if m["role"] == "user"]
                bots = [m["text"] for m in state["messages"] if m["role"] == "bot"]
                assert users[0] == first["transcript"].strip()
                assert first["reply"].strip() in bots, (first["reply"], bots)

                # Hanging up in the browser ends the call on the server.
                await _click_button(page, "Stop")
                deadline = time.monotonic() + 15
                while not any(e.get("event") == "call_end" for e in _call_log(models)):
                    if time.monotonic() > deadline:
                        pytest.fail(f"the server did not end the call after the browser hung up\n"
                                    f"{_tail(server_log)}", pytrace=False)
                    await asyncio.sleep(0.2)
                end = next(e for e in _call_log(models) if e.get("event") == "call_end")
                assert end["call_id"] == first["call_id"] and end["turns"] >= 1, end
            finally:
                with contextlib.suppress(CDPError, OSError, asyncio.TimeoutError):
                    if not screenshot.exists():
                        await page.screenshot(screenshot)

    asyncio.run(call())
