"""How callers reach the bot: the FastRTC stream, the Gradio page, and the FastAPI app.

- ``build_stream(runtime)``: the :class:`fastrtc.Stream` around the call handler. It is what
  ``voicebot phone`` hands to ``fastphone()`` and what the app mounts.
- ``build_ui(runtime, stream)``: a Gradio page to talk to the bot in the browser (WebRTC), showing
  the transcript, the reservation's slots as they fill in, and each turn's latency.
- ``build_app(runtime)``: FastAPI with FastRTC's routes (``POST /telephone/incoming`` answers
  Twilio with TwiML, ``/telephone/handler`` is the Twilio media websocket, ``/webrtc/offer`` and
  ``/websocket/offer``), ``GET /healthz``, and the Gradio page at ``/``. With ``twilio.validate``
  (the default) the two telephone routes only serve calls Twilio signed (see
  :mod:`pipeline.transport.twilio.auth`); ``voicebot phone`` and ``voicebot ui`` use the stream alone and are
  not gated. A signed call's stream carries what the webhook said of it (the caller's number, its
  CallSid) to its handler as a :class:`~pipeline.voice.call.PhoneLine`, with the keys the caller presses.

The handler reports progress as ``AdditionalOutputs(snapshot)`` (``VoiceCall.snapshot()``): a dict
with ``transcript`` ([{role, text}]), ``slots``, ``reservation``, ``ended`` and ``last_turn`` (the
last turn's timings: ``gap_ms``, from the caller's last word to the bot's first audio, and ``ms``,
the stamps since that word). Only WebRTC feeds these to the page; on the phone FastRTC drops them.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import gradio as gr
from fastapi import FastAPI, Request, WebSocket
from fastrtc import Stream, WebRTC
from fastrtc.utils import Context, DataChannel, current_context
from fastrtc.websocket import WebSocketHandler

from pipeline.audio import PHONE_RATE, mulaw_encode, resample, to_mono_float32
from pipeline.dialog.state import SLOT_ORDER
from pipeline.transport.lines import SharedLines
from pipeline.transport.twilio.auth import (
    MISSING_TOKEN_MESSAGE,
    START_TIMEOUT_S,
    StreamGrant,
    TwilioAuthMissing,
    TwilioGuard,
    auth_token_from_env,
)
from pipeline.transport.twilio.media import POLICY_VIOLATION, Mark, PhoneSocket
from pipeline.voice.call import PhoneLine

log = logging.getLogger(__name__)

TITLE = "voicebot"
SLOT_LABELS = {
    "date": "date",
    "time": "time",
    "party_size": "party size",
    "name": "name",
    "phone": "phone",
    "note": "note",
}
LATENCY_HEADERS = ["turn", "gap (ms)", "stages (ms)"]
SLOT_HEADERS = ["slot", "value"]
_ROLES = {"user": "user", "caller": "user", "assistant": "assistant", "bot": "assistant"}
#: how long past its length the busy message may take to play before the line is closed anyway
BUSY_GRACE_S = 1.0


# ------------------------------------------------------------------------------------ snapshot views
def transcript_messages(snapshot: Mapping[str, Any]) -> list[dict[str, str]]:
    """The snapshot's transcript as ``gr.Chatbot(type="messages")`` messages."""
    out = []
    for entry in snapshot.get("transcript") or []:
        if not isinstance(entry, Mapping):
            continue
        text = str(entry.get("text") or "").strip()
        if not text:
            continue
        if entry.get("interrupted"):
            text += " …"  # the caller talked over the rest, which they never heard
        out.append({"role": _ROLES.get(str(entry.get("role", "")).lower(), "assistant"), "content": text})
    return out


def _show(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, Mapping | list | tuple):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, Mapping) else ", ".join(
            map(str, value))
    return str(value)


def slot_rows(snapshot: Mapping[str, Any]) -> list[list[str]]:
    """``[slot, value]`` rows, every known slot listed (empty ones as a dash) so they visibly fill in."""
    slots = snapshot.get("slots") or {}
    if not isinstance(slots, Mapping):
        slots = {}
    keys = list(SLOT_ORDER) + [k for k in slots if k not in SLOT_ORDER]
    return [[SLOT_LABELS.get(k, k), _show(slots.get(k))] for k in keys]


