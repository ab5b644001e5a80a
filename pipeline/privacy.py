"""Callers' personal data in what the bot writes down: the process log and the JSONL call log.

- :func:`mask_pii` masks phone-like digit runs (ASCII or full-width digits with any of the usual
  separators, 10-11 digits from a leading 0, or an international number from a leading +; also runs
  of kanji digits) down to their last two digits (``090-****-**78``), numbers read out as words
  (six or more digit words in a row, in kana or English: ``***、****、**ナナハチ``), and every value registered
  with :func:`register_pii` while calls run (the booking tools register each name and phone they
  accept).
- :class:`PiiFilter` is the ``logging.Filter`` that applies it to records, arguments and
  tracebacks included; :func:`install_pii_filter` puts it on the root logger's handlers.
- :func:`call_log_record` shapes a call-log record before it is written (no transcripts at a
  retention of 0 days, masked when ``logging.call_log_mask_pii``); :func:`append_call_log` writes it
  under the log's lock file; :func:`prune_call_log` drops lines older than the retention under the
  same lock, and :class:`CallLogJanitor` does that at start-up and hourly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the call log works, only without the inter-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MASK = "*"
NAME_MASK = "***"
KEEP_LAST = 2

# ------------------------------------------------------------------------------------- phone numbers
_DIGITS = "0-9\uff10-\uff19"
# Hyphens and dashes of every width (STT output and typed text use all of them, the katakana long
# vowel mark included), spaces, dots and brackets.
_SEPS = r"\s\u3000\-\u2010-\u2015\u2212\u30fc\uff0d.()\uff08\uff09"
_PHONE_RE = re.compile(
    rf"(?<![0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a+\uff0b])"  # not inside a longer word or number
    rf"[(\uff08]?(?:[+\uff0b]|(?=[0\uff10]))[{_DIGITS}](?:[{_SEPS}]{{0,2}}[{_DIGITS}])+"
)
_KANJI_DIGITS = "〇零○一二三四五六七八九"
_KANJI_SEPS = r"\s\u3000、の・\-\u30fc\uff0d"
_KANJI_PHONE_RE = re.compile(
    rf"(?<![{_KANJI_DIGITS}])[〇零○](?:[{_KANJI_SEPS}]{{0,2}}[{_KANJI_DIGITS}])+"
)
#: digits a number may have: domestic Japanese numbers start with 0; international ones with +
_DOMESTIC = range(10, 12)
_INTERNATIONAL = range(10, 14)
#: mobile, IP-phone and similar service prefixes say nothing about the subscriber
_SERVICE_PREFIX = re.compile(r"0[5789]0")


def _is_digit(ch: str, kanji: bool) -> bool:
    return ch in _KANJI_DIGITS if kanji else ("0" <= ch <= "9" or "\uff10" <= ch <= "\uff19")


def _ascii_digit(ch: str) -> str:
    return chr(ord(ch) - 0xFF10 + 0x30) if "\uff10" <= ch <= "\uff19" else ch


def _mask_number(run: str, kanji: bool) -> str:
    positions = [i for i, ch in enumerate(run) if _is_digit(ch, kanji)]
    digit_at = set(positions)
    keep = set(positions[-KEEP_LAST:])
    digits = "".join(_ascii_digit(run[i]) for i in positions[:3])
    if not kanji and _SERVICE_PREFIX.fullmatch(digits):
        keep.update(positions[:3])
    return "".join(ch if (i in keep or i not in digit_at) else MASK for i, ch in enumerate(run))


def _phone_sub(match: re.Match[str], kanji: bool) -> str:
    run = match.group(0)
    international = run.lstrip("(\uff08")[:1] in ("+", "\uff0b")
    allowed = _INTERNATIONAL if international else _DOMESTIC
    # A run of numbers joined by separators ("03-1234-5678 19:00", two numbers in a row) is cut at
    # the longest prefix that ends at a separator and has a phone's length; the rest is scanned again.
    count, best = 0, -1
    for i, ch in enumerate(run):
        if _is_digit(ch, kanji):
            count += 1
            at_cut = i + 1 == len(run) or not _is_digit(run[i + 1], kanji)
            if at_cut and count in allowed:
                best = i + 1
    if best < 0:
        if count > max(allowed):
            # Too long from here: the number may start at a later group.
            cut = next((i for i, ch in enumerate(run) if i and not _is_digit(ch, kanji)), len(run))
            return run[:cut] + _mask_phones(run[cut:])
        return run
    return _mask_number(run[:best], kanji) + _mask_phones(run[best:])


# Numbers read out as words: 「ゼロキューゼロ、イチニーサンヨン…」 in a transcript or a read-back,
# "zero nine zero, one two three four…" in English. Dates and times never take this many digit words
# in a row, so a run of SPOKEN_MIN of them is taken for (part of) a phone number.
SPOKEN_MIN = 6
_KANA_DIGIT_WORDS = ("ゼロ", "レイ", "マル", "イチ", "ニー", "ニ", "サン", "ヨン", "シチ", "シ", "ゴー", "ゴ",
                     "ロク", "ナナ", "ハチ", "キュウ", "キュー", "ク")
_HIRA = str.maketrans({chr(c): chr(c - 0x60) for c in range(ord("ァ"), ord("ヶ") + 1)})
_KANA_ALTERNATIVES = sorted({*_KANA_DIGIT_WORDS, *(w.translate(_HIRA) for w in _KANA_DIGIT_WORDS)},
                            key=len, reverse=True)
_TOKEN_JA = rf"(?:{'|'.join(_KANA_ALTERNATIVES)})ー*"
_TOKEN_EN = r"\b(?:zero|oh|o|one|two|three|four|five|six|seven|eight|nine|double|triple)\b"
_SEP_JA = r"(?:[\s\u3000、,・\-－]|ノ|の|ハイフン)*"
_SEP_EN = r"[\s,\-]*"
_SPOKEN_DIGITS_RE = re.compile(
    rf"(?P<ja>{_TOKEN_JA}(?:{_SEP_JA}{_TOKEN_JA}){{{SPOKEN_MIN - 1},}})"
    rf"|(?P<en>{_TOKEN_EN}(?:{_SEP_EN}{_TOKEN_EN}){{{SPOKEN_MIN - 1},}})",
    re.IGNORECASE,
)


def _mask_spoken(match: re.Match[str]) -> str:
    """Every digit word of the run but the last KEEP_LAST becomes one MASK; separators stay."""
    run = match.group(0)
    token = re.compile(_TOKEN_JA if match.group("ja") else _TOKEN_EN, re.IGNORECASE)
    starts = [w.start() for w in token.finditer(run)]
    keep_from = starts[-KEEP_LAST] if len(starts) >= KEEP_LAST else 0
    return token.sub(lambda w: w.group(0) if w.start() >= keep_from else MASK, run)


def _mask_phones(text: str) -> str:
    text = _PHONE_RE.sub(lambda m: _phone_sub(m, False), text)
    text = _KANJI_PHONE_RE.sub(lambda m: _phone_sub(m, True), text)
    return _SPOKEN_DIGITS_RE.sub(_mask_spoken, text)


# ------------------------------------------------------------------------------------- the registry
class PiiRegistry:
    """The names and phone numbers callers gave, to be masked wherever they appear.

    Bounded: the oldest values are forgotten first, so a long-running server keeps masking the
    calls of the last hours without growing without end.
    """

    def __init__(self, limit: int = 2000):
        self.limit = limit
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def register(self, value: Any) -> None:
        if value is None:
            return
        for form in _forms(str(value)):
            with self._lock:
                if form in self._values:
                    self._values.move_to_end(form)
                    continue
                self._values[form] = None
                while len(self._values) > self.limit:
                    self._values.popitem(last=False)
                self._pattern = None

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                # Longest first, so a full name wins over a registered part of it.
                alternatives = [_word_pattern(v) for v in sorted(self._values, key=len, reverse=True)]
                self._pattern = re.compile("|".join(alternatives), re.IGNORECASE)
            return self._pattern

    def mask(self, text: str) -> str:
        pattern = self._compiled()
        return pattern.sub(NAME_MASK, text) if pattern is not None else text


def _word_pattern(value: str) -> str:
    # Latin names only match as whole words ("Ann" must not eat "Announcement"); Japanese has no
    # spaces between words, so a Japanese name matches anywhere.
    pattern = re.escape(value)
    if re.match(r"[A-Za-z0-9]", value):
        pattern = r"(?<![A-Za-z0-9])" + pattern
    if re.search(r"[A-Za-z0-9]$", value):
        pattern += r"(?![A-Za-z0-9])"
    return pattern


def _forms(value: str) -> list[str]:
    value = value.strip()
    if not value or (len(value) < 2 and value.isascii()):
        return []  # a single letter or digit would mask half the log
    forms = [value]
    if value.isdigit() and len(value) >= 6:
        # The bot reads a number back digit by digit: mask how it says it, too.
        with contextlib.suppress(Exception):
            from pipeline.dialog import speech

            forms += [speech.group_phone(value), speech.say_phone(value, "ja"), speech.say_phone(value, "en")]
    return list(dict.fromkeys(f for f in forms if f))


REGISTRY = PiiRegistry()


def register_pii(value: Any) -> None:
    """Mask ``value`` (a caller's name or phone number) in every log line from now on."""
    REGISTRY.register(value)


def mask_pii(text: str) -> str:
    """``text`` with phone-like numbers and registered names and numbers masked."""
    if not text:
        return text
    return REGISTRY.mask(_mask_phones(text))


def mask_value(value: Any) -> Any:
    """A JSON-like value with every string in it masked."""
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ logging
_TRACEBACKS = logging.Formatter()


class PiiFilter(logging.Filter):
    """Masks personal data in a record: its message with the arguments formatted in, and its traceback.

    On a handler it sees the records of every logger that propagate there; it never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as e:
            # A template that does not fit its arguments (log.info("%d", "abc")): the handler would
            # print the raw arguments to stderr. Keep what can be said, masked, and flag the fault.
            message = _unformattable(record, e)
        record.msg = mask_pii(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set: the masked traceback is what they print.
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_pii(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_pii(record.stack_info)
        return True


def _unformattable(record: logging.LogRecord, error: Exception) -> str:
    """The text of a record whose message cannot be formatted: its template and a repr of its
    arguments, flagged, for :class:`PiiFilter` to mask like any other message."""
    try:
        template = str(record.msg)
    except Exception:
        template = f"<{type(record.msg).__name__} message>"
    try:
        args = repr(record.args)
    except Exception:
        args = f"<{type(record.args).__name__} arguments>"
    return f"{template} [log formatting error: {type(error).__name__}: {error}; arguments: {args}]"


def install_pii_filter(logger: logging.Logger | None = None) -> PiiFilter:
    """Put one :class:`PiiFilter` on each handler of ``logger`` (the root logger by default)."""
    logger = logger or logging.getLogger()
    found = None
    for handler in logger.handlers:
        existing = next((f for f in handler.filters if isinstance(f, PiiFilter)), None)
        if existing is None:
            existing = found or PiiFilter()
            handler.addFilter(existing)
        found = found or existing
    return found or PiiFilter()


def remove_pii_filter(logger: logging.Logger | None = None) -> None:
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        for f in [f for f in handler.filters if isinstance(f, PiiFilter)]:
            handler.removeFilter(f)


# ----------------------------------------------------------------------------------------- call log
#: what a call-log record holds that the caller said or that identifies them
_TEXT_KEYS = ("transcript", "transcript_raw", "reply", "heard")
_PERSONAL_SLOTS = ("name", "phone", "note")


def call_log_record(settings: Any, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as the call log may keep it under ``settings`` (the ``logging`` config section)."""
    retention = getattr(settings, "call_log_retention_days", None)
    if retention == 0:
        record = {k: v for k, v in record.items() if k not in _TEXT_KEYS}
        for key in ("slots", "reservation"):
            if isinstance(record.get(key), dict):
                record[key] = {k: v for k, v in record[key].items() if k not in _PERSONAL_SLOTS}
    if getattr(settings, "call_log_mask_pii", False):
        record = mask_value(record)
    return record


def _line_time(line: bytes) -> dt.datetime | None:
    try:
        at = json.loads(line).get("at")
        when = dt.datetime.fromisoformat(at)
    except (ValueError, TypeError, AttributeError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path.lock``, held by whoever appends to or rewrites the call log."""
    if fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def append_call_log(path: str | os.PathLike, line: str) -> None:
    """Append one line to the JSONL call log at ``path``, creating its folder on first use.

    Under the log's lock: a prune (:func:`prune_call_log`) never runs between this opening the file
    and writing to it, so the line always lands in the file that stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with _file_lock(path), open(path, "ab") as f:
        f.write(data)


def prune_call_log(path: str | os.PathLike, retention_days: float | None, *,
                   now: dt.datetime | None = None) -> int:
    """Drop the lines older than ``retention_days`` from the JSONL call log; returns how many went.

    The file is rewritten atomically (a temporary file renamed over it) under the lock that
    :func:`append_call_log` takes, so no writer appends to the old file meanwhile and no line is
    lost or cut. Lines without a readable time are kept. ``None`` keeps everything; a log that
    does not exist yet (nor its folder) has nothing to prune.
    """
    if retention_days is None:
        return 0
    path = Path(path)
    if not path.exists():
        return 0  # nothing written yet; the first append creates the folder and the file
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=retention_days)
    with _file_lock(path):
        try:
            old = open(path, "rb")
        except FileNotFoundError:
            return 0
        with old:
            data = old.read()
        end = data.rfind(b"\n") + 1
        # A last line without its newline (a writer that died mid-line) is kept as it is.
        kept, dropped = [], 0
        for line in data[:end].splitlines(keepends=True):
            if not line.strip():
                continue
            when = _line_time(line)
            if when is not None and when < cutoff:
                dropped += 1
            else:
                kept.append(line)
        if not dropped:
            return 0
        kept.append(data[end:])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.writelines(kept)
                out.flush()
                os.fsync(out.fileno())
            with contextlib.suppress(OSError):
                os.chmod(tmp, os.stat(path).st_mode & 0o777)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    log.info("call log %s: pruned %d lines older than %g days", path, dropped, retention_days)
    return dropped


class CallLogJanitor:
    """Prunes the call log at start and then once an interval (an hour) in a daemon thread."""

    def __init__(self, path: str | os.PathLike, retention_days: float, interval_s: float = 3600.0):
        self.path = Path(path)
        self.retention_days = retention_days
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="call-log-janitor", daemon=True)

    def prune(self) -> int:
        try:
            return prune_call_log(self.path, self.retention_days)
        except OSError as e:
            # One line: an unwritable log folder is the operator's to fix, not a crash to debug.
            log.warning("cannot prune the call log %s: %s", self.path, e)
            log.debug("pruning the call log failed", exc_info=True)
            return 0

    def start(self) -> CallLogJanitor:
        self.prune()  # at start-up, before any call is taken
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.prune()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def start_call_log_janitor(cfg: Any) -> CallLogJanitor | None:
    """The janitor for ``cfg``'s call log, started; None when there is no log or it is kept forever."""
    settings = cfg.logging
    if not settings.call_log or settings.call_log_retention_days is None:
        return None
    return CallLogJanitor(cfg.path(settings.call_log), settings.call_log_retention_days).start()
