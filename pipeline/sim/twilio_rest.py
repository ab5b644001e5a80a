"""Twilio's REST API on loopback, for the two requests a phone call makes: updating the live call
(a transfer: ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with ``Twiml``) and
sending a text (``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with ``To``, ``From`` or
``MessagingServiceSid``, ``Body``).

It answers as Twilio does: HTTP basic auth with the account SID and auth token (401 otherwise), the
resource as JSON (200 for the call, 201 for the message), Twilio's error body (``code``, ``message``,
``more_info``, ``status``) for anything else. Point :class:`pipeline.transport.twilio.rest.TwilioREST` at it
with ``api_base=server.base_url``. Every request is kept (:attr:`TwilioRESTServer.requests`);
``fail`` makes the requests of a kind (``"calls"``, ``"messages"``) answer with an error status, and
``on_request`` is called with each request just before it is answered.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

_CALL = re.compile(r"/2010-04-01/Accounts/(?P<account>AC\w+)/Calls/(?P<call>CA[\w-]+)\.json")
_MESSAGES = re.compile(r"/2010-04-01/Accounts/(?P<account>AC\w+)/Messages\.json")
#: the largest request body read (a TwiML update or a text is far smaller)
MAX_BODY = 64 * 1024


@dataclass
class RestRequest:
    """One request as the server saw it, and what it answered."""

    kind: str  # "calls", "messages", or "other"
    method: str
    path: str
    form: dict[str, str]
    authorised: bool
    status: int = 0
    at: float = field(default_factory=time.monotonic)
    #: the call's SID for a call update
    call_sid: str | None = None


class TwilioRESTServer:
    """A threaded HTTP server on 127.0.0.1 speaking the part of Twilio's REST API a call uses.

    Use it as a context manager (or :meth:`start` / :meth:`stop`).
    """

    def __init__(self, account_sid: str, auth_token: str, *, host: str = "127.0.0.1", port: int = 0):
        self.account_sid = account_sid
        self.auth_token = auth_token
        #: kind ("calls", "messages") -> the HTTP status its requests get instead of success
        self.fail: dict[str, int] = {}
        self.on_request: Callable[[RestRequest], None] | None = None
        self.requests: list[RestRequest] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TwilioRESTServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="twilio-rest-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TwilioRESTServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ what it got
    def of_kind(self, kind: str) -> list[RestRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[RestRequest]:
        """The requests of ``kind`` once there are ``count`` answered; raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self.requests if r.kind == kind and r.status]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {count} {kind} requests within {timeout} s")
                self._changed.wait(left)

    # ------------------------------------------------------------------ serving
    def _record(self, request: RestRequest) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
        if self.on_request is not None:
            self.on_request(request)

    def _authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except ValueError:
            return False
        return user == self.account_sid and password == self.auth_token

    def _answer(self, method: str, path: str, form: dict[str, str], authorised: bool) -> tuple[RestRequest, int, dict]:
        call, messages = _CALL.fullmatch(path), _MESSAGES.fullmatch(path)
        kind = "calls" if call else "messages" if messages else "other"
        request = RestRequest(kind, method, path, form, authorised, call_sid=call["call"] if call else None)
        if not authorised:
            return request, 401, _error(20003, "Authenticate", 401)
        match = call or messages
        if method != "POST" or match is None:
            return request, 404, _error(20404, f"The requested resource {path} was not found", 404)
        if match["account"] != self.account_sid:
            return request, 404, _error(20404, "The requested resource was not found", 404)
        if kind in self.fail:
            status = self.fail[kind]
            return request, status, _error(20500 if status >= 500 else 21211, "Internal Server Error"
                                           if status >= 500 else "The request was refused", status)
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        if call:
            if not form.get("Twiml") and not form.get("Url") and not form.get("Status"):
                return request, 400, _error(21205, "Url, Twiml or Status is required", 400)
            return request, 200, {"sid": call["call"], "account_sid": self.account_sid, "status": "in-progress",
                                  "date_updated": now, "uri": path}
        if not form.get("To") or not form.get("Body") or not (form.get("From") or form.get("MessagingServiceSid")):
            return request, 400, _error(21604, "A 'To', 'Body' and 'From' (or MessagingServiceSid) are required", 400)
        sid = "SM" + uuid.uuid4().hex
        return request, 201, {"sid": sid, "account_sid": self.account_sid, "to": form["To"],
                              "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
                              "body": form["Body"], "status": "queued", "date_created": now,
                              "uri": path.removesuffix(".json") + f"/{sid}.json"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._send(413, _error(20413, "Request entity too large", 413))
                    return
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                form = dict(parse_qsl(body, keep_blank_values=True))
                path = self.path.split("?", 1)[0]
                request, status, payload = server._answer(self.command, path, form,
                                                          server._authorised(self.headers.get("Authorization")))
                request.status = status
                server._record(request)  # before the answer: a client that has it finds it recorded
                self._send(status, payload)

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            do_POST = do_GET = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the requests are kept, not printed

        return Handler


def _error(code: int, message: str, status: int) -> dict[str, Any]:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
