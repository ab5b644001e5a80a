"""Speech stages on an OpenAI-compatible server: ``stt.provider: openai`` and ``tts.provider: openai``.

``RemoteSTT`` posts each turn to ``{stt.base_url}/audio/transcriptions`` (speaches, vLLM, OpenAI and
the like): a 16 kHz 16-bit mono WAV as multipart, with ``model``, ``language``, ``prompt`` (whisper's
initial prompt for what the bot just asked, as the local engine uses it) and ``response_format=json``.
``RemoteTTS`` posts each piece of a reply to ``{tts.base_url}/audio/speech`` (Kokoro-FastAPI,
speaches) as JSON ``{model, input, voice, response_format, speed}`` and reads the audio as the
server streams it.

They keep the local engines' contracts, so that the call's fault handling applies unchanged: input
that is not audio is a ``ValueError`` before any request; an HTTP error, a connection refused, a
server slower than ``timeout_s`` or an answer that is not a transcription is a ``RemoteSTTError``
(the caller hears the apology and is asked again); the same for speech, or audio that is not speech
(``check_speech``, as for kokoro, and noise at full scale), is a ``RemoteTTSError``, a ``TTSFault``
(the pre-rendered apology is played). The text sent for speech is what our own front end makes of
it: normalised for speech (phone numbers digit by digit, times, dates), cut into sentences, the
configured readings applied, and in Japanese digits and Latin words already in katakana.

Both are synchronous, like the local engines: the call runtime runs them in worker threads. One
``httpx.Client`` each, shared by those threads.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import wave
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import numpy as np

from pipeline.config import Config, STTConfig, TTSConfig
from pipeline.speech.stt import (
    WHISPER_SAMPLE_RATE,
    STTContext,
    Transcript,
    current_context,
    echoes_prompt,
    prepare_audio,
    prompt_for,
    resample,
)
from pipeline.speech.tts import (
    CACHE_MAX_CHARS,
    LANGUAGES,
    JapaneseG2P,
    TTSFault,
    TTSStats,
    check_speech,
    normalize_for_speech,
    split_sentences,
)

if TYPE_CHECKING:
    from pipeline.speech.models import ModelPaths

log = logging.getLogger(__name__)

#: the longest wait for a connection, within the request's timeout_s
CONNECT_S = 3.0
#: bodies larger than these are not a turn's transcript / a piece's audio (60 s of float32 at 48 kHz)
MAX_TRANSCRIPT_BYTES = 1 << 20
MAX_AUDIO_BYTES = 12 << 20
#: a piece whose mean level is above this is noise at full scale (random bytes read as PCM average
#: 0.5), not a voice: speech averages well under 0.2 of full scale
MAX_MEAN_LEVEL = 0.4
#: the gap ``synthesize`` puts between sentences, as KokoroTTS does
SENTENCE_GAP_S = 0.15
#: the start of files that are audio, but not the PCM or WAV asked for
_COMPRESSED = {b"ID3": "mp3", b"OggS": "ogg", b"fLaC": "flac"}


class RemoteSTTError(RuntimeError):
    """The transcription server failed: an HTTP error, no connection, no answer in time, or an
    answer that is not a transcription."""


class RemoteTTSError(TTSFault):
    """The speech server failed, or its audio is not speech: a ``TTSFault`` like the local one's."""


# ================================================================================ audio on the wire
def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] as int16; int16 values that went through ``/ 32768`` come back exact."""
    return np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def encode_wav(pcm16: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit WAV file holding ``pcm16``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(np.ascontiguousarray(pcm16, dtype="<i2").tobytes())
    return out.getvalue()


def decode_wav(data: bytes) -> tuple[int, np.ndarray]:
    """``(sample_rate, mono float32)`` from a WAV file of 16-bit or 32-bit PCM or 32-bit float.

    A streamed WAV (its sizes written as 0 or 0xFFFFFFFF before the length was known) is read to
    the end of ``data``. Raises ValueError for anything else.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if kind == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise ValueError("WAV format chunk is cut short")
            tag, channels, rate = (int.from_bytes(data[body:body + 2], "little"),
                                   int.from_bytes(data[body + 2:body + 4], "little"),
                                   int.from_bytes(data[body + 4:body + 8], "little"))
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
                tag = int.from_bytes(data[body + 24:body + 26], "little")
            fmt = (tag, channels, rate, bits)
        elif kind == b"data":
            if fmt is None:
                raise ValueError("WAV data before its format")
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            return _samples(data[body:end], *fmt)
        pos = body + size + (size & 1)
    raise ValueError("WAV file without a data chunk")


