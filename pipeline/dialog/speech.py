"""How the bot says dates, times, party sizes and phone numbers, in Japanese and English.

The same strings are shown in the chat transcript and fed to TTS, so they are written the way a
person at the restaurant would say them: no ``(水)`` or ``19:00`` that a TTS front end would read
out oddly, and phone numbers spelled digit by digit so the caller can check every digit.
"""

from __future__ import annotations

import datetime as dt
import unicodedata

_JA_WEEKDAYS = ("月", "火", "水", "木", "金", "土", "日")
_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")
_JA_RELATIVE = {0: "今日", 1: "明日", 2: "明後日"}
_EN_RELATIVE = {0: "today", 1: "tomorrow", 2: "the day after tomorrow"}

# Lengthened ニー/ゴー and ゼロ rather than レイ: the readings Japanese operators use for phone
# numbers, because a bare ニ or ゴ is easy to miss over a phone line.
_JA_DIGITS = ("ゼロ", "イチ", "ニー", "サン", "ヨン", "ゴー", "ロク", "ナナ", "ハチ", "キュウ")
_EN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _ordinal(n: int) -> str:
    if 11 <= n % 100 <= 13:
        return f"{n}th"
    return str(n) + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def say_date(d: dt.date, lang: str, today: dt.date | None = None, *, weekday: bool = True) -> str:
    """``12月24日、水曜日`` / ``Wednesday, December 24th``.

    With ``today``, a date up to two days ahead gets 今日/明日/明後日 (today/tomorrow/...) in front,
    since callers think in those words.  ``weekday=False`` gives the bare date, for lists, where
    extra commas would make the items hard to tell apart when heard.
    """
    rel = None
    if today is not None:
        rel_days = (d - today).days
        rel = (_JA_RELATIVE if lang == "ja" else _EN_RELATIVE).get(rel_days)
    if lang == "ja":
        base = f"{d.month}月{d.day}日"
        if not weekday:
            return f"{rel}、{base}" if rel else base
        wd = f"{_JA_WEEKDAYS[d.weekday()]}曜日"
        # One comma is enough once 明日 is in front: "明日、12月24日水曜日".
        return f"{rel}、{base}{wd}" if rel else f"{base}、{wd}"
    base = f"{_EN_MONTHS[d.month - 1]} {_ordinal(d.day)}"
    if weekday:
        base = f"{_EN_WEEKDAYS[d.weekday()]}, {base}"
    return f"{rel}, {base}" if rel else base


def say_time(t: dt.time, lang: str) -> str:
    """``午後7時半``, ``午前11時``, ``お昼の12時`` / ``7:30 pm``, ``11 am``, ``noon``."""
    h, m = t.hour, t.minute
    if lang == "ja":
        if h < 12:
            prefix, hh = "午前", h
        elif h == 12:
            # 午後0時 is correct but nobody says it on the phone.
            prefix, hh = "お昼の", 12
        else:
            prefix, hh = "午後", h - 12
        mins = "" if m == 0 else "半" if m == 30 else f"{m}分"
        return f"{prefix}{hh}時{mins}"
    if m == 0 and h == 12:
        return "noon"
    if m == 0 and h == 0:
        return "midnight"
    suffix = "am" if h < 12 else "pm"
    hh = h % 12 or 12
    return f"{hh} {suffix}" if m == 0 else f"{hh}:{m:02d} {suffix}"


def say_party(n: int, lang: str) -> str:
    """``3名様`` / ``3 people``, ``1 person``."""
    if lang == "ja":
        return f"{n}名様"
    return f"{n} person" if n == 1 else f"{n} people"


def say_duration(minutes: int, lang: str) -> str:
    """``30分``, ``1時間``, ``1時間30分`` / ``30 minutes``, ``1 hour``, ``1 hour 30 minutes``."""
    h, m = divmod(minutes, 60)
    if lang == "ja":
        return (f"{h}時間" if h else "") + (f"{m}分" if m or not h else "")
    parts = []
    if h:
        parts.append(f"{h} hour" + ("s" if h != 1 else ""))
    if m or not h:
        parts.append(f"{m} minute" + ("s" if m != 1 else ""))
    return " ".join(parts)


def _digits(s: str) -> str:
    # NFKC folds full-width digits (０９０) that Japanese text input and some STT output produce.
    return "".join(c for c in unicodedata.normalize("NFKC", s) if c.isascii() and c.isdigit())


def group_phone(digits: str) -> str:
    """Japanese grouping: ``090-1234-5678``, ``03-1234-5678``, ``045-123-4567``.

    Numbers of any other length come back as bare digits: a wrong grouping would be read back to
    the caller as if it were right.
    """
    d = _digits(digits)
    if len(d) == 10 and d.startswith("0120"):
        groups = (4, 3, 3)  # toll-free: 0120-123-456
    elif len(d) == 11 and d.startswith("0800"):
        groups = (4, 3, 4)
    elif len(d) == 10 and d[:2] in ("03", "06"):
        groups = (2, 4, 4)  # Tokyo and Osaka have two-digit area codes
    elif len(d) == 10:
        groups = (3, 3, 4)
    elif len(d) == 11:
        groups = (3, 4, 4)
    else:
        return d
    out, i = [], 0
    for g in groups:
        out.append(d[i:i + g])
        i += g
    return "-".join(out)


def say_digits(digits: str, lang: str) -> str:
    """Digits one by one, as in a phone number: 「ゴー、ロク、ナナ、ハチ」 / "five six seven eight"."""
    table = _JA_DIGITS if lang == "ja" else _EN_DIGITS
    return ("、" if lang == "ja" else " ").join(table[int(c)] for c in _digits(digits))


def say_phone(digits: str, lang: str) -> str:
    """Digit by digit in the groups of :func:`group_phone`; Japanese groups are joined by 「の」."""
    groups = [g for g in group_phone(digits).split("-") if g]
    return ("、の、" if lang == "ja" else ", ").join(say_digits(g, lang) for g in groups)


def say_name(name: str, lang: str) -> str:
    """A Japanese name as it sounds, in katakana (「田中」 -> 「タナカ」): Whisper often writes the right
    sound with the wrong kanji, and kanji names have several readings, so the bot says back the
    reading it would file the booking under and the caller can correct it. Latin names as written."""
    if lang != "ja" or not any("\u3041" <= c <= "\u3096" or "\u3400" <= c <= "\u9fff" or c == "\u3005" for c in name):
        return name
    try:
        from pipeline.dialog.understand.sound import kana_of

        reading = kana_of(name)
    except Exception:  # a missing or failing dictionary must not cost the call its read-back
        return name
    reading = "".join(c for c in reading if c not in "、。 ")
    katakana = all("\u30a0" <= c <= "\u30ff" for c in reading)
    return reading if reading and katakana else name


def say_list(items: list[str], lang: str) -> str:
    """``A、B、C`` / ``A, B or C`` (the items are offered as alternatives)."""
    items = [i for i in items if i]
    if lang == "ja":
        return "、".join(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]
