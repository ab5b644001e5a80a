"""The understanding layer: dialog acts and slot values with what was asked, in both languages."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from pipeline.dialog import parse
from pipeline.dialog.understand import understand

TODAY = dt.date(2026, 12, 1)  # a Tuesday


def u(text, asking=None, filled=()):
    return understand(text, TODAY, asking=asking, filled=filled)


@pytest.mark.parametrize("text,act", [
    ("ちょっと待ってください", "wait"), ("少々お待ちください", "wait"), ("hold on a second", "wait"),
    ("let me check", "wait"), ("すみません、もう一度お願いします", "repeat"), ("もう一回言ってください", "repeat"),
    ("can you repeat that?", "repeat"), ("pardon?", "repeat"), ("sorry, I didn't catch that", "repeat"),
    ("予約をキャンセルしたいんですが", "cancel_booking"), ("I'd like to cancel my reservation", "cancel_booking"),
    ("予約の時間を変更したいです", "change_booking"), ("Can I move my reservation to 8 pm?", "change_booking"),
    ("予約の確認をしたいのですが", "check_booking"), ("I want to check my reservation", "check_booking"),
    ("お店の人と話したいです", "person"), ("can I talk to someone?", "person"), ("オペレーターにつないで", "person"),
    ("結構です", "none"), ("いいえ", "none"), ("ないです", "none"), ("特にありません", "none"), ("nothing, thanks", "none"),
    # what whisper keeps of 「以上です」, and other ways to say that is all
    ("以上で。", "none"), ("以上になります", "none"), ("以上で大丈夫です", "none"), ("以上で結構です", "none"),
    ("やめます", "end"), ("never mind", "end"), ("土曜日は何時までですか", "question"), ("Do you have a kids menu?", "question"),
    ("やっぱり4名に変更してください", "correct"), ("actually make it three", "correct"),
])
def test_acts(text, act):
    assert act in u(text).acts


@pytest.mark.parametrize("text,act", [
    ("12月24日", "repeat"), ("キャンセル料はかかりますか", "cancel_booking"), ("はい", "none"), ("田中です", "wait"),
    ("もう一度お願いします", "affirm"), ("結構です", "end"),
])
def test_not_acts(text, act):
    assert act not in u(text).acts


@pytest.mark.parametrize("text,asking,slot,value", [
    ("12月24日、木曜日の夜7時に2名で", None, "date", dt.date(2026, 12, 24)),
    ("十二月十一日、金曜日", None, "date", dt.date(2026, 12, 11)),
    ("December 24th, Thursday", None, "date", dt.date(2026, 12, 24)),
    ("Thursday, December 24th", None, "date", dt.date(2026, 12, 24)),
    ("一週間後", "date", "date", dt.date(2026, 12, 8)),
    ("3日後", "date", "date", dt.date(2026, 12, 4)),
    ("a week from today", "date", "date", dt.date(2026, 12, 8)),
    ("in three days", "date", "date", dt.date(2026, 12, 4)),
    ("2ヶ月後", "date", "date", dt.date(2027, 2, 1)),
    ("ゼロキュウゼロのイチニイサンヨンのゴーロクナナハチ", "phone", "phone", "09012345678"),
    ("鈴木、です。", "name", "name", "鈴木"),
    ("ジョン・スミスです", "name", "name", "ジョン・スミス"),
    ("José García", "name", "name", "José García"),
    ("My name is Anna Müller", None, "name", "Anna Müller"),
])
def test_values(text, asking, slot, value):
    assert u(text, asking).values.get(slot) == value


@pytest.mark.parametrize("text,asking,slot", [
    ("もう一度お願いします", "date", "date"), ("3例", "date", "date"), ("もう一度お願いします", "time", "time"),
    ("5.6時", "time", "time"), ("はい、それでお願いします", "name", "name"), ("やめる", "name", "name"),
    ("また投げて", "name", "name"), ("予約番号はR-KTWKX8です", "date", "date"),
    ("電話番号はゼロキューゼロ、イチニーサンヨン、ゴーロクナナハチです", None, "name"),
    ("12月24日、金曜日", None, "date"), ("7時か8時", "time", "time"),
])
def test_no_value_from_words_that_are_not_one(text, asking, slot):
    assert slot not in u(text, asking).values


@pytest.mark.parametrize("text,slot,options", [
    ("7時か8時", "time", [dt.time(19), dt.time(20)]),
    ("5.6時", "time", [dt.time(17), dt.time(18)]),
    ("7 or 8 pm", "time", [dt.time(19), dt.time(20)]),
    ("24日か25日", "date", [dt.date(2026, 12, 24), dt.date(2026, 12, 25)]),
    ("12月24日、金曜日", "date", [dt.date(2026, 12, 24), dt.date(2026, 12, 4)]),
    ("Friday, December 24th", "date", [dt.date(2026, 12, 24), dt.date(2026, 12, 4)]),
])
def test_choices_are_left_open(text, slot, options):
    assert u(text, slot).analysis.ambiguous[slot] == options


@pytest.mark.parametrize("text,filled,slot", [
    ("卵アレルギーの者が1名おります", ("party_size",), "party_size"),
    ("ケーキを8時ごろに出してください", ("time",), "time"),
    ("Two of us are vegetarian", ("party_size",), "party_size"),
    ("子供が1人いるので椅子をお願いします", ("party_size",), "party_size"),
])
def test_numbers_inside_a_request_stay_there(text, filled, slot):
    got = u(text, "note", filled)
    assert slot not in got.values and slot in got.analysis.in_note and got.values["note"]


def test_reservation_number_is_found_and_is_not_a_date():
    got = u("予約番号はR-KTWKX8です", "date")
    assert got.reservation_id == "R-KTWKX8" and "date" not in got.values
    assert u("request a window seat").reservation_id is None


def test_names_that_may_be_mishearings_are_flagged():
    assert u("よしみ", "name").analysis.doubtful_name
    assert u("読みん", "name").analysis.doubtful_name
    assert not u("田中です", "name").analysis.doubtful_name
    # hiragana that reads as a common surname is a name written in kana, not a mishearing
    assert not u("かとうです。", "name").analysis.doubtful_name
    assert not u("わたなべ", "name").analysis.doubtful_name
    assert u("かとおり", "name").analysis.doubtful_name


def test_whisper_zero_after_the_area_code_is_repaired():
    assert parse.repair_phone("090012345678") == "09012345678"
    assert parse.repair_phone("0311112222") == "0311112222"


@pytest.mark.parametrize("size", [128_000, 1_000_000])
def test_long_input_is_capped_and_linear(size):
    text = ("明日の19時に3名で、090-1234-5678、田中です。" * (size // 28 + 1))[:size]
    start = time.process_time()
    got = u(text)
    parse.parse_phone(text), parse.parse_date(text, TODAY), parse.parse_note(text), parse.parse_name(text)
    assert time.process_time() - start < 1.0
    assert got.truncated and got.values.get("party_size") == 3


@pytest.mark.parametrize("text", ["はい", "はい。", "はいはい", "ええ", "うん", "うんうん", "そうですね", "なるほど",
                                  "はい、はい", "yeah", "uh-huh", "okay", "right", "mm", "mhm", "I see"])
def test_backchannels(text):
    from pipeline.dialog.understand import is_backchannel

    assert is_backchannel(text)


@pytest.mark.parametrize("text", ["いいえ", "はい、4名です", "ちょっと待ってください", "違います", "no", "wait",
                                  "yeah but make it three", "田中です", "", "はい" * 30])
def test_not_backchannels(text):
    from pipeline.dialog.understand import is_backchannel

    assert not is_backchannel(text)


def test_an_impossible_date_after_a_real_one_is_a_mishearing_not_a_correction():
    # whisper's 「19月2、3映」 for 「19時に3名」 must not throw away the 12月18日 said before it
    assert u("12月18日の19月2、3映でお願いします。", "date").values["date"] == dt.date(2026, 12, 18)
    assert "date" not in u("19月2日でお願いします", "date").values  # alone, it is no date


@pytest.mark.parametrize("text,asking,want", [
    ("18時間で", "time", dt.time(18, 30)), ("いいえ、18時間です", "confirm", dt.time(18, 30)),
    ("明日の19時間に4名で", None, dt.time(19, 30)),
    ("2時間くらいで帰ります", "note", None), ("18時間後", "time", None), ("5時間も待った", "note", None),
])
def test_whispers_jikan_for_jihan_is_a_half_hour_never_a_duration(text, asking, want):
    assert u(text, asking).values.get("time") == want


@pytest.mark.parametrize("text,choice", [
    # whisper's 「12月2日」 for 「お昼12時に2名」 after 今週の土曜日: which day is asked
    ("今週の土曜日の日の12月2日でお願いします。", [dt.date(2026, 12, 5), dt.date(2026, 12, 2)]),
    ("12月24日、いや25日で", None), ("明日、12月2日の19時で", None), ("来週の金曜日、12月11日です", None),
])
def test_two_different_days_in_one_breath_are_a_choice_unless_the_second_corrects_the_first(text, choice):
    got = u(text, "date")
    assert got.analysis.ambiguous.get("date") == choice
    if choice is None:
        assert "date" in got.values


@pytest.mark.parametrize("text", ["子供が一人いるので、子供用の椅子をお願いします", "子供な一人いるので、一応お願いします。",
                                  "卵アレルギーの者が1名おります"])
def test_someone_in_the_party_said_to_be_there_is_a_request_not_the_party_size(text):
    # said again at the read-back, 「子供が一人いるので…」 changed the party to 1 (voice eval)
    got = u(text, "confirm", filled=("party_size",))
    assert "party_size" not in got.values and got.values.get("note")
    assert u("2人います", "party_size").values == {"party_size": 2}  # a party said so is still one


def test_whispers_free_people_is_three():
    assert u("No, make it free people.", "confirm").values == {"party_size": 3}
    assert u("tree people", "party_size").values == {"party_size": 3}
    assert "party_size" not in u("a free dessert, please", "note").values
