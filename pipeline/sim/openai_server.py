"""A real HTTP server that speaks the OpenAI chat completions API on loopback, from a script.

Tests and the benchmark drive the LLM agent through the real ``openai`` client against this server,
so streaming, tool-call assembly, HTTP errors and timeouts go through the same code paths as with a
hosted model or a local vLLM / llama.cpp server. Nothing here needs the internet.

A script is a list of steps consumed one per request; a step is a :class:`Step`, a plain string
(streamed text), or a callable ``(request_body) -> step`` decided when its request arrives. Instead
of (or after) a script, a ``responder(request_body) -> step`` answers every request: that is how
policy-style fakes such as :func:`booking_policy` are written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from pipeline.sim.loopback import LoopbackServer

log = logging.getLogger(__name__)

Body = dict[str, Any]


@dataclass
class ToolCall:
    name: str
    #: a dict is sent as JSON; a string is sent as is (to script malformed arguments)
    arguments: dict[str, Any] | str = field(default_factory=dict)

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass
class Step:
    """One scripted reply. ``status`` or ``hang_s`` make it a failure instead of a completion."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: an HTTP error status (500, 429, ...) answered instead of a completion
    status: int | None = None
    #: seconds before the first byte; None uses the server's ``ttft_s``
    ttft_s: float | None = None
    #: stall this long (after the headers when streaming) to exercise client timeouts
    hang_s: float | None = None
    #: characters per streamed text piece, and per tool-argument piece
    piece_chars: int = 4
    #: pause between streamed pieces; None uses the server's ``piece_delay_s``
    piece_delay_s: float | None = None
    #: stream this garbage instead of a well-formed chunk after the text (a broken server)
    malformed: bool = False


StepLike = Step | str | Callable[[Body], "Step | str"]


def text(content: str, **kw: Any) -> Step:
    return Step(text=content, **kw)


def tool(name: str, arguments: dict[str, Any] | str | None = None, *, say: str = "", **kw: Any) -> Step:
    """One tool call, optionally preceded by text in the same assistant message."""
    return Step(text=say, tool_calls=[ToolCall(name, {} if arguments is None else arguments)], **kw)


def tools(*calls: tuple[str, dict[str, Any] | str], say: str = "", **kw: Any) -> Step:
    """Several tool calls in one assistant message (parallel tool calls)."""
    return Step(text=say, tool_calls=[ToolCall(n, a) for n, a in calls], **kw)


def error(status: int = 500, **kw: Any) -> Step:
    return Step(status=status, **kw)


def hang(seconds: float = 30.0, **kw: Any) -> Step:
    return Step(hang_s=seconds, **kw)


def _pieces(s: str, n: int) -> list[str]:
    n = max(1, n)
    return [s[i:i + n] for i in range(0, len(s), n)]


