"""Text to speech behind one small Protocol; kokoro-onnx is the local backend.

Three parts:

- ``normalize_for_speech``: text as it should be *said* (phone numbers digit by digit, times and
  ISO dates as a person reads them, no markdown, emoji or URLs), for either language.
- ``SentenceSplitter`` / ``split_sentences``: cut text, or an LLM's token stream, into sentences
  so that the first one can be spoken while the rest is still being written.
- ``KokoroTTS``: Japanese through misaki's G2P (cutlet mode, dictionaries inside wheels; digits
  and Latin words first read into katakana by pyopenjtalk, since misaki's cutlet mode misreads
  counters and asserts on some digit strings), English through kokoro-onnx's own espeak-ng
  phonemizer (its data ships in the espeakng-loader wheel, so it works offline).

``synthesize`` and ``stream`` are synchronous and CPU-bound: run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import re
import shutil
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.config import TTSConfig
from pipeline.dialog import speech
from pipeline.dialog.parse import is_valid_phone

log = logging.getLogger(__name__)

LANGUAGES = ("ja", "en")

# ================================================================================ speech normalisation
_JA_DIGITS = ("ゼロ", "イチ", "ニー", "サン", "ヨン", "ゴー", "ロク", "ナナ", "ハチ", "キュウ")
_EN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_URL = re.compile(r"(?:https?://|www\.)[^\s<>()（）「」]+", re.IGNORECASE)
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_CODE = re.compile(r"`+([^`]*)`+")
_MD_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*", re.MULTILINE)
_MD_BULLET = re.compile(r"^[ \t]*(?:[-*+•・]|\d{1,2}[.)])[ \t]+", re.MULTILINE)
_MD_QUOTE = re.compile(r"^[ \t]*>[ \t]?", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~)(?=\S)(.+?)(?<=\S)\1")
_MD_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)

_ISO_DATE = re.compile(r"(?<![\d/-])(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?![\d/-])")
# Starts at a 0 (or +81): "2名 090..." must not begin the match at the 2.
_PHONE = re.compile(
    r"(?<![\d+])(?:\+81[ -]?(?:\(0\))?\(?\d{1,4}\)?|\(?0\d{0,4}\)?)(?:[ \-‐−–ー]?\(?\d{1,5}\)?){0,4}(?!\d)"
)
# A trailing dot of "p.m." is left in the text: it may also be the end of the sentence.
_CLOCK = re.compile(r"(?<![\d:])([01]?\d|2[0-3])[:：]([0-5]\d)(?![\d:])(\s*[ap]\.?\s?m\b)?", re.IGNORECASE)
_JA_HOUR_MIN = re.compile(r"(?<!\d)(\d{1,2})時(\d{1,2})分")
_JA_RANGE = re.compile(r"(?<=[\d時分日月])\s*[~〜～]\s*(?=\d)")
_SPACES = re.compile(r"[ \t\u3000]+")


def _is_emoji_or_symbol(ch: str) -> bool:
    if ch in "\u200d\ufe0e\ufe0f\u20e3":  # joiners, variation selectors, keycap
        return True
    cat = unicodedata.category(ch)
    # So = emoji, dingbats, arrows...; Sk covers the skin-tone modifiers. 〒 and ♪ go too: unsayable.
    return cat == "So" or (cat == "Sk" and 0x1F3FB <= ord(ch) <= 0x1F3FF) or 0x1F000 <= ord(ch) <= 0x1FAFF


def _phone_groups(digits: str) -> list[str]:
    """Japanese grouping when the text gave none: 090-1234-5678, 03-1234-5678, 0120-123-456, 045-123-4567."""
    if len(digits) == 10 and digits.startswith("0120"):
        sizes = (4, 3, 3)
    elif len(digits) == 11 and digits.startswith("0800"):
        sizes = (4, 3, 4)
    elif len(digits) == 10 and digits[:2] in ("03", "06"):
        sizes = (2, 4, 4)
    elif len(digits) == 10:
        sizes = (3, 3, 4)
    else:
        sizes = (3, 4, 4)
    groups, i = [], 0
    for size in sizes:
        groups.append(digits[i : i + size])
        i += size
    return groups


def say_phone_digits(groups: list[str], lang: str) -> str:
    """Digit by digit, so the caller can check every digit; Japanese groups joined by 「の」."""
    if lang == "ja":
        return " の ".join(" ".join(_JA_DIGITS[int(c)] for c in g) for g in groups)
    return ", ".join(" ".join(_EN_DIGITS[int(c)] for c in g) for g in groups)


def _replace_phone(match: re.Match, lang: str) -> str:
    span = match.group(0)
    intl = span.startswith("+81")
    body = span[3:] if intl else span
    runs = [(m.start(), m.end()) for m in re.finditer(r"\d+", body)]
    # The pattern may swallow a following number ("03-1234-5678 2名"): try the longest run of
    # digit groups that is a valid number, and leave the rest as it was.
    for k in range(len(runs), 0, -1):
        groups = [body[s:e] for s, e in runs[:k]]
        digits = "".join(groups)
        if intl:  # +81 90-... and +81 (0)90-... both mean 090-...
            digits = "0" + digits.removeprefix("0")
        if not is_valid_phone(digits):
            continue
        if k == 1 or intl:
            groups = _phone_groups(digits)
        end = runs[k - 1][1]
        if end < len(body) and body[end] == ")":
            end += 1
        return say_phone_digits(groups, lang) + body[end:]
    return span


def _replace_date(match: re.Match, lang: str) -> str:
    year, month, day = (int(g) for g in match.groups())
    try:
        d = dt.date(year, month, day)
    except ValueError:
        return match.group(0)
    return speech.say_date(d, lang, weekday=False)


def _replace_clock(match: re.Match, lang: str) -> str:
    hour, minute, meridiem = int(match.group(1)), int(match.group(2)), match.group(3)
    if meridiem:
        hour = hour % 12 + (12 if "p" in meridiem.lower() else 0)
    if hour > 23 or minute > 59:
        return match.group(0)
    # the dialog says times as 午後7時半 / 7:30 pm; read a written 19:30 the same way
    return speech.say_time(dt.time(hour, minute), lang)


def _replace_ja_hour_min(match: re.Match) -> str:
    hour, minute = match.group(1), int(match.group(2))
    return f"{hour}時" + ("" if minute == 0 else "半" if minute == 30 else f"{minute}分")


def _base_language(lang: str) -> str:
    base = (lang or "").split("-")[0].split("_")[0].lower()
    if base not in LANGUAGES:
        raise ValueError(f"unsupported speech language {lang!r} (expected one of {', '.join(LANGUAGES)})")
    return base


def normalize_for_speech(text: str, lang: str) -> str:
    """``text`` rewritten the way it should be spoken in ``lang`` ("ja" or "en").

    Phone numbers (10-11 digits starting with 0, with or without separators) digit by digit;
    ``19:30`` as 午後7時半 / "7:30 pm"; ``19時30分`` as 19時半; ``2026-12-24`` as 12月24日 /
    "December 24th"; markdown, emoji and URLs dropped. Other numbers (3名, 3.5) are left to the G2P.
    """
    lang = _base_language(lang)
    if not text or not text.strip():
        return ""
    # NFKC folds full-width digits and Latin letters (０９０, ＡＩ) that Japanese input uses.
    text = unicodedata.normalize("NFKC", text)
    text = _URL.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_CODE.sub(r"\1", text)
    text = _MD_RULE.sub("", text)
    text = _MD_HEADING.sub("", text)
    text = _MD_QUOTE.sub("", text)
    text = _MD_BULLET.sub("", text)
    text = _MD_EMPHASIS.sub(r"\2", text)
    text = "".join(ch for ch in text if not _is_emoji_or_symbol(ch))
    text = _ISO_DATE.sub(lambda m: _replace_date(m, lang), text)
    text = _PHONE.sub(lambda m: _replace_phone(m, lang), text)
    text = _CLOCK.sub(lambda m: _replace_clock(m, lang), text)
    if lang == "ja":
        text = _JA_HOUR_MIN.sub(_replace_ja_hour_min, text)
        text = _JA_RANGE.sub("から", text)
    text = text.replace("*", "").replace("#", "")
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


# ================================================================================ sentence splitting
_JA_STOPS = "。！？"
_EN_STOPS = ".!?"
_CLOSERS = "」』）)】〕］]\"'”’"
_CLAUSE_MARKS = "、，,;；:："
# Words whose trailing dot never ends a sentence ("Mr. Tanaka", "No. 5").
_TITLES = frozenset("mr mrs ms dr prof st mt no vs jr sr approx dept tel".split())
_DOTTED = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]$")  # p.m, a.m, e.g, U.S, a single initial


def _is_cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80


def _ends_clause(buf: str, pos: int, wide: str, narrow: str) -> bool:
    """``buf[pos]`` ends a clause: a full-width mark in ``wide``, or one in ``narrow`` before a space
    (so that "12,000" is not cut)."""
    ch = buf[pos]
    return ch in wide or (ch in narrow and pos + 1 < len(buf) and buf[pos + 1].isspace())


class SentenceSplitter:
    """Cut a stream of text chunks into sentences as soon as each is complete.

    Japanese ends at 。！？ (closing brackets stay with their sentence); English at . ! ? followed by
    a space or the end. A dot between digits (3.5), after a title (Mr.), or in a dotted abbreviation
    (p.m., e.g.) followed by a lowercase word does not end a sentence. A newline ends one too. A
    run of ``max_chars`` with no end is cut at its last comma so a long sentence cannot hold up speech.

    ``first_clause_chars``: the first piece only ends at its first comma (、 or ", ") once it has that
    many characters, so the caller hears the start of the reply after synthesising a clause, not a
    whole sentence (kokoro's time is proportional to the audio); 0 cuts whole sentences only.
    """

    def __init__(self, max_chars: int = 200, first_clause_chars: int = 0):
        self.max_chars = max_chars
        self.first_clause_chars = first_clause_chars
        self._buf = ""
        self._first = True

    def feed(self, chunk: str) -> list[str]:
        """Add text; return the sentences it completed (possibly none)."""
        self._buf += chunk or ""
        return self._drain(final=False)

    def flush(self) -> str:
        """The text still held (the end of the stream); empties the splitter."""
        out = self._drain(final=True)
        rest = " ".join([*out, self._buf.strip()]).strip() if out else self._buf.strip()
        self._buf = ""
        return rest

    def _drain(self, final: bool) -> list[str]:
        sentences = []
        while True:
            cut = self._boundary(final)
            if self._first and self.first_clause_chars:
                clause = self._first_clause()
                if clause is not None and (cut is None or clause < cut):
                    cut = clause
            if cut is None and len(self._buf) > self.max_chars:
                cut = self._clause_cut()
            if cut is None:
                return sentences
            sentence, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if sentence:
                sentences.append(sentence)
                self._first = False

    def _first_clause(self) -> int | None:
        """Index just past the first comma that ends a clause of at least ``first_clause_chars``."""
        buf = self._buf
        start = len(buf) - len(buf.lstrip())
        for pos in range(start + self.first_clause_chars - 1, len(buf)):
            if _ends_clause(buf, pos, "、，", ","):
                return pos + 1
        return None

    def _boundary(self, final: bool) -> int | None:
        """Index just past the first complete sentence in the buffer, or None."""
        buf = self._buf
        n = len(buf)
        i = 0
        while i < n:
            ch = buf[i]
            if ch == "\n":
                if buf[:i].strip():
                    return i + 1
                i += 1
                continue
            if ch not in _JA_STOPS and ch not in _EN_STOPS:
                i += 1
                continue
            # Take the whole run of stops and closing brackets: "?!", "...", "。」".
            j = i + 1
            while j < n and (buf[j] in _JA_STOPS or buf[j] in _EN_STOPS or buf[j] in _CLOSERS):
                j += 1
            if j == n and not final:
                return None  # the next chunk may continue the run or show what follows the dot
            if self._ends_sentence(buf, i, j, final):
                return j
            i = j
        return None

    def _ends_sentence(self, buf: str, i: int, j: int, final: bool) -> bool:
        run = buf[i:j]
        nxt = buf[j] if j < len(buf) else ""
        if any(c in _JA_STOPS for c in run):
            return True
        if nxt and not (nxt.isspace() or _is_cjk(nxt)):
            return False  # "3.5", "example.com", "Really?No"
        if "." not in run or "!" in run or "?" in run or run.startswith(".."):
            return True
        word = re.split(r"\s", buf[:i])[-1]
        if word.lower().lstrip("(\"'") in _TITLES:
            return False
        if word.isdigit() and not buf[: i - len(word)].strip():
            return False  # a list marker "1." at the start
        if _DOTTED.fullmatch(word):
            # "7 p.m. Thank you" ends; "7 p.m. tomorrow" and "Mr. J. Smith" do not.
            k = j
            while k < len(buf) and buf[k].isspace():
                k += 1
            if k == len(buf):
                return final
            return buf[k].isupper() and len(word) > 1
        return True

    def _clause_cut(self) -> int | None:
        window = self._buf[: self.max_chars]
        for pos in range(len(window) - 1, 0, -1):
            if _ends_clause(self._buf, pos, "、，；：", ",;:"):
                return pos + 1
        space = window.rfind(" ")
        return space + 1 if space > 0 else self.max_chars


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """All the sentences of ``text``, in order."""
    splitter = SentenceSplitter(max_chars=max_chars)
    sentences = splitter.feed(text)
    rest = splitter.flush()
    return [*sentences, rest] if rest else sentences


# ================================================================================ Japanese front end
_JA_DIGIT_SPAN = re.compile(r"\d+(?:[.,]\d+)*[\u3005\u4e00-\u9fff]{0,2}")
_JA_SEVEN_O_CLOCK = re.compile(r"(?<!\d)(1?)7時(?!間)")
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'&.\-]*")


class JapaneseG2P:
    """Japanese text -> kokoro phonemes: readings, then pyopenjtalk for digits and Latin words,
    then misaki's JAG2P (cutlet mode; its pyopenjtalk mode appends a pitch string in misaki 0.9.4).

    misaki's cutlet mode reads 24日 as "nijuuyon ka" and asserts on some digit strings, while
    pyopenjtalk knows the counters (ニジューヨッカ, サンジュップン): digits therefore reach misaki
    already as katakana. fugashi's tagger is not thread-safe: one lock around the whole front end.
    """

    def __init__(self, readings: dict[str, str] | None = None):
        self.readings = dict(sorted((readings or {}).items(), key=lambda kv: -len(kv[0])))
        self._lock = threading.Lock()
        self._g2p = None

    def _kana(self, text: str) -> str:
        import pyopenjtalk

        kana = pyopenjtalk.g2p(text, kana=True)
        return re.sub(r"[−\-–—・\s]", "", kana)

    def to_kana_text(self, text: str) -> str:
        """The text with readings applied and digits/Latin words as katakana (no G2P yet)."""
        for written, spoken in self.readings.items():
            text = text.replace(written, spoken)
        # しちじ and いちじ are easy to confuse on a phone line; restaurants say ななじ.
        text = _JA_SEVEN_O_CLOCK.sub(lambda m: ("ジュー" if m.group(1) else "") + "ナナジ", text)
        text = _JA_DIGIT_SPAN.sub(lambda m: self._kana(m.group(0)), text)
        return _LATIN_WORD.sub(lambda m: self._kana(m.group(0)), text)

    def __call__(self, text: str) -> str:
        with self._lock:
            if self._g2p is None:
                from misaki import ja

                self._g2p = ja.JAG2P()
            phonemes, _ = self._g2p(self.to_kana_text(text))
        return phonemes or ""


# ================================================================================ TTS backends
@runtime_checkable
class TTS(Protocol):
    sample_rate: int

    def synthesize(self, text: str, language: str) -> np.ndarray: ...

    def stream(self, text: str, language: str) -> Iterator[tuple[int, np.ndarray]]: ...

    def warmup(self) -> None: ...


class TTSFault(RuntimeError):
    """The model answered with audio that is not speech: non-finite samples, peaks far beyond full
    scale, silence, or a few milliseconds for a piece with sounds in it. Raised like any other
    synthesis failure, so that a call plays its pre-rendered apology instead of noise."""


#: longer pieces are read-backs and other one-off sentences: not worth keeping
CACHE_MAX_CHARS = 40
#: peaks up to this are a voice's own overshoot (jm_kumo reaches ~1.2) and are clipped to [-1, 1];
#: beyond it the model is broken (onnxruntime's faulty int8 kernels give 1e9 and more)
MAX_SPEECH_PEAK = 2.0
#: a piece whose loudest sample is below this is silence
MIN_SPEECH_PEAK = 1e-3
#: the least audio kokoro makes for a piece with sounds in it, at speed 1: per sound, and in all
#: (measured: ~0.08 s per sound, 0.24 s for 「ん。」; garbage trimmed by kokoro-onnx leaves 0-30 ms)
MIN_S_PER_SOUND = 0.02
MIN_SPEECH_S = 0.08
#: synthesis in threads of this name is pre-rendering (the voice runtime's start-up thread)
PRERENDER_THREAD = "tts-prerender"
#: folder, next to the model file, of the pre-rendered pieces kept between runs
DISK_CACHE_DIR = "tts-cache"


def check_speech(audio: np.ndarray, sounds: int, speed: float, sample_rate: int,
                 raw_peak: float | None = None) -> np.ndarray:
    """``audio`` clipped to [-1, 1] when it can be speech of ``sounds`` phonemes at ``speed``;
    TTSFault saying why when it cannot.

    ``raw_peak``: the loudest sample the model produced, before kokoro-onnx trimmed the silence
    (which keeps only the loudest burst of garbage); the peak of ``audio`` when not given.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    finite = bool(np.isfinite(audio).all())
    peak = float(np.max(np.abs(audio))) if audio.size and finite else 0.0
    if raw_peak is None:
        raw_peak = peak if finite else math.inf
    if not math.isfinite(raw_peak) or not finite:
        raise TTSFault("the model produced NaN or infinite samples")
    if raw_peak > MAX_SPEECH_PEAK:
        raise TTSFault(f"the model's output peaks at {raw_peak:.3g} (speech stays under {MAX_SPEECH_PEAK})")
    least = max(MIN_SPEECH_S, MIN_S_PER_SOUND * sounds) / speed
    if sounds and audio.size < least * sample_rate:
        raise TTSFault(f"{audio.size / sample_rate * 1000:.0f} ms of audio for {sounds} sounds "
                       f"(speech takes at least {least * 1000:.0f} ms)")
    if sounds and peak < MIN_SPEECH_PEAK:
        raise TTSFault(f"silence for {sounds} sounds (peak {peak:.2g})")
    return np.clip(audio, -1.0, 1.0) if peak > 1.0 else audio


@dataclass
class TTSStats:
    """What a KokoroTTS has done since it was made (counts of pieces, i.e. sentences or clauses)."""

    synthesized: int = 0  #: run through the model
    cache_hits: int = 0  #: replayed from memory
    disk_hits: int = 0  #: pre-rendered pieces read back from the disk cache
    disk_writes: int = 0  #: pre-rendered pieces written to it
    preempted: int = 0  #: pre-rendering runs cancelled for a live request (and run again after it)
    faults: int = 0  #: answered with audio that is not speech (TTSFault)


class _Session:
    """kokoro-onnx's onnxruntime session, seen through: it notes the loudest sample of each run of
    the calling thread (before kokoro-onnx trims silence) and passes that thread's run options, so
    that a pre-rendering run can be cancelled."""

    def __init__(self, session):
        self._session = session
        self._local = threading.local()

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def begin(self, run_options=None) -> None:
        self._local.options, self._local.peak = run_options, 0.0

    def end(self) -> float:
        peak, self._local.options = getattr(self._local, "peak", 0.0), None
        return peak

    def run(self, output_names, input_feed, run_options=None):
        outputs = self._session.run(output_names, input_feed, run_options or getattr(self._local, "options", None))
        audio = np.asarray(outputs[0])
        if audio.size:
            peak = float(np.max(np.abs(audio))) if np.isfinite(audio).all() else math.inf
            self._local.peak = max(getattr(self._local, "peak", 0.0), peak)
        return outputs


class _Priority:
    """Live synthesis first. Pre-rendering runs one piece at a time and only while no live request
    is in flight; a live request that arrives cancels the pre-rendering run under way (onnxruntime's
    ``RunOptions.terminate``), which is run again once the live requests are done."""

    def __init__(self):
        self._cond = threading.Condition()
        self._live = 0
        self._running: set = set()  # run options of the pre-rendering runs under way
        self._one = threading.Lock()

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        with self._cond:
            self._live += 1
            for options in self._running:
                options.terminate = True
        try:
            yield
        finally:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()

    def background(self, run: Callable[[Any], Any]) -> tuple[Any, int]:
        """``run(run_options)`` when no live request is in flight, again whenever one cancelled it;
        its result and how many times it was cancelled."""
        import onnxruntime

        cancelled = 0
        with self._one:
            while True:
                options = onnxruntime.RunOptions()
                options.log_severity_level = 4  # a cancelled run is not an error worth logging
                with self._cond:
                    self._cond.wait_for(lambda: self._live == 0)
                    self._running.add(options)
                try:
                    return run(options), cancelled
                except Exception:
                    if not options.terminate:
                        raise
                    cancelled += 1
                finally:
                    with self._cond:
                        self._running.discard(options)


class _DiskCache:
    """Pre-rendered pieces kept between runs, in ``<model's folder>/tts-cache/<model>-<id>/``, one
    ``.npy`` per voice, speed and phonemes; ``id`` follows the model's and the voices' size and
    modification time, so a changed file starts afresh (the old folder is removed).

    Only the bot's fixed phrases are pre-rendered, so nothing a caller said is written to disk. A
    folder that cannot be written is logged once, and the cache is off for the process.
    """

    def __init__(self, model: Path, voices: Path):
        stats = [(p.resolve(), p.stat().st_size, p.stat().st_mtime_ns) for p in (model, voices)]
        ident = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
        self.root = model.parent / DISK_CACHE_DIR
        self.dir = self.root / f"{model.stem}-{ident}"
        self._stem = model.stem
        self._lock = threading.Lock()
        self._writable: bool | None = None

    def _file(self, voice: str, speed: float, phonemes: str) -> Path:
        key = hashlib.sha256(f"{voice}\0{speed!r}\0{phonemes}".encode()).hexdigest()[:32]
        return self.dir / f"{key}.npy"

    def load(self, voice: str, speed: float, phonemes: str) -> np.ndarray | None:
        path = self._file(voice, speed, phonemes)
        try:
            audio = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("TTS disk cache: %s is unreadable (%s); rendering it again", path, e)
            return None
        if (audio.dtype != np.float32 or audio.ndim != 1 or not audio.size or not np.isfinite(audio).all()
                or float(np.max(np.abs(audio))) > 1.0):
            log.warning("TTS disk cache: %s is not audio; rendering it again", path)
            return None
        return audio

    def save(self, voice: str, speed: float, phonemes: str, audio: np.ndarray) -> bool:
        with self._lock:
            if self._writable is False:
                return False
            try:
                if self._writable is None:
                    self._start()
                path = self._file(voice, speed, phonemes)
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.npy")
                np.save(tmp, np.ascontiguousarray(audio, dtype=np.float32), allow_pickle=False)
                tmp.replace(path)
            except OSError as e:
                self._writable = False
                log.warning("TTS disk cache off: cannot write under %s (%s); fixed phrases will be rendered "
                            "again at every start", self.root, e)
                return False
            return True

    def _start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.root.glob(f"{self._stem}-*"):
            if old.is_dir() and old != self.dir:  # renders of an earlier model or voices file
                shutil.rmtree(old, ignore_errors=True)
        self._writable = True


class KokoroTTS:
    """kokoro-onnx, one voice per language from ``cfg.voice``, 24 kHz float32 mono.

    Audio that is not speech raises TTSFault. Synthesis from a thread named ``tts-prerender*`` or
    inside ``prerendering()`` is pre-rendering: it yields to live synthesis (see ``_Priority``) and
    its short pieces are kept on disk next to the model, so the next start reads them back.
    """

    sample_rate = 24000

    def __init__(self, cfg: TTSConfig, model_path: str | Path, voices_path: str | Path):
        from kokoro_onnx import Kokoro
        from kokoro_onnx.session import create_session

        self.cfg = cfg
        self.model_path, self.voices_path = Path(model_path), Path(voices_path)
        for what, path in (("model", self.model_path), ("voices", self.voices_path)):
            if not path.is_file():
                raise FileNotFoundError(
                    f"kokoro {what} file not found: {path}; run `voicebot models download` "
                    f"or set tts.{what} in config.yaml"
                )
        start = time.perf_counter()
        # espeak's phonemizer warns "words count mismatch" on most English sentences; it is harmless
        logging.getLogger("phonemizer").setLevel(logging.ERROR)
        self._session = _Session(create_session(str(self.model_path)))
        self.kokoro = Kokoro.from_session(self._session, str(self.voices_path))
        available = set(self.kokoro.get_voices())
        missing = {lang: v for lang, v in cfg.voice.items() if v not in available}
        if missing:
            raise ValueError(
                f"tts.voice: {', '.join(f'{lang}={v!r}' for lang, v in missing.items())} not in "
                f"{self.voices_path.name} (available: {', '.join(sorted(available))})"
            )
        self._ja = JapaneseG2P(cfg.readings.get("ja"))
        self._en_readings = dict(cfg.readings.get("en", {}))
        # The bot says the same short sentences in every call (「かしこまりました。」, "Got it."): their
        # audio is kept, most recently used first, and a repeat costs nothing.
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._priority = _Priority()
        self._prerendering = threading.local()
        self._disk = _DiskCache(self.model_path, self.voices_path)
        self.stats = TTSStats()
        self._stats_lock = threading.Lock()
        log.info("loaded kokoro from %s in %.2f s", self.model_path, time.perf_counter() - start)

    def cached(self) -> list[tuple[str, str]]:
        """The pieces held in memory (``tts.cache_size``), as ``(language, text as normalised for
        speech)``, least recently used first."""
        with self._cache_lock:
            return list(self._cache)

    def _count(self, what: str) -> None:
        with self._stats_lock:
            setattr(self.stats, what, getattr(self.stats, what) + 1)

    def _voice(self, lang: str) -> str:
        voice = self.cfg.voice.get(lang)
        if voice is None:
            raise ValueError(f"tts.voice has no voice for language {lang!r}")
        return voice

    # ------------------------------------------------------------------ priorities
    @contextlib.contextmanager
    def prerendering(self) -> Iterator[None]:
        """Synthesis in this block (this thread) is pre-rendering: it waits for, and gives way to, live
        synthesis, and the short pieces it renders are kept on disk for the next start."""
        before = getattr(self._prerendering, "on", False)
        self._prerendering.on = True
        try:
            yield
        finally:
            self._prerendering.on = before

    def _is_prerendering(self) -> bool:
        return getattr(self._prerendering, "on", False) or threading.current_thread().name.startswith(PRERENDER_THREAD)

    # ------------------------------------------------------------------ text to phonemes to audio
    def phonemes(self, text: str, language: str) -> str:
        """The phonemes kokoro is given for one piece of already normalized text (see ``stream``)."""
        lang = _base_language(language)
        if lang == "ja":
            return self._ja(text)
        for written, spoken in self._en_readings.items():
            text = text.replace(written, spoken)
        return self.kokoro.tokenizer.phonemize(text, "en-us")

    def _sounds(self, phonemes: str) -> int:
        vocab = self.kokoro.tokenizer.vocab
        return sum(1 for p in phonemes if p.isalpha() and p in vocab)

    def _render(self, sentence: str, lang: str) -> np.ndarray:
        """One already-normalized piece of text to audio (read-only), from the cache when it was
        said before; empty when nothing in it is sayable; TTSFault when the model's audio is not speech."""
        cacheable = self.cfg.cache_size > 0 and len(sentence) <= CACHE_MAX_CHARS
        key = (lang, sentence)
        if cacheable:
            with self._cache_lock:
                audio = self._cache.get(key)
                if audio is not None:
                    self._cache.move_to_end(key)
                    self._count("cache_hits")
                    return audio
        audio = self._synthesize_piece(sentence, lang, keep_on_disk=cacheable)
        audio.setflags(write=False)  # shared by every call that says it
        if cacheable:
            with self._cache_lock:
                self._cache[key] = audio
                while len(self._cache) > self.cfg.cache_size:
                    self._cache.popitem(last=False)
        return audio

    def _synthesize_piece(self, sentence: str, lang: str, keep_on_disk: bool) -> np.ndarray:
        voice = self._voice(lang)
        if not any(c.isalnum() for c in sentence):
            return np.zeros(0, np.float32)  # "！？", "..." : kokoro would voice the marks as noise
        phonemes = self.phonemes(sentence, lang)
        sounds = self._sounds(phonemes)
        if not sounds:
            return np.zeros(0, np.float32)
        prerender = self._is_prerendering()
        disk = self._disk if prerender and keep_on_disk else None
        if disk is not None:
            audio = disk.load(voice, self.cfg.speed, phonemes)
            if audio is not None:
                self._count("disk_hits")
                return audio

        def run(options=None) -> tuple[np.ndarray, float] | None:
            self._session.begin(options)
            try:
                audio, _ = self.kokoro.create(phonemes, voice=voice, speed=self.cfg.speed, is_phonemes=True)
            except ValueError as e:
                # kokoro-onnx raises ValueError for text with no phonemes in its vocabulary ("…", "!").
                log.debug("nothing to say in %r: %s", sentence, e)
                return None
            finally:
                peak = self._session.end()
            return np.asarray(audio, dtype=np.float32).reshape(-1), peak

        if prerender:
            result, cancelled = self._priority.background(run)
            for _ in range(cancelled):
                self._count("preempted")
        else:
            with self._priority.live():
                result = run()
        if result is None:
            return np.zeros(0, np.float32)
        audio, peak = result
        self._count("synthesized")
        try:
            audio = check_speech(audio, sounds, self.cfg.speed, self.sample_rate, raw_peak=peak)
        except TTSFault as e:
            self._count("faults")
            log.warning("TTS fault on %r (%s voice %s): %s", sentence, lang, voice, e)
            raise
        if disk is not None and disk.save(voice, self.cfg.speed, phonemes, audio):
            self._count("disk_writes")
        return audio

    def synthesize(self, text: str, language: str) -> np.ndarray:
        """All of ``text`` as one float32 array at ``sample_rate`` (empty for empty text)."""
        parts = [audio for _, audio in self.stream(text, language)]
        if not parts:
            return np.zeros(0, np.float32)
        gap = np.zeros(int(0.15 * self.sample_rate), np.float32)
        out = [parts[0]]
        for part in parts[1:]:
            out += [gap, part]
        return np.concatenate(out)

    def stream(self, text: str, language: str) -> Iterator[tuple[int, np.ndarray]]:
        """``(sample_rate, audio)`` per sentence, each as soon as it is synthesized."""
        lang = _base_language(language)
        for sentence in split_sentences(normalize_for_speech(text, lang)):
            start = time.perf_counter()
            audio = self._render(sentence, lang)
            if audio.size:
                log.debug("tts %s %.2f s audio in %.3f s: %r", lang, audio.size / self.sample_rate,
                          time.perf_counter() - start, sentence)
                yield self.sample_rate, audio

    def warmup(self) -> None:
        """Load the Japanese dictionaries and espeak once, before the first caller."""
        start = time.perf_counter()
        for lang, text in (("ja", "はい、19時に3名様ですね。"), ("en", "Yes, at 7 pm.")):
            if lang in self.cfg.voice:
                self.synthesize(text, lang)
        log.debug("TTS warmed up in %.2f s", time.perf_counter() - start)


# ================================================================================ factory
def _remote_tts(cfg: TTSConfig, _model: Path, _voices: Path) -> TTS:
    from pipeline.speech.remote import RemoteTTS  # imports this module

    return RemoteTTS(cfg)


_PROVIDERS: dict[str, Callable[[TTSConfig, Path, Path], TTS]] = {"kokoro": KokoroTTS, "openai": _remote_tts}


def make_tts(cfg: TTSConfig, resolve: Callable[[str], Path]) -> TTS:
    """The TTS backend named by ``cfg.provider``; ``resolve`` makes configured paths absolute
    (``Config.path`` or ``pipeline.speech.models.model_resolver(config)``)."""
    factory = _PROVIDERS.get(cfg.provider)
    if factory is None:
        raise ValueError(f"tts.provider: unknown provider {cfg.provider!r} (known: {', '.join(_PROVIDERS)})")
    return factory(cfg, Path(resolve(cfg.model)), Path(resolve(cfg.voices)))
