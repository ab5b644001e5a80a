"""Only Twilio starts calls: the webhook's signature, and a one-time token for the media websocket.

Twilio signs each webhook request with the account's auth token (``X-Twilio-Signature``, an HMAC
over the exact URL it called and the POSTed form). :class:`TwilioGuard` checks it, refuses a
signature it has already accepted (a replayed request), and answers a valid call with TwiML whose
``<Stream>`` carries a fresh one-time token as a custom parameter. Twilio passes that parameter back
in the media websocket's ``start`` event: :meth:`TwilioGuard.admit` lets a stream through only with a
token it issued, not used before and not older than ``twilio.stream_token_ttl_s``, so knowing the
websocket's URL is not enough to reach the bot.

What the signed webhook said about the call (its ``CallSid`` and the caller's number, ``From``) is
bound to the token as a :class:`StreamGrant` and handed to the admitted stream: the caller's number
and the call to transfer come from Twilio's signed request, never from the websocket's own messages.

Tokens and the signatures already accepted live in the reservations database (``store.url``, see
:mod:`pipeline.store`), so every ``voicebot serve`` worker on one database agrees: the webhook may reach
one worker and the media stream another, and a token counts once, whichever worker sees it. The
database calls run in worker threads, never on the event loop; a database that fails refuses the call
(503 to the webhook, a closed stream) and says why in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request, WebSocket
from fastapi.responses import PlainTextResponse, Response
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

from pipeline.config import ConfigError
from pipeline.store import ReservationStore, StoreError

log = logging.getLogger(__name__)

#: Twilio's own name for the variable
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
#: the websocket close code for "policy violation" (RFC 6455)
POLICY_VIOLATION = 1008
#: how long a stream may take to send its ``start`` event
START_TIMEOUT_S = 10.0
#: Twilio's signature has no timestamp: an accepted one is remembered this long to refuse replays
REPLAY_WINDOW_S = 24 * 3600.0
_TWILIO_EVENTS = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})

MISSING_TOKEN_MESSAGE = (
    f"{AUTH_TOKEN_ENV} is not set: with twilio.validate on (the default), `voicebot serve` checks Twilio's "
    f"request signatures with your account's auth token; set {AUTH_TOKEN_ENV}, or for local development set "
    "twilio.validate: false (VOICEBOT__TWILIO__VALIDATE=false)"
)


class TwilioAuthMissing(ConfigError):
    """Validation is on but there is no auth token to validate with."""


class StreamRefused(Exception):
    """A media stream without a valid token; the message says why (never the token itself)."""


@dataclass(frozen=True)
class StreamGrant:
    """What Twilio's signed webhook said about the call a stream token was issued for."""

    #: Twilio's CallSid: the live call the REST API can update (a transfer)
    call_sid: str = ""
    #: the caller's number as Twilio gave it (``From``: "+819012345678", "anonymous", ...); never logged
    caller: str | None = None

    def __repr__(self) -> str:  # the caller's number stays out of reprs and tracebacks
        return f"StreamGrant(call_sid={self.call_sid!r}, caller={'...' if self.caller else None})"


def auth_token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    token = (os.environ if environ is None else environ).get(AUTH_TOKEN_ENV, "").strip()
    return token or None


