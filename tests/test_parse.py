"""Table-driven tests for pipeline.dialog.parse (Japanese and English, as Whisper writes them)."""

from __future__ import annotations

import datetime as dt

import pytest

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

# A Wednesday in December: weekdays, month rollover and year rollover are all in reach.
TODAY = dt.date(2025, 12, 10)
D = dt.date
T = dt.time


def lunch_and_dinner(t: dt.time) -> bool:
    return T(11, 30) <= t <= T(14, 0) or T(17, 0) <= t <= T(22, 0)


def breakfast_place(t: dt.time) -> bool:
    return T(7, 0) <= t <= T(15, 0)


# --------------------------------------------------------------------------- normalize / language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("０９０－１２３４－５６７８", "090-1234-5678"),
        ("  明日の　１９時  ", "明日の 19時"),
        ("ＡＢＣ　ｄｅｆ", "ABC def"),
        ("090ー1234ー5678", "090-1234-5678"),
        ("12\u201430", "12-30"),
        ("ｶﾀｶﾅ", "カタカナ"),
        ("", ""),
        ("田中\u200bです", "田中です"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("明日の7時", "ja"),
        ("カタカナ", "ja"),
        ("ひらがな", "ja"),
        ("OKです", "ja"),
        ("tomorrow at seven", "en"),
        ("Hi", "en"),
        ("12345", None),
        ("", None),
        ("😀", None),
        ("。。。", None),
    ],
)
def test_detect_language(text: str, expected: str | None) -> None:
    assert detect_language(text) == expected


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("今日", D(2025, 12, 10)),
        ("本日でお願いします", D(2025, 12, 10)),
        ("明日", D(2025, 12, 11)),
        ("あした", D(2025, 12, 11)),
        ("明日の夜です。", D(2025, 12, 11)),
        ("明後日", D(2025, 12, 12)),
        ("あさって", D(2025, 12, 12)),
        ("しあさって", D(2025, 12, 13)),
        ("今週の金曜日", D(2025, 12, 12)),
        ("来週の金曜日", D(2025, 12, 19)),
        ("来週金曜", D(2025, 12, 19)),
        ("来週の月曜日", D(2025, 12, 15)),
        ("再来週の水曜日", D(2025, 12, 24)),
        ("金曜日", D(2025, 12, 12)),
        ("水曜日", D(2025, 12, 10)),  # today counts
        ("次の水曜日", D(2025, 12, 17)),
        ("火曜日", D(2025, 12, 16)),
        ("12月24日", D(2025, 12, 24)),
        ("12月24日の夜", D(2025, 12, 24)),
        ("24日", D(2025, 12, 24)),
        ("10日", D(2025, 12, 10)),
        ("5日", D(2026, 1, 5)),  # past this month -> next month
        ("１２月２０日", D(2025, 12, 20)),
        ("十二月二十四日", D(2025, 12, 24)),
        ("一月五日", D(2026, 1, 5)),
        ("2026年12月24日", D(2026, 12, 24)),
        ("二〇二六年一月三日", D(2026, 1, 3)),
        ("12/24", D(2025, 12, 24)),
        ("1月5日", D(2026, 1, 5)),  # no year: the next one to come
        ("12月1日", D(2026, 12, 1)),
        ("来月の5日", D(2026, 1, 5)),
        ("来年の3月1日", D(2026, 3, 1)),
        ("2月30日", None),
        ("13月1日", None),
        ("2025年2月29日", None),
        ("12月24日じゃなくて25日", D(2025, 12, 25)),
        ("24日、いや、やっぱり26日", D(2025, 12, 26)),
        ("today", D(2025, 12, 10)),
        ("tonight", D(2025, 12, 10)),
        ("tomorrow", D(2025, 12, 11)),
        ("Tomorrow evening, please.", D(2025, 12, 11)),
        ("the day after tomorrow", D(2025, 12, 12)),
        ("this Saturday", D(2025, 12, 13)),
        ("next Friday", D(2025, 12, 19)),
        ("Friday", D(2025, 12, 12)),
        ("on Wednesday", D(2025, 12, 10)),
        ("Monday next week", D(2025, 12, 15)),
        ("December 4th", D(2026, 12, 4)),
        ("December 24th", D(2025, 12, 24)),
        ("Dec 4", D(2026, 12, 4)),
        ("Dec. 31", D(2025, 12, 31)),
        ("4th of December", D(2026, 12, 4)),
        ("the 4th of January", D(2026, 1, 4)),
        ("January fifth", D(2026, 1, 5)),
        ("the twenty-fourth", D(2025, 12, 24)),
        ("the 24th", D(2025, 12, 24)),
        ("on the 2nd", D(2026, 1, 2)),
        ("12/24", D(2025, 12, 24)),
        ("March 3rd, 2027", D(2027, 3, 3)),
        ("February 30th", None),
        ("not the 24th, the 25th", D(2025, 12, 25)),
        ("", None),
        ("abc", None),
        ("😀🍣", None),
        ("はい", None),
        ("3名です", None),
        ("19時", None),
        ("090-1234-5678", None),
        ("あ" * 5000, None),
    ],
)
def test_parse_date(text: str, expected: dt.date | None) -> None:
    assert parse_date(text, TODAY) == expected


