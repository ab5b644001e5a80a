import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.dialog.speech import (
    group_phone,
    say_date,
    say_duration,
    say_list,
    say_party,
    say_phone,
    say_time,
)

XMAS_EVE = dt.date(2025, 12, 24)  # a Wednesday


def test_japanese_date_names_the_weekday_in_words():
    assert say_date(XMAS_EVE, "ja") == "12月24日、水曜日"


def test_japanese_date_gets_a_relative_day_when_today_is_given():
    assert say_date(XMAS_EVE, "ja", today=dt.date(2025, 12, 23)) == "明日、12月24日水曜日"
    assert say_date(XMAS_EVE, "ja", today=XMAS_EVE) == "今日、12月24日水曜日"
    assert say_date(XMAS_EVE, "ja", today=dt.date(2025, 12, 22)) == "明後日、12月24日水曜日"
    assert say_date(XMAS_EVE, "ja", today=dt.date(2025, 12, 20)) == "12月24日、水曜日"


def test_english_date_uses_ordinals_and_relative_days():
    assert say_date(XMAS_EVE, "en") == "Wednesday, December 24th"
    assert say_date(XMAS_EVE, "en", today=dt.date(2025, 12, 23)) == "tomorrow, Wednesday, December 24th"
    assert say_date(dt.date(2026, 1, 1), "en") == "Thursday, January 1st"
    assert say_date(dt.date(2026, 1, 2), "en", weekday=False) == "January 2nd"
    assert say_date(dt.date(2026, 1, 3), "en", weekday=False) == "January 3rd"
    assert say_date(dt.date(2026, 1, 11), "en", weekday=False) == "January 11th"
    assert say_date(dt.date(2026, 1, 12), "en", weekday=False) == "January 12th"
    assert say_date(dt.date(2026, 1, 13), "en", weekday=False) == "January 13th"
    assert say_date(dt.date(2026, 1, 22), "en", weekday=False) == "January 22nd"
    assert say_date(dt.date(2026, 1, 31), "en", weekday=False) == "January 31st"


def test_date_without_weekday_for_lists():
    assert say_date(XMAS_EVE, "ja", weekday=False) == "12月24日"


@pytest.mark.parametrize(("t", "ja", "en"), [
    (dt.time(19), "午後7時", "7 pm"),
    (dt.time(19, 30), "午後7時半", "7:30 pm"),
    (dt.time(19, 15), "午後7時15分", "7:15 pm"),
    (dt.time(11), "午前11時", "11 am"),
    (dt.time(12), "お昼の12時", "noon"),
    (dt.time(12, 30), "お昼の12時半", "12:30 pm"),
    (dt.time(0), "午前0時", "midnight"),
    (dt.time(10, 5), "午前10時5分", "10:05 am"),
])
def test_times_are_said_on_a_twelve_hour_clock(t, ja, en):
    assert say_time(t, "ja") == ja
    assert say_time(t, "en") == en


def test_party_sizes():
    assert say_party(3, "ja") == "3名様"
    assert say_party(1, "en") == "1 person"
    assert say_party(3, "en") == "3 people"


def test_durations():
    assert say_duration(30, "ja") == "30分"
    assert say_duration(60, "ja") == "1時間"
    assert say_duration(90, "ja") == "1時間30分"
    assert say_duration(30, "en") == "30 minutes"
    assert say_duration(60, "en") == "1 hour"
    assert say_duration(150, "en") == "2 hours 30 minutes"


@pytest.mark.parametrize(("digits", "grouped"), [
    ("09012345678", "090-1234-5678"),
    ("0312345678", "03-1234-5678"),
    ("0612345678", "06-1234-5678"),
    ("0451234567", "045-123-4567"),
    ("0120123456", "0120-123-456"),
    ("08001234567", "0800-123-4567"),
    ("090-1234-5678", "090-1234-5678"),
    ("０９０１２３４５６７８", "090-1234-5678"),
    ("12345", "12345"),
])
def test_group_phone_follows_japanese_numbering(digits, grouped):
    assert group_phone(digits) == grouped


def test_say_phone_reads_digit_by_digit_in_groups():
    assert say_phone("09012345678", "ja") == (
        "ゼロ、キュウ、ゼロ、の、イチ、ニー、サン、ヨン、の、ゴー、ロク、ナナ、ハチ"
    )
    assert say_phone("09012345678", "en") == "zero nine zero, one two three four, five six seven eight"
    assert say_phone("0312345678", "en") == "zero three, one two three four, five six seven eight"


@given(st.text(alphabet="0123456789", min_size=1, max_size=13))
def test_phone_grouping_never_loses_or_invents_digits(digits):
    assert group_phone(digits).replace("-", "") == digits
    assert say_phone(digits, "en").replace(",", "").split() == [
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][int(c)] for c in digits
    ]


def test_lists():
    assert say_list(["A", "B", "C"], "ja") == "A、B、C"
    assert say_list(["A", "B", "C"], "en") == "A, B or C"
    assert say_list(["A", "B"], "en") == "A or B"
    assert say_list(["A"], "en") == "A"
    assert say_list([], "en") == ""