def status_markdown(snapshot: Mapping[str, Any]) -> str:
    reservation = snapshot.get("reservation")
    ended = bool(snapshot.get("ended"))
    if isinstance(reservation, Mapping) and reservation:
        text = f"**Booked**: reservation `{reservation.get('id', '?')}`"
    elif ended:
        text = "**Call ended** without a booking"
    elif snapshot.get("transcript"):
        text = "In a call"
    else:
        text = "No call yet: press the microphone to call the restaurant"
    return text + (" · call ended" if ended and reservation else "")


def _turn_key(snapshot: Mapping[str, Any], timeline: Mapping[str, Any]) -> str:
    if timeline.get("turn") is not None:
        return str(timeline["turn"])
    # Without a turn number, count the caller's utterances.
    users = [e for e in snapshot.get("transcript") or [] if isinstance(e, Mapping)
             and _ROLES.get(str(e.get("role", "")).lower()) == "user"]
    return str(len(users))


def _ms(value: Any) -> str:
    try:
        return f"{float(value):.0f}"
    except (TypeError, ValueError):
        return "—"


#: the timeline's stamps (ms since the caller stopped), in order, and the stage each one closes
STAGE_STAMPS = (
    ("turn_detected", "pause"),
    ("transcript_ready", "stt"),
    ("first_text", "agent"),
    ("first_audio_synth", "tts"),
    ("first_audio_sent", "send"),
)


def _stages(timeline: Mapping[str, Any]) -> str:
    stamps = timeline.get("ms")
    if not isinstance(stamps, Mapping):
        return "—"
    # Stamps are cumulative; each stage is the time since the previous stamp that was reached.
    parts, previous = [], 0.0
    for key, label in STAGE_STAMPS:
        value = stamps.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {_ms(value - previous)}")
            previous = value
    return " · ".join(parts) or "—"


def latency_rows(snapshot: Mapping[str, Any], previous: Sequence[Sequence[Any]] | None) -> list[list[str]]:
    """The per-turn latency table: the snapshot's timeline updates its turn's row or appends one."""
    rows = [list(map(str, r)) for r in (previous or []) if r and any(str(c).strip() for c in r)]
    timeline = snapshot.get("last_turn")
    if not isinstance(timeline, Mapping) or not timeline or timeline.get("skipped"):
        return rows
    row = [_turn_key(snapshot, timeline), _ms(timeline.get("gap_ms")), _stages(timeline)]
    if rows and rows[-1][0] == row[0]:
        rows[-1] = row
    else:
        rows.append(row)
    return rows


def render(snapshot: Any, latency_prev: Sequence[Sequence[Any]] | None = None):
    """Everything the page shows for one snapshot: (messages, slot rows, status, latency rows)."""
    if not isinstance(snapshot, Mapping):
        log.debug("ignoring additional output %r", type(snapshot).__name__)
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return (
        transcript_messages(snapshot),
        slot_rows(snapshot),
        status_markdown(snapshot),
        latency_rows(snapshot, latency_prev),
    )


