"""Scripted calls as callers really talk (and as Whisper writes them), through `voicebot chat`'s code path.

Each case is one or more calls in a row on one database; it asserts the bookings that stand at the end
(nothing more, nothing less), that the bot never fell silent, and what the bot had to say or ask.
The clock is Tuesday 2026-12-01 10:00 in Tokyo. 2026-12-24 is a Thursday, 2026-12-11 a Friday.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pytest

from pipeline.cli import run_chat
from pipeline.config import load_config
from pipeline.store import ReservationStore

NOW = "2026-12-01T10:00:00+09:00"
PHONE = "09012345678"


def R(date, time, party, name, phone=PHONE, note=None):
    return {"date": date, "time": time, "party_size": party, "name": name, "phone": phone, "note": note}


@dataclass
class Case:
    id: str
    lang: str
    calls: list[list[str]]
    expect: list[dict]  # the active bookings at the end
    bot_says: list[str] = field(default_factory=list)
    never_says: list[str] = field(default_factory=list)
    ended: bool | None = None  # how the last call ended
    caller_id: str | None = None  # every call comes from this number (as Twilio gives `From`)


JA_TAIL = ["田中です", "090-1234-5678", "特にありません", "はい"]
EN_TAIL = ["My name is John Smith", "090-1234-5678", "no requests", "yes"]
JA_BOOK = ["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "はい", "以上です"]
EN_BOOK = ["December 24th at 7 pm for three", "My name is John Smith", "090-1234-5678", "no requests", "yes",
           "that's all"]
JA_BOOKED = R("2026-12-24", "19:00", 3, "田中")
EN_BOOKED = R("2026-12-24", "19:00", 3, "John Smith")
OTHERS = ("佐藤", "鈴木", "高橋")


def ja(id, lines, expect, **kw):
    return Case(id, "ja", [lines], [expect] if expect else [], **kw)


def en(id, lines, expect, **kw):
    return Case(id, "en", [lines], [expect] if expect else [], **kw)


CASES = [
    # ------------------------------------------------------------ 1. a date with its weekday is one day
    ja("ja-date-weekday", ["12月24日、木曜日の夜7時に2名で", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-date-weekday-kanji", ["十二月十一日、金曜日", "19時", "2名", *JA_TAIL], R("2026-12-11", "19:00", 2, "田中")),
    ja("ja-date-weekday-paren", ["12月24日(木)の19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-date-weekday-no-comma", ["12月11日金曜日の20時に4名", *JA_TAIL], R("2026-12-11", "20:00", 4, "田中")),
    ja("ja-day-weekday", ["24日の木曜日", "19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-weekday-mismatch-asks", ["12月24日、金曜日", "24日でお願いします", "19時", "2名", *JA_TAIL],
       R("2026-12-24", "19:00", 2, "田中"), bot_says=["それとも"]),
    ja("ja-weekday-mismatch-takes-weekday", ["12月24日、金曜日", "金曜日です", "19時", "2名", *JA_TAIL],
       R("2026-12-04", "19:00", 2, "田中"), bot_says=["それとも"]),
    en("en-date-weekday", ["December 24th, Thursday", "7 pm", "two", *EN_TAIL], R("2026-12-24", "19:00", 2, "John Smith")),
    en("en-weekday-date", ["Friday, December 11th at 8 pm", "two people", *EN_TAIL],
       R("2026-12-11", "20:00", 2, "John Smith")),
    en("en-weekday-mismatch-asks", ["Friday the 24th of December", "the 24th", "7 pm", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith"), bot_says=["Did you mean"]),
    # ------------------------------------------------------------ 2. numbers inside a request stay there
    ja("ja-allergy-count", ["12月24日", "19時", "3名", "田中です", "090-1234-5678", "卵アレルギーの者が1名おります", "はい"],
       {**R("2026-12-24", "19:00", 3, "田中"), "note": "卵アレルギーの者が1名おります"}),
    ja("ja-cake-time", ["12月24日", "19時", "3名", "田中です", "090-1234-5678", "ケーキを8時ごろに出してください", "はい"],
       {**R("2026-12-24", "19:00", 3, "田中"), "note": "ケーキを8時ごろに出してください"}),
    ja("ja-child-chair", ["12月24日", "19時", "3名", "田中です", "090-1234-5678", "子供が1人いるので椅子をお願いします", "はい"],
       {**R("2026-12-24", "19:00", 3, "田中"), "note": "子供が1人いるので椅子をお願いします"}),
    ja("ja-two-cakes", ["12月24日", "19時", "4名", "田中です", "090-1234-5678", "誕生日が2人なのでケーキを2つお願いします", "はい"],
       {**R("2026-12-24", "19:00", 4, "田中"), "note": "誕生日が2人なのでケーキを2つお願いします"}),
    en("en-vegetarians", ["December 24th", "7 pm", "three people", "My name is John Smith", "090-1234-5678",
                          "Two of us are vegetarian", "yes"],
       {**R("2026-12-24", "19:00", 3, "John Smith"), "note": "Two of us are vegetarian"}),
    en("en-cake-at-eight", ["December 24th", "7 pm", "three people", "My name is John Smith", "090-1234-5678",
                            "could you bring the birthday cake at 8", "yes"],
       {**R("2026-12-24", "19:00", 3, "John Smith"), "note": "could you bring the birthday cake at 8"}),
    ja("ja-passing-number-asks", ["12月24日", "19時", "3名", "田中です", "1名です", "いいえ", "090-1234-5678", "特にありません",
                                  "はい"],
       R("2026-12-24", "19:00", 3, "田中"), bot_says=["1名様に変更してよろしいでしょうか"]),
    ja("ja-passing-number-yes", ["12月24日", "19時", "3名", "田中です", "4名になりました", "はい", "090-1234-5678",
                                 "特にありません", "はい"],
       R("2026-12-24", "19:00", 4, "田中"), bot_says=["4名様に変更してよろしいでしょうか"]),
    ja("ja-explicit-correction-applies", ["12月24日", "19時", "3名", "田中です", "やっぱり4名に変更してください",
                                          "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 4, "田中"), never_says=["変更してよろしいでしょうか"]),
    en("en-explicit-correction-applies", ["December 24th", "7 pm", "three people", "actually make it two people",
                                          *EN_TAIL], R("2026-12-24", "19:00", 2, "John Smith")),
    # ------------------------------------------------------------ 3. relative dates
    ja("ja-week-later", ["一週間後", "19時", "2名", *JA_TAIL], R("2026-12-08", "19:00", 2, "田中")),
    ja("ja-three-days-later", ["3日後の19時に2名", *JA_TAIL], R("2026-12-04", "19:00", 2, "田中")),
    ja("ja-two-weeks-later", ["2週間後の18時、2名で", *JA_TAIL], R("2026-12-15", "18:00", 2, "田中")),
    ja("ja-kanji-days-later", ["五日後", "19時", "2名", *JA_TAIL], R("2026-12-06", "19:00", 2, "田中")),
    en("en-week-from-today", ["a week from today", "7 pm", "two", *EN_TAIL], R("2026-12-08", "19:00", 2, "John Smith")),
    en("en-in-three-days", ["in three days at 7 pm", "two people", *EN_TAIL], R("2026-12-04", "19:00", 2, "John Smith")),
    en("en-two-weeks-from-now", ["two weeks from now", "8 pm", "two", *EN_TAIL], R("2026-12-15", "20:00", 2, "John Smith")),
    # ------------------------------------------------------------ 4. "nothing else" said naturally
    ja("ja-none-kekkou", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "結構です", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-none-iie", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "いいえ", "はい"], R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-none-naidesu", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "ないです", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-none-daijoubu", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "大丈夫です", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-none-hai-then-what", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "はい", "窓際の席がいいです", "はい"],
       {**R("2026-12-24", "19:00", 2, "田中"), "note": "窓際の席がいいです"}, bot_says=["どのようなご要望"]),
    ja("ja-none-hai-then-none", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "はい", "特にないです", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    en("en-none-no", ["December 24th", "7 pm", "two", "My name is John Smith", "090-1234-5678", "no", "yes"],
       R("2026-12-24", "19:00", 2, "John Smith")),
    en("en-none-nothing-else", ["December 24th", "7 pm", "two", "My name is John Smith", "090-1234-5678", "nope, that's it",
                                "yes"], R("2026-12-24", "19:00", 2, "John Smith")),
    en("en-yes-then-what", ["December 24th", "7 pm", "two", "My name is John Smith", "090-1234-5678", "yes",
                            "a table by the window please", "yes"],
       {**R("2026-12-24", "19:00", 2, "John Smith"), "note": "a table by the window"}, bot_says=["What would you like"]),
    # ------------------------------------------------------------ 5. wait and repeat
    ja("ja-wait-thrice", ["12月24日", "ちょっと待ってください", "ちょっと待ってください", "ちょっと待ってください", "19時", "2名",
                          *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"), bot_says=["ごゆっくり"]),
    ja("ja-repeat-thrice", ["12月24日", "すみません、もう一度お願いします", "もう一度お願いします", "もう一回お願いします", "19時",
                            "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"), never_says=["12月1日"]),
    ja("ja-repeat-readback", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "特にありません", "もう一度お願いします",
                              "はい"], R("2026-12-24", "19:00", 2, "田中"), bot_says=["もう一度申し上げます。ご予約内容"]),
    ja("ja-wait-at-phone", ["12月24日", "19時", "2名", "田中です", "少々お待ちください", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    en("en-hold-on", ["December 24th", "hold on a second", "let me check", "7 pm", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith"), bot_says=["take your time"]),
    en("en-repeat-readback", ["December 24th", "7 pm", "two", "My name is John Smith", "090-1234-5678", "no",
                              "can you repeat that?", "yes"], R("2026-12-24", "19:00", 2, "John Smith"),
       bot_says=["Of course. Let me read that back"]),
    en("en-pardon", ["December 24th", "pardon?", "sorry, I didn't catch that", "7 pm", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith")),
    # ------------------------------------------------------------ 6. phone numbers in groups, over several turns
    ja("ja-phone-groups", ["12月24日", "19時", "2名", "田中です", "090の", "1234の", "5678です", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-phone-groups-kana", ["12月24日", "19時", "2名", "田中です", "ゼロキューゼロ", "イチニーサンヨン", "ゴーロクナナハチ",
                                "特にありません", "はい"], R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-phone-nii", ["12月24日", "19時", "2名", "田中です", "ゼロキュウゼロのイチニイサンヨンのゴーロクナナハチ", "特にありません",
                        "はい"], R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-phone-landline-groups", ["12月24日", "19時", "2名", "田中です", "03の", "1111の", "2222です", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中", "0311112222")),
    ja("ja-phone-digit-by-digit-is-no-name", ["12月24日", "19時", "2名", "田中です",
                                              "ゼロ、キュー、ゼロナナ、ナナ、ナナ、ナナハチ、ハチ、ハチ、ハチです", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中", "09077778888"), never_says=["ハチ様"]),
    ja("ja-phone-digit-by-digit-at-the-name-question", ["12月24日", "19時", "2名",
                                                        "ゼロ、キュー、ゼロナナ、ナナ、ナナ、ナナハチ、ハチ、ハチ、ハチです", "田中です",
                                                        "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中", "09077778888"), never_says=["ハチ様", "ゼロ様"]),
    ja("ja-phone-whisper-zero", ["12月24日", "19時", "2名", "田中です", "090012345678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    en("en-phone-groups", ["December 24th", "7 pm", "two", "My name is John Smith", "oh nine oh", "one two three four",
                           "five six seven eight", "no requests", "yes"], R("2026-12-24", "19:00", 2, "John Smith")),
    # ------------------------------------------------------------ 7. names
    ja("ja-name-comma", ["12月24日", "19時", "2名", "鈴木、です。", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "鈴木")),
    ja("ja-name-nakaguro", ["12月24日", "19時", "2名", "ジョン・スミスです", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "ジョン・スミス")),
    ja("ja-name-not-sore", ["12月24日", "19時", "2名", "はい、それでお願いします", "田中です", "090-1234-5678", "特にありません",
                            "はい"], R("2026-12-24", "19:00", 2, "田中"), never_says=["それ様"]),
    ja("ja-phone-does-not-rename", ["12月24日", "19時", "2名", "田中です",
                                    "電話番号はゼロキューゼロ、イチニーサンヨン、ゴーロクナナハチです", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-name-doubtful-confirmed", ["12月24日", "19時", "2名", "よしみ", "はい", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "よしみ"), bot_says=["ヨシミ様でよろしいでしょうか"]),
    ja("ja-name-misheard-rejected", ["12月24日", "19時", "2名", "読みん", "いいえ", "山田です", "090-1234-5678", "特にありません",
                                     "はい"], R("2026-12-24", "19:00", 2, "山田"), bot_says=["ヨミン様でよろしいでしょうか"]),
    ja("ja-name-verb-not-a-name", ["12月24日", "19時", "2名", "また投げて", "山田です", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "山田"), never_says=["また投げて様"]),
    ja("ja-name-with-given", ["12月24日", "19時", "2名", "田中みどりです", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "田中みどり")),
    en("en-name-accents", ["December 24th", "7 pm", "two", "José García", "090-1234-5678", "no", "yes"],
       R("2026-12-24", "19:00", 2, "José García")),
    en("en-name-umlaut", ["December 24th", "7 pm", "two", "Anna Müller", "090-1234-5678", "no", "yes"],
       R("2026-12-24", "19:00", 2, "Anna Müller")),
    en("en-name-umlaut-trigger", ["December 24th", "7 pm", "two", "My name is Anna Müller", "090-1234-5678", "no", "yes"],
       R("2026-12-24", "19:00", 2, "Anna Müller")),
    en("en-name-hyphen", ["December 24th", "7 pm", "two", "Mary-Jane O'Neil", "090-1234-5678", "no", "yes"],
       R("2026-12-24", "19:00", 2, "Mary-Jane O'Neil")),
    ja("ja-name-read-back-in-katakana", ["12月24日", "19時", "2名", "東海林です", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "東海林"), bot_says=["お名前はショージ様"]),
    ja("ja-name-corrected-at-read-back", ["12月24日", "19時", "2名", "庄司です", "090-1234-5678", "特にありません",
                                          "名前が違います、東海林です", "はい"],
       R("2026-12-24", "19:00", 2, "東海林")),
    ja("ja-name-never-loses-the-booking", ["12月24日", "19時", "2名", "まてぃあす", "いいえ", "まてぃあす", "いいえ", "まてぃあす",
                                           "いいえ", "090-1234-5678", "特にありません", "はい"],
       R("2026-12-24", "19:00", 2, "まてぃあす")),
    en("en-name-spelled", ["December 24th", "7 pm", "two", "S-M-Y-T-H-E", "090-1234-5678", "no", "yes"],
       R("2026-12-24", "19:00", 2, "Smythe")),
    # ------------------------------------------------------------ 8. questions fill nothing
    ja("ja-question-hours", ["土曜日は何時までですか", "12月24日", "19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"),
       bot_says=["23時まで"], never_says=["12月5日"]),
    ja("ja-question-private-room", ["12月24日", "19時", "2名", "田中です", "090-1234-5678", "個室はありますか", "特にありません",
                                    "はい"], R("2026-12-24", "19:00", 2, "田中"), bot_says=["半個室"]),
    ja("ja-question-course-price", ["コースはいくらですか", "12月24日", "19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"),
       bot_says=["5,000円"]),
    ja("ja-question-unknown", ["Wi-Fiはありますか", "12月24日", "19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"),
       bot_says=["03-1234-5678までお問い合わせ"], never_says=["ご連絡いたします"]),
    ja("ja-question-corkage", ["12月24日", "ワインの持ち込みはできますか", "19時", "2名", *JA_TAIL],
       R("2026-12-24", "19:00", 2, "田中"), bot_says=["持ち込み料"]),
    ja("ja-question-availability-fills", ["12月24日の19時半は空いていますか", "2名", *JA_TAIL], R("2026-12-24", "19:30", 2, "田中")),
    en("en-question-kids-menu", ["Do you have a kids menu?", "December 24th", "7 pm", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith"), bot_says=["children's menu"]),
    en("en-question-dress-code", ["December 24th", "Is there a dress code?", "7 pm", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith"), bot_says=["no dress code"]),
    en("en-question-unknown", ["Do you sell gift vouchers?", "December 24th", "7 pm", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith"), bot_says=["call the restaurant at 03-1234-5678"]),
    # ------------------------------------------------------------ 9. a choice is asked, never guessed
    ja("ja-time-or", ["12月24日", "7時か8時", "8時で", "2名", *JA_TAIL], R("2026-12-24", "20:00", 2, "田中"),
       bot_says=["どちらになさいますか"]),
    ja("ja-time-or-first", ["12月24日", "7時か8時で", "早い方で", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中")),
    ja("ja-date-or", ["24日か25日", "25日", "19時", "2名", *JA_TAIL], R("2026-12-25", "19:00", 2, "田中")),
    ja("ja-time-or-all-in-one", ["12月24日の7時か8時に2名", "7時", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中")),
    en("en-time-or", ["December 24th", "7 or 8 pm", "8 pm", "two", *EN_TAIL], R("2026-12-24", "20:00", 2, "John Smith"),
       bot_says=["or"]),
    en("en-time-or-later", ["December 24th at 7 or 8 pm", "the later one", "two", *EN_TAIL],
       R("2026-12-24", "20:00", 2, "John Smith")),
    # ------------------------------------------------------------ 11. misheard words are not values
    ja("ja-mishear-once-more", ["もう一度お願いします", "12月24日", "19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"),
       never_says=["12月1日"]),
    ja("ja-mishear-3rei", ["3例", "12月24日", "19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"),
       never_says=["12月3日"]),
    ja("ja-mishear-5-6", ["12月24日", "5.6時", "6時", "2名", *JA_TAIL], R("2026-12-24", "18:00", 2, "田中"),
       bot_says=["午後5時と午後6時"]),
    ja("ja-mishear-yameru-denied", ["12月24日", "19時", "やめる", "いいえ、4名です", *JA_TAIL], R("2026-12-24", "19:00", 4, "田中"),
       bot_says=["おやめになりますか"]),
    ja("ja-end-confirmed", ["12月24日", "19時", "やめます", "はい"], None, ended=True, bot_says=["おやめになりますか"]),
    en("en-end-denied", ["December 24th", "7 pm", "never mind", "no", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith"), bot_says=["stop making this booking"]),
    # ------------------------------------------------------------ 10. existing bookings: hear, change, cancel
    Case("ja-cancel-by-phone", "ja", [JA_BOOK, ["予約をキャンセルしたいんですが", "090-1234-5678", "はい", "以上です"]], [],
         bot_says=["キャンセルいたしました"], never_says=["前日までにお電話で"]),
    Case("ja-cancel-declined", "ja", [JA_BOOK, ["予約をキャンセルしたいんですが", "090-1234-5678", "いいえ", "以上です"]],
         [JA_BOOKED], bot_says=["そのままにしております"]),
    Case("ja-cancel-by-number", "ja", [JA_BOOK, ["予約番号は{id}です", "キャンセルしたいです", "はい", "以上です"]], [],
         never_says=["12月8日"]),
    Case("ja-change-time", "ja", [JA_BOOK, ["予約の時間を変更したいです", "09012345678", "20時にしてください", "はい", "ありません"]],
         [R("2026-12-24", "20:00", 3, "田中")], bot_says=["変更いたしました"]),
    Case("ja-change-in-one", "ja", [JA_BOOK, ["予約を20時に変更したいです", "090-1234-5678", "はい", "以上です"]],
         [R("2026-12-24", "20:00", 3, "田中")]),
    Case("ja-change-party", "ja", [JA_BOOK, ["予約の人数を変えたいです", "090-1234-5678", "4名にしてください", "はい", "以上です"]],
         [R("2026-12-24", "19:00", 4, "田中")]),
    Case("ja-change-date", "ja", [JA_BOOK, ["予約を変更したいのですが", "090-1234-5678", "12月25日にしてください", "はい", "以上です"]],
         [R("2026-12-25", "19:00", 3, "田中")]),
    Case("ja-change-declined", "ja", [JA_BOOK, ["予約を変更したいのですが", "090-1234-5678", "20時で", "いいえ", "やっぱり結構です"]],
         [JA_BOOKED]),
    Case("ja-check", "ja", [JA_BOOK, ["予約の確認をしたいのですが", "090-1234-5678", "大丈夫です"]], [JA_BOOKED],
         bot_says=["こちらの内容で承っております"]),
    Case("ja-change-to-closed-day", "ja", [JA_BOOK, ["予約を変更したいです", "090-1234-5678", "12月30日にしてください",
                                                     "12月25日", "はい", "以上です"]],
         [R("2026-12-25", "19:00", 3, "田中")], bot_says=["年末年始"]),
    Case("ja-change-not-found", "ja", [JA_BOOK, ["予約を変更したいです", "080-9999-8888", "090-1234-5678", "20時", "はい",
                                                 "以上です"]],
         [R("2026-12-24", "20:00", 3, "田中")], bot_says=["見つかりませんでした"]),
    Case("ja-two-bookings-which", "ja", [JA_BOOK, ["12月25日の18時に2名で", "田中です", "090-1234-5678", "特にありません", "はい",
                                                   "以上です"],
                                         ["予約をキャンセルしたいです", "090-1234-5678", "25日の予約です", "はい", "以上です"]],
         [JA_BOOKED], bot_says=["2件"]),
    Case("ja-cancel-right-after-booking", "ja", [["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "はい",
                                                  "やっぱり予約をキャンセルしたいです", "はい", "以上です"]], []),
    Case("ja-change-right-after-booking", "ja", [["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "はい",
                                                  "やっぱり4名に変更できますか", "はい", "以上です"]],
         [R("2026-12-24", "19:00", 4, "田中")]),
    Case("ja-change-to-full-slot", "ja", [JA_BOOK, *[["12月24日の20時に2名で", f"{n}です", f"080-1111-000{i}",
                                                     "特にありません", "はい", "以上です"] for i, n in enumerate(OTHERS)],
                                          ["予約を変更したいです", "090-1234-5678", "20時にしてください", "20時半", "はい", "以上です"]],
         [R("2026-12-24", "20:30", 3, "田中"),
          *[R("2026-12-24", "20:00", 2, n, f"0801111000{i}") for i, n in enumerate(OTHERS)]], bot_says=["満席"]),
    Case("en-cancel", "en", [EN_BOOK, ["I'd like to cancel my reservation", "090-1234-5678", "yes", "that's all"]], [],
         bot_says=["cancelled"]),
    Case("en-change-party", "en", [EN_BOOK, ["I'd like to change my booking", "090-1234-5678", "make it four people", "yes",
                                             "that's all"]],
         [R("2026-12-24", "19:00", 4, "John Smith")]),
    Case("en-change-time-in-one", "en", [EN_BOOK, ["Can I move my reservation to 8 pm?", "090-1234-5678", "yes",
                                                   "no thanks"]],
         [R("2026-12-24", "20:00", 3, "John Smith")]),
    Case("en-check", "en", [EN_BOOK, ["I want to check my reservation", "090-1234-5678", "that's all"]], [EN_BOOKED],
         bot_says=["I have your booking"]),
    Case("en-cancel-by-number", "en", [EN_BOOK, ["my reservation number is {id}, I need to cancel", "yes", "that's all"]], []),
    # ------------------------------------------------------------ the caller's own number
    Case("ja-caller-id-yes", "ja", [["12月24日の19時に3名で", "田中です", "はい", "特にありません", "はい"]], [JA_BOOKED],
         caller_id="+819012345678", bot_says=["末尾ゴー、ロク、ナナ、ハチの番号でよろしいでしょうか"]),
    Case("ja-caller-id-no", "ja", [["12月24日の19時に3名で", "田中です", "いいえ", "080-1111-2222", "特にありません", "はい"]],
         [R("2026-12-24", "19:00", 3, "田中", "08011112222")], caller_id="+819012345678"),
    Case("ja-caller-id-other-number-said", "ja", [["12月24日の19時に3名で", "田中です", "いいえ、080-1111-2222でお願いします",
                                                   "特にありません", "はい"]],
         [R("2026-12-24", "19:00", 3, "田中", "08011112222")], caller_id="+819012345678"),
    Case("ja-caller-id-withheld", "ja", [["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "はい"]],
         [JA_BOOKED], caller_id="anonymous", never_says=["今おかけ"]),
    Case("ja-caller-id-foreign", "ja", [["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "はい"]],
         [JA_BOOKED], caller_id="+14155550100", never_says=["今おかけ"]),
    Case("en-caller-id-yes", "en", [["December 24th at 7 pm for three", "My name is John Smith", "yes", "no requests", "yes"]],
         [EN_BOOKED], caller_id="+81 90-1234-5678", bot_says=["ending in five six seven eight"]),
    Case("ja-cancel-by-caller-id", "ja", [JA_BOOK, ["予約をキャンセルしたいです", "はい", "以上です"]], [],
         caller_id="+819012345678", never_says=["お電話番号をお願い"]),
    # ------------------------------------------------------------ whisper's near misses of what a call is about
    Case("ja-cancel-misheard", "ja", [JA_BOOK, ["予約をパンセルしたいのですが", "090-1234-5678", "はい", "以上です"]], [],
         bot_says=["キャンセル"]),
    Case("ja-change-misheard", "ja", [JA_BOOK, ["予約の人数を健康したいんですが", "090-1234-5678", "2名です", "はい", "以上です"]],
         [R("2026-12-24", "19:00", 2, "田中")]),
    ja("ja-garbled-request-keeps-party", ["12月17日の19時に3名で", "吉田です", "090-1234-5678", "玉壊れるギーのものが一名おります",
                                          "はい"], R("2026-12-17", "19:00", 3, "吉田", note="玉壊れるギーのものが一名おります"),
       never_says=["1名様に変更"]),
    ja("ja-book-wish-first", ["予約をお願いしたいんですが", "予約したいです", "12月24日の19時に3名で", *JA_TAIL], JA_BOOKED,
       bot_says=["ご予約ですね"], never_says=["もう一度", "うまくお伺いできませんでした"]),
    en("en-book-wish-first", ["I'd like to make a reservation", "December 24th at 7 pm for three", *EN_TAIL], EN_BOOKED,
       never_says=["say that again"]),
    ja("ja-misheard-time-is-no-name", ["12月24日", "水落ちです", "19時です", "3名です", *JA_TAIL], JA_BOOKED,
       never_says=["ミズオチ"]),
    ja("ja-bare-name-corrects-the-readback", ["12月24日の19時に3名で", "作戦", "090-1234-5678", "特にありません", "田中", "はい"],
       JA_BOOKED, bot_says=["お名前をタナカ様に変更いたしました"]),
    ja("ja-garble-at-readback-is-no-name", ["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "リンエ",
                                            "はい"], JA_BOOKED, never_says=["変更いたしました"]),
    ja("ja-x-desu-at-readback-is-no-name", ["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "キノビです",
                                            "はい"], JA_BOOKED, never_says=["キノビ様"]),
    ja("ja-no-and-a-name-at-readback-corrects-it", ["12月24日の19時に3名で", "作戦です", "090-1234-5678", "特にありません",
                                                    "いいえ、田中です", "はい"], JA_BOOKED),
    ja("ja-same-name-at-readback-is-no-change", ["12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません", "タナカ",
                                                 "はい"], JA_BOOKED, never_says=["変更いたしました"]),
    ja("ja-yes-to-an-open-question-is-listening", ["はい", "はい、お願いします", "12月24日の19時に3名で", *JA_TAIL], JA_BOOKED,
       never_says=["もう一度"]),
    ja("ja-same-value-again-is-said-back", ["明後日の18時に3名で", "やっぱり3名でお願いします", *JA_TAIL],
       R("2026-12-03", "18:00", 3, "田中"), bot_says=["3名様ですね。ご予約のお名前"], never_says=["もう一度"]),
    ja("ja-request-with-a-number-and-please", ["12月24日の19時に3名で", "田中です", "090-1234-5678",
                                               "子供が一人いるので、一応お願いします", "はい"],
       R("2026-12-24", "19:00", 3, "田中", note="子供が一人いるので、一応お願いします"), never_says=["どのようなご要望"]),
    ja("ja-yes-to-any-requests-is-asked-twice-at-most", ["12月24日の19時に3名で", "田中です", "090-1234-5678", "はい", "はい",
                                                         "はい", "はい", "はい"], None),
    ja("ja-asatte-misheard", ["予約をお願いします", "朝ってです", "19時です", "3名です", *JA_TAIL],
       R("2026-12-03", "19:00", 3, "田中")),
    # ------------------------------------------------------------ a person, please
    ja("ja-person", ["お店の人と話したいです", "12月24日", "19時", "2名", *JA_TAIL], R("2026-12-24", "19:00", 2, "田中"),
       bot_says=["03-1234-5678"]),
    en("en-person", ["December 24th", "can I talk to someone?", "7 pm", "two", *EN_TAIL],
       R("2026-12-24", "19:00", 2, "John Smith"), bot_says=["03-1234-5678"]),
]


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, environ={"VOICEBOT__STORE__URL": f"sqlite:///{tmp_path}/r.db",
                                      "VOICEBOT__AGENT__KIND": "rules"})


def _chat(cfg, lines, lang, caller_id=None):
    out = io.StringIO()
    code = run_chat(cfg, [line + "\n" for line in lines], out, kind="rules", now=NOW, language=lang, as_json=True,
                    caller_id=caller_id)
    assert code == 0
    return [json.loads(x) for x in out.getvalue().splitlines()]


def _active(cfg) -> list[dict]:
    store = ReservationStore(cfg.store_url())
    try:
        return [r.to_json() for r in store.all() if r.active]
    finally:
        store.close()


def _key(r: dict) -> tuple:
    return tuple(str(r[k]) for k in ("date", "time", "party_size", "name", "phone", "note"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_call_as_callers_talk(cfg, case: Case):
    transcript: list[str] = []
    turns: list[dict] = []
    for lines in case.calls:
        booked = _active(cfg)
        lines = [line.format(id=booked[-1]["id"]) if "{id}" in line and booked else line for line in lines]
        turns = _chat(cfg, lines, case.lang, case.caller_id)
        transcript.extend(f"  caller: {t['user']}\n  bot:    {t['bot']}" for t in turns)
        transcript.append("  ---- hang up")
        for t in turns:
            assert t["bot"].strip(), "silent turn\n" + "\n".join(transcript)
    text = "\n".join(transcript)
    got = sorted(_key(r) for r in _active(cfg))
    want = sorted(_key({"note": None, **r}) for r in case.expect)
    assert got == want, text
    said = text
    for phrase in case.bot_says:
        assert phrase in said, f"bot never said {phrase!r}\n{text}"
    for phrase in case.never_says:
        assert phrase not in said, f"bot said {phrase!r}\n{text}"
    if case.ended is not None:
        assert turns[-1]["ended"] is case.ended, text


def test_there_are_at_least_150_scripted_calls():
    from tests.test_calls import CALLS

    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) + len(CALLS) >= 150
    assert sum(len(c.calls) > 1 for c in CASES) >= 15