@pytest.mark.parametrize(
    ("text", "today", "expected"),
    [
        ("1月5日", D(2025, 12, 31), D(2026, 1, 5)),
        ("12月31日", D(2025, 12, 31), D(2025, 12, 31)),
        ("Jan 5", D(2025, 12, 20), D(2026, 1, 5)),
        ("31日", D(2025, 11, 5), D(2025, 12, 31)),  # November has no 31st
        ("30日", D(2026, 2, 1), D(2026, 3, 30)),
        ("2月29日", D(2027, 3, 1), D(2028, 2, 29)),
        ("明日", D(2025, 12, 31), D(2026, 1, 1)),
        ("来週の月曜日", D(2025, 12, 29), D(2026, 1, 5)),
        ("金曜日", D(2025, 12, 27), D(2026, 1, 2)),
        ("the 3rd", D(2025, 12, 28), D(2026, 1, 3)),
    ],
)
def test_parse_date_rollover(text: str, today: dt.date, expected: dt.date) -> None:
    assert parse_date(text, today) == expected


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("19時", T(19, 0)),
        ("19時半", T(19, 30)),
        ("午後7時半", T(19, 30)),
        ("午後七時半", T(19, 30)),
        ("夜8時", T(20, 0)),
        ("夜の八時", T(20, 0)),
        ("夕方6時", T(18, 0)),
        ("朝11時", T(11, 0)),
        ("午前11時", T(11, 0)),
        ("18時30分", T(18, 30)),
        ("18:30", T(18, 30)),
        ("１８：３０", T(18, 30)),
        ("正午", T(12, 0)),
        ("昼の12時", T(12, 0)),
        ("昼の1時", T(13, 0)),
        ("十九時", T(19, 0)),
        ("7時", T(19, 0)),
        ("7時ごろ", T(19, 0)),
        ("10時", T(10, 0)),
        ("11時", T(11, 0)),
        ("12時", T(12, 0)),
        ("午後12時", T(12, 0)),
        ("午前0時", T(0, 0)),
        ("7時15分", T(19, 15)),
        ("明日の夜、8時", T(20, 0)),
        ("7時じゃなくて8時", T(20, 0)),
        ("7時3名", T(19, 0)),
        ("7 pm", T(19, 0)),
        ("7pm", T(19, 0)),
        ("7:30pm", T(19, 30)),
        ("7:30 p.m.", T(19, 30)),
        ("11 a.m.", T(11, 0)),
        ("12 am", T(0, 0)),
        ("12 pm", T(12, 0)),
        ("half past seven in the evening", T(19, 30)),
        ("half past seven", T(19, 30)),
        ("seven thirty", T(19, 30)),
        ("seven forty-five", T(19, 45)),
        ("noon", T(12, 0)),
        ("midnight", T(0, 0)),
        ("8 o'clock", T(20, 0)),
        ("eight o'clock", T(20, 0)),
        ("quarter past 7", T(19, 15)),
        ("quarter to 8", T(19, 45)),
        ("twenty past six", T(18, 20)),
        ("at 7", T(19, 0)),
        ("around seven", T(19, 0)),
        ("tomorrow morning at 9", T(9, 0)),
        ("7 in the evening", T(19, 0)),
        ("lunch at 1", T(13, 0)),
        ("not at 7, at 8", T(20, 0)),
        ("at 19:00", T(19, 0)),
        # never a time
        ("12月24日", None),
        ("24日", None),
        ("3名", None),
        ("3名様", None),
        ("090-1234-5678", None),
        ("ゼロキューゼロ", None),
        ("2時間くらい", None),
        ("for two", None),
        ("four people", None),
        ("the 24th", None),
        ("12/24", None),
        ("25時", None),
        ("7", None),
        ("", None),
        ("abc", None),
        ("😀", None),
        ("x" * 10000, None),
    ],
)
def test_parse_time(text: str, expected: dt.time | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("text", "is_open", "expected"),
    [
        ("1時", lunch_and_dinner, T(13, 0)),
        ("12時", lunch_and_dinner, T(12, 0)),
        ("8時", lunch_and_dinner, T(20, 0)),
        ("11時半", lunch_and_dinner, T(11, 30)),
        ("9時", breakfast_place, T(9, 0)),
        ("2時", breakfast_place, T(14, 0)),
        ("7時", breakfast_place, T(7, 0)),
        ("at 9", breakfast_place, T(9, 0)),
        ("午後9時", breakfast_place, T(21, 0)),  # a marker beats the opening hours
        ("3時", lambda t: False, T(15, 0)),  # nothing open: fall back to the dinner reading
        ("3時", lambda t: True, T(15, 0)),
        ("10時", lambda t: True, T(10, 0)),
    ],
)
def test_parse_time_with_opening_hours(text: str, is_open, expected: dt.time) -> None:
    assert parse_time(text, is_open) == expected