class LatencyBook:
    """Each call's latency rows, kept on the server.

    FastRTC's additional-outputs listener reads its input components once, when the call starts,
    so the table's earlier rows cannot come back from the page: they are kept here, per call id,
    for the most recent calls only.
    """

    def __init__(self, keep: int = 64):
        self.keep = keep
        self._rows: OrderedDict[str, list[list[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, snapshot: Any):
        if not isinstance(snapshot, Mapping):
            return render(snapshot)
        key = str(snapshot.get("call_id", ""))
        with self._lock:
            views = render(snapshot, self._rows.get(key))
            self._rows[key] = views[3]
            self._rows.move_to_end(key)
            while len(self._rows) > self.keep:
                self._rows.popitem(last=False)
        return views


def _output_components(render_now: bool) -> tuple[gr.Chatbot, gr.Dataframe, gr.Markdown, gr.Dataframe]:
    chat = gr.Chatbot(type="messages", label="Transcript", height=360, render=render_now)
    slots = gr.Dataframe(headers=SLOT_HEADERS, value=slot_rows({}), type="array", label="Reservation",
                         interactive=False, render=render_now)
    status = gr.Markdown(status_markdown({}), render=render_now)
    latency = gr.Dataframe(headers=LATENCY_HEADERS, type="array", label="Latency per turn", interactive=False,
                           render=render_now)
    return chat, slots, status, latency


# -------------------------------------------------------------------------------------------- stream
def _server(runtime) -> Any:
    return runtime.cfg.server


class _NoClientChannel(DataChannel):
    def send(self, message: str) -> None:
        log.debug("not sent to Twilio: %s", message)


_NO_CLIENT = _NoClientChannel()


class VoiceStream(Stream):
    """FastRTC's Stream with its Twilio route made fit for a phone line.

    FastRTC calls ``shutdown()`` on a WebRTC call's handler when it closes, but a Twilio websocket
    call just ends: here the handler is shut down and the call ended in the runtime when the socket
    goes. And only Twilio's own messages are sent to Twilio.

    With a ``twilio_guard`` (``build_app`` sets one when validation is on) the webhook needs
    Twilio's signature and the media websocket the one-time token from its TwiML; without one
    (FastPhone, whose service calls these routes itself, or validation off) they are FastRTC's.
    With ``shared_lines`` (``build_app`` sets them) a phone call also needs one of ``server.max_calls``
    lines counted across every worker on the database.
    """

    def __init__(self, runtime, *args, **kwargs):
        self.runtime = runtime
        self.twilio_guard: TwilioGuard | None = None
        self.shared_lines: SharedLines | None = None
        self._busy_cache: tuple[list[str], float] | None = None
        super().__init__(*args, **kwargs)

    async def handle_incoming_call(self, request: Request):
        if self.twilio_guard is None:
            return await super().handle_incoming_call(request)
        return await self.twilio_guard.answer_incoming_call(request)

    async def telephone_handler(self, websocket: WebSocket) -> None:
        early: list[dict[str, Any]] = []
        grant: StreamGrant | None = None  # without validation nothing is known of the call but its audio
        if self.twilio_guard is not None:
            # Refused streams end here: no handler copy, no call in the runtime, no audio read.
            admitted = await self.twilio_guard.admit(websocket)
            if admitted is None:
                return
            grant = admitted.grant
            websocket, early = admitted.unwrap()
        # Every message from here on is checked before FastRTC's loop, which trusts them all.
        phone = PhoneSocket(websocket, early)
        await phone.accept()
        if await phone.read_start(START_TIMEOUT_S) is None:
            return
        sid = phone.stream_sid or ""
        if self.runtime.find_call(sid) is not None:
            await phone.refuse(POLICY_VIOLATION, "a call with this streamSid is already live")
            return
        # The line is taken before any handler, call or agent exists: FastRTC's concurrency_limit
        # does not count phone calls, and a refused caller must cost nothing but the busy message.
        if not self.runtime.claim_line(sid, new=True):
            await self._say_busy(phone)
            phone.finish()
            return
        shared = self.shared_lines
        try:
            if shared is not None and not await shared.take(sid):
                await self._say_busy(phone)
                return
            try:
                await self._serve_call(phone, grant)
            finally:
                if shared is not None:
                    await shared.release(sid)
        finally:
            phone.finish()
            self.runtime.release_line(sid)

    async def _say_busy(self, phone: PhoneSocket) -> None:
        """The pre-rendered busy message as Twilio media, then hang up once Twilio has played it."""
        frames, seconds = await self._busy_frames()
        sid = phone.stream_sid
        for payload in frames:
            await phone.send_json({"event": "media", "streamSid": sid, "media": {"payload": payload}})
        # Twilio plays what it has buffered in real time and drops the rest when the socket closes;
        # it echoes a mark once the audio before it has been played.
        await phone.send_json({"event": "mark", "streamSid": sid, "mark": {"name": "busy"}})
        await phone.wait_for_mark("busy", seconds + BUSY_GRACE_S)
        await phone.close(reason="all lines are busy")

    async def _busy_frames(self) -> tuple[list[str], float]:
        if self._busy_cache is None:
            message = self.runtime.busy_message()
            if message is None:
                self._busy_cache = ([], 0.0)
            else:
                sr, audio = message
                mulaw = await anyio.to_thread.run_sync(_to_phone_line, audio, sr)
                step = PHONE_RATE * 20 // 1000  # 20 ms, as Twilio sends its own
                self._busy_cache = ([base64.b64encode(mulaw[i : i + step]).decode() for i in range(0, len(mulaw), step)],
                                    len(mulaw) / PHONE_RATE)
        return self._busy_cache

    async def _serve_call(self, phone: PhoneSocket, grant: StreamGrant | None = None) -> None:
        handler = self.event_handler.copy()  # type: ignore[union-attr]
        handler.phone_mode = True  # Twilio's 8 kHz frames as they come (the handler resamples the call)
        # The caller's number and the CallSid come from the signed webhook only (the token's grant).
        handler.phone_line = PhoneLine(call_sid=grant.call_sid or None, caller=grant.caller) if grant else PhoneLine()
        handler.mark_echoes = phone.played
        press = handler.press

        async def on_dtmf(key: str) -> None:
            await anyio.to_thread.run_sync(press, key)  # it may stop the bot's reply: not on the loop

        phone.on_dtmf = on_dtmf
        # FastRTC's status messages ({"type": "log", ...}) are for its own browser client; Twilio's
        # protocol has no such message, so on the phone they are dropped instead of sent.
        set_channel = handler.set_channel
        handler.set_channel = lambda channel: set_channel(_NO_CLIENT)

        async def on_start(stream_id: str, ws: WebSocketHandler) -> None:
            log.debug("phone call %s connected", stream_id)

        def on_outputs(outputs: Any) -> None:
            # FastRTC's send loop calls this in order with the audio: a mark leaves after what came before it
            for item in getattr(outputs, "args", ()):
                if isinstance(item, Mark):
                    phone.send_mark(item.name)

        # As FastRTC's own route: no snapshots on the phone (only marks), nothing to clean up in the stream.
        ws = WebSocketHandler(handler, on_start, lambda s: None, lambda s: on_outputs)
        # FastRTC's cleanup reads this, and only "start" sets it: a socket that closes earlier
        # would raise AttributeError there.
        ws.start_up_task = None
        phone.quit = ws.quit  # a hung-up call's read stops waiting for the peer's next message
        try:
            await ws.handle_websocket(phone)  # type: ignore[arg-type]
        finally:
            if ws.stream_id is not None:
                await self._call_ended(handler, ws.stream_id, phone)  # type: ignore[arg-type]

    async def _call_ended(self, handler, stream_id: str, websocket: WebSocket) -> None:
        current_context.set(Context(webrtc_id=stream_id, websocket=websocket))
        try:
            if inspect.iscoroutinefunction(handler.shutdown):
                await handler.shutdown()
            else:
                await anyio.to_thread.run_sync(handler.shutdown)
        except Exception:
            log.exception("call %s: the handler failed to shut down", stream_id)
        # Whatever the handler did, the runtime must not keep a call whose line is gone.
        try:
            self.runtime.end_call(stream_id, "hangup")
        except Exception:
            log.exception("call %s: ending it failed", stream_id)


def _to_phone_line(audio, sample_rate: int) -> bytes:
    """A whole message as Twilio plays it: 8 kHz mu-law."""
    return mulaw_encode(resample(to_mono_float32(audio), sample_rate, PHONE_RATE))


def build_stream(runtime) -> Stream:
    """The FastRTC stream around a fresh call handler, with the configured limits."""
    from pipeline.transport.fastrtc import make_handler

    server = _server(runtime)
    chat, slots, status, latency = _output_components(render_now=False)

    book = LatencyBook()

    def on_outputs(_chat, _slots, _status, _latency, snapshot):
        return book.render(snapshot)

    # FastRTC's defaults are one connection and video: both wrong for a voicebot.
    return VoiceStream(
        runtime,
        make_handler(runtime),
        modality="audio",
        mode="send-receive",
        concurrency_limit=server.concurrency_limit,
        time_limit=server.time_limit_s,
        additional_outputs=[chat, slots, status, latency],
        additional_outputs_handler=on_outputs,
        ui_args={"title": TITLE},
        verbose=False,
    )


# ------------------------------------------------------------------------------------------------ ui
def _restaurant_name(runtime) -> str:
    try:
        return str(runtime.cfg.restaurant.name)
    except AttributeError:
        return ""


def build_ui(runtime, stream: Stream) -> gr.Blocks:
    """The browser page; it also becomes ``stream.ui`` so ``stream.ui.launch()`` shows this page."""
    server = _server(runtime)
    name = _restaurant_name(runtime)
    with gr.Blocks(title=f"{TITLE} · {name}" if name else TITLE, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {TITLE}{' · ' + name if name else ''}\n"
            "Press the microphone button, allow the microphone, and book a table by voice. The bot "
            "greets you first; pause briefly after speaking and it answers. Talking over it stops it."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                audio = WebRTC(
                    label="Call",
                    mode="send-receive",
                    modality="audio",
                    rtc_configuration=stream.rtc_configuration,
                    full_screen=False,
                )
                status = gr.Markdown(status_markdown({}))
                slots = gr.Dataframe(headers=SLOT_HEADERS, value=slot_rows({}), type="array",
                                     label="Reservation", interactive=False)
            with gr.Column(scale=2, min_width=360):
                chat = gr.Chatbot(type="messages", label="Transcript", height=420)
                latency = gr.Dataframe(headers=LATENCY_HEADERS, type="array", label="Latency per turn (ms)",
                                       interactive=False)
                gr.Markdown(
                    "*gap*: from the end of your speech to the bot's first audio. Its stages: *pause* "
                    "(turn detection waiting for silence), *stt* (transcription), *agent* (to its first "
                    "words), *tts* (the first sentence synthesized), *send*."
                )
        audio.stream(
            fn=stream.event_handler,
            inputs=[audio],
            outputs=[audio],
            concurrency_limit=server.concurrency_limit,
            time_limit=server.time_limit_s,
        )
        # Each browser call keeps this listener running for its whole length: it needs the same
        # limit as the calls, or Gradio's default of one would stall every call after the first.
        book = LatencyBook()
        audio.on_additional_outputs(
            book.render,
            outputs=[chat, slots, status, latency],
            concurrency_limit=server.concurrency_limit,
        )
    stream.ui = demo
    stream.webrtc_component = audio
    return demo


# ----------------------------------------------------------------------------------------------- app
def build_app(
    runtime,
    *,
    validate_twilio: bool | None = None,
    stream: Stream | None = None,
    twilio_auth_token: str | None = None,
    close_runtime: bool = False,
) -> FastAPI:
    """FastAPI with the stream's routes, ``/healthz`` and the Gradio page at ``/``.

    ``close_runtime``: the app owns the runtime and closes it when the server shuts down (a
    ``voicebot serve --workers`` worker, which has no caller of its own to do it).

    ``validate_twilio`` defaults to ``twilio.validate``; when on, the auth token is
    ``twilio_auth_token`` or else ``$TWILIO_AUTH_TOKEN``, and without one this raises
    :class:`~pipeline.transport.twilio.auth.TwilioAuthMissing` rather than serve unchecked routes.
    """
    settings = runtime.cfg.twilio
    validate = settings.validate if validate_twilio is None else validate_twilio
    guard = None
    if validate:
        token = twilio_auth_token or auth_token_from_env()
        if not token:
            raise TwilioAuthMissing(MISSING_TOKEN_MESSAGE)
        guard = TwilioGuard(token, settings, runtime.services.store)
    stream = stream or build_stream(runtime)
    server = runtime.cfg.server
    lines = SharedLines(runtime.services.store, server.max_calls or server.concurrency_limit, server.line_lease_s)
    if isinstance(stream, VoiceStream):
        stream.twilio_guard = guard
        stream.shared_lines = lines
    elif guard is not None:
        raise TypeError("Twilio validation needs the stream from build_stream()")
    if guard is None:
        log.warning("Twilio validation is off (twilio.validate: false): anyone who can reach "
                    "/telephone/incoming and /telephone/handler can start a call")
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await lines.close()  # lines still held at shutdown are given back rather than left to their leases
        if close_runtime:
            await anyio.to_thread.run_sync(runtime.close)

    app = FastAPI(title=TITLE, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.shared_lines = lines
    app.state.stream = stream
    app.state.twilio_guard = guard

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_calls": len(runtime.calls)}

    # Routes registered before the Gradio mount win: a mount at "/" matches every path.
    stream.mount(app)
    demo = build_ui(runtime, stream)
    # gradio's mount_gradio_app prints a stray line to stdout; the app logs instead.
    with contextlib.redirect_stdout(io.StringIO()):
        gr.mount_gradio_app(app, demo, path="/", show_api=False)
    log.debug("app built: telephone routes, /healthz and the Gradio page at /")
    return app
