"""Simulated callers: who they are, what they want, how they say it, and how they react to the bot.

A persona file (YAML; :data:`DEFAULT_PERSONAS` is the one shipped) has three parts:

- ``cues``: per language, the keywords by which a caller knows what the bot just asked (its
  ``date`` question, a read-back to ``confirm``, "anything else?", a goodbye that has ``ended`` the
  call, ...). The caller takes the intent whose keyword stands *last* in the bot's words, as a
  person answers the last question of a turn; ``repeat`` ("could you say that again?") counts
  only when nothing else matched. ``new_booking`` marks the bot taking a booking: a caller who
  called to change or cancel one then says again what it wants.
- ``defaults``: per language, the short lines every caller says the same way (``yes``, ``no``,
  ``done``: "that's all", the ``backchannel``, the ``no_prefix`` of a correction).
- ``personas``: one call each, in order. A persona ``wants`` to ``book`` (its ``booking``),
  ``change`` or ``cancel`` the booking that persona ``of`` made earlier in the same run, or
  ``nothing`` (a question only). It says its ``open`` line after the greeting (``gives`` names the
  items that line carries), then reacts to each reply: asked for an item it says its ``says`` line
  for it (variants in turn if asked again; lines made from the booking where it gives none);
  asked to confirm it checks the read-back against what it wants and says yes, or no and the
  right item. ``faq`` and ``correction`` are said instead of an answer the first time the bot asks
  ``when``; ``readback_no`` answers the first read-back; ``backchannel`` is said ``at_s`` seconds
  into the reply to the line named by ``during`` (``greeting`` for the greeting).

Lines may carry pauses: ``明日の、<700>えーと、7時に`` pauses 700 ms (``<NNN>``, milliseconds).
A booking's ``date`` is ``+N`` (days after the clock's today) or ``MM-DD`` (the next one to come).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.sim.voices import Voice

DEFAULT_PERSONAS = Path(__file__).with_name("personas.yaml")

SLOTS = ("date", "time", "party", "name", "phone", "note")
#: what a bot's reply can ask for, in the order ties are broken
INTENTS = ("ended", "confirm", "anything_else", "change_what", "which_fix", "quit_check", "phone_more", *SLOTS,
           "repeat")
#: cues that are not a question but say what the bot is doing: ``new_booking``, it is taking a booking
#: (a change or cancel caller then says again what it wants)
MARKERS = ("new_booking",)
#: the items of a booking as the store names them
STORE_FIELDS = {"date": "date", "time": "time", "party": "party_size", "name": "name", "phone": "phone",
                "note": "note"}
LANGUAGES = ("ja", "en")
DEFAULT_LINES = ("yes", "no", "done", "backchannel", "no_prefix", "keep_going", "no_note", "no_booking")
_PAUSE = re.compile(r"<(\d{1,4})>")
MAX_PAUSE_MS = 3000


class PersonaError(Exception):
    """A persona file that cannot be used; the message names the file and the entry."""


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VoiceSpec(_Model):
    """``engine``: openjtalk (Japanese; ``speed`` a factor around 1, ``pitch`` semitones) or espeak
    (``name`` an espeak-ng voice, ``speed`` words a minute, ``pitch`` 0-99). The default engine is
    openjtalk for Japanese callers and espeak for English ones."""

    engine: Literal["openjtalk", "espeak"] | None = None
    name: str = ""
    speed: float | None = Field(default=None, gt=0)
    pitch: float | None = None

    def voice(self, language: str) -> Voice:
        engine = self.engine or ("openjtalk" if language == "ja" else "espeak")
        if engine == "openjtalk":
            return Voice("openjtalk", "", self.speed or 1.0, self.pitch or 0.0)
        return Voice("espeak", self.name or ("ja" if language == "ja" else "en-us"), self.speed or 165,
                     50 if self.pitch is None else self.pitch)


def _check_date(v: Any) -> str:
    v = str(v).strip()
    if not re.fullmatch(r"\+\d{1,3}|\d{2}-\d{2}", v):
        raise ValueError(f"expected +N (days after today) or MM-DD, got {v!r}")
    return v


def _check_time(v: Any) -> str:
    try:
        return dt.time.fromisoformat(str(v)).strftime("%H:%M")
    except ValueError:
        raise ValueError(f"expected HH:MM, got {v!r}") from None


def _check_phone(v: Any) -> str:
    digits = re.sub(r"\D", "", str(v))
    if not 10 <= len(digits) <= 11:
        raise ValueError(f"expected a phone number of 10 or 11 digits, got {v!r}")
    return digits


#: a booking's date: "+N" days after the clock's today, or "MM-DD" (the next to come)
DateSpec = Annotated[str, BeforeValidator(_check_date)]
TimeSpec = Annotated[str, BeforeValidator(_check_time)]
#: one line, or variants said in turn
Lines = Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)]


class BookingSpec(_Model):
    date: DateSpec
    time: TimeSpec
    party: int = Field(ge=1)
    name: str = Field(min_length=1)
    phone: Annotated[str, BeforeValidator(_check_phone)]
    note: str | None = None


class ChangeSpec(_Model):
    date: DateSpec | None = None
    time: TimeSpec | None = None
    party: int | None = Field(default=None, ge=1)


class Aside(_Model):
    when: str
    say: Lines


class Backchannel(_Model):
    during: str = "greeting"
    say: str | None = None
    at_s: float = Field(default=1.0, ge=0, le=10)


class Persona(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    about: str = ""
    language: Literal["ja", "en"] = "ja"
    wants: Literal["book", "change", "cancel", "nothing"] = "book"
    booking: BookingSpec | None = None
    of: str | None = None
    changes: ChangeSpec | None = None
    voice: VoiceSpec = Field(default_factory=VoiceSpec)
    open: Lines
    gives: list[Literal["date", "time", "party", "name", "phone", "note", "change"]] = Field(default_factory=list)
    says: dict[str, Lines] = Field(default_factory=dict)
    faq: Aside | None = None
    correction: Aside | None = None
    readback_no: Lines | None = None
    backchannel: Backchannel | None = None
    min_turns: int | None = Field(default=None, ge=1)
    #: seconds the caller waits after the bot's last word before answering
    reaction_s: float = Field(default=0.4, ge=0, le=5)


    @model_validator(mode="after")
    def _consistent(self) -> Persona:
        if self.wants == "book" and self.booking is None:
            raise ValueError("wants: book needs a booking")
        if self.wants in ("change", "cancel") and not self.of:
            raise ValueError(f"wants: {self.wants} needs `of`: the persona whose booking it is about")
        if self.wants == "change" and (self.changes is None or not self.changes.model_dump(exclude_none=True)):
            raise ValueError("wants: change needs `changes` (date, time and/or party)")
        if self.wants == "change" and "change" not in self.says and "change" not in self.gives:
            raise ValueError("wants: change needs says.change: how the caller says what to change")
        unknown = set(self.says) - {*SLOTS, "change", *DEFAULT_LINES}
        if unknown:
            raise ValueError(f"says: unknown item(s) {sorted(unknown)} (known: {', '.join((*SLOTS, 'change'))} "
                             f"and the defaults {', '.join(DEFAULT_LINES)})")
        whens = {*SLOTS, "confirm", "anything_else", "change_what"}
        for name, aside in (("faq", self.faq), ("correction", self.correction)):
            if aside is not None and aside.when not in whens:
                raise ValueError(f"{name}.when: expected one of {', '.join(sorted(whens))}, got {aside.when!r}")
        if self.backchannel is not None and self.backchannel.during not in {"greeting", *SLOTS, "yes", "open",
                                                                          "change", "faq", "correction"}:
            raise ValueError(f"backchannel.during: expected greeting, open or an item, got {self.backchannel.during!r}")
        for line in self.all_lines():
            parse_line(line)
        return self

    def all_lines(self) -> list[str]:
        out = [*self.open, *(x for lines in self.says.values() for x in lines), *(self.readback_no or [])]
        out += [*(self.faq.say if self.faq else []), *(self.correction.say if self.correction else [])]
        return out


class PersonaSet(_Model):
    cues: dict[Literal["ja", "en"], dict[str, list[str]]]
    defaults: dict[Literal["ja", "en"], dict[str, str]]
    personas: list[Persona] = Field(min_length=1)

    @field_validator("defaults", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted key `yes:` or `no:` as a boolean
        if isinstance(v, dict):
            return {lang: {({True: "yes", False: "no"}.get(k, k) if isinstance(k, bool) else k): x
                           for k, x in lines.items()} if isinstance(lines, dict) else lines
                    for lang, lines in v.items()}
        return v

    @model_validator(mode="after")
    def _references(self) -> PersonaSet:
        for lang, cues in self.cues.items():
            unknown = set(cues) - set(INTENTS) - set(MARKERS)
            if unknown:
                raise ValueError(f"cues.{lang}: unknown intent(s) {sorted(unknown)} (known: {', '.join(INTENTS)})")
        for lang, lines in self.defaults.items():
            missing = set(DEFAULT_LINES) - set(lines)
            if missing:
                raise ValueError(f"defaults.{lang}: missing {sorted(missing)}")
        seen: dict[str, Persona] = {}
        for p in self.personas:
            if p.id in seen:
                raise ValueError(f"persona id {p.id!r} is used twice")
            if p.language not in self.cues or p.language not in self.defaults:
                raise ValueError(f"persona {p.id}: no cues or defaults for language {p.language!r}")
            if p.of is not None:
                ref = seen.get(p.of)
                if ref is None or ref.wants != "book":
                    raise ValueError(f"persona {p.id}: `of: {p.of}` must name a persona with wants: book "
                                     "earlier in the file")
            seen[p.id] = p
        return self

    def by_id(self, pid: str) -> Persona:
        for p in self.personas:
            if p.id == pid:
                return p
        raise KeyError(pid)


def load_personas(path: str | Path | None = None) -> PersonaSet:
    """The persona file at ``path`` (default: the shipped one), validated; :class:`PersonaError` if not."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_PERSONAS
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PersonaError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PersonaError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise PersonaError(f"{path}: expected a mapping with cues, defaults and personas")
    try:
        return PersonaSet.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors()[:5]:
            loc = list(err["loc"])
            if len(loc) >= 2 and loc[0] == "personas" and isinstance(loc[1], int):
                personas = raw.get("personas") or []
                pid = personas[loc[1]].get("id") if loc[1] < len(personas) and isinstance(personas[loc[1]], dict) \
                    else None
                loc[1] = f"{loc[1]} ({pid})" if pid else loc[1]
            problems.append(f"{'.'.join(str(x) for x in loc) or '(top)'}: {err['msg']}")
        raise PersonaError(f"{path}: invalid persona file: " + "; ".join(problems)) from None