def test_parse_time_survives_a_broken_is_open() -> None:
    def boom(t: dt.time) -> bool:
        raise RuntimeError("no hours")

    assert parse_time("7時", boom) == T(19, 0)


# --------------------------------------------------------------------------- party size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3名", 3),
        ("3名様", 3),
        ("３名です", 3),
        ("二名", 2),
        ("ふたり", 2),
        ("ふたりで", 2),
        ("二人", 2),
        ("4人", 4),
        ("一人で", 1),
        ("ひとりです", 1),
        ("1人", 1),
        ("お一人様", 1),
        ("大人2人", 2),
        ("大人2人と子供1人", 3),
        ("大人二人、子ども二人です", 4),
        ("十名", 10),
        ("10名", 10),
        ("二十人", 20),
        ("3です", 3),
        ("3名じゃなくて4名", 4),
        ("two", 2),
        ("Two.", 2),
        ("four people", 4),
        ("a table for six", 6),
        ("party of 3", 3),
        ("just me", 1),
        ("for two", 2),
        ("2 people", 2),
        ("we are 5", 5),
        ("there will be eight of us", 8),
        ("2 adults and a child", 3),
        ("two adults and two kids", 4),
        ("a table for 4 at 7pm", 4),
        ("for 7pm", None),
        ("7時", None),
        ("12月24日", None),
        ("the 4th", None),
        ("090-1234-5678", None),
        ("ゼロキューゼロ", None),
        ("0名", None),
        ("何名ですか", None),
        ("", None),
        ("abc", None),
        ("🍣🍣", None),
    ],
)
def test_parse_party_size(text: str, expected: int | None) -> None:
    assert parse_party_size(text) == expected


