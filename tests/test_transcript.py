"""clean_transcript: what whisper invents on silence is dropped, its loops said once, its odd digits
made digits, and everything a caller says kept as said."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.dialog.understand import understand
from pipeline.dialog.understand.transcript import clean_transcript

TODAY = dt.date(2026, 12, 1)


@pytest.mark.parametrize(
    "text",
    [
        "ご視聴ありがとうございました",
        "ご視聴ありがとうございました。",
        "最後までご視聴いただきありがとうございました。",
        "チャンネル登録よろしくお願いします。",
        "チャンネル登録お願いします!",
        "おやすみなさい。",
        "(字幕:山田)",
        "字幕作成者 佐藤",
        "[音楽]",
        "(拍手)",
        "♪",
        "Thank you for watching.",
        "Thanks for watching!",
        "Please subscribe.",
        "you",
        "。",
        "",
        "   ",
    ],
)
def test_whisper_s_inventions_alone_leave_nothing(text):
    assert clean_transcript(text, "ja") == ""


@pytest.mark.parametrize(
    "text,clean",
    [
        ("はい、お願いします。ご視聴ありがとうございました。", "はい、お願いします。"),
        ("田中です。チャンネル登録よろしくお願いします。", "田中です。"),
        ("19時でお願いします [音楽]", "19時でお願いします"),
        ("Seven pm, please. Thank you for watching!", "Seven pm, please."),
    ],
)
def test_an_invented_trailing_sentence_is_dropped_and_the_answer_kept(text, clean):
    assert clean_transcript(text, "en" if text.isascii() else "ja") == clean


def test_a_phrase_a_caller_may_say_is_kept_unless_it_is_all_there_is():
    assert clean_transcript("おやすみなさい、田中です", "ja") == "おやすみなさい、田中です"
    assert clean_transcript("ありがとうございました", "ja") == "ありがとうございました"  # the end of a call
    assert clean_transcript("Thank you.", "en") == "Thank you."


@pytest.mark.parametrize(
    "text,clean",
    [
        ("はい。はい。はい。はい。", "はい。"),
        ("はい、はい", "はい"),
        ("お願いしますお願いしますお願いします", "お願いします"),
        ("特にありません。特にありません。", "特にありません。"),
        ("Yes. Yes. Yes.", "Yes."),
    ],
)
def test_a_loop_is_said_once(text, clean):
    assert clean_transcript(text, "en" if text.isascii() else "ja") == clean


@pytest.mark.parametrize(
    "text",
    [
        "0120、1234、1234",  # a group read twice is part of the number
        "090-5555-5555です",
        "ゴーゴーゴーゴー",  # 5555 in katakana readings
        "ゼロキューゼロ、ゼロキューゼロ",
        "03(1234)5678です",  # a phone number in brackets is not a sound label
        "7.30 pm",
        "5.6時で",  # whisper's 「5、6時」: a choice the parser asks about
    ],
)
def test_numbers_are_never_collapsed_or_dropped(text):
    assert clean_transcript(text, "ja") == text


@pytest.mark.parametrize(
    "text,clean",
    [
        ("0九0の1234の5678です", "090の1234の5678です"),
        ("12月二4日", "12月24日"),
        ("田中一郎です", "田中一郎です"),  # kanji digits in a name: no digit beside them
        ("一二三四", "一二三四"),  # all kanji: the parsers read it as it is
    ],
)
def test_kanji_digits_in_a_run_of_digits_become_digits(text, clean):
    assert clean_transcript(text, "ja") == clean


@pytest.mark.parametrize(
    "text,clean",
    [
        ("高橋でお願いいします", "高橋でお願いします"),
        ("4人でおめがいします。", "4人でお願いします。"),
    ],
)
def test_polite_formulas_whisper_misspells_are_written_as_said(text, clean):
    assert clean_transcript(text, "ja") == clean


def test_what_a_caller_says_passes_unchanged():
    for text in ("12月24日の19時に3名でお願いします", "090-1234-5678です", "田中です", "いいえ、違います。",
                 "卵アレルギーの者が1名おります", "I'd like a table for two at 7 pm."):
        assert clean_transcript(text, "ja") == text


def test_cleaning_lets_the_understanding_layer_read_what_the_caller_gave():
    # a name answer that the misspelt formula hid, and a phone number behind an invented sentence
    assert understand(clean_transcript("高橋でお願いいします", "ja"), TODAY, asking="name").values["name"] == "高橋"
    heard = understand(clean_transcript("090-1234-5678です。ご視聴ありがとうございました。", "ja"), TODAY, asking="phone")
    assert heard.values["phone"] == "09012345678"
    # nothing from silence's invention reaches a slot
    assert not understand(clean_transcript("ご視聴ありがとうございました", "ja"), TODAY, asking="name").values


def test_anything_not_text_is_nothing():
    assert clean_transcript(None, "ja") == ""  # type: ignore[arg-type]
