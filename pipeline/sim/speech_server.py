"""Our own local models behind the OpenAI audio API, on loopback: the remote speech providers'
counterpart in tests.

``SpeechServer(stt, tts)`` serves a ``FasterWhisperSTT`` at ``/v1/audio/transcriptions`` (multipart
``file`` as WAV, ``model``, ``language``, ``prompt``, ``hotwords`` as speaches takes them,
``response_format`` json, text or verbose_json) and a ``KokoroTTS`` at ``/v1/audio/speech`` (JSON
``{model, input, voice, response_format: pcm|wav, speed}``, the audio streamed sentence by sentence
as it is synthesised, as Kokoro-FastAPI streams it), so that what the remote providers produce can
be compared with what the same engines produce in process.

Knobs (``fail``) make either endpoint misbehave for the fault tests: an HTTP status, a delay before
the answer, a stall in the middle of it, garbage instead of it; for every request or the next few.

    python -m pipeline.sim.speech_server --config DIR/config.yaml

serves the configured local models the same way on a free port of 127.0.0.1 (logged) until
interrupted; the test models' config makes a server that needs no download.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
import threading
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from pipeline.sim.loopback import LoopbackServer
from pipeline.speech.remote import SENTENCE_GAP_S, decode_wav, to_pcm16
from pipeline.speech.stt import FasterWhisperSTT, Transcript

log = logging.getLogger(__name__)


@dataclass
class Faults:
    """How an endpoint misbehaves."""

    #: answer with this HTTP status and an OpenAI-style error body
    status: int | None = None
    #: seconds before anything is answered
    delay_s: float = 0.0
    #: seconds of silence after the first piece of the answer (the headers and a first chunk)
    stall_s: float = 0.0
    #: random bytes instead of the answer (speech: sent as audio/pcm; transcription: as JSON)
    garbage: bool = False
    #: how many requests misbehave before the endpoint is well again; None: all of them
    times: int | None = None


@dataclass(frozen=True)
class Received:
    """One request as it reached the server."""

    endpoint: str  #: "transcriptions" or "speech"
    fields: dict[str, Any]  #: the form fields (not the file) or the JSON body
    authorization: str | None


class _ServedWhisper:
    """The engine's own ``transcribe`` (its window, retry and no-speech filtering), with the
    request's prompt and hotwords in place of those it would derive from a call's dialog context."""

    def __init__(self, engine: FasterWhisperSTT, prompt: str | None, hotwords: str | None):
        self.engine, self.prompt, self.hotwords = engine, prompt, hotwords

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def decode(self, x: np.ndarray, *, prompt: str | None = None, hotwords: str | None = None,
               **options: Any) -> tuple[list, str]:
        # the engine's other options (window, token cap, language) pass through as it sets them
        return self.engine.decode(x, prompt=self.prompt,
                                  hotwords=self.hotwords if self.hotwords is not None else hotwords, **options)

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> Transcript:
        return FasterWhisperSTT.transcribe(self, audio, sample_rate, None)  # type: ignore[arg-type]


class SpeechServer:
    """``with SpeechServer(stt, tts) as server:`` serves them at ``server.base_url`` (``.../v1``).

    Either engine may be None (that endpoint answers 404). ``api_key``: requests must carry it as
    a bearer token (else 401). ``requests`` lists what was received, in order.
    """

    def __init__(self, stt: FasterWhisperSTT | None = None, tts: Any = None, *, api_key: str | None = None,
                 host: str = "127.0.0.1"):
        self.stt, self.tts, self.api_key = stt, tts, api_key
        self.requests: list[Received] = []
        self._faults: dict[str, Faults] = {"transcriptions": Faults(), "speech": Faults()}
        self._lock = threading.Lock()
        self._stt_engines: dict[str | None, FasterWhisperSTT] = {}
        self._tts_engines: dict[tuple[str, str, float], Any] = {}
        self._rng = np.random.default_rng(0)
        self._loopback = LoopbackServer(self.app(), host=host, ws="none", name="speech-server")

    @property
    def base_url(self) -> str:
        return f"{self._loopback.base_url}/v1"

    # ------------------------------------------------------------------ knobs
    def fail(self, endpoint: str, **knobs: Any) -> None:
        """Make ``endpoint`` ("stt"/"transcriptions" or "tts"/"speech") misbehave as ``Faults(**knobs)``."""
        name = {"stt": "transcriptions", "tts": "speech"}.get(endpoint, endpoint)
        if name not in self._faults:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        with self._lock:
            self._faults[name] = Faults(**knobs)

    def heal(self) -> None:
        with self._lock:
            self._faults = {name: Faults() for name in self._faults}

    def count(self, endpoint: str) -> int:
        """Requests received so far at ``endpoint`` ("transcriptions"/"stt" or "speech"/"tts")."""
        name = {"stt": "transcriptions", "tts": "speech"}.get(endpoint, endpoint)
        return sum(1 for r in self.requests if r.endpoint == name)

    def _take(self, endpoint: str) -> Faults:
        """The faults that apply to this request (one use of a limited fault)."""
        with self._lock:
            faults = self._faults[endpoint]
            if faults.times is None:
                return faults
            if faults.times <= 0:
                return Faults()
            self._faults[endpoint] = replace(faults, times=faults.times - 1)
            return faults

    def _noise(self, n: int) -> bytes:
        with self._lock:
            return self._rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    # ------------------------------------------------------------------ engines
    def _whisper(self, language: str | None) -> FasterWhisperSTT:
        """The engine for ``language`` (None: the served engine's own setting)."""
        assert self.stt is not None
        base = self.stt
        if language is None or language == base.language:
            return base
        with self._lock:
            engine = self._stt_engines.get(language)
            if engine is None:
                engine = FasterWhisperSTT(base.cfg.model_copy(update={"language": language}), base.model_path)
                self._stt_engines[language] = engine
            return engine

    def _kokoro(self, voice: str, speed: float) -> tuple[Any, str]:
        """The engine that speaks ``voice`` at ``speed``, and its language."""
        base = self.tts
        langs = [lang for lang, v in base.cfg.voice.items() if v == voice]
        lang = langs[0] if langs else {"j": "ja", "a": "en", "b": "en"}.get(voice[:1])
        if lang is None:
            raise ValueError(f"unknown voice {voice!r}")
        if base.cfg.voice.get(lang) == voice and base.cfg.speed == speed:
            return base, lang
        with self._lock:
            engine = self._tts_engines.get((lang, voice, speed))
            if engine is None:
                engine = type(base)(base.cfg.model_copy(update={"voice": {lang: voice}, "speed": speed}),
                                    base.model_path, base.voices_path)
                self._tts_engines[(lang, voice, speed)] = engine
            return engine, lang

    # ------------------------------------------------------------------ the app
    def app(self) -> FastAPI:
        app = FastAPI(title="voicebot speech server (loopback)")

        def refused(request: Request) -> JSONResponse | None:
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return _error(401, "invalid API key", "authentication_error")
            return None

        @app.post("/v1/audio/transcriptions")
        async def transcriptions(
            request: Request,
            file: Annotated[UploadFile, File()],
            model: Annotated[str, Form()],
            language: Annotated[str | None, Form()] = None,
            prompt: Annotated[str | None, Form()] = None,
            response_format: Annotated[str, Form()] = "json",
            temperature: Annotated[float, Form()] = 0.0,
            hotwords: Annotated[str | None, Form()] = None,
        ) -> Response:
            fields = {"model": model, "language": language, "prompt": prompt, "response_format": response_format,
                      "temperature": temperature, "hotwords": hotwords}
            self.requests.append(Received("transcriptions", fields, request.headers.get("authorization")))
            if (no := refused(request)) is not None:
                return no
            if self.stt is None:
                return _error(404, "no transcription model is served here", "not_found")
            faults = self._take("transcriptions")
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            if faults.status:
                return _error(faults.status, "injected fault", "server_error")
            if faults.garbage:
                return Response(b"\xff" + self._noise(256), media_type="application/json")
            if response_format not in ("json", "text", "verbose_json"):
                return _error(400, f"response_format {response_format!r} is not served here")
            try:
                rate, pcm = decode_wav(await file.read())
            except ValueError as e:
                return _error(400, f"cannot read the audio: {e}")
            lang = None if language in (None, "", "auto") else language
            try:
                engine = _ServedWhisper(self._whisper(lang), prompt or None, hotwords)
                result = await run_in_threadpool(engine.transcribe, pcm, rate)
            except ValueError as e:
                return _error(400, str(e))
            if response_format == "text":
                body: Any = result.text
            elif response_format == "verbose_json":
                body = {"task": "transcribe", "language": result.language, "duration": result.duration_s,
                        "text": result.text, "segments": []}
            else:
                body = {"text": result.text}
            if faults.stall_s:
                return StreamingResponse(_stalled(body, faults.stall_s), media_type="application/json")
            return PlainTextResponse(body) if response_format == "text" else JSONResponse(body)

        @app.post("/v1/audio/speech")
        async def speech(request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                body = None
            self.requests.append(Received("speech", body if isinstance(body, dict) else {"body": body},
                                          request.headers.get("authorization")))
            if (no := refused(request)) is not None:
                return no
            if self.tts is None:
                return _error(404, "no speech model is served here", "not_found")
            if not isinstance(body, dict) or not isinstance(body.get("input"), str) or not body["input"].strip():
                return _error(400, "expected a JSON body with a non-empty `input`")
            fmt = body.get("response_format", "mp3")
            if fmt not in ("pcm", "wav"):
                return _error(400, f"response_format {fmt!r} is not served here (pcm, wav)")
            try:
                speed = float(body.get("speed", 1.0))
                engine, lang = self._kokoro(str(body.get("voice", "")), speed)
            except (TypeError, ValueError) as e:
                return _error(400, str(e))
            faults = self._take("speech")
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            if faults.status:
                return _error(faults.status, "injected fault", "server_error")
            if faults.garbage:
                return Response(self._noise(engine.sample_rate * 2), media_type="audio/pcm")
            pieces = engine.stream(body["input"], lang)
            try:  # the first piece before the headers: a synthesis that fails is an HTTP error
                first = await run_in_threadpool(next, pieces, None)
            except Exception as e:
                log.warning("speech server: synthesis failed: %s", e)
                return _error(500, f"synthesis failed: {type(e).__name__}: {e}", "server_error")
            media = "audio/wav" if fmt == "wav" else "audio/pcm"
            return StreamingResponse(_audio(first, pieces, fmt, faults.stall_s), media_type=media)

        return app

    # ------------------------------------------------------------------ lifetime
    def start(self) -> SpeechServer:
        self._loopback.start()
        return self

    def stop(self) -> None:
        self._loopback.stop()

    def __enter__(self) -> SpeechServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


async def _stalled(body: Any, stall_s: float):
    import json

    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    data = text.encode("utf-8")
    yield data[:1]
    await asyncio.sleep(stall_s)
    yield data[1:]


def _wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes are unknown (0xFFFFFFFF), as streaming servers send it."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


async def _audio(first: tuple[int, np.ndarray] | None, pieces, fmt: str, stall_s: float):
    """The sentences' audio as 16-bit PCM, with the gap KokoroTTS.synthesize puts between them."""
    piece = first
    sent = False
    while piece is not None:
        rate, audio = piece
        if not sent and fmt == "wav":
            yield _wav_header(rate)
        if sent:
            yield to_pcm16(np.zeros(int(SENTENCE_GAP_S * rate), np.float32)).tobytes()
        yield to_pcm16(audio).astype("<i2").tobytes()
        if not sent and stall_s:
            await asyncio.sleep(stall_s)
        sent = True
        piece = await run_in_threadpool(next, pieces, None)


# ------------------------------------------------------------------------------------ command
def main(argv: list[str] | None = None) -> int:
    """Serve the configured local models until interrupted."""
    import time

    from pipeline.config import load_config
    from pipeline.speech.models import ensure_models, model_resolver
    from pipeline.speech.stt import make_stt
    from pipeline.speech.tts import make_tts

    parser = argparse.ArgumentParser(prog="python -m pipeline.sim.speech_server", description=main.__doc__)
    parser.add_argument("--config", default=None, help="config.yaml whose local stt and tts models are served")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    cfg.stt.provider, cfg.tts.provider = "faster-whisper", "kokoro"  # what is served runs here
    ensure_models(cfg, download=False)
    resolve = model_resolver(cfg)
    server = SpeechServer(make_stt(cfg.stt, resolve), make_tts(cfg.tts, resolve))
    with server:
        log.info("serving %s and %s at %s (Ctrl-C stops)", cfg.stt.model, cfg.tts.model, server.base_url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