# --------------------------------------------------------------------------- phone numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("090-1234-5678", "09012345678"),
        ("090 1234 5678", "09012345678"),
        ("09012345678", "09012345678"),
        ("０９０－１２３４－５６７８", "09012345678"),
        ("０９０ー１２３４ー５６７８", "09012345678"),
        ("電話番号は090-1234-5678です。", "09012345678"),
        ("03-1234-5678", "0312345678"),
        ("(03) 1234-5678", "0312345678"),
        ("+81 90-1234-5678", "09012345678"),
        ("〇九〇の一二三四の五六七八", "09012345678"),
        ("零九零、一二三四、五六七八", "09012345678"),
        ("ゼロキューゼロ、イチニーサンヨン、ゴーロクナナハチ", "09012345678"),
        ("ゼロキュウゼロのイチニサンヨンのゴロクナナハチ", "09012345678"),
        ("レイキューゼロ イチニーサンシ ゴーロクシチハチ", "09012345678"),
        ("マルハチマル ハチハチハチハチ イチイチイチイチ", "08088881111"),
        ("ぜろきゅうぜろ、いちにさんよん、ごろくななはち", "09012345678"),
        ("ゼロキューゼロ、1234、5678", "09012345678"),
        ("oh nine oh, one two three four, five six seven eight", "09012345678"),
        ("zero nine zero one two three four five six seven eight", "09012345678"),
        ("Zero nine zero, double five, one two, three four five six", "09055123456"),
        ("oh three, triple one, two two two two", "031112222"),
        ("Oh, it's 090-1234-5678.", "09012345678"),
        ("My number is 090 1234 5678, thanks", "09012345678"),
        ("123456", "123456"),
        ("12345", None),
        ("明日の19時に3名で", None),
        ("12月24日の7時、2名", None),
        ("5678に電話", None),
        ("ご予約", None),
        ("サンキュー", None),
        ("", None),
        ("abc", None),
        ("😀", None),
    ],
)
def test_parse_phone(text: str, expected: str | None) -> None:
    assert parse_phone(text) == expected


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        ("09012345678", True),
        ("0312345678", True),
        ("9012345678", False),
        ("090123456789", False),
        ("012345678", False),
        ("090-1234-5678", False),
        ("", False),
        ("０９０１２３４５６７８", False),
    ],
)
def test_is_valid_phone(digits: str, expected: bool) -> None:
    assert is_valid_phone(digits) is expected


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("名前は田中です", "田中"),
        ("お名前は田中です。", "田中"),
        ("田中と申します", "田中"),
        ("山田花子と申します", "山田花子"),
        ("山田 花子と申します", "山田 花子"),
        ("私、佐藤と申します。", "佐藤"),
        ("田中です", "田中"),
        ("田中様です", "田中"),
        ("はい、山田です", "山田"),
        ("私は佐藤です", "佐藤"),
        ("名前はタナカです", "タナカ"),
        ("田中の名前で予約したいです", "田中"),
        ("名前は田中で、電話番号は090-1234-5678です", "田中"),
        ("明日の19時に3名で、田中です", "田中"),
        ("予約です", None),
        ("明日です", None),
        ("はい", None),
        ("大丈夫です", None),
        ("そうです", None),
        ("3名です", None),
        ("窓際です", None),
        ("金曜日です", None),
        ("以上です", None),
        ("田中", None),  # bare: only when the bot asked (parse_name_answer)
        ("My name is John Smith", "John Smith"),
        ("my name is john", "john"),
        ("This is John", "John"),
        ("It's under Smith", "Smith"),
        ("Under the name of Tanaka, please", "Tanaka"),
        ("My name's Mary, and I'd like a table", "Mary"),
        ("This is Mr. Brown speaking", "Brown"),
        ("It's fine", None),
        ("this is great", None),
        ("I'm calling to book a table", None),
        ("It's seven", None),
        ("", None),
        ("abc", None),
        ("😀", None),
    ],
)
def test_parse_name(text: str, expected: str | None) -> None:
    assert parse_name(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("田中", "田中"),
        ("田中です", "田中"),
        ("田中でお願いします", "田中"),
        ("田中様", "田中"),
        ("山田 太郎", "山田 太郎"),
        ("えっと、鈴木です", "鈴木"),
        ("さくら", "さくら"),
        ("Smith", "Smith"),
        ("Smith, please", "Smith"),
        ("John Smith.", "John Smith"),
        ("Yes, it's Smith", "Smith"),
        ("My name is John Smith", "John Smith"),
        ("はい", None),
        ("お願いします", None),
        ("わかりました", None),
        ("ちょっと待ってください", None),
        ("明日", None),
        ("3名", None),
        ("yes", None),
        ("Sure.", None),
        ("no", None),
        ("090-1234-5678", None),
        ("", None),
        ("😀", None),
    ],
)
def test_parse_name_answer(text: str, expected: str | None) -> None:
    assert parse_name_answer(text) == expected