class TwilioGuard:
    """Checks Twilio's webhook signatures and hands out and redeems the media stream's tokens."""

    def __init__(self, auth_token: str, cfg: Any, store: ReservationStore, *,
                 clock: Callable[[], dt.datetime] | None = None):
        if not auth_token:
            raise TwilioAuthMissing(MISSING_TOKEN_MESSAGE)
        self.validator = RequestValidator(auth_token)
        self.public_url: str | None = cfg.public_url
        self.trust_proxy: bool = cfg.trust_proxy
        self.token_ttl_s: float = cfg.stream_token_ttl_s
        self.max_pending: int = cfg.max_pending_tokens
        #: where tokens and seen signatures are kept: shared by every worker on this database
        self.store = store
        #: wall-clock time (UTC) for the tokens' expiry: it is compared across workers and hosts
        self.clock: Callable[[], dt.datetime] = clock or (lambda: dt.datetime.now(dt.UTC))

    # ------------------------------------------------------------------ the URL Twilio called
    def _base(self, request: Request) -> tuple[str, str, str]:
        """(scheme, host[:port], path prefix) of the public address the request was sent to."""
        if self.public_url:
            parts = urlsplit(self.public_url)
            return parts.scheme, parts.netloc, parts.path.rstrip("/")
        scheme, host = request.url.scheme, request.headers.get("host") or request.url.netloc
        if self.trust_proxy:
            # Only the first value counts: further proxies append theirs after it.
            scheme = _first(request.headers.get("x-forwarded-proto")) or scheme
            host = _first(request.headers.get("x-forwarded-host")) or host
        return scheme, host, ""

    def signed_url(self, request: Request) -> str:
        """The exact URL Twilio computed the signature over."""
        scheme, host, prefix = self._base(request)
        query = request.url.query
        return f"{scheme}://{host}{prefix}{request.url.path}" + (f"?{query}" if query else "")

    def stream_url(self, request: Request) -> str:
        _, host, prefix = self._base(request)
        mount = request.url.path.removesuffix("/telephone/incoming")
        # Twilio only streams to wss:// (TLS ends at the proxy in front of the app).
        return f"wss://{host}{prefix}{mount}/telephone/handler"

    # ------------------------------------------------------------------ the webhook
    async def check_webhook(self, request: Request) -> str | None:
        """Why the request is refused, or None when Twilio signed it and it is not a replay."""
        signature = request.headers.get("x-twilio-signature")
        if not signature:
            return "no X-Twilio-Signature header"
        try:
            form = await request.form()
        except Exception:
            return "unreadable form body"
        if any(not isinstance(v, str) for _, v in form.multi_items()):
            return "unexpected file upload"
        if not self.validator.validate(self.signed_url(request), form, signature):
            return "bad signature (check TWILIO_AUTH_TOKEN and twilio.public_url / twilio.trust_proxy)"
        key = hashlib.sha256(signature.encode()).hexdigest()
        if not await asyncio.to_thread(self.store.first_sighting, key, keep_s=REPLAY_WINDOW_S, now=self.clock()):
            return "replayed request (this signature was already used)"
        return None

    async def answer_incoming_call(self, request: Request) -> Response:
        try:
            reason = await self.check_webhook(request)
            if reason is None:
                form = await request.form()
                caller = form.get("From")
                token = await asyncio.to_thread(self.issue, str(form.get("CallSid") or ""),
                                                caller=caller if isinstance(caller, str) else None)
        except StoreError as e:
            # Twilio retries a failed webhook against its fallback URL; no TwiML means no stream token.
            log.error("Twilio webhook refused (503): the call state database failed: %s", e)
            return PlainTextResponse("call state unavailable", status_code=503)
        if reason is not None:
            log.warning("Twilio webhook refused (403): %s", reason)
            return PlainTextResponse("forbidden", status_code=403)
        from twilio.twiml.voice_response import Connect, VoiceResponse

        response = VoiceResponse()
        connect = Connect()
        connect.stream(url=self.stream_url(request)).parameter(name="token", value=token)
        response.append(connect)
        return Response(content=str(response), media_type="application/xml")

    # ------------------------------------------------------------------ stream tokens
    def issue(self, call_sid: str = "", *, caller: str | None = None) -> str:
        """A fresh one-time token for the stream of call ``call_sid`` from ``caller`` (Twilio's ``From``).
        Blocks on the database: call it off the event loop. Raises :class:`~pipeline.store.StoreError`."""
        token = secrets.token_urlsafe(32)
        self.store.issue_token(token, {"call_sid": call_sid, "caller": caller}, self.token_ttl_s,
                               max_pending=self.max_pending, now=self.clock())
        return token

    def redeem(self, token: Any, call_sid: Any = "") -> StreamGrant:
        """The grant the token was issued with, by this worker or another on the same database; raises
        :class:`StreamRefused`. A token counts once, whatever the outcome. Blocks on the database."""
        if not isinstance(token, str) or not token:
            raise StreamRefused("no token")
        try:
            got = self.store.redeem_token(token, now=self.clock())
        except StoreError as e:
            raise StreamRefused(f"the call state database failed ({e})") from None
        if not got.ok:
            raise StreamRefused(f"unknown, used or expired token ({got.reason})")
        data = got.data if isinstance(got.data, dict) else {}
        caller = data.get("caller")
        grant = StreamGrant(str(data.get("call_sid") or ""), caller if isinstance(caller, str) else None)
        if grant.call_sid and call_sid != grant.call_sid:
            raise StreamRefused("token issued for another call")
        return grant

    # ------------------------------------------------------------------ the media websocket
    async def admit(self, websocket: WebSocket) -> _Replaying | None:
        """Accept the socket and read up to its ``start``: the socket to serve (with its grant), or None
        when refused.

        Nothing of the stream reaches the call handler before the token is checked: the messages
        read here are replayed to it afterwards.
        """
        await websocket.accept()
        early: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    message = json.loads(await websocket.receive_text())
                    event = message.get("event") if isinstance(message, dict) else None
                    if event == "connected" and not early:
                        early.append(message)
                        continue
                    if event != "start":
                        # Only Twilio's own event names reach the log, never text a client chose.
                        what = f"a {event} message" if event in _TWILIO_EVENTS else "an unexpected message"
                        return await self._refuse(websocket, f"{what} before start")
                    start = message.get("start") if isinstance(message.get("start"), dict) else {}
                    params = start.get("customParameters") if isinstance(start.get("customParameters"), dict) else {}
                    try:
                        grant = await asyncio.to_thread(self.redeem, params.get("token"), start.get("callSid") or "")
                    except StreamRefused as refused:
                        return await self._refuse(websocket, str(refused))
                    early.append(message)
                    log.debug("phone stream %s admitted", message.get("streamSid"))
                    return _Replaying(websocket, early, grant)
        except TimeoutError:
            return await self._refuse(websocket, f"no start event within {START_TIMEOUT_S:g} s")
        except (ValueError, TypeError, KeyError):
            return await self._refuse(websocket, "a malformed message")
        except WebSocketDisconnect:
            return None

    @staticmethod
    async def _refuse(websocket: WebSocket, reason: str) -> None:
        log.warning("phone stream refused: %s", reason)
        with contextlib.suppress(Exception):  # the peer may be gone already
            await websocket.close(code=POLICY_VIOLATION, reason="stream not authorised")
        return None


def _first(value: str | None) -> str:
    return (value or "").split(",")[0].strip()


class _Replaying:
    """The admitted websocket, giving back the messages :meth:`TwilioGuard.admit` already read.

    FastRTC's websocket loop accepts the socket and reads ``connected``/``start`` itself; this
    wrapper lets it do so unchanged. ``grant`` is what the signed webhook said about the call.
    Everything else is the real socket's.
    """

    def __init__(self, websocket: WebSocket, early: list[dict[str, Any]], grant: StreamGrant):
        self._ws = websocket
        self._early = list(early)
        self.grant = grant

    async def accept(self, *args: Any, **kwargs: Any) -> None:
        return None  # already accepted

    def unwrap(self) -> tuple[WebSocket, list[dict[str, Any]]]:
        """The real socket, and the messages read from it that were not handed on yet."""
        early, self._early = self._early, []
        return self._ws, early

    async def receive_json(self, *args: Any, **kwargs: Any) -> Any:
        if self._early:
            return self._early.pop(0)
        return await self._ws.receive_json(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)
