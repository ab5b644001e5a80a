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

import datetime as dt
import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

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


#: longer pieces are read-backs and other one-off sentences: not worth keeping
CACHE_MAX_CHARS = 40


class KokoroTTS:
    """kokoro-onnx, one voice per language from ``cfg.voice``, 24 kHz float32 mono."""

    sample_rate = 24000

    def __init__(self, cfg: TTSConfig, model_path: str | Path, voices_path: str | Path):
        from kokoro_onnx import Kokoro

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
        self.kokoro = Kokoro(str(self.model_path), str(self.voices_path))
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
        log.info("loaded kokoro from %s in %.2f s", self.model_path, time.perf_counter() - start)

    def _voice(self, lang: str) -> str:
        voice = self.cfg.voice.get(lang)
        if voice is None:
            raise ValueError(f"tts.voice has no voice for language {lang!r}")
        return voice

    def _render(self, sentence: str, lang: str) -> np.ndarray:
        """One already-normalized piece of text to audio (read-only), from the cache when it was
        said before; empty when nothing in it is sayable."""
        cacheable = self.cfg.cache_size > 0 and len(sentence) <= CACHE_MAX_CHARS
        key = (lang, sentence)
        if cacheable:
            with self._cache_lock:
                audio = self._cache.get(key)
                if audio is not None:
                    self._cache.move_to_end(key)
                    return audio
        audio = self._synthesize_piece(sentence, lang)
        audio.setflags(write=False)  # shared by every call that says it
        if cacheable:
            with self._cache_lock:
                self._cache[key] = audio
                while len(self._cache) > self.cfg.cache_size:
                    self._cache.popitem(last=False)
        return audio

    def _synthesize_piece(self, sentence: str, lang: str) -> np.ndarray:
        voice = self._voice(lang)
        if not any(c.isalnum() for c in sentence):
            return np.zeros(0, np.float32)  # "！？", "..." : kokoro would voice the marks as noise
        try:
            if lang == "ja":
                phonemes = self._ja(sentence)
                if not any(p.isalpha() and p in self.kokoro.tokenizer.vocab for p in phonemes):
                    return np.zeros(0, np.float32)
                audio, _ = self.kokoro.create(phonemes, voice=voice, speed=self.cfg.speed, is_phonemes=True)
            else:
                for written, spoken in self._en_readings.items():
                    sentence = sentence.replace(written, spoken)
                audio, _ = self.kokoro.create(sentence, voice=voice, speed=self.cfg.speed, lang="en-us")
        except ValueError as e:
            # kokoro-onnx raises ValueError for text with no phonemes in its vocabulary ("…", "!").
            log.debug("nothing to say in %r: %s", sentence, e)
            return np.zeros(0, np.float32)
        return np.asarray(audio, dtype=np.float32).reshape(-1)

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
_PROVIDERS: dict[str, Callable[[TTSConfig, Path, Path], TTS]] = {"kokoro": KokoroTTS}


def make_tts(cfg: TTSConfig, resolve: Callable[[str], Path]) -> TTS:
    """The TTS backend named by ``cfg.provider``; ``resolve`` makes configured paths absolute
    (``Config.path`` or ``pipeline.models.model_resolver(config)``)."""
    factory = _PROVIDERS.get(cfg.provider)
    if factory is None:
        raise ValueError(f"tts.provider: unknown provider {cfg.provider!r} (known: {', '.join(_PROVIDERS)})")
    return factory(cfg, Path(resolve(cfg.model)), Path(resolve(cfg.voices)))