# ------------------------------------------------------------------------------------ lines
@dataclass(frozen=True)
class Utterance:
    """One line as said: ``parts`` are text to speak and pauses (milliseconds) between them."""

    raw: str
    parts: tuple[str | int, ...]

    @property
    def text(self) -> str:
        """What was said, pauses left out: the reference for what the bot should have heard."""
        return "".join(p for p in self.parts if isinstance(p, str))


def parse_line(raw: str) -> Utterance:
    parts: list[str | int] = []
    pos = 0
    for m in _PAUSE.finditer(raw):
        if raw[pos : m.start()].strip():
            parts.append(raw[pos : m.start()])
        ms = int(m.group(1))
        if ms > MAX_PAUSE_MS:
            raise ValueError(f"{raw!r}: a pause of {ms} ms is longer than {MAX_PAUSE_MS} ms")
        parts.append(ms)
        pos = m.end()
    if raw[pos:].strip():
        parts.append(raw[pos:])
    if not any(isinstance(p, str) for p in parts):
        raise ValueError(f"{raw!r}: a line with nothing to say")
    return Utterance(raw, tuple(parts))


_KANA_DIGITS = ("ゼロ", "イチ", "ニー", "サン", "ヨン", "ゴー", "ロク", "ナナ", "ハチ", "キュー")
_EN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def phone_groups(digits: str) -> tuple[str, ...]:
    """A Japanese number in the groups people read it in: 090-1234-5678, 03-1234-5678."""
    if len(digits) == 11:
        return digits[:3], digits[3:7], digits[7:]
    if digits.startswith(("03", "06")):
        return digits[:2], digits[2:6], digits[6:]
    return digits[:3], digits[3:6], digits[6:]


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def spoken_item(item: str, value: Any, language: str, today: dt.date) -> str:
    """How a caller says one item of a booking when the persona gives no line for it."""
    if item == "date":
        day = dt.date.fromisoformat(value)
        offset = (day - today).days
        if language == "ja":
            return {0: "今日です", 1: "明日です", 2: "あさってです"}.get(offset, f"{day.month}月{day.day}日です")
        return {0: "today", 1: "tomorrow"}.get(offset, f"{_MONTHS[day.month - 1]} {_ordinal(day.day)}")
    if item == "time":
        t = dt.time.fromisoformat(value)
        if language == "ja":
            return f"{t.hour}時半です" if t.minute == 30 else f"{t.hour}時です" if not t.minute else f"{t.hour}時{t.minute}分です"
        h = t.hour % 12 or 12
        return f"{h}{f':{t.minute:02d}' if t.minute else ''} {'pm' if t.hour >= 12 else 'am'}"
    if item == "party":
        return f"{value}名です" if language == "ja" else f"{value} {'person' if value == 1 else 'people'}"
    if item == "name":
        return f"{value}です" if language == "ja" else f"my name is {value}"
    if item == "phone":
        return spoken_digits(phone_groups(value), language)
    raise ValueError(f"no default line for {item!r}")