def _samples(raw: bytes, tag: int, channels: int, rate: int, bits: int) -> tuple[int, np.ndarray]:
    dtypes = {(1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4"}
    dtype = dtypes.get((tag, bits))
    if dtype is None or channels < 1 or not 4000 <= rate <= 192000:
        raise ValueError(f"unsupported WAV audio (format {tag}, {bits} bits, {channels} channels, {rate} Hz)")
    frame = channels * bits // 8
    if len(raw) % frame:
        raise ValueError(f"WAV data of {len(raw)} bytes is not whole {channels}-channel {bits}-bit frames")
    x = np.frombuffer(raw, dtype=dtype).reshape(-1, channels)
    scale = {"<i2": 32768.0, "<i4": 2147483648.0, "<f4": 1.0}[dtype]
    mono = x.mean(axis=1, dtype=np.float64) / scale if channels > 1 else x[:, 0] / scale
    return rate, np.asarray(mono, dtype=np.float32)


# ================================================================================ HTTP
class _Server:
    """One OpenAI-compatible server: its base URL, key and timeout; every failure as ``error``."""

    def __init__(self, what: str, base_url: str | None, api_key_env: str, timeout_s: float,
                 error: type[Exception]):
        if not base_url:
            raise ValueError(f"{what}.provider openai needs {what}.base_url (e.g. http://127.0.0.1:8000/v1)")
        self.what, self.base_url, self.timeout_s, self.error = what, base_url.rstrip("/"), timeout_s, error
        headers = {"User-Agent": "voicebot"}
        key = os.environ.get(api_key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_S)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    def post(self, path: str, *, limit: int, **kwargs) -> tuple[httpx.Headers, bytes]:
        """The answer's headers and body. The whole answer must come within ``timeout_s`` (checked
        as it arrives; a server that goes quiet is cut by the read timeout, ``timeout_s`` after its
        last byte)."""
        url = f"{self.base_url}/{path}"
        deadline = time.monotonic() + self.timeout_s
        try:
            with self.client.stream("POST", path, **kwargs) as response:
                if response.status_code >= 400:
                    raise self.error(f"{url} answered HTTP {response.status_code}: {_detail(response)}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise self.error(f"{url} sent more than {limit} bytes")
                    if time.monotonic() > deadline:
                        raise self.error(f"{url} did not finish its answer within {self.timeout_s:g} s")
                return response.headers, bytes(body)
        except httpx.TimeoutException as e:
            raise self.error(f"{url} did not answer within {self.timeout_s:g} s ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise self.error(f"{url}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self.client.close()


def _detail(response: httpx.Response, limit: int = 300) -> str:
    """The start of an error answer: the OpenAI-style ``error.message`` or FastAPI's ``detail`` if
    it has one, else its text."""
    raw = b""
    for chunk in response.iter_bytes():
        raw += chunk
        if len(raw) >= 4 * limit:
            break
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        message = err.get("message") if isinstance(err, dict) else err or body.get("detail")
        if message:
            text = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
    return " ".join(text.split())[:limit] or "(no body)"


# ================================================================================ STT
#: whisper's language names, as some servers write them (OpenAI's verbose_json), to their codes
_LANGUAGE_NAMES = {"japanese": "ja", "english": "en"}


class RemoteSTT:
    """``STT`` on a server's ``/audio/transcriptions``."""

    def __init__(self, cfg: STTConfig):
        self.cfg = cfg
        self.language = None if cfg.language == "auto" else cfg.language
        self.model = remote_whisper_model(cfg)
        self._server = _Server("stt", cfg.base_url, cfg.api_key_env, cfg.timeout_s, RemoteSTTError)
        log.info("STT on %s (model %s)", self._server.base_url, self.model)

    def hotwords_for(self, context: STTContext | None) -> str | None:
        """The context's words and the configured hotwords, once each (as the local engine has them)."""
        words = [*(context.words if context is not None else ()), *self.cfg.hotwords]
        return " ".join(dict.fromkeys(w.strip() for w in words if w.strip())) or None

    def fields(self, context: STTContext | None) -> dict[str, str]:
        """The form fields sent with a turn's audio."""
        # Plain json carries the text only: with no language set, verbose_json says which one was heard.
        fields = {"model": self.model, "response_format": "json" if self.language else "verbose_json",
                  "temperature": "0"}
        if self.language:
            fields["language"] = self.language
        prompt = prompt_for(context, self.language)
        if prompt:
            fields["prompt"] = prompt
        if self.cfg.remote_hotwords:
            hotwords = self.hotwords_for(context)
            if hotwords:
                fields["hotwords"] = hotwords
        return fields

    def transcribe(self, audio: np.ndarray, sample_rate: int, context: STTContext | None = None) -> Transcript:
        start = time.perf_counter()
        x = prepare_audio(audio, sample_rate)  # ValueError for what is not audio, before any request
        duration = x.size / WHISPER_SAMPLE_RATE
        context = context if context is not None else current_context()
        fields = self.fields(context)
        upload = encode_wav(to_pcm16(x), WHISPER_SAMPLE_RATE)
        _, body = self._server.post("audio/transcriptions", limit=MAX_TRANSCRIPT_BYTES, data=fields,
                                    files={"file": ("turn.wav", upload, "audio/wav")})
        text, language = self._read(body)
        prompt = fields.get("prompt")
        if echoes_prompt(text, prompt):  # whisper behind a server copies its prompt on silence too
            log.debug("the server's whisper wrote a piece of its prompt (%r): no speech", text)
            text = ""
        elapsed = time.perf_counter() - start
        log.debug("transcribed %.2f s of audio remotely in %.3f s: %r", duration, elapsed, text)
        return Transcript(text=text, language=language or self.language, duration_s=duration, elapsed_s=elapsed,
                          asking=context.asking if context is not None else None)

    def _read(self, body: bytes) -> tuple[str, str | None]:
        try:
            answer = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise RemoteSTTError(f"{self._server.base_url}: the answer is not JSON: "
                                 f"{body[:120].decode('utf-8', 'replace')!r}") from None
        text = answer.get("text") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise RemoteSTTError(f"{self._server.base_url}: the answer holds no transcription text: "
                                 f"{json.dumps(answer, ensure_ascii=False)[:120]}")
        language = answer.get("language")
        if isinstance(language, str):
            language = _LANGUAGE_NAMES.get(language.lower(), language.lower())
        else:
            language = None
        return text.strip(), language

    def warmup(self) -> None:
        """One transcription of a second of low noise: the server is reachable and has the model
        (a clear error at start-up rather than an apology in the first call)."""
        start = time.perf_counter()
        noise = np.random.default_rng(0).standard_normal(WHISPER_SAMPLE_RATE).astype(np.float32) * 1e-3
        self.transcribe(noise, WHISPER_SAMPLE_RATE)
        log.debug("remote STT answered in %.2f s", time.perf_counter() - start)

    def close(self) -> None:
        self._server.close()


def remote_whisper_model(cfg: STTConfig) -> str:
    """The model a server is asked for: ``stt.remote_model``, else ``stt.model`` with a size name
    written as faster-whisper's repository (what speaches serves it as)."""
    if cfg.remote_model:
        return cfg.remote_model
    from pipeline.speech.models import WHISPER_REPOS

    return WHISPER_REPOS.get(cfg.model, cfg.model)


# ================================================================================ TTS
class RemoteTTS:
    """``TTS`` on a server's ``/audio/speech``, 24 kHz float32 mono like KokoroTTS.

    Sentence by sentence as KokoroTTS: ``stream`` yields each as soon as its audio is complete
    and checked, ``synthesize`` joins them with the same gap. A short piece said before is
    replayed from memory (``tts.cache_size``), so the phrases rendered at start-up cost no request
    in a call. A piece's audio is read as the server streams it and handed over once it is all
    there and known to be speech: what reaches the caller is never half a piece followed by noise.
    """

    sample_rate = 24000

    def __init__(self, cfg: TTSConfig):
        self.cfg = cfg
        self._server = _Server("tts", cfg.base_url, cfg.api_key_env, cfg.timeout_s, RemoteTTSError)
        self._ja = JapaneseG2P(cfg.readings.get("ja"))
        self._ja_lock = threading.Lock()  # the Japanese front end (pyopenjtalk, fugashi) is not thread-safe
        self._en_readings = dict(cfg.readings.get("en", {}))
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.stats = TTSStats()
        self._stats_lock = threading.Lock()
        log.info("TTS on %s (model %s, %s)", self._server.base_url, cfg.remote_model, cfg.response_format)

    def _count(self, what: str) -> None:
        with self._stats_lock:
            setattr(self.stats, what, getattr(self.stats, what) + 1)

    def _voice(self, lang: str) -> str:
        voice = self.cfg.voice.get(lang)
        if voice is None:
            raise ValueError(f"tts.voice has no voice for language {lang!r}")
        return voice

    def text_for(self, sentence: str, language: str) -> str:
        """What the server is given for one already normalised piece: the configured readings
        applied; in Japanese, digits and Latin words read into katakana by our front end (as
        KokoroTTS reads them before its G2P), so that the server says 24日 and AI-SHIFT as we would."""
        lang = _language(language)
        if lang == "ja":
            with self._ja_lock:
                return self._ja.to_kana_text(sentence)
        for written, spoken in self._en_readings.items():
            sentence = sentence.replace(written, spoken)
        return sentence

    def _render(self, sentence: str, lang: str) -> np.ndarray:
        cacheable = self.cfg.cache_size > 0 and len(sentence) <= CACHE_MAX_CHARS
        key = (lang, sentence)
        if cacheable:
            with self._cache_lock:
                audio = self._cache.get(key)
                if audio is not None:
                    self._cache.move_to_end(key)
                    self._count("cache_hits")
                    return audio
        audio = self._request(sentence, lang)
        audio.setflags(write=False)  # shared by every call that says it
        if cacheable and audio.size:
            with self._cache_lock:
                self._cache[key] = audio
                while len(self._cache) > self.cfg.cache_size:
                    self._cache.popitem(last=False)
        return audio

    def _request(self, sentence: str, lang: str) -> np.ndarray:
        voice = self._voice(lang)
        if not any(c.isalnum() for c in sentence):
            return np.zeros(0, np.float32)  # "！？", "...": nothing to say, as KokoroTTS has it
        text = self.text_for(sentence, lang)
        payload = {"model": self.cfg.remote_model, "input": text, "voice": voice,
                   "response_format": self.cfg.response_format, "speed": self.cfg.speed}
        try:
            headers, body = self._server.post("audio/speech", limit=MAX_AUDIO_BYTES, json=payload)
            self._count("synthesized")
            audio = self.decode(headers, body)
            # letters stand in for the sounds KokoroTTS counts in its phonemes; half of them is
            # fewer sounds than any script has, so only audio far too short for the text is refused
            sounds = max(1, sum(c.isalnum() for c in text) // 2)
            audio = check_speech(audio, sounds, self.cfg.speed, self.sample_rate)
            level = float(np.mean(np.abs(audio))) if audio.size else 0.0
            if level > MAX_MEAN_LEVEL:
                raise RemoteTTSError(f"the audio's mean level is {level:.2f} of full scale: noise, not speech")
        except TTSFault as e:
            self._count("faults")
            log.warning("TTS fault on %r (%s voice %s, %s): %s", sentence, lang, voice, self._server.base_url, e)
            raise
        return audio

    def decode(self, headers: httpx.Headers | dict[str, str], body: bytes) -> np.ndarray:
        """The answer's audio as float32 at ``sample_rate``; ``RemoteTTSError`` when it is not audio."""
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype.endswith("json") or ctype.startswith("text/") or _is_text(body):
            raise RemoteTTSError(f"the server answered {ctype or 'no content type'}, not audio: "
                                 f"{body[:120].decode('utf-8', 'replace')!r}")
        for magic, kind in _COMPRESSED.items():
            if body.startswith(magic):
                raise RemoteTTSError(f"the server sent {kind}; tts.response_format is {self.cfg.response_format}")
        if body.startswith(b"RIFF"):  # a WAV, asked for or not
            try:
                rate, audio = decode_wav(body)
            except ValueError as e:
                raise RemoteTTSError(f"the server's WAV cannot be read: {e}") from None
        elif self.cfg.response_format == "wav":
            raise RemoteTTSError(f"the server's answer is not a WAV file ({len(body)} bytes)")
        else:
            if len(body) % 2:
                raise RemoteTTSError(f"{len(body)} bytes of pcm: not whole 16-bit samples")
            rate = self.cfg.remote_sample_rate
            audio = np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0
        return resample(np.asarray(audio, np.float32), rate, self.sample_rate)

    def synthesize(self, text: str, language: str) -> np.ndarray:
        """All of ``text`` as one float32 array at ``sample_rate`` (empty for empty text)."""
        parts = [audio for _, audio in self.stream(text, language)]
        if not parts:
            return np.zeros(0, np.float32)
        gap = np.zeros(int(SENTENCE_GAP_S * self.sample_rate), np.float32)
        out = [parts[0]]
        for part in parts[1:]:
            out += [gap, part]
        return np.concatenate(out)

    def stream(self, text: str, language: str) -> Iterator[tuple[int, np.ndarray]]:
        """``(sample_rate, audio)`` per sentence, each as soon as its audio is in and checked."""
        lang = _language(language)
        for sentence in split_sentences(normalize_for_speech(text, lang)):
            start = time.perf_counter()
            audio = self._render(sentence, lang)
            if audio.size:
                log.debug("remote tts %s %.2f s audio in %.3f s: %r", lang, audio.size / self.sample_rate,
                          time.perf_counter() - start, sentence)
                yield self.sample_rate, audio

    def warmup(self) -> None:
        """A short sentence in each configured language: the server is reachable and has the voices
        (a clear error at start-up, where the apology is rendered, rather than silence later)."""
        start = time.perf_counter()
        for lang, text in (("ja", "はい、かしこまりました。"), ("en", "Yes, of course.")):
            if lang in self.cfg.voice:
                self.synthesize(text, lang)
        log.debug("remote TTS answered in %.2f s", time.perf_counter() - start)

    def close(self) -> None:
        self._server.close()


def _is_text(body: bytes) -> bool:
    """An error page or a JSON error sent as if it were audio (PCM may start with any byte: only a
    whole JSON document or a markup prologue counts)."""
    head = body[:16].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml")):
        return True
    if head[:1] in (b"{", b"[") and len(body) <= MAX_TRANSCRIPT_BYTES:
        try:
            json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False
        return True
    return False


def _language(language: str) -> str:
    base = (language or "").split("-")[0].split("_")[0].lower()
    if base not in LANGUAGES:
        raise ValueError(f"unsupported speech language {language!r} (expected one of {', '.join(LANGUAGES)})")
    return base


# ================================================================================ model files
def ensure_local_models(cfg: Config, download: bool, *, progress: bool = True) -> ModelPaths:
    """``pipeline.speech.models.ensure_models`` for the stages that run in this process: a stage on a
    speech server needs no model file here, and its missing files are neither reported nor a reason
    to stop. (When a local stage's files must be fetched, ``ensure_models`` fetches whatever is
    missing, the served stage's too.)"""
    from pipeline.speech.models import ModelPaths, ModelsMissing, ensure_models, whisper_dir

    served: set = set()
    paths = ModelPaths(whisper_dir(cfg), cfg.path(cfg.tts.model), cfg.path(cfg.tts.voices))
    if cfg.stt.provider == "openai":
        served.add(paths.whisper)
    if cfg.tts.provider == "openai":
        served |= {paths.kokoro_model, paths.kokoro_voices}
    if not served:
        return ensure_models(cfg, download, progress=progress)
    if cfg.stt.provider == "openai" and cfg.tts.provider == "openai":
        return paths
    for fetch in (False, True) if download else (False,):
        try:
            return ensure_models(cfg, fetch, progress=progress)
        except ModelsMissing as e:
            needed = [m for m in e.missing if m.path not in served]
            if not needed:
                return paths
            if fetch or not download:
                raise ModelsMissing(needed, e.reason) from None
    return paths