# --------------------------------------------------------------------------- yes / no


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("はい", True),
        ("はい。", True),
        ("ええ", True),
        ("うん", True),
        ("お願いします", True),
        ("それで大丈夫です", True),
        ("大丈夫です", True),
        ("大丈夫", True),
        ("そうです", True),
        ("合ってます", True),
        ("はい、それでお願いします", True),
        ("間違いないです", True),
        ("問題ありません", True),
        ("yes", True),
        ("Yes, please.", True),
        ("yeah", True),
        ("correct", True),
        ("that's right", True),
        ("sure", True),
        ("please", True),
        ("sounds good", True),
        ("no problem", True),
        ("いいえ", False),
        ("いや", False),
        ("違います", False),
        ("ちがう", False),
        ("間違ってます", False),
        ("日付が違います", False),
        ("大丈夫じゃないです", False),
        ("ううん", False),
        ("no", False),
        ("No.", False),
        ("nope", False),
        ("that's wrong", False),
        ("not right", False),
        ("that's not right", False),
        ("incorrect", False),
        ("はい、違います", None),
        ("yes and no", None),
        ("えっと", None),
        ("abc", None),
        ("", None),
        ("😀", None),
        ("I'm not sure", None),
        ("すみません、もう一度お願いします", None),
        ("Sorry, could you repeat that please?", None),
    ],
)
def test_parse_yes_no(text: str, expected: bool | None) -> None:
    assert parse_yes_no(text) is expected


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("特にありません", True),
        ("特にないです", True),
        ("特にない", True),
        ("なしで", True),
        ("ないです", True),
        ("大丈夫です", True),
        ("結構です", True),
        ("アレルギーはありません", True),
        ("no", True),
        ("nothing", True),
        ("no requests", True),
        ("that's all", True),
        ("none", True),
        ("No allergies.", True),
        ("窓際の席がいいです", False),
        ("特にありませんが、窓際の席がいいです", False),
        ("No, but it's my wife's birthday", False),
        ("はい", False),
        ("", False),
        ("😀", False),
    ],
)
def test_is_no_request(text: str, expected: bool) -> None:
    assert is_no_request(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("えっと、誕生日なのでケーキをお願いしたいです", "誕生日なのでケーキをお願いしたいです"),
        ("アレルギーがあります。えびが食べられません", "アレルギーがあります。えびが食べられません"),
        ("窓際の席", "窓際の席"),
        ("あの、窓際の席でお願いします。", "窓際の席でお願いします"),
        ("子供用の椅子をお願いします", "子供用の椅子をお願いします"),
        ("車椅子です", "車椅子です"),
        ("ベビーカーで行きます", "ベビーカーで行きます"),
        ("記念日なんです", "記念日なんです"),
        ("特にありませんが、窓際の席がいいです", "窓際の席がいいです"),
        ("明日の19時に3名で、窓際の席をお願いします。", "窓際の席をお願いします"),
        ("It's my wife's birthday", "It's my wife's birthday"),
        ("Um, it's our anniversary.", "it's our anniversary"),
        ("I have a nut allergy", "I have a nut allergy"),
        ("We need a high chair, please.", "We need a high chair"),
        ("a wheelchair", "a wheelchair"),
        ("window seat", "window seat"),
        ("特にありません", None),
        ("アレルギーはないです", None),
        ("no allergies", None),
        ("はい", None),
        ("明日の7時", None),
        ("", None),
        ("hello", None),
    ],
)
def test_parse_note(text: str, expected: str | None) -> None:
    assert parse_note(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("やっぱり8時で", True),
        ("変更したいです", True),
        ("8時に変えてください", True),
        ("7時じゃなくて8時", True),
        ("3名ではなく4名です", True),
        ("訂正します", True),
        ("すみません、間違えました", True),
        ("actually, make it 8", True),
        ("can I change it to Friday", True),
        ("Saturday instead", True),
        ("make it four", True),
        ("not 7 but 8", True),
        ("sorry, I meant 8", True),
        ("はい", False),
        ("明日の7時", False),
        ("yes", False),
        ("", False),
    ],
)
def test_is_correction(text: str, expected: bool) -> None:
    assert is_correction(text) is expected


# --------------------------------------------------------------------------- extract_slots