def spoken_digits(groups: tuple[str, ...] | list[str], language: str) -> str:
    """Digits read one by one, a short pause between groups: ゼロキューゼロ<400>イチニーサンヨン...です."""
    if language == "ja":
        return "<400>".join("".join(_KANA_DIGITS[int(d)] for d in g) for g in groups) + "です"
    return ", <300>".join(" ".join(_EN_DIGITS[int(d)] for d in g) for g in groups)


def phone_lines(digits: str, language: str) -> list[str]:
    """A number as callers say it, and say it again when the bot did not get it: in groups, then the
    groups further apart, then digit by digit."""
    groups = phone_groups(digits)
    if language == "ja":
        apart = "<700>".join("、".join(_KANA_DIGITS[int(d)] for d in g) for g in groups) + "です"
        one_by_one = "<250>".join(_KANA_DIGITS[int(d)] for d in digits) + "です"
    else:
        apart = ", <700>".join(", ".join(_EN_DIGITS[int(d)] for d in g) for g in groups)
        one_by_one = ", <250>".join(_EN_DIGITS[int(d)] for d in digits)
    return [spoken_digits(groups, language), apart, one_by_one]


def resolve_date(spec: str, today: dt.date) -> dt.date:
    if spec.startswith("+"):
        return today + dt.timedelta(days=int(spec[1:]))
    month, day = (int(x) for x in spec.split("-"))
    for year in (today.year, today.year + 1):
        try:
            candidate = dt.date(year, month, day)
        except ValueError:
            continue
        if candidate >= today:
            return candidate
    raise ValueError(f"no date {spec} after {today}")


