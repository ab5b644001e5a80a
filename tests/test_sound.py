"""What a misheard answer may have been (pipeline.dialog.understand.sound): readings, near-sounding
surnames, and the candidate answers the recogniser weighs, framed like what whisper wrote."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.dialog.understand import acts_of
from pipeline.dialog.understand.sound import (
    alternatives,
    booking_act_by_sound,
    common_surname,
    distance,
    expectation,
    phone_repairs,
    reading,
    relative_date_by_sound,
    restaurant_ranges,
    sounds_like_surnames,
)

TODAY = dt.date(2026, 12, 1)


def never(_text: str) -> bool:
    return False


def test_reading_is_katakana_without_punctuation():
    assert reading("田中です。") == "タナカデス"
    assert reading("") == "" and reading("。、") == ""


def test_distance_counts_a_change_of_voicing_as_half():
    assert distance("ヨシダ", "ヨシタ") == 0.5
    assert distance("スズキ", "ツズキ") == 1
    assert distance("", "アイ") == 2 and distance("アイ", "アイ") == 0
    assert distance("イトー", "イト") == 0.5 and distance("ヒト", "イトー") == 1.5


@pytest.mark.parametrize("heard,first", [("続き", "鈴木"), ("小話", "小林"), ("夜下", "吉田"),
                                         ("キムだタクヤ", "木村タクヤ"), ("人", "伊藤")])
def test_a_name_that_sounds_like_a_common_surname_is_offered_it(heard, first):
    assert first in sounds_like_surnames(heard)[:5]


@pytest.mark.parametrize("heard", ["田中", "タナカ", "たなか", "ミニアストキ", "ヌルポ", ""])
def test_a_surname_heard_as_such_or_nothing_near_offers_nothing(heard):
    assert sounds_like_surnames(heard) == []


def test_candidates_keep_the_filler_and_the_ending_whisper_wrote():
    out = alternatives("えーと、耳で", "party_size", "ja", answered=never, party=(1, 4))
    assert "えーと、2名で" in out and "えーと、ふたりで" in out
    out = alternatives("読みんてお願いいします。", "party_size", "ja", answered=never, party=(1, 4))
    assert "4人でお願いいします" in out
    assert "20時です" in alternatives("水落ちです", "time", "ja", answered=never, hours=range(11, 22))
    assert "あさってです" in alternatives("朝ってです。", "date", "ja", answered=never)


def test_party_candidates_reach_a_little_beyond_the_largest_party():
    out = alternatives("耳で", "party_size", "ja", answered=never, party=(1, 4))
    assert "6名で" in out and "7名で" not in out


def test_an_answer_already_read_offers_nothing():
    assert alternatives("2名です", "party_size", "ja", answered=lambda t: True) == []
    assert alternatives("2名です", None, "ja", answered=never) == []
    assert expectation("note", "ja", today=TODAY)("ケーキをお願いします") == []  # a request naming its subject


def test_yes_or_no_is_weighed_after_a_yes_or_no_question_whatever_the_slot():
    expect = expectation("name", "ja", today=TODAY, yes_no=True)
    assert expect("みな") == ["はい", "はい、お願いします", "いいえ", "いいえ、違います", "特にありません"]
    assert expect("はい") == []  # read as a yes already


def test_expectation_leaves_what_already_answers_or_means_something_else():
    expect = expectation("party_size", "ja", today=TODAY, party=(1, 4))
    assert expect("3名です") == []
    assert expect("駐車場はありますか") == []  # a question
    assert expect("予約をキャンセルしたいです") == []
    assert "2名で" in expect("耳で")
    assert expectation(None, "ja", today=TODAY) is None


def test_english_candidates_are_plain_answers():
    expect = expectation("party_size", "en", today=TODAY, party=(1, 4))
    assert "two people" in expect("true peep hole")
    assert expectation("confirm", "en", today=TODAY)("hmm hmm") == ["yes", "yes, please", "no", "no, that's wrong", "no requests"]
    assert expectation("confirm", "en", today=TODAY)("yes") == []


def test_restaurant_ranges_follow_the_configuration():
    from pipeline.config import RestaurantConfig

    party, hours = restaurant_ranges(RestaurantConfig())
    assert party == (1, 4)
    assert hours[0] == 10 and hours[-1] == 22


@pytest.mark.parametrize("text,act", [
    ("予約をパンセルしたいのですが", "cancel_booking"), ("予約を チャンセルしたいのですが", "cancel_booking"),
    ("予約の人数を健康したいんですが", "change_booking"), ("予約の健康をお願いします", "change_booking"),
    ("予約をキャンセルできますか", "cancel_booking"), ("予約をカンセルしたいです", "cancel_booking"),
    ("予約の時間をへんこしたいです", "change_booking"),
    ("予約をお願いしたいんですが", None), ("明日の予約をしたいのですが", None),
    ("予約をお願いします。健康診断の後で", None), ("予約したいです、キャンプ場", None), ("健康したいです", None),
])
def test_what_a_call_is_about_is_heard_by_sound_after_yoyaku(text, act):
    assert booking_act_by_sound(text) == act
    if act is not None:
        assert act in acts_of(text)


def test_a_number_with_a_digit_too_many_or_a_run_too_short_is_offered_its_valid_neighbours():
    assert phone_repairs("090333334444") == ["090-3333-4444", "090-3333-3444"]
    assert "070-5555-0123" in phone_repairs("0705550123")
    assert phone_repairs("0908754321") == []  # a dropped digit outside a run is any digit: asked again
    assert phone_repairs("12") == [] and phone_repairs("abc") == []
    # the border of two runs a digit off: five 3s and three 4s for サンサンサンサン、ヨンヨンヨンヨン
    assert "090-3333-4444" in phone_repairs("09033333444")


def test_phone_candidates_only_for_a_whole_number_that_is_not_one():
    expect = expectation("phone", "ja", today=TODAY)
    assert expect("090333334444です") == ["090-3333-4444です", "090-3333-3444です"]
    assert expect("090-1234-5678") == [] and expect("1234の") == []
    # a valid number whisper wrote in groups no number has (the last group is always four digits)
    assert "090-3333-4444" in expect("090-33333-444")
    assert expect("090-3333-4444") == [] and expect("03-1234-5678") == []


@pytest.mark.parametrize("text,days", [("朝ってです", 2), ("アサテです", 2), ("あさっての夜", 2), ("しあさってで", 3),
                                       ("朝です", None), ("浅田です", None), ("朝から", None), ("明日です", None)])
def test_a_relative_date_in_the_wrong_kanji_is_heard_by_its_sound(text, days):
    assert relative_date_by_sound(text) == days


def test_understanding_takes_a_date_by_sound_only_where_a_date_may_be_meant():
    from pipeline.dialog.understand import understand

    assert understand("朝ってです", TODAY, asking="date").values["date"] == dt.date(2026, 12, 3)
    assert "date" not in understand("朝ってです", TODAY, asking="name").values


def test_a_common_surname_is_known_by_its_sound():
    assert common_surname("砂糖") == "佐藤" and common_surname("サトウ") == "佐藤" and common_surname("鈴木") == "鈴木"
    assert common_surname("リンエ") is None and common_surname("") is None


def test_a_turn_that_means_something_else_is_not_weighed():
    expect = expectation("date", "ja", today=TODAY)
    assert expect("はい") == [] and expect("いいえ") == [] and expect("予約をお願いしたいんですが") == []


def test_a_name_candidate_gets_back_the_desu_whisper_left_one_mora_of():
    expect = expectation("name", "ja", today=TODAY)
    assert expect("また投げて。")[0] == "渡辺です。"
    assert expect("よしだぜ")[0] == "吉田です"
    assert expect("糸と申します。")[0] == "伊藤と申します。"  # no です where another ending follows


def test_a_short_request_naming_nothing_is_weighed_against_the_usual_nones():
    # 「Nor it went.」 was booked as the request of a caller who said "no requests"
    expect_en, expect_ja = expectation("note", "en", today=TODAY), expectation("note", "ja", today=TODAY)
    assert "no requests" in expect_en("Nor it went.")
    assert "特にありません" in expect_ja("きょです。")
    # a request that names what it is about, a long one, or a none already are taken as heard
    assert expect_ja("窓際の席で") == [] and expect_ja("特にありません") == []
    assert expect_en("no requests") == [] and expect_en("we are celebrating an anniversary") == []


def test_a_date_the_caller_corrected_is_weighed_against_every_other_day_of_its_month():
    wrong = repr(dt.date(2026, 12, 1))
    expect = expectation("date", "ja", today=TODAY, heard_wrong=(wrong,))
    out = expect("12月1日です。")
    assert "12月5日です。" in out and "12月1日です。" not in out and len(out) == 30
    assert expect("12月5日です。") == []  # another day is an answer
    assert expectation("date", "ja", today=TODAY)("12月1日です。") == []  # nothing corrected: as heard


def test_a_choice_is_weighed_against_its_options():
    # 「12月5日、土曜日でしょうか、それとも12月12日、土曜日でしょうか」, answered 「12月5日です」, heard
    # 「12月1日です」 and taken as a third day (voice eval)
    options = [dt.date(2026, 12, 5), dt.date(2026, 12, 12)]
    expect = expectation("date", "ja", today=TODAY, choices=options)
    assert expect("12月1日です。") == ["12月5日です", "12月12日です"]
    assert expect("12月5日です。") == [] and expect("土曜日です") == []  # an option, however said
    times = expectation("time", "ja", today=TODAY, choices=[dt.time(19), dt.time(19, 30)])
    assert times("10時です") == ["19時です", "19時半です"]


@pytest.mark.parametrize("heard", ["一応です。", "行動です", "早速です。", "人です"])
def test_a_word_said_for_the_name_is_weighed_against_every_common_surname(heard):
    """Whisper makes a word of a surname it cannot read (伊藤 → 「一応」「行動」「人」, 鈴木 → 「早速」),
    often nowhere near it by sound: every common surname is weighed, near-sounding ones first."""
    out = alternatives(heard, "name", "ja", answered=never)
    tail = "です。" if heard.endswith("。") else "です"
    assert {f"伊藤{tail}", f"鈴木{tail}", f"渡辺{tail}"} <= set(out)
    assert len(out) >= 120 and len(out) == len(set(out))
    near = sounds_like_surnames(heard.rstrip("。").removesuffix("です"))
    assert not near or out[0].startswith(near[0])  # the near-sounding ones first


@pytest.mark.parametrize("heard", ["伊藤です", "かとうです", "山田太郎です", "田中と申します", "はい",
                                   "すみません、もう一度お願いします", "ヤマモトタロウジロウです", "など", "人"])
def test_a_surname_a_full_name_or_no_name_is_not_swept(heard):
    assert len(alternatives(heard, "name", "ja", answered=never)) <= 8


@pytest.mark.parametrize("asking", ["confirm", "correction"])
def test_a_no_and_a_word_where_the_name_goes_is_weighed_as_a_corrected_name(asking):
    expect = expectation(asking, "ja", today=TODAY)
    assert "いえ、伊藤です" in expect("いえ、人です")
    assert "いいえ、鈴木です。" in expect("いいえ、早速です。")
    assert "いいえいいえ、伊藤です" in expect("いいえいいえ、行動です")  # the framing whisper wrote is kept
    assert "いえ、伊藤と申します" in expect("いえ、人と申します")  # as the name question takes it
    for said in ("はい", "そうです", "いいえ、4名です", "いや、人数は4名です", "大丈夫です", "お願いします",
                 "いいえ、伊藤です", "特にありません"):
        assert not any("伊藤" in c for c in expect(said)), said