class ScriptedOpenAI:
    """``with ScriptedOpenAI([...]) as server:`` then point a client at ``server.base_url``."""

    def __init__(
        self,
        script: Iterable[StepLike] = (),
        *,
        responder: Callable[[Body], Step | str] | None = None,
        ttft_s: float = 0.0,
        piece_delay_s: float = 0.0,
        model: str = "scripted-model",
        host: str = "127.0.0.1",
    ):
        self.script: list[StepLike] = list(script)
        self.responder = responder
        #: delay before the first token of every reply (the benchmark sets a realistic one)
        self.ttft_s = ttft_s
        self.piece_delay_s = piece_delay_s
        self.model = model
        self.host = host
        #: every request body, in arrival order
        self.requests: list[Body] = []
        #: problems on the server side (an exhausted script, a responder that raised)
        self.errors: list[str] = []
        #: the request bodies whose client hung up before the whole reply was sent (cancelled)
        self.cancelled: list[Body] = []
        #: the request bodies answered in full
        self.completed: list[Body] = []
        self._lock = threading.Lock()
        self._server: LoopbackServer | None = None
        self._stopping = threading.Event()
        self.port: int | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ScriptedOpenAI:
        self._server = LoopbackServer(self.app, host=self.host, ws="none", name="scripted-openai", start_timeout_s=10,
                                      timeout_graceful_shutdown=1).start()
        self.port = self._server.port
        log.debug("scripted OpenAI server on %s", self.base_url)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop(timeout_s=5)
        self._server = None

    def __enter__(self) -> ScriptedOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ script
    def add(self, *steps: StepLike) -> None:
        with self._lock:
            self.script.extend(steps)

    def _next_step(self, body: Body) -> Step:
        with self._lock:
            item: StepLike | None = self.script.pop(0) if self.script else None
        if item is None:
            if self.responder is None:
                msg = f"script exhausted at request {len(self.requests)}"
                self.errors.append(msg)
                log.warning("scripted OpenAI server: %s", msg)
                return Step(status=500)
            item = self.responder
        try:
            step = item(body) if callable(item) else item
        except Exception as e:  # a broken test responder shows up as a server error, not a hung test
            log.exception("scripted OpenAI responder failed")
            self.errors.append(f"responder raised {type(e).__name__}: {e}")
            return Step(status=500)
        return Step(text=step) if isinstance(step, str) else step

    # ------------------------------------------------------------------ HTTP
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            try:
                body = await request.json()
            except ClientDisconnect:  # gone before its request was read
                self.cancelled.append({})
                return _error_response(499, "client closed the request")
            except ValueError:
                return _error_response(400, "request body is not JSON")
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                return _error_response(400, "'messages' is required")
            self.requests.append(body)
            step = self._next_step(body)
            ttft = self.ttft_s if step.ttft_s is None else step.ttft_s
            if ttft > 0:
                await self._wait(ttft, request)
                if await request.is_disconnected():
                    self.cancelled.append(body)
                    return _error_response(499, "client closed the request")
            if step.status is not None:
                return _error_response(step.status, f"scripted error {step.status}")
            model = str(body.get("model") or self.model)
            if body.get("stream"):
                return StreamingResponse(self._stream(step, model, body), media_type="text/event-stream")
            if step.hang_s:
                await self._wait(step.hang_s, request)
            self.completed.append(body)
            return JSONResponse(_completion(step, model))

        return app

    async def _wait(self, seconds: float, request: Request | None) -> None:
        """Sleep, but give up when the client hangs up or the server stops, so a timed-out test
        leaves nothing running behind it. Inside a streaming body pass no request: Starlette is
        already listening for the disconnect there (and cancels the stream on it)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self._stopping.is_set():
            if request is not None and await request.is_disconnected():
                return
            await asyncio.sleep(min(0.02, max(0.0, end - time.monotonic())))

    async def _stream(self, step: Step, model: str, body: Body) -> AsyncIterator[str]:
        finished = False
        try:
            async for piece in self._pieces(step, model):
                yield piece
            finished = True
        finally:
            # Starlette cancels (or closes) the stream when the client hangs up
            (self.completed if finished else self.cancelled).append(body)

    async def _pieces(self, step: Step, model: str) -> AsyncIterator[str]:
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        delay = self.piece_delay_s if step.piece_delay_s is None else step.piece_delay_s

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        if step.hang_s:
            await self._wait(step.hang_s, None)
        for i, piece in enumerate(_pieces(step.text, step.piece_chars) if step.text else []):
            if i and delay:
                await asyncio.sleep(delay)
            yield chunk({"content": piece})
        if step.malformed:
            yield 'data: {"id": "broken", "choices": [{"delta": {"content": "\n\n'
            return
        for index, call in enumerate(step.tool_calls):
            yield chunk({"tool_calls": [{"index": index, "id": f"call_{uuid.uuid4().hex[:10]}", "type": "function",
                                         "function": {"name": call.name, "arguments": ""}}]})
            # real servers stream arguments in fragments that are not valid JSON on their own
            for piece in _pieces(call.arguments_text(), step.piece_chars):
                if delay:
                    await asyncio.sleep(delay)
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls" if step.tool_calls else "stop")
        yield "data: [DONE]\n\n"


def _error_response(status: int, message: str) -> JSONResponse:
    kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(status, "server_error")
    headers = {"retry-after": "1"} if status == 429 else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": kind}},
                        status_code=status, headers=headers)


def _completion(step: Step, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
    if step.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{uuid.uuid4().hex[:10]}", "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_text()}}
            for c in step.tool_calls
        ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if step.tool_calls else "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


# ---------------------------------------------------------------------- a policy-style fake model
_YES = ("はい", "お願いします", "大丈夫です", "それで", "yes", "yeah", "correct", "that's right", "sure")
_BYE = ("以上です", "ありません", "大丈夫", "失礼", "さようなら", "no", "nothing", "that's all", "bye", "thank")

_ASK = {
    "ja": {"date": "ご来店のご希望日をお聞かせください。", "time": "何時ごろのご来店をご希望でしょうか。",
           "party_size": "何名様でいらっしゃいますか。", "name": "ご予約のお名前をお伺いできますか。",
           "phone": "ご連絡先のお電話番号をお願いいたします。", "note": "何かご要望はございますか。"},
    "en": {"date": "What date would you like to come?", "time": "What time would you like?",
           "party_size": "How many people will be in your party?", "name": "May I have the name for the booking?",
           "phone": "What phone number can we reach you at?", "note": "Do you have any special requests?"},
}


#: what shows that words hold a date, a time or a party size besides the one asked for
_MARKS = {
    "date": re.compile(r"\d+\s*月\s*\d+\s*日|明日|明後日|\b(?:january|february|march|april|may|june|july|august|september|"
                       r"october|november|december)\b", re.I),
    "time": re.compile(r"\d+\s*時|\b\d{1,2}(?::\d\d)?\s*(?:am|pm|o'clock)\b", re.I),
    "party_size": re.compile(r"\d+\s*(?:名|人)|\b\d+\s+(?:people|persons|guests)\b", re.I),
}


def _tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(tool name, parsed result) for every tool message, resolving names through the tool_call ids."""
    names: dict[str, str] = {}
    out: list[tuple[str, dict[str, Any]]] = []
    for m in messages:
        for c in m.get("tool_calls") or []:
            names[c.get("id", "")] = c.get("function", {}).get("name", "")
        if m.get("role") == "tool":
            try:
                result = json.loads(m.get("content") or "{}")
            except ValueError:
                result = {}
            out.append((names.get(m.get("tool_call_id", ""), ""), result if isinstance(result, dict) else {}))
    return out