def intended_booking(spec: BookingSpec, today: dt.date) -> dict[str, Any]:
    """A booking as the store lists it (``voicebot reservations --json``'s fields, no id)."""
    return {"date": resolve_date(spec.date, today).isoformat(), "time": spec.time, "party_size": spec.party,
            "name": spec.name, "phone": spec.phone, "note": spec.note}


def apply_changes(booking: dict[str, Any], changes: ChangeSpec, today: dt.date) -> dict[str, Any]:
    out = dict(booking)
    if changes.date is not None:
        out["date"] = resolve_date(changes.date, today).isoformat()
    if changes.time is not None:
        out["time"] = changes.time
    if changes.party is not None:
        out["party_size"] = changes.party
    return out


def min_turns(p: Persona) -> int:
    """The fewest lines this caller needs if the bot asks for each item once and hears it right."""
    if p.min_turns is not None:
        return p.min_turns
    extras = (p.faq is not None) + (p.correction is not None) + (p.readback_no is not None)
    if p.wants == "book":
        return 1 + sum(s not in p.gives for s in SLOTS) + 2 + extras  # + yes + done
    if p.wants == "change":
        return 1 + ("phone" not in p.gives) + ("change" not in p.gives) + 2 + extras
    if p.wants == "cancel":
        return 1 + ("phone" not in p.gives) + 2 + extras
    return 2 + extras  # the question, then "that's all"