@pytest.mark.parametrize(
    ("text", "expecting", "expected"),
    [
        ("明日の19時に3名で", None, {"date": D(2025, 12, 11), "time": T(19, 0), "party_size": 3}),
        ("12月24日の7時、2名", None, {"date": D(2025, 12, 24), "time": T(19, 0), "party_size": 2}),
        (
            "１２月２４日の午後７時半に４名で",
            None,
            {"date": D(2025, 12, 24), "time": T(19, 30), "party_size": 4},
        ),
        ("十二月二十四日、十九時、二名", None, {"date": D(2025, 12, 24), "time": T(19, 0), "party_size": 2}),
        ("24日7時2名", None, {"date": D(2025, 12, 24), "time": T(19, 0), "party_size": 2}),
        (
            "来週の金曜日、夜8時に大人2人と子供1人",
            None,
            {"date": D(2025, 12, 19), "time": T(20, 0), "party_size": 3},
        ),
        (
            "明日の19時に3名で、田中です",
            None,
            {"date": D(2025, 12, 11), "time": T(19, 0), "party_size": 3, "name": "田中"},
        ),
        (
            "名前は田中で、電話番号は090-1234-5678です",
            None,
            {"name": "田中", "phone": "09012345678"},
        ),
        (
            "明日7時に2名、誕生日なのでケーキをお願いします",
            None,
            {
                "date": D(2025, 12, 11),
                "time": T(19, 0),
                "party_size": 2,
                "note": "誕生日なのでケーキをお願いします",
            },
        ),
        ("3です", "party_size", {"party_size": 3}),
        ("三です", "party_size", {"party_size": 3}),
        ("three", "party_size", {"party_size": 3}),
        ("3です", None, {}),
        ("7時", "time", {"time": T(19, 0)}),
        ("7時で", "party_size", {"time": T(19, 0)}),
        ("seven", "time", {"time": T(19, 0)}),
        ("7", "time", {"time": T(19, 0)}),
        ("11", "time", {"time": T(11, 0)}),
        ("seven", None, {}),
        ("24", "date", {"date": D(2025, 12, 24)}),
        ("24です", "date", {"date": D(2025, 12, 24)}),
        ("5", "date", {"date": D(2026, 1, 5)}),
        ("24", None, {}),
        ("田中", "name", {"name": "田中"}),
        ("Smith", "name", {"name": "Smith"}),
        ("田中", None, {}),
        ("3名です", "phone", {"party_size": 3}),  # a party size said at the phone question is no digit of it
        ("090-1234", "phone", {"phone": "0901234"}),
        ("090-1234-5678", "party_size", {"phone": "09012345678"}),
        ("090-1234-5678", "time", {"phone": "09012345678"}),
        ("ゼロキューゼロ、イチニーサンヨン、ゴーロクナナハチ", "phone", {"phone": "09012345678"}),
        ("fifty five, twelve thirty, four five six seven", "phone", {"phone": "5512304567"}),
        (
            "a table for two at seven tomorrow",
            None,
            {"date": D(2025, 12, 11), "time": T(19, 0), "party_size": 2},
        ),
        ("tomorrow at 7 for 4 people", None, {"date": D(2025, 12, 11), "time": T(19, 0), "party_size": 4}),
        ("December 4th at 8pm for 3", None, {"date": D(2026, 12, 4), "time": T(20, 0), "party_size": 3}),
        ("the 24th at 7, party of 2", None, {"date": D(2025, 12, 24), "time": T(19, 0), "party_size": 2}),
        (
            "My name is John Smith and my number is oh nine oh one two three four five six seven eight",
            None,
            {"name": "John Smith", "phone": "09012345678"},
        ),
        (
            "Friday at half past seven for six, it's my wife's birthday",
            None,
            {"date": D(2025, 12, 12), "time": T(19, 30), "party_size": 6, "note": "it's my wife's birthday"},
        ),
        ("7時じゃなくて8時で", "time", {"time": T(20, 0)}),
        ("3名じゃなくて4名", "party_size", {"party_size": 4}),
        ("はい", "name", {}),
        ("はい", None, {}),
        ("", None, {}),
        ("😀", "time", {}),
        ("abc", "bogus", {}),
    ],
)
def test_extract_slots(text: str, expecting: str | None, expected: dict) -> None:
    assert extract_slots(text, TODAY, expecting=expecting) == expected


def test_extract_slots_uses_opening_hours() -> None:
    got = extract_slots("明日1時に2名", TODAY, is_open=lunch_and_dinner)
    assert got == {"date": D(2025, 12, 11), "time": T(13, 0), "party_size": 2}
    assert extract_slots("1", TODAY, expecting="time", is_open=lunch_and_dinner) == {"time": T(13, 0)}


def test_long_input_is_fast_and_safe() -> None:
    text = "明日の19時に3名で、" * 2000
    got = extract_slots(text, TODAY)
    assert got["date"] == D(2025, 12, 11)
    assert got["party_size"] == 3