def booking_policy(lang: str = "ja") -> Callable[[Body], Step]:
    """A stand-in for a well-behaved model: records each answer with update_reservation (raw phrase,
    for the slot last asked, and for a date, time or party size the words visibly hold too), reads back with the tool's text, books after a yes, then says goodbye.
    Deliberately dumb about language: it is there to drive the agent's plumbing, not to understand."""
    ask = _ASK[lang]

    def respond(body: Body) -> Step:
        messages: list[dict[str, Any]] = body.get("messages") or []
        last = messages[-1] if messages else {}
        results = _tool_results(messages)
        if last.get("role") == "tool":
            # answer the latest round of tool results
            name, result = results[-1]
            if name == "update_reservation":
                if result.get("problems"):
                    return text(" ".join(p.get("message", "") for p in result["problems"]).strip())
                if not result.get("missing"):
                    return tool("read_back_reservation")
                return text(ask.get(result.get("next_to_ask") or "date", ask["date"]))
            if name == "read_back_reservation" and result.get("ok"):
                return text(result["say_exactly"])
            if name == "confirm_booking":
                if result.get("ok"):
                    rid = result["reservation"]["id"]
                    return text(f"ご予約を承りました。予約番号は{rid}です。ほかに何かございますか。" if lang == "ja"
                                else f"Your table is booked. Your reservation number is {rid}. Anything else?")
                return text(result.get("message") or "")
            if name == "end_call":
                return text("")
            return text(result.get("message") or result.get("error") or "")
        user = str(last.get("content") or "")
        lowered = user.lower()
        booked = any(n == "confirm_booking" and r.get("ok") for n, r in results)
        if booked:
            if any(w in lowered for w in _BYE):
                bye = "お電話ありがとうございました。失礼いたします。" if lang == "ja" else "Thank you for calling. Goodbye."
                return tool("end_call", {"reason": "done"}, say=bye)
            return text("ほかに何かございますか。" if lang == "ja" else "Anything else?")
        read_back = bool(results) and results[-1][0] == "read_back_reservation" and results[-1][1].get("ok")
        if read_back and any(w in lowered for w in _YES):
            return tool("confirm_booking")
        slot, missing = "date", list(_ASK[lang])
        for n, r in reversed(results):
            if n == "update_reservation":
                slot = r.get("next_to_ask") or "date"
                missing = r.get("missing") or []
                if r.get("problems"):
                    slot = r["problems"][0].get("slot") or slot
                break
        args = {slot: user}
        # a caller who gives the date, the time and the party at once (「12月24日の19時に2名で」)
        for other, mark in _MARKS.items():
            if other != slot and other in missing and mark.search(user):
                args[other] = user
        return tool("update_reservation", args)

    return respond