# ------------------------------------------------------------------------------------ reading the bot
def find_intent(text: str, cues: dict[str, list[str]]) -> str | None:
    """The intent whose cue stands last in ``text`` (``repeat`` only when nothing else matches)."""
    norm = unicodedata.normalize("NFKC", text).casefold()
    best: tuple[int, int] | None = None
    found: str | None = None
    for rank, intent in enumerate(INTENTS):
        if intent == "repeat":
            continue
        for cue in cues.get(intent, ()):
            at = norm.rfind(unicodedata.normalize("NFKC", cue).casefold())
            if at < 0:
                continue
            key = (at + len(cue), -rank)
            if best is None or key > best:
                best, found = key, intent
    if found is None and any(unicodedata.normalize("NFKC", c).casefold() in norm for c in cues.get("repeat", ())):
        return "repeat"
    return found


_JA_DIGIT_WORDS = {"ゼロ": "0", "レイ": "0", "マル": "0", "イチ": "1", "ニー": "2", "ニ": "2", "サン": "3", "ヨン": "4",
                   "シ": "4", "ゴー": "5", "ゴ": "5", "ロク": "6", "ナナ": "7", "シチ": "7", "ハチ": "8",
                   "キュウ": "9", "キュー": "9", "ク": "9"}
_JA_DIGIT = re.compile("|".join(sorted(map(re.escape, _JA_DIGIT_WORDS), key=len, reverse=True)) + r"|\d")
_EN_WORD_DIGITS = {w: str(i) for i, w in enumerate(_EN_DIGITS)} | {"oh": "0"}
_EN_NUMBERS = {w: i for i, w in enumerate(("zero one two three four five six seven eight nine ten eleven twelve")
                                          .split())}


def _phone_digits(text: str, language: str) -> str:
    if language == "ja":
        return "".join(_JA_DIGIT_WORDS.get(m, m) for m in _JA_DIGIT.findall(text))
    words = re.findall(r"[a-z]+|\d", text.lower())
    return "".join(_EN_WORD_DIGITS.get(w, w if w.isdigit() else "") for w in words)


def _same_sound(wanted: str, said: str, language: str, tolerance: float = 0.25) -> bool:
    from pipeline.sim.score import error_count

    return (error_count(wanted, said, language).rate or 0.0) <= tolerance


