"""Speech to text behind one small Protocol; faster-whisper is the local backend.

``transcribe()`` is synchronous and CPU-bound: callers run it in a worker thread, never on the
event loop. It consumes faster-whisper's lazy segment generator itself, so all the decoding happens
in that thread.

A turn is decoded knowing what the bot just asked (:class:`STTContext`): whisper's initial prompt
is the question with examples of answers (:data:`PROMPTS`), the restaurant's name joins the
hotwords, and what whisper writes on no speech (segments it gave high no-speech odds, a copy of
its prompt) is dropped. Measured with ``python -m pipeline.sim.recognition``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.audio import to_mono_float32
from pipeline.config import STTConfig

log = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = 16000
MAX_AUDIO_S = 120.0  # a turn longer than this is a stuck line, not a caller


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None  # the language decoded in (configured, or detected when "auto")
    duration_s: float  # seconds of audio transcribed
    elapsed_s: float  # seconds transcribe() took
    window_s: float | None = None  # the encoder window the text came from; None = whisper's 30 s
    retried: bool = False  # the shortened window decoded degenerately and the 30 s window was used
    #: what the bot had asked when this was decoded (``STTContext.asking``); None: no dialog context
    asking: str | None = None
    #: segments dropped as no speech (whisper's no-speech probability high, its confidence low)
    dropped: int = 0


@dataclass(frozen=True)
class STTContext:
    """What the call knows before the caller speaks, so that the recogniser can expect it.

    ``asking`` is what the bot just asked (the agent's ``state.asking``: a slot name such as
    ``date``, ``time``, ``party_size``, ``name``, ``phone``, ``note``, or ``confirm``,
    ``anything_else``, ``manage_phone``, ...); ``language`` the call's language; ``words`` are
    spelled as given when heard (the restaurant's name). faster-whisper turns it into an initial
    prompt (:func:`prompt_for`) and hotwords; another provider may use it as it can, or not at all.
    """

    asking: str | None = None
    language: str | None = None
    words: tuple[str, ...] = ()
    #: given what whisper wrote for a short turn, the answers to weigh against it on the turn's own
    #: audio ("2名です" when it wrote 「耳で」); [] when what it wrote already answers (see
    #: :func:`pipeline.dialog.understand.sound.alternatives`). None: take whisper's text as it is.
    expect: Callable[[str], Sequence[str]] | None = None
    #: told the answer whisper scored best but not well enough to take (a guess the dialog may ask
    #: the caller about: 「20時でよろしいでしょうか」), then the next best when that was about as
    #: likely; not called when there is none
    guessed: Callable[[str], None] | None = None
    #: languages to choose among by ear for this turn (a call's first turns: the caller may open in
    #: another language than the bot's greeting); () = decode in ``language``
    detect: tuple[str, ...] = ()
    #: the caller's earlier words in the call (16 kHz mono float32) while ``detect`` is on: a turn too
    #: short to tell its language by is heard together with them
    heard_before: np.ndarray | None = field(default=None, compare=False, repr=False)


@runtime_checkable
class STT(Protocol):
    """One verb: ``transcribe``. ``context`` is the turn's dialog context; None means the one set
    around the call by :func:`listening_for` (the call runtime reaches the provider through
    wrappers that pass two arguments on), or none."""

    def transcribe(self, audio: np.ndarray, sample_rate: int, context: STTContext | None = None) -> Transcript: ...

    def warmup(self) -> None: ...


#: the dialog context of the transcription running in this thread or task (see ``listening_for``)
_CONTEXT: contextvars.ContextVar[STTContext | None] = contextvars.ContextVar("stt_context", default=None)


@contextlib.contextmanager
def listening_for(context: STTContext | None) -> Iterator[None]:
    """Within this block (this thread or task, and work submitted with a copy of its context), a
    ``transcribe`` given no ``context`` uses this one."""
    token = _CONTEXT.set(context)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> STTContext | None:
    """The dialog context :func:`listening_for` set here, or None."""
    return _CONTEXT.get()


# ------------------------------------------------------------------------------------------ prompts
#: Whisper's initial prompt per question: the bot's question, with examples of answers written as
#: the bot's parsers read best. Whisper takes the prompt for the text said just before the turn and
#: follows its vocabulary and its digit style (「080-4827-3916」, 「17時」 rather than 「十七時」). The
#: examples hold no value of the measurement's caller lines (pipeline.sim.recognition), and the
#: phone number is one nobody has. The bot's question rather than an answer: on silence, whisper
#: base copies its prompt, and a copied answer (「はい、お願いします。」) would be a caller's yes, a
#: copied question is no answer (and is dropped, see ``echoes_prompt``). Measured on Japanese;
#: the English ones follow the same pattern, unmeasured.
PROMPTS: dict[str, dict[str | None, str]] = {
    "ja": {
        None: "お電話ありがとうございます。ご予約でしょうか。",
        "date": "ご来店の日にち(明日、明後日、3月15日、来週の月曜日など)をお願いします。",
        "time": "お時間(午前11時、正午、17時、夜9時半など)をお願いします。",
        "party_size": "人数(1名、ふたり、3名、10人など)をお願いします。",
        "phone": "お電話番号(080-4827-3916など)をお願いします。",
        "name": "ご予約のお名前(山本、など)をお願いします。",
        "confirm": "こちらの内容でよろしいでしょうか。",
        "anything_else": "ほかにご要望はございますか。",
        "note": "ご要望(記念日のお祝い、個室など)があればお聞かせください。",
    },
    "en": {
        None: "Thank you for calling. Would you like to make a reservation?",
        "date": "What date (tomorrow, March 15th, next Monday, for example)?",
        "time": "What time (11 am, noon, 5 pm, 9:30 pm, for example)?",
        "party_size": "How many people (one, two, 3, 10, for example)?",
        "phone": "Your phone number (080-4827-3916, for example), please.",
        "name": "The name for the booking (Yamamoto, for example), please.",
        "confirm": "Is everything correct?",
        "anything_else": "Is there anything else?",
        "note": "Any requests (an anniversary, a private room, for example)?",
    },
}
#: questions that expect the same kind of answer as a slot's
_ASKING_LIKE = {"manage_phone": "phone", "manage_date": "date", "manage_confirm": "confirm"}


def prompt_for(context: STTContext | None, language: str | None) -> str | None:
    """Whisper's initial prompt for a turn that answers ``context.asking``, in ``language`` (the
    decoding language; the context's when that is detected); None without a context, or for a
    language without prompts."""
    if context is None:
        return None
    table = PROMPTS.get(language or context.language or "")
    if table is None:
        return None
    asking = _ASKING_LIKE.get(context.asking or "", context.asking)
    return table.get(asking, table[None])


# ------------------------------------------------------------------------------------------ audio input
def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample mono float32 audio; soxr (pulled in by FastRTC's librosa) when present."""
    if sr_in == sr_out or audio.size == 0:
        return audio
    try:
        import soxr

        return soxr.resample(audio, sr_in, sr_out).astype(np.float32, copy=False)
    except ImportError:
        # Linear interpolation aliases a little when downsampling; good enough for speech and VAD.
        n_out = int(round(len(audio) * sr_out / sr_in))
        t = np.arange(n_out, dtype=np.float64) * (sr_in / sr_out)
        return np.interp(t, np.arange(len(audio)), audio).astype(np.float32)


def prepare_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validated mono float32 at 16 kHz, ready for Whisper."""
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or not (
        4000 <= sample_rate <= 192000
    ):
        raise ValueError(f"sample_rate must be an integer between 4000 and 192000 Hz, got {sample_rate!r}")
    x = to_mono_float32(audio)
    if x.size == 0:
        raise ValueError("audio is empty")
    if x.size / sample_rate > MAX_AUDIO_S:
        raise ValueError(f"audio is {x.size / sample_rate:.0f} s long; the limit is {MAX_AUDIO_S:.0f} s")
    x = resample(x, int(sample_rate), WHISPER_SAMPLE_RATE)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        # float input outside [-1, 1] is almost always int16 values in a float array
        x = x / (32768.0 if peak > 2.0 else peak)
    return x


# ------------------------------------------------------------------------------------------ encoder window
#: Whisper's mel frames per second, and its fixed window (30 s)
MEL_FPS = 100
WHISPER_WINDOW_FRAMES = 3000
#: the window of the transcription running in this context; None = whisper's 30 s
_WINDOW_FRAMES: contextvars.ContextVar[int | None] = contextvars.ContextVar("whisper_window_frames", default=None)
_hook_lock = threading.Lock()


def _install_window_hook() -> None:
    """Let ``encoder_window`` shorten faster-whisper's padding, per transcription.

    faster-whisper pads every segment's features to 30 s with the module-level ``pad_or_trim``
    before encoding: the encoder's cost is that of 30 s whatever the utterance. The wrapper
    installed here pads to the window of the transcription that calls it (a context variable, so
    concurrent calls with and without a window do not see each other's) and is a no-op otherwise.
    """
    import faster_whisper.transcribe as fwt

    with _hook_lock:
        if getattr(fwt.pad_or_trim, "_voicebot_window", False):
            return
        original = fwt.pad_or_trim

        def pad_to_window(array, length: int = WHISPER_WINDOW_FRAMES, *, axis: int = -1):
            frames = _WINDOW_FRAMES.get()
            if frames and length == WHISPER_WINDOW_FRAMES:
                # never cut the audio, and keep the frame count even (the encoder's stride-2 conv)
                length = min(length, max(frames, array.shape[axis] + array.shape[axis] % 2))
            return original(array, length, axis=axis)

        pad_to_window._voicebot_window = True  # type: ignore[attr-defined]
        fwt.pad_or_trim = pad_to_window


@contextlib.contextmanager
def encoder_window(seconds: float | None) -> Iterator[None]:
    """Within this block (this thread or task), whisper encodes ``seconds`` (or the audio, if
    longer) instead of 30 s. ``None`` leaves the 30 s window.

    Whisper was trained on 30 s windows. With real weights (whisper tiny.en, ``voicebot stt-check``,
    docs/benchmarks.md) windows of 6 s and more transcribed as well as 30 s, while windows of 4 s
    or one fitted tightly to a short utterance made the decoder repeat itself: that is what
    ``degenerate`` catches and why ``stt.window_s`` has a floor.
    """
    if not seconds:
        token = _WINDOW_FRAMES.set(None)
    else:
        _install_window_hook()
        token = _WINDOW_FRAMES.set(int(round(seconds * MEL_FPS)))
    try:
        yield
    finally:
        _WINDOW_FRAMES.reset(token)


#: whisper's own test for a decode that went round in circles (its compression_ratio_threshold)
REPEAT_RATIO = 2.4
#: the decoder's hard limit (half of whisper's 448-token context)
MAX_TOKENS = 224


def token_cap(duration_s: float) -> int:
    """The most tokens ``duration_s`` of speech can need: 25 a second is about twice what fast
    Japanese or English speech gives. The cap bounds a looping decode to a fraction of a second
    instead of the whole context."""
    return min(MAX_TOKENS, 24 + int(25 * duration_s))


def degenerate(segments: list, cap: int) -> bool:
    """True when a decode repeated itself: text that compresses like a loop, or a segment (one per
    30 s of audio) that ran to the token cap."""
    return any(len(s.tokens) >= cap or s.compression_ratio > REPEAT_RATIO for s in segments)


#: A segment is dropped as no speech when whisper gives it more than NO_SPEECH odds of holding
#: none, or more than MAYBE_NO_SPEECH odds and decodes it with a mean token log-probability under
#: LOW_LOGPROB. Measured on whisper base over a phone line (pipeline.sim.recognition): speech
#: came out at no_speech_prob 0.16 at most; what it wrote on silence, line noise, hum and breath
#: at 0.33-0.92, the lower ones with log-probabilities under -1.3 or in loops.
NO_SPEECH = 0.5
MAYBE_NO_SPEECH = 0.3
LOW_LOGPROB = -0.7


def speech_segments(segments: list) -> list:
    """The segments that hold speech: not those whisper took for silence (``no_speech_prob``), where
    its well-known inventions come from, nor those it half took for silence and barely believed."""
    return [s for s in segments if not (
        s.no_speech_prob > NO_SPEECH or (s.no_speech_prob > MAYBE_NO_SPEECH and s.avg_logprob < LOW_LOGPROB))]


def echoes_prompt(text: str, prompt: str | None) -> bool:
    """Whether ``text`` is whisper copying its prompt, as it does when it hears nothing it can read:
    half the prompt or more, word for word, or a number of six digits or more out of it (the
    example phone number). A caller's answer that happens to be one of the examples
    (「来週の月曜日」) is shorter than that, and is kept."""
    if not prompt or not text:
        return False
    said, told = _letters(text), _letters(prompt)
    if said and said in told and 2 * len(said) >= len(told):
        return True
    digits = "".join(c for c in said if c.isdigit())
    return any(len(run) >= 6 and run in digits for run in _DIGITS.findall(told))


_DIGITS = re.compile(r"\d+")


def _letters(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c)[0] in "LN").casefold()


#: Reconsidering a turn's text against the answers the question expects
#: (:meth:`FasterWhisperSTT.reconsider`): only for turns this short (a whole first sentence is not
#: weighed against short answers), against at most this many candidates, scored this many at a time;
#: a candidate is taken within this much mean token log-probability of whisper's own text, and
#: never below the floor. Measured with ``python -m pipeline.sim.recognition`` (docs/benchmarks.md).
RECONSIDER_MAX_S = 6.0
#: a turn is heard in another language than the call's (``STTContext.detect``) only when it, with the
#: caller's words before it (``STTContext.heard_before``), lasts this long and whisper finds that
#: language this many times likelier (「はい」 reads as "Hi")
DETECT_MIN_S = 2.0
DETECT_ODDS = 2.0
RECONSIDER_MAX_CANDIDATES = 32
RESCORE_BATCH = 8
#: a longer list (every common surname for a name whisper made a word of) is swept first, scored
#: quickly (:meth:`FasterWhisperSTT.score_texts` ``quick``), and only its best few are weighed as
#: above; at most this many are swept, this many at a time
SWEEP_MAX_CANDIDATES = 400
SWEEP_KEEP = 6
SWEEP_BATCH = 16
#: a sweep stops at the batch that takes it past this many seconds (the list is nearest first), and
#: is only made on a turn this short (a surname and です is about a second)
SWEEP_BUDGET_S = 1.0
SWEEP_MAX_S = 3.0
#: a quick score's encoder states: the utterance's and this many more (0.5 s)
SWEEP_MARGIN_FRAMES = 25
RECONSIDER_MARGIN = 1.0
RECONSIDER_FLOOR = -1.65
#: short of that, the best candidate is still a guess worth asking about (「20時でよろしいでしょうか」)
GUESS_MARGIN = 2.2
GUESS_FLOOR = -3.0
#: ... and whisper wrote three letters or more (「いと」 for a backchannel is no answer to guess at);
#: a next best within this much of it is passed on too (``guessed`` called twice, best first)
GUESS_DISTINCT = 0.2


# ------------------------------------------------------------------------------------------ backends
class FasterWhisperSTT:
    """faster-whisper (CTranslate2) on a local model directory, loaded once."""

    def __init__(self, cfg: STTConfig, model_path: str | Path):
        from faster_whisper import WhisperModel

        self.cfg = cfg
        self.model_path = Path(model_path)
        if not (self.model_path / "model.bin").is_file():
            raise FileNotFoundError(
                f"no faster-whisper model in {self.model_path} (model.bin missing); "
                "run `voicebot models download` or set stt.model in config.yaml to a model directory"
            )
        self.language = None if cfg.language == "auto" else cfg.language
        # Hotwords go into the decoder prompt; they bias spelling of names the caller says.
        self.hotwords = " ".join(w.strip() for w in cfg.hotwords if w.strip()) or None
        start = time.perf_counter()
        self.model = WhisperModel(
            str(self.model_path),
            device=cfg.device,
            compute_type=cfg.compute_type,
            cpu_threads=cfg.cpu_threads,
            # several workers let transcriptions from several calls' threads run in parallel
            num_workers=cfg.num_workers,
            local_files_only=True,
        )
        log.info("loaded faster-whisper from %s (%s, %s) in %.2f s", self.model_path, cfg.device,
                 cfg.compute_type, time.perf_counter() - start)

    def hotwords_for(self, context: STTContext | None) -> str | None:
        """The configured hotwords and the context's words (the restaurant's name), once each."""
        words = [*(context.words if context is not None else ()), *self.cfg.hotwords]
        return " ".join(dict.fromkeys(w.strip() for w in words if w.strip())) or None

    def decode(self, x: np.ndarray, *, window_s: float | None, max_new_tokens: int | None = None,
               prompt: str | None = None, hotwords: str | None = None,
               language: str | None = None) -> tuple[list, str]:
        """faster-whisper's segments for 16 kHz mono ``x``, encoded on ``window_s`` (None = 30 s), and
        the language they were decoded in. ``prompt`` is whisper's initial prompt (the text before
        the turn); ``hotwords`` default to the configured ones.

        The generator does the decoding (and the encoding): it is consumed here, in the caller's
        worker thread, and inside the window.
        """
        options: dict = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        if prompt:
            options["initial_prompt"] = prompt
        with encoder_window(window_s):
            segments, info = self.model.transcribe(
                x,
                language=language or self.language,
                beam_size=self.cfg.beam_size,
                # One temperature: the fallback ladder re-decodes up to 6 times, seconds of dead air on
                # a phone line; a garbled turn is cheaper to ask again.
                temperature=0.0,
                vad_filter=False,  # the handler has already cut the turn with silero
                no_speech_threshold=None,  # speech_segments() decides, after the decode
                condition_on_previous_text=False,
                without_timestamps=True,
                hotwords=hotwords if hotwords is not None else self.hotwords,
                **options,
            )
            return list(segments), info.language

    def transcribe(self, audio: np.ndarray, sample_rate: int, context: STTContext | None = None) -> Transcript:
        start = time.perf_counter()
        x = prepare_audio(audio, sample_rate)
        duration = x.size / WHISPER_SAMPLE_RATE
        cap = token_cap(duration)
        window = self.cfg.window_s
        context = context if context is not None else current_context()
        language = self.language_for(x, context, window)
        prompt = prompt_for(context, language)
        hotwords = self.hotwords_for(context)
        segments, language = self.decode(x, window_s=window, max_new_tokens=cap, prompt=prompt, hotwords=hotwords,
                                         language=language)
        retried = False
        if window and degenerate(segments, cap):
            # the decoder looped on the short window: the 30 s window costs more but is what whisper
            # was trained on
            log.warning("whisper repeated itself on a %g s window (%.1f s of audio): decoding again on 30 s",
                        window, duration)
            segments, language = self.decode(x, window_s=None, max_new_tokens=cap, prompt=prompt, hotwords=hotwords,
                                             language=language)
            window, retried = None, True
        spoken = speech_segments(segments)
        text = "".join(seg.text for seg in spoken).strip()
        if echoes_prompt(text, prompt):
            log.debug("whisper wrote a piece of its prompt (%r): no speech", text)
            text, spoken = "", []
        if text and context is not None and context.expect is not None and duration <= RECONSIDER_MAX_S:
            text = self.reconsider(x, text, context.expect(text), window_s=window, prompt=prompt,
                                   hotwords=hotwords, language=language or self.language, guessed=context.guessed)
        elapsed = time.perf_counter() - start
        log.debug("transcribed %.2f s of audio in %.3f s: %r", duration, elapsed, text)
        return Transcript(text=text, language=language or self.language, duration_s=duration, elapsed_s=elapsed,
                          window_s=window, retried=retried, asking=context.asking if context is not None else None,
                          dropped=len(segments) - len(spoken))

    def language_for(self, x: np.ndarray, context: STTContext | None, window_s: float | None) -> str | None:
        """The language to decode ``x`` in: the configured one when that is ``auto`` (None: whisper
        detects), else the one of ``context.detect`` whisper finds likeliest, else the call's."""
        if self.language is None:
            return None
        language = context.language if context is not None and context.language else self.language
        if context is None or len(context.detect) < 2:
            return language
        if context.heard_before is not None and context.heard_before.size:
            x = np.concatenate([context.heard_before, x])  # the caller's words so far, this turn's last
        if x.size < DETECT_MIN_S * WHISPER_SAMPLE_RATE:
            return language  # 「はい」 and "Hi" sound alike: too little speech stays in the call's language
        try:
            with encoder_window(window_s):
                _, _, probs = self.model.detect_language(audio=x)
        except Exception:  # noqa: BLE001 - no detection leaves the call's language
            log.warning("language detection failed: decoding in %s", language, exc_info=True)
            return language
        odds = {code: p for code, p in probs if code in context.detect}
        heard = max(odds, key=odds.__getitem__) if odds else language
        if odds.get(heard, 0.0) < DETECT_ODDS * odds.get(language, 0.0):
            heard = language  # another language only when it is clearly likelier
        if heard != language:
            log.info("heard %s rather than %s (%s)", heard, language,
                     ", ".join(f"{c} {p:.2f}" for c, p in sorted(odds.items())))
        return heard

    def reconsider(self, x: np.ndarray, text: str, candidates: Sequence[str], *, window_s: float | None,
                   prompt: str | None, hotwords: str | None, language: str | None,
                   guessed: Callable[[str], None] | None = None) -> str:
        """``text``, or the candidate whisper finds about as likely as ``text`` on the same audio.

        Each is scored by teacher forcing (CTranslate2's ``align``: the probability of each of its
        tokens given the audio and the same prompt as the decode), as the mean token
        log-probability. Greedy decoding commits to one token at a time and on a phone line often
        takes a wrong turn early (「2名です」 → 「耳で」); the answer the question expects, scored
        whole, can be nearly as likely as what greedy decoding found, or more. A candidate replaces
        ``text`` when it scores within :data:`RECONSIDER_MARGIN` of it (and above
        :data:`RECONSIDER_FLOOR`); what the audio does not support scores far lower and is left. A
        best candidate short of that but within :data:`GUESS_MARGIN` and above :data:`GUESS_FLOOR`
        is passed to ``guessed``, and the next best after it when that is within
        :data:`GUESS_DISTINCT`: the dialog may ask the caller whether it is what they said.
        """
        candidates = [c for c in dict.fromkeys(candidates) if c and c != text][:SWEEP_MAX_CANDIDATES]
        if not candidates:
            return text
        start = time.perf_counter()
        swept = len(candidates)
        try:
            if swept > RECONSIDER_MAX_CANDIDATES and x.size > SWEEP_MAX_S * WHISPER_SAMPLE_RATE:
                candidates, swept = candidates[:RECONSIDER_MAX_CANDIDATES], RECONSIDER_MAX_CANDIDATES
            if swept > RECONSIDER_MAX_CANDIDATES:
                # a sweep: the few the audio supports best, weighed below like any short list
                quick = self.score_texts(x, candidates, language=language, quick=True, budget_s=SWEEP_BUDGET_S)
                ranked = sorted(range(swept), key=lambda i: -quick[i])[:SWEEP_KEEP]
                candidates = [candidates[i] for i in sorted(ranked)]
            scores = self.score_texts(x, [text, *candidates], window_s=window_s, prompt=prompt,
                                      hotwords=hotwords, language=language)
        except Exception:  # noqa: BLE001 - a failed rescoring leaves whisper's own text
            log.warning("rescoring %d candidates failed: keeping whisper's text", len(candidates), exc_info=True)
            return text
        own, best = scores[0], max(range(1, len(scores)), key=scores.__getitem__)
        taken = scores[best] >= own - RECONSIDER_MARGIN and scores[best] >= RECONSIDER_FLOOR
        log.info("reconsidered %r (%.2f) against %d candidates in %.3f s: best %r (%.2f)%s", text, own,
                 swept, time.perf_counter() - start, candidates[best - 1], scores[best],
                 ", taken" if taken else "")
        if taken:
            return candidates[best - 1]
        second = max((i for i in range(1, len(scores)) if i != best), key=scores.__getitem__, default=None)
        if (guessed is not None and scores[best] >= own - GUESS_MARGIN and scores[best] >= GUESS_FLOOR
                and len(_letters(text)) >= 3):
            guessed(candidates[best - 1])
            if second is not None and scores[best] - scores[second] < GUESS_DISTINCT:
                # the next is about as likely: told too, the dialog knows whether the two say the same
                guessed(candidates[second - 1])
        return text

    def score_texts(self, x: np.ndarray, texts: Sequence[str], *, window_s: float | None = None,
                    prompt: str | None = None, hotwords: str | None = None,
                    language: str | None = None, quick: bool = False,
                    budget_s: float | None = None) -> list[float]:
        """The mean token log-probability of each of ``texts`` as the transcript of 16 kHz ``x``,
        after ``prompt`` (as a decode with that prompt would see it), in batches.

        ``quick``: for ranking a long list, about ten times cheaper: no prompt or hotwords (the
        decoder reads them again for every text) and the encoder's states cut to the utterance and
        :data:`SWEEP_MARGIN_FRAMES` (its padding is what the cross-attention costs). The order of
        texts by these scores follows the full one (every common surname weighed on 24 names said
        by 3 voices: the one said ranked first in both); the values are not comparable with it.
        ``budget_s``: no batch after the first is started past this many seconds; the texts left
        score -inf.
        """
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        model = self.model
        features = model.feature_extractor(x)
        frames = features.shape[-1]
        width = WHISPER_WINDOW_FRAMES if not window_s else min(
            WHISPER_WINDOW_FRAMES, max(int(round(window_s * MEL_FPS)), frames + frames % 2))
        features = np.pad(features, ((0, 0), (0, max(0, width - frames))))[:, :width]
        encoded = np.asarray(model.encode(features))
        if quick:
            encoded, prompt, hotwords = encoded[:, :frames // 2 + SWEEP_MARGIN_FRAMES], None, None
        encoded = np.ascontiguousarray(encoded)
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                              language=language or "en")
        start = model.get_prompt(tokenizer, tokenizer.encode(" " + prompt.strip()) if prompt else [],
                                 without_timestamps=True, hotwords=hotwords)
        scores: list[float] = []
        step = SWEEP_BATCH if quick else RESCORE_BATCH
        began = time.perf_counter()
        for i in range(0, len(texts), step):
            if i and budget_s is not None and time.perf_counter() - began > budget_s:
                log.info("scoring stopped after %d of %d texts (%.2f s)", i, len(texts), time.perf_counter() - began)
                return scores + [float("-inf")] * (len(texts) - i)
            batch = [tokenizer.encode(t) or [tokenizer.eot] for t in texts[i:i + step]]
            view = ctranslate2.StorageView.from_array(np.repeat(encoded, len(batch), axis=0))
            for result in model.model.align(view, start, batch, [frames] * len(batch)):
                probs = np.maximum(np.asarray(result.text_token_probs, dtype=np.float64), 1e-9)
                scores.append(float(np.log(probs).mean()) if probs.size else float("-inf"))
        return scores

    def warmup(self) -> None:
        """A decode on a second of low noise, on the configured window and (when that is shorter) on
        the 30 s one a retry uses, so that the first caller does not pay for lazy init."""
        start = time.perf_counter()
        noise = np.random.default_rng(0).standard_normal(WHISPER_SAMPLE_RATE).astype(np.float32) * 1e-3
        for window in dict.fromkeys((self.cfg.window_s, None)):
            self.decode(noise, window_s=window, max_new_tokens=4)
        log.debug("STT warmed up in %.2f s", time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ factory
STTFactory = Callable[[STTConfig, Path], STT]


def _remote_stt(cfg: STTConfig, _model_path: Path) -> STT:
    from pipeline.speech.remote import RemoteSTT  # imports this module

    return RemoteSTT(cfg)


_PROVIDERS: dict[str, STTFactory] = {"faster-whisper": FasterWhisperSTT, "openai": _remote_stt}


def make_stt(cfg: STTConfig, resolve: Callable[[str], Path] | Path | str) -> STT:
    """The STT backend named by ``cfg.provider``.

    ``resolve`` turns ``cfg.model`` into a local model directory (``pipeline.speech.models.model_resolver``
    knows the size names; ``Config.path`` suffices for a local directory), or is that directory.
    """
    factory = _PROVIDERS.get(cfg.provider)
    if factory is None:
        raise ValueError(f"stt.provider: unknown provider {cfg.provider!r} (known: {', '.join(_PROVIDERS)})")
    path = Path(resolve(cfg.model)) if callable(resolve) else Path(resolve)
    return factory(cfg, path)


def is_silent(audio: np.ndarray, threshold_dbfs: float = -60.0) -> bool:
    """True when the audio's RMS is below ``threshold_dbfs`` (a cheap guard before decoding)."""
    x = to_mono_float32(audio)
    if x.size == 0:
        return True
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return rms == 0.0 or 20 * math.log10(rms) < threshold_dbfs
