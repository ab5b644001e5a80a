"""Property tests for pipeline.dialog.parse: values rendered the ways callers and Whisper write them parse back."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dialog.parse import (
    detect_language,
    extract_slots,
    is_correction,
    is_no_request,
    is_valid_phone,
    normalize,
    parse_date,
    parse_name,
    parse_name_answer,
    parse_note,
    parse_party_size,
    parse_phone,
    parse_time,
    parse_yes_no,
)
from pipeline.dialog.state import SLOT_ORDER as SLOT_NAMES

FAST = settings(max_examples=200, deadline=None)

KANJI_DIGIT = "〇一二三四五六七八九"
KATAKANA = {
    "0": ["ゼロ", "レイ", "マル"],
    "1": ["イチ"],
    "2": ["ニ", "ニー"],
    "3": ["サン"],
    "4": ["ヨン", "シ"],
    "5": ["ゴ", "ゴー"],
    "6": ["ロク"],
    "7": ["ナナ", "シチ"],
    "8": ["ハチ"],
    "9": ["キュウ", "キュー", "ク"],
}
EN_DIGIT = {
    "0": ["zero", "oh"],
    "1": ["one"],
    "2": ["two"],
    "3": ["three"],
    "4": ["four"],
    "5": ["five"],
    "6": ["six"],
    "7": ["seven"],
    "8": ["eight"],
    "9": ["nine"],
}
EN_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()
MONTHS = "January February March April May June July August September October November December".split()
ORDINAL_WORDS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
    "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()


def kanji_number(n: int) -> str:
    """12 -> 十二, 24 -> 二十四, 10 -> 十, 2026 -> 二〇二六 (years are read digit by digit)."""
    if n >= 100:
        return "".join(KANJI_DIGIT[int(c)] for c in str(n))
    tens, ones = divmod(n, 10)
    out = "" if tens == 0 else ("十" if tens == 1 else KANJI_DIGIT[tens] + "十")
    return out + (KANJI_DIGIT[ones] if ones or n == 0 else "")


def full_width(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "0" <= c <= "9" else c for c in s)


def en_ordinal(n: int) -> str:
    if n <= 20:
        return ORDINAL_WORDS[n - 1]
    if n == 30:
        return "thirtieth"
    tens, ones = divmod(n, 10)
    return {2: "twenty", 3: "thirty"}[tens] + "-" + ORDINAL_WORDS[ones - 1]


def suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


# --------------------------------------------------------------------------- phone numbers

phone_numbers = st.one_of(
    st.from_regex(r"\A0[256789]0[0-9]{8}\Z"),  # mobile and IP phones, 11 digits
    # landlines, 10 digits; a 0X0 prefix would be a mobile number missing a digit
    st.from_regex(r"\A0[1-9][0-9]{8}\Z").filter(lambda d: d[:3] not in ("020", "050", "060", "070", "080", "090")),
)


@st.composite
def spoken_phone(draw: st.DrawFn) -> tuple[str, str]:
    digits = draw(phone_numbers)
    # cut into groups the way people read numbers out
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), min_size=1, max_size=4)))
    groups = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    parts = []
    for i, g in enumerate(groups):
        style = draw(st.sampled_from(["arabic", "full", "kanji", "katakana", "hiragana", "english", "mixed"]))
        if style == "arabic":
            text = g
        elif style == "full":
            text = full_width(g)
        elif style == "kanji":
            text = "".join(
                draw(st.sampled_from(["〇", "零"])) if c == "0" else KANJI_DIGIT[int(c)] for c in g
            )
        elif style in ("katakana", "hiragana"):
            text = "".join(draw(st.sampled_from(KATAKANA[c])) for c in g)
            if style == "hiragana":
                text = "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in text)
        elif style == "english":
            words, j = [], 0
            while j < len(g):
                if j + 1 < len(g) and g[j] == g[j + 1] and draw(st.booleans()):
                    words.append("double " + draw(st.sampled_from(EN_DIGIT[g[j]])))
                    j += 2
                elif g == "0":  # a lone "oh, " before digits is a sigh, even to people
                    words.append("zero")
                    j += 1
                else:
                    words.append(draw(st.sampled_from(EN_DIGIT[g[j]])))
                    j += 1
            text = " ".join(words)
        else:  # digit by digit among the scripts that need no word boundaries
            text = "".join(
                draw(st.sampled_from([c, full_width(c), KANJI_DIGIT[int(c)], KATAKANA[c][0]])) for c in g
            )
        parts.append(text)
        if i < len(groups) - 1:
            parts.append(draw(st.sampled_from(["-", " ", "、", "の", ", ", " - ", "－", "、 "])))
    prefix = draw(st.sampled_from(["", "電話番号は", "番号は、", "My number is ", "it's ", "えっと、"]))
    end = draw(st.sampled_from(["", "です", "。", ", thanks", " please", "です。"]))
    return prefix + "".join(parts) + end, digits


@FAST
@given(spoken_phone())
def test_phone_round_trip(case: tuple[str, str]) -> None:
    text, digits = case
    assert parse_phone(text) == digits
    assert is_valid_phone(parse_phone(text) or "")


@FAST
@given(spoken_phone())
def test_phone_in_extract_slots_is_never_a_party_or_time(case: tuple[str, str]) -> None:
    text, digits = case
    for expecting in (None, "phone", "party_size", "time"):
        got = extract_slots(text, dt.date(2025, 6, 1), expecting=expecting)
        assert got.get("phone") == digits
        assert "party_size" not in got
        assert "time" not in got


# --------------------------------------------------------------------------- dates

todays = st.dates(min_value=dt.date(2020, 1, 1), max_value=dt.date(2035, 12, 31))


@st.composite
def date_said(draw: st.DrawFn) -> tuple[dt.date, str, dt.date]:
    today = draw(todays)
    target = today + dt.timedelta(days=draw(st.integers(0, 364)))
    m, d = target.month, target.day
    month = MONTHS[m - 1]
    style = draw(st.integers(0, 10))
    text = [
        f"{m}月{d}日",
        full_width(f"{m}") + "月" + full_width(f"{d}") + "日",
        f"{kanji_number(m)}月{kanji_number(d)}日",
        f"{m}月{d}日の夜でお願いします",
        f"{month} {d}{suffix(d)}",
        f"{month[:3]} {d}",
        f"the {d}{suffix(d)} of {month}",
        f"{d}{suffix(d)} of {month}",
        f"{month} {en_ordinal(d)}",
        f"the {en_ordinal(d)} of {month}",
        f"{m}/{d}",
    ][style]
    return today, text, target


@FAST
@given(date_said())
def test_date_round_trip(case: tuple[dt.date, str, dt.date]) -> None:
    today, text, target = case
    assert parse_date(text, today) == target


@FAST
@given(todays, st.integers(0, 6), st.sampled_from(["来週の{}曜日", "来週{}曜", "next week {}"]))
def test_next_week_weekday(today: dt.date, wd: int, pattern: str) -> None:
    ja = "月火水木金土日"[wd]
    en = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()[wd]
    got = parse_date(pattern.format(en if pattern.startswith("next") else ja), today)
    monday = today - dt.timedelta(days=today.weekday())
    assert got is not None and got.weekday() == wd
    assert 7 <= (got - monday).days <= 13


@FAST
@given(todays, st.integers(0, 6))
def test_bare_weekday_is_the_next_one_to_come(today: dt.date, wd: int) -> None:
    got = parse_date("金月火水木金土日"[wd + 1] + "曜日", today)
    assert got is not None and got.weekday() == wd
    assert 0 <= (got - today).days <= 6


@FAST
@given(todays, st.integers(1, 31))
def test_bare_day_is_the_next_one_to_come(today: dt.date, day: int) -> None:
    got = parse_date(f"{day}日", today)
    assert got is not None and got.day == day
    assert 0 <= (got - today).days <= 62


# --------------------------------------------------------------------------- times


@st.composite
def time_said(draw: st.DrawFn) -> tuple[str, dt.time]:
    h = draw(st.integers(0, 23))
    half = draw(st.booleans())
    target = dt.time(h, 30 if half else 0)
    h12 = h % 12 or 12
    hour12 = draw(st.sampled_from([str(h12), full_width(str(h12)), kanji_number(h12)]))
    hour24 = draw(st.sampled_from([str(h), full_width(str(h)), kanji_number(h)]))
    minutes = "半" if half else draw(st.sampled_from(["", "ちょうど"]))
    marker = "午後" if h >= 12 else "午前"
    ampm = "pm" if h >= 12 else "am"
    mm = "30" if half else "00"
    options = [
        f"{marker}{hour12}時{minutes}",
        f"{marker}{hour12}時{'30分' if half else ''}",
        f"{hour24}時{minutes}" if h >= 12 else f"{marker}{hour24}時{minutes}",
        f"{h}:{mm}" if not 1 <= h <= 9 else f"{h}:{mm} {ampm}",  # 1:30 alone means the evening
        f"{h12}:{mm} {ampm}",
        f"{h12}{':30' if half else ''}{ampm}",
    ]
    if 13 <= h <= 23:
        options.append(
            f"{'half past ' if half else ''}{EN_WORDS[h12]}{'' if half else ' o clock'} in the evening"
        )
    return draw(st.sampled_from(options)), target


@FAST
@given(time_said())
def test_time_round_trip(case: tuple[str, dt.time]) -> None:
    text, target = case
    assert parse_time(text) == target


@FAST
@given(st.integers(1, 11), st.sampled_from([0, 30]), st.integers(0, 23), st.integers(1, 23))
def test_opening_hours_pick_the_open_reading(h: int, m: int, open_from: int, open_len: int) -> None:
    def is_open(t: dt.time) -> bool:
        return open_from <= t.hour < open_from + open_len

    said = f"{h}時{'半' if m else ''}"
    got = parse_time(said, is_open)
    assert got is not None and got.minute == m and got.hour in (h, h + 12)
    morning, evening = is_open(dt.time(h, m)), is_open(dt.time(h + 12, m))
    if morning != evening:
        assert is_open(got)


# --------------------------------------------------------------------------- party sizes


@st.composite
def party_said(draw: st.DrawFn) -> tuple[str, int]:
    n = draw(st.integers(1, 20))
    num = draw(st.sampled_from([str(n), full_width(str(n)), kanji_number(n)]))
    word = EN_WORDS[n]
    text = draw(
        st.sampled_from(
            [
                f"{num}名",
                f"{num}名様です",
                f"{num}人で",
                f"大人{num}人",
                f"{word} people",
                f"a table for {word}",
                f"party of {n}",
                f"for {word}, please",
                f"{n} people",
                f"there will be {word} of us",
            ]
        )
    )
    return text, n


@FAST
@given(party_said())
def test_party_size_round_trip(case: tuple[str, int]) -> None:
    text, n = case
    assert parse_party_size(text) == n


# --------------------------------------------------------------------------- everything in one utterance


@FAST
@given(
    todays,
    st.integers(0, 364),
    st.integers(13, 22),
    st.booleans(),
    st.integers(1, 12),
    st.booleans(),
)
def test_cross_slot_utterance(today: dt.date, offset: int, h: int, half: bool, n: int, kanji: bool) -> None:
    target = today + dt.timedelta(days=offset)
    k = kanji_number if kanji else str
    text = f"{k(target.month)}月{k(target.day)}日の{k(h)}時{'半' if half else ''}に{k(n)}名で"
    got = extract_slots(text, today)
    assert got == {"date": target, "time": dt.time(h, 30 if half else 0), "party_size": n}


# --------------------------------------------------------------------------- robustness


@FAST
@given(st.text())
def test_no_parser_raises(text: str) -> None:
    today = dt.date(2025, 12, 10)
    normalize(text)
    detect_language(text)
    parse_date(text, today)
    parse_time(text)
    parse_time(text, lambda t: t.hour >= 17)
    parse_party_size(text)
    parse_phone(text)
    is_valid_phone(text)
    parse_name(text)
    parse_name_answer(text)
    parse_yes_no(text)
    is_no_request(text)
    parse_note(text)
    is_correction(text)
    for expecting in (None, *SLOT_NAMES):
        got = extract_slots(text, today, expecting=expecting)
        assert set(got) <= set(SLOT_NAMES)


@FAST
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once


@FAST
@given(st.text(alphabet="0123456789０１２３〇一二三四五六七八九十時名人日月分半:/-年 、,の", max_size=40))
def test_numeric_soup_never_raises(text: str) -> None:
    today = dt.date(2025, 12, 10)
    for expecting in (None, "date", "time", "party_size", "phone"):
        extract_slots(text, today, expecting=expecting)