def readback_mismatches(text: str, expected: dict[str, Any], language: str) -> list[str]:
    """The items a read-back (or a question about one item) states with a value other than
    ``expected``'s (``party``, ``time``, ``date``, ``name`` by its sound, ``phone``); items it does
    not state in a form recognised here are not judged."""
    text = unicodedata.normalize("NFKC", text)
    wrong: list[str] = []
    day = dt.date.fromisoformat(expected["date"]) if expected.get("date") else None
    t = dt.time.fromisoformat(expected["time"]) if expected.get("time") else None
    if language == "ja":
        parties = {int(n) for n in re.findall(r"(\d+)名", text)}
        times = set()
        for ampm, h, half, minute in re.findall(r"(午前|午後|夜|朝|昼)?(\d{1,2})時(半|(\d{1,2})分)?", text):
            hour = int(h) + (12 if ampm in ("午後", "夜") and int(h) < 12 else 0)
            times.add((hour, 30 if half == "半" else int(minute or 0)))
        dates = {(int(m), int(d)) for m, d in re.findall(r"(\d{1,2})月(\d{1,2})日", text)}
        phone_part = re.search(r"電話番号(?:は|を)?(.*?)(?:、ご要望|、以上|でよろしい|$)", text)
    else:
        low = text.lower()
        parties = {int(n) if n.isdigit() else _EN_NUMBERS.get(n, -1)
                   for n in re.findall(r"(\d+|[a-z]+) (?:people|persons|guests|person)\b", low)}
        times = set()
        for h, minute, ampm in re.findall(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?m\b", low):
            times.add((int(h) % 12 + (12 if ampm == "p" else 0), int(minute or 0)))
        months = "|".join(m.lower() for m in _MONTHS)
        dates = {(_MONTHS.index(m.capitalize()) + 1, int(d)) for m, d in re.findall(rf"\b({months}) (\d{{1,2}})", low)}
        phone_part = re.search(r"phone number (.*?)(?:\.|,? is that| special|$)", low)
    if expected.get("party_size") is not None and parties and expected["party_size"] not in parties:
        wrong.append("party")
    if t is not None and times and (t.hour, t.minute) not in times:
        wrong.append("time")
    if day is not None and dates and (day.month, day.day) not in dates:
        wrong.append("date")
    # a name, said back in its reading (お名前はタナカ様, under the name John Smith)
    named = (re.search(r"お名前(?:は|を)、?(.+?)様", text) if language == "ja" else
             re.search(r"(?:under the name|is the name|the name to) ([a-z][a-z .'-]*?)(?:[,.?!]|$)", text.lower()))
    if expected.get("name") and named and not _same_sound(expected["name"], named.group(1), language, 0.0):
        wrong.append("name")
    # the number the caller is calling from, offered by its last four digits
    tail = re.search(r"末尾(.*?)の番号" if language == "ja" else r"ending in ([a-z ,\d-]+)", text.lower())
    if expected.get("phone") and tail:
        digits = _phone_digits(tail.group(1), language)
        if len(digits) == 4 and digits != expected["phone"][-4:]:
            wrong.append("phone")
    elif expected.get("phone") and phone_part:
        digits = _phone_digits(phone_part.group(1), language)
        if len(digits) >= 10 and digits != expected["phone"]:
            wrong.append("phone")
    return wrong


# ------------------------------------------------------------------------------------ the caller
@dataclass(frozen=True)
class Said:
    """A line the caller decided to say: ``kind`` is what it answers (an item, ``yes``, ``faq``, ...)."""

    kind: str
    line: Utterance
    #: how many times the caller had said this very line before in the call: a repeat is said slower
    repeat: int = 0


@dataclass
class Caller:
    """One persona on one call: decides each line from the bot's last words.

    ``expected`` is the booking this call should leave standing (for ``cancel``, the one it
    removes); it is what read-backs are checked against.
    """

    persona: Persona
    cues: dict[str, list[str]]
    defaults: dict[str, str]
    expected: dict[str, Any] | None
    today: dt.date
    max_fixes: int = 3
    #: times a change or cancel caller says again what it wants before giving up
    max_restates: int = 2
    asked: Counter = field(default_factory=Counter)
    said: list[Said] = field(default_factory=list)
    _faq_done: bool = False
    _correction_done: bool = False
    _readback_no_done: bool = False
    _fixes: int = 0
    _restates: int = 0
    _last_fix: str | None = None

    # ---------------------------------------------------------------- lines
    def lines_for(self, item: str) -> list[str]:
        p = self.persona
        if item in p.says:
            return p.says[item]
        if item in DEFAULT_LINES:
            return [self.defaults[item]]
        if item in SLOTS and self.expected is not None:
            value = self.expected[STORE_FIELDS[item]]
            if item == "note" and not value:
                return [self.defaults["no_note"]]
            if item == "note":
                return [value]
            if item == "phone":
                return phone_lines(value, p.language)
            return [spoken_item(item, value, p.language, self.today)]
        return [self.defaults["done"]]

    def every_line(self) -> list[str]:
        """Everything this caller might say (to render the voices before the call)."""
        p = self.persona
        out = [*p.all_lines(), *(self.defaults[k] for k in DEFAULT_LINES)]
        for item in SLOTS:
            out += self.lines_for(item)
            out += [self.defaults["no_prefix"] + line for line in self.lines_for(item)]
        out.append(self.persona.backchannel.say if p.backchannel and p.backchannel.say else self.defaults["backchannel"])
        return list(dict.fromkeys(out))

    def _say(self, kind: str, lines: list[str]) -> Said:
        n = sum(1 for s in self.said if s.kind == kind)
        line = parse_line(lines[n % len(lines)])
        said = Said(kind, line, sum(1 for s in self.said if s.line.raw == line.raw))
        self.said.append(said)
        return said

    def backchannel(self) -> Utterance:
        p = self.persona
        return parse_line(p.backchannel.say if p.backchannel and p.backchannel.say else self.defaults["backchannel"])

    # ---------------------------------------------------------------- decisions
    def opening(self) -> Said:
        return self._say("open", self.persona.open)

    def react(self, bot_text: str | None) -> Said | None:
        """The next line, given what the bot just said; None: the call is over (the bot said goodbye)."""
        p = self.persona
        if not bot_text or not bot_text.strip():
            # nothing the caller could make out: say the last line again
            last = self.said[-1] if self.said else self.opening()
            return self._again(last)
        intent = find_intent(bot_text, self.cues)
        if intent is not None:
            self.asked[intent] += 1
        if intent == "ended":
            return None
        if p.wants in ("change", "cancel") and intent in (*SLOTS, "confirm") and self._taking_a_booking(bot_text):
            # the bot has not understood and is taking a new booking: say again what the call is for
            if self._restates >= self.max_restates:
                return self._say("done", self.lines_for("done"))
            self._restates += 1
            return self._say("restate", [self.defaults["no_prefix"] + line for line in p.open])
        if intent in SLOTS:
            if p.faq is not None and not self._faq_done and p.faq.when == intent:
                self._faq_done = True
                return self._say("faq", p.faq.say)
            if p.correction is not None and not self._correction_done and p.correction.when == intent:
                self._correction_done = True
                return self._say("correction", p.correction.say)
            if p.wants == "nothing":
                return self._say("no_booking", self.lines_for("no_booking"))
            return self._say(intent, self.lines_for(intent))
        if intent == "confirm":
            return self._confirm(bot_text)
        if intent == "anything_else":
            if p.faq is not None and not self._faq_done and p.faq.when in ("anything_else", "confirm"):
                self._faq_done = True
                return self._say("faq", p.faq.say)
            return self._say("done", self.lines_for("done"))
        if intent in ("change_what", "which_fix"):
            if p.faq is not None and not self._faq_done and p.faq.when == "change_what":
                self._faq_done = True
                return self._say("faq", p.faq.say)
            if self._last_fix is not None:
                return self._say(self._last_fix, self.lines_for(self._last_fix))
            if p.wants == "change":
                return self._say("change", self.lines_for("change"))
            if p.readback_no:
                return self._say("readback_no", p.readback_no)
            return self._say("done", self.lines_for("done"))
        if intent == "phone_more":
            return self._phone_rest(bot_text)
        if intent == "quit_check":
            if p.wants == "nothing":
                return self._say("yes", self.lines_for("yes"))
            return self._say("keep_going", self.lines_for("keep_going"))
        if intent == "repeat":
            return self._again(self.said[-1] if self.said else self.opening())
        return self._say("done", self.lines_for("done"))

    def _taking_a_booking(self, bot_text: str) -> bool:
        norm = unicodedata.normalize("NFKC", bot_text).casefold()
        return any(unicodedata.normalize("NFKC", c).casefold() in norm for c in self.cues.get("new_booking", ()))

    def _phone_rest(self, bot_text: str) -> Said:
        """The bot has part of the number and asks for the rest: the rest, if what it read back is
        how the number starts; else no, and the whole number."""
        p = self.persona
        phone = (self.expected or {}).get("phone") or ""
        heard = re.split(r"ですね|, got it", unicodedata.normalize("NFKC", bot_text))[0]
        digits = _phone_digits(heard, p.language)
        if digits and phone.startswith(digits) and len(digits) < len(phone):
            rest = phone[len(digits):]
            groups = [rest[i : i + 4] for i in range(0, len(rest), 4)]
            return self._say("phone_rest", [spoken_digits(groups, p.language)])
        return self._say("phone", [self.defaults["no_prefix"] + line for line in self.lines_for("phone")])

    def _again(self, last: Said) -> Said:
        if last.kind in SLOTS or last.kind == "change":
            return self._say(last.kind, self.lines_for(last.kind))
        again = Said(last.kind, last.line, sum(1 for s in self.said if s.line.raw == last.line.raw))
        self.said.append(again)
        return again

    def _confirm(self, bot_text: str) -> Said:
        p = self.persona
        if p.wants == "nothing":
            return self._say("no", self.lines_for("no"))
        if p.faq is not None and not self._faq_done and p.faq.when == "confirm":
            self._faq_done = True
            return self._say("faq", p.faq.say)
        if p.readback_no and not self._readback_no_done and p.wants == "book":
            self._readback_no_done = True
            return self._say("readback_no", p.readback_no)
        wrong = readback_mismatches(bot_text, self.expected or {}, p.language) if self.expected else []
        if wrong and self._fixes < self.max_fixes:
            self._fixes += 1
            self._last_fix = wrong[0]
            fix = [self.defaults["no_prefix"] + line for line in self.lines_for(wrong[0])]
            return self._say(wrong[0], fix)
        self._last_fix = None
        return self._say("yes", self.lines_for("yes"))
