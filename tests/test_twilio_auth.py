"""Only Twilio starts calls: signed webhooks, one-time stream tokens, and `voicebot serve` refusing to run unchecked.

The webhook is exercised through the app (TestClient) and over real HTTP; the media websocket over a
real uvicorn server and a websockets client sending Twilio-format frames, as in tests/test_app.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from audio_fixtures import silence
from test_app import CALL_SID, STREAM_SID, TwilioCall, _Server, decode_media, to_mulaw_frames
from twilio.request_validator import RequestValidator

ROOT = Path(__file__).resolve().parent.parent
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC = "https://bot.example.com"
FORM = {"CallSid": CALL_SID, "AccountSid": "AC0", "From": "+819012345678", "To": "+81312345678",
        "CallStatus": "ringing", "Direction": "inbound"}


def sign(url: str, params: dict, token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def twiml_stream(text: str) -> tuple[str, dict[str, str]]:
    """(the <Stream> url, its <Parameter>s) of a TwiML answer."""
    root = ET.fromstring(text)
    stream = root.find("./Connect/Stream")
    assert stream is not None, text
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def runtime(test_config):
    from pipeline.voice.runtime import VoiceRuntime

    rt = VoiceRuntime.load(test_config, download=False)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def app(runtime):
    from pipeline.app import build_app

    return build_app(runtime, validate_twilio=True, twilio_auth_token=AUTH_TOKEN)


@pytest.fixture(scope="module")
def server(app):
    with _Server(app) as srv:
        yield srv


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=PUBLIC)


def post_signed(client, params=FORM, url=f"{PUBLIC}/telephone/incoming", token=AUTH_TOKEN, headers=None):
    return client.post("/telephone/incoming", data=params,
                       headers={"X-Twilio-Signature": sign(url, params, token), **(headers or {})})


# ------------------------------------------------------------------------------------------- webhook
def test_a_signed_webhook_gets_twiml_streaming_to_the_handler_with_a_one_time_token(client):
    r = post_signed(client, {**FORM, "CallSid": "CA-signed-1"})
    assert r.status_code == 200 and "xml" in r.headers["content-type"]
    url, params = twiml_stream(r.text)
    assert url == "wss://bot.example.com/telephone/handler"
    assert set(params) == {"token"} and len(params["token"]) >= 32
    again = post_signed(client, {**FORM, "CallSid": "CA-signed-2"})
    assert twiml_stream(again.text)[1]["token"] != params["token"]


def test_the_stream_token_carries_the_signed_calls_sid_and_caller_and_counts_once(client, app):
    from pipeline.transport.twilio.auth import StreamRefused

    r = post_signed(client, {**FORM, "CallSid": "CA-grant-1"})
    token = twiml_stream(r.text)[1]["token"]
    assert FORM["From"] not in r.text  # the TwiML carries the token only
    guard = app.state.twilio_guard
    grant = guard.redeem(token, "CA-grant-1")
    assert (grant.call_sid, grant.caller) == ("CA-grant-1", FORM["From"])
    assert FORM["From"] not in repr(grant)
    with pytest.raises(StreamRefused, match="unknown, used or expired"):
        guard.redeem(token, "CA-grant-1")


@pytest.mark.parametrize("case", ["unsigned", "other token", "tampered form", "other url"])
def test_webhooks_twilio_did_not_sign_get_403_and_no_twiml(client, case, caplog):
    params = {**FORM, "CallSid": f"CA-bad-{case}"}
    if case == "unsigned":
        r = client.post("/telephone/incoming", data=params)
    elif case == "other token":
        r = post_signed(client, params, token="not-the-account-token")
    elif case == "tampered form":
        r = client.post("/telephone/incoming", data={**params, "From": "+815011112222"},
                        headers={"X-Twilio-Signature": sign(f"{PUBLIC}/telephone/incoming", params)})
    else:
        r = post_signed(client, params, url="https://evil.example.com/telephone/incoming")
    assert r.status_code == 403
    assert "<Response" not in r.text and "token" not in r.text
    assert "Twilio webhook refused" in caplog.text
    assert AUTH_TOKEN not in caplog.text


def test_a_replayed_signed_webhook_gets_403(client):
    params = {**FORM, "CallSid": "CA-replayed"}
    assert post_signed(client, params).status_code == 200
    assert post_signed(client, params).status_code == 403


def test_when_the_call_state_database_fails_the_webhook_gets_503_and_the_stream_is_refused(runtime, tmp_path,
                                                                                          caplog):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipeline.store import ReservationStore
    from pipeline.transport.twilio.auth import StreamRefused, TwilioGuard

    path = tmp_path / "state.db"
    store = ReservationStore(f"sqlite:///{path}")
    guard = TwilioGuard(AUTH_TOKEN, runtime.cfg.twilio, store)
    token = guard.issue(CALL_SID)
    store.engine.dispose()
    path.unlink()  # the next connection opens an empty file: no tables
    app = FastAPI()
    app.add_api_route("/telephone/incoming", guard.answer_incoming_call, methods=["POST"])
    r = post_signed(TestClient(app, base_url=PUBLIC), {**FORM, "CallSid": "CA-db-down"})
    assert r.status_code == 503 and "<Response" not in r.text and "token" not in r.text
    with pytest.raises(StreamRefused, match="database .* failed"):
        guard.redeem(token, CALL_SID)
    assert "the call state database failed" in caplog.text and "Traceback" not in caplog.text
    store.close()


def _guard_app(runtime, **twilio):
    from fastapi.testclient import TestClient

    from pipeline.app import build_app

    cfg = runtime.cfg.model_copy(deep=True)
    for key, value in twilio.items():
        setattr(cfg.twilio, key, value)

    class _Runtime:  # the same runtime under another config
        def __getattr__(self, name):
            return getattr(runtime, name)

    rt = _Runtime()
    rt.cfg = cfg
    return TestClient(build_app(rt, validate_twilio=True, twilio_auth_token=AUTH_TOKEN),
                      base_url="http://10.0.0.5:7860")


def test_behind_a_proxy_the_signature_is_checked_against_twilio_public_url(runtime):
    client = _guard_app(runtime, public_url="https://public.example.com")
    good = post_signed(client, {**FORM, "CallSid": "CA-public-1"}, url="https://public.example.com/telephone/incoming")
    assert good.status_code == 200
    assert twiml_stream(good.text)[0] == "wss://public.example.com/telephone/handler"
    # What the app itself saw is not what Twilio signed.
    assert post_signed(client, {**FORM, "CallSid": "CA-public-2"},
                       url="http://10.0.0.5:7860/telephone/incoming").status_code == 403


def test_forwarded_headers_count_only_when_the_proxy_is_trusted(runtime):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "fwd.example.com"}
    url = "https://fwd.example.com/telephone/incoming"
    untrusted = _guard_app(runtime)
    assert post_signed(untrusted, {**FORM, "CallSid": "CA-fwd-1"}, url=url, headers=forwarded).status_code == 403
    trusted = _guard_app(runtime, trust_proxy=True)
    r = post_signed(trusted, {**FORM, "CallSid": "CA-fwd-2"}, url=url, headers=forwarded)
    assert r.status_code == 200
    assert twiml_stream(r.text)[0] == "wss://fwd.example.com/telephone/handler"


# ------------------------------------------------------------------------------------- media websocket
async def _stream(port: int, custom: dict | None, *, call_sid: str = CALL_SID, first: str = "start",
                  until_media: float = 0.0):
    """Open the media websocket, send ``first`` (start or media): (TwilioCall, close code or None)."""
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/telephone/handler", open_timeout=10,
                                  close_timeout=5) as ws:
        tw = TwilioCall(ws)
        if first == "start":
            await tw.start(custom, call_sid=call_sid)
        else:
            await tw.send("connected", protocol="Call", version="1.0.0")
            await tw.send("media", streamSid=STREAM_SID, media={"track": "inbound", "chunk": "1", "timestamp": "20",
                                                                "payload": to_mulaw_frames(silence(0.02))[0]})
        if until_media:
            await tw.wait_for("media", 0.0, timeout=until_media)
            await tw.send("stop", streamSid=STREAM_SID, stop={"accountSid": "AC0", "callSid": call_sid})
        try:
            await tw.wait_closed(10)  # a timeout raises
        except TimeoutError:
            await tw.close()
            return tw, None
        return tw, ws.close_code


def _no_call_left(runtime, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while runtime.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    return not runtime.calls


@pytest.mark.parametrize("case", ["no token", "made-up token", "expired token", "media before start",
                                  "another call's token"])
def test_streams_no_signed_call_started_are_closed_before_any_call_or_audio(server, app, runtime, case, caplog):
    guard = app.state.twilio_guard
    custom: dict | None = None
    first, call_sid = "start", CALL_SID
    if case == "made-up token":
        custom = {"token": "x" * 43}
    elif case == "expired token":
        # issued a while ago: as if Twilio had taken longer than the token's life to open the stream
        real = guard.clock
        guard.clock = lambda: real() - dt.timedelta(seconds=runtime.cfg.twilio.stream_token_ttl_s + 1)
        custom = {"token": guard.issue(CALL_SID)}
        guard.clock = real
    elif case == "media before start":
        first = "media"
    elif case == "another call's token":
        custom = {"token": guard.issue("CA-someone-else")}
    calls_before = set(runtime.calls)
    tw, code = asyncio.run(asyncio.wait_for(_stream(server.port, custom, call_sid=call_sid, first=first), 30))
    assert code == 1008, f"closed with {code}"
    assert tw.received == [], "the bot sent something to a refused stream"
    assert STREAM_SID not in runtime.calls and set(runtime.calls) <= calls_before
    assert "phone stream refused" in caplog.text
    if custom:
        assert custom["token"] not in caplog.text


def test_a_signed_call_streams_end_to_end_and_its_token_works_only_once(server, runtime):
    async def flow():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            url = f"http://127.0.0.1:{server.port}/telephone/incoming"
            r = await http.post("/telephone/incoming", data=FORM, headers={"X-Twilio-Signature": sign(url, FORM)})
        assert r.status_code == 200, r.text
        stream_url, params = twiml_stream(r.text)
        assert stream_url == f"wss://127.0.0.1:{server.port}/telephone/handler"
        # No TLS on loopback: the same path over ws://.
        first, code = await _stream(server.port, params, until_media=20)
        assert first.events("media") and all(m["streamSid"] == STREAM_SID for m in first.events("media"))
        assert {m.get("event") for _, m in first.received} <= {"media", "clear", "mark"}
        assert _no_call_left(runtime)
        replay, replay_code = await _stream(server.port, params)
        return first, replay, replay_code

    first, replay, replay_code = asyncio.run(asyncio.wait_for(flow(), 60))
    greeting = [decode_media(m) for m in first.events("media")]
    assert sum(len(g) for g in greeting) > 0
    assert replay_code == 1008 and replay.received == []
    assert STREAM_SID not in runtime.calls


# ---------------------------------------------------------------------------------------------- CLI
def _serve_config(test_models_dir: Path, tmp_path: Path, **twilio) -> Path:
    import yaml

    cfg = yaml.safe_load((test_models_dir / "config.yaml").read_text())
    cfg["stt"]["model"] = str(test_models_dir / cfg["stt"]["model"])
    cfg["tts"]["model"] = str(test_models_dir / cfg["tts"]["model"])
    cfg["tts"]["voices"] = str(test_models_dir / cfg["tts"]["voices"])
    cfg["models"]["dir"] = str(test_models_dir)
    cfg["store"]["url"] = f"sqlite:///{tmp_path / 'r.db'}"
    cfg["logging"] = {"call_log": str(tmp_path / "calls.jsonl")}
    # the test models' config switches validation off for local development; start from the default
    cfg.pop("twilio", None)
    if twilio:
        cfg["twilio"] = twilio
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def test_serve_refuses_to_start_without_twilio_auth_token(test_models_dir, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    for name in [n for n in os.environ if n.startswith("VOICEBOT__")]:
        monkeypatch.delenv(name)
    started = time.monotonic()
    code = main(["serve", "--config", str(_serve_config(test_models_dir, tmp_path)), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "TWILIO_AUTH_TOKEN" in lines[0] and "twilio.validate: false" in lines[0]
    assert "Traceback" not in err
    assert time.monotonic() - started < 5, "it loaded the models before refusing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_serve(config: Path, env_extra: dict[str, str], check) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT__") and k != "TWILIO_AUTH_TOKEN"}
    env.update(env_extra)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--config", str(config), "--no-download",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        check(port)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return err


def test_serve_starts_with_validation_off_for_local_development(test_models_dir, tmp_path):
    def check(port):
        r = httpx.post(f"http://127.0.0.1:{port}/telephone/incoming", data=FORM)
        assert r.status_code == 200 and "<Stream" in r.text

    err = _run_serve(_serve_config(test_models_dir, tmp_path), {"VOICEBOT__TWILIO__VALIDATE": "false"}, check)
    assert "validation is off" in err
    assert "Traceback" not in err


def test_serve_with_the_auth_token_checks_signatures(test_models_dir, tmp_path):
    def check(port):
        assert httpx.post(f"http://127.0.0.1:{port}/telephone/incoming", data=FORM).status_code == 403
        url = f"http://127.0.0.1:{port}/telephone/incoming"
        r = httpx.post(url, data=FORM, headers={"X-Twilio-Signature": sign(url, FORM)})
        assert r.status_code == 200 and twiml_stream(r.text)[1]["token"]

    err = _run_serve(_serve_config(test_models_dir, tmp_path), {"TWILIO_AUTH_TOKEN": AUTH_TOKEN}, check)
    assert "Twilio webhook refused" in err
    assert AUTH_TOKEN not in err and "Traceback" not in err
