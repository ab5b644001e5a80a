"""The booking tools as a model calls them: one registry, the guard on changing what the caller gave,
and hearing, changing and cancelling an existing booking only after the caller's own yes."""

from __future__ import annotations

import datetime as dt
import json
import logging
from zoneinfo import ZoneInfo

import pytest

from pipeline.config import load_config
from pipeline.dialog.faq import FAQ
from pipeline.dialog.restaurant import Restaurant
from pipeline.dialog.state import DialogState
from pipeline.dialog.tools import TOOL_SCHEMAS, TOOLS, BookingTools
from pipeline.store import ReservationStore

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, environ={"VOICEBOT__STORE__URL": f"sqlite:///{tmp_path}/r.db"})


def desk(cfg, store=None, language="ja") -> BookingTools:
    store = store or ReservationStore(cfg.store_url())
    return BookingTools(Restaurant(cfg.restaurant), store, DialogState(language=language), lambda: NOW,
                        call_id="t", faq=FAQ(cfg.restaurant.faq))


def call(tools: BookingTools, name: str, said: str | None = None, **args) -> dict:
    if said is not None:
        tools.begin_turn(said)
    return json.loads(tools.call(name, args))


def test_every_tool_is_defined_once_with_its_schema_and_handler(cfg):
    tools = desk(cfg)
    assert [s["function"]["name"] for s in TOOL_SCHEMAS] == list(TOOLS)
    for name in TOOLS:
        assert "unknown tool" not in json.dumps(call(tools, name))
    assert "unknown tool" in call(tools, "book_everything")["error"]
    assert "bad arguments" in call(tools, "get_reservation_status", nonsense=1)["error"]


class BrokenStore(ReservationStore):
    def free_tables(self, d, t, capacity):
        raise TypeError("a bug in the store")


def test_a_type_error_inside_a_tool_is_a_logged_bug_not_bad_arguments(cfg, caplog):
    tools = desk(cfg, BrokenStore(cfg.store_url()))
    with caplog.at_level(logging.ERROR):
        got = call(tools, "find_availability", date="12月24日")
    assert got["ok"] is False and "bad arguments" not in got["error"] and "failed" in got["error"]
    assert any(r.levelno == logging.ERROR and "find_availability" in r.getMessage() for r in caplog.records)


def test_a_filled_slot_is_not_changed_by_a_number_inside_a_request(cfg):
    tools = desk(cfg)
    assert call(tools, "update_reservation", "12月24日の19時に3名で", date="12月24日", time="19時", party_size=3)["ok"]
    got = call(tools, "update_reservation", "卵アレルギーの者が1名おります", party_size=1, note="卵アレルギーの者が1名おります")
    assert got["slots"]["party_size"] == 3 and got["slots"]["note"] == "卵アレルギーの者が1名おります"
    assert [p["code"] for p in got["problems"]] == ["confirm_change"]
    assert "1名様に変更" in got["problems"][0]["message"]
    # the caller's yes to that question lets the same change through
    assert call(tools, "update_reservation", "はい", party_size=1)["slots"]["party_size"] == 1


def test_a_correction_in_the_callers_words_changes_the_slot(cfg):
    tools = desk(cfg)
    call(tools, "update_reservation", "12月24日の19時に3名で", date="12月24日", time="19時", party_size=3)
    got = call(tools, "update_reservation", "やっぱり4名でお願いします", party_size=4)
    assert got["ok"] and got["slots"]["party_size"] == 4


def _book(cfg) -> str:
    store = ReservationStore(cfg.store_url())
    res = store.book(date=dt.date(2026, 12, 24), time=dt.time(19), party_size=3, name="田中", phone="09012345678",
                     note=None, capacity=3, idempotency_key="k")
    store.close()
    return res.id


def test_cancel_needs_the_callers_yes_in_the_next_turn(cfg):
    rid = _book(cfg)
    tools = desk(cfg)
    found = call(tools, "find_reservations", "予約をキャンセルしたいです。090-1234-5678です", phone="090-1234-5678")
    assert found["count"] == 1 and found["reservations"][0]["id"] == rid
    proposal = call(tools, "propose_cancel", reservation_id=rid)
    assert "キャンセルしてよろしいでしょうか" in proposal["say_exactly"]
    assert call(tools, "apply_cancel")["ok"] is False  # no answer yet
    assert call(tools, "apply_cancel", "いいえ")["ok"] is False
    call(tools, "propose_cancel", reservation_id=rid)
    assert call(tools, "apply_cancel", "はい、お願いします")["ok"] is True
    assert ReservationStore(cfg.store_url()).find("09012345678") == []


def test_change_is_checked_like_a_booking_and_made_after_yes(cfg):
    rid = _book(cfg)
    tools = desk(cfg)
    call(tools, "find_reservations", "090-1234-5678です", phone="090-1234-5678")
    closed = call(tools, "propose_change", "12月30日にしたい", reservation_id=rid, date="12月30日")
    assert closed["ok"] is False and closed["problems"][0]["alternatives"]
    proposal = call(tools, "propose_change", "20時に4名で", reservation_id=rid, time="20時", party_size="4名")
    assert proposal["changes"] == {"time": "20:00", "party_size": 4}
    assert call(tools, "apply_change")["ok"] is False
    done = call(tools, "apply_change", "はい")
    assert done["ok"] and done["reservation"]["time"] == "20:00" and done["reservation"]["party_size"] == 4
    [res] = ReservationStore(cfg.store_url()).find("09012345678")
    assert (res.time, res.party_size, res.id) == (dt.time(20), 4, rid)


def test_a_person_is_a_transfer_only_where_the_call_can_be_transferred(cfg):
    tools = desk(cfg)
    got = call(tools, "transfer_to_person", "お店の人と話したい")
    assert got["transferring"] is False and "03-1234-5678" in got["say_exactly"] and not tools.state.ended
    tools.state.can_transfer = True
    got = call(tools, "transfer_to_person", "お店の人と話したい")
    assert got["transferring"] is True and tools.state.transfer_requested and tools.state.ended


def test_a_wish_to_cancel_told_to_one_agent_is_kept_for_the_next(cfg):
    """The LLM hears 「キャンセルしたい」, fails, and the rules agent takes the next turn: it must go on
    with the cancellation, not start a new booking from the date the caller gives next."""
    from pipeline.dialog.rules import RulesAgent

    tools = desk(cfg)
    rules = RulesAgent(tools)
    rules.greeting()
    tools.begin_turn("予約をキャンセルしたいのですが")  # as the LLM agent counts a turn it then fails on
    reply = rules.reply("12月24日です")
    assert "お電話番号" in reply and tools.state.manage is not None and tools.state.manage.intent == "cancel"


def _guessing(cfg):
    from pipeline.dialog.rules import RulesAgent

    tools = desk(cfg)
    rules = RulesAgent(tools)
    rules.greeting()
    assert "時ごろ" in rules.reply("12月24日です")
    return tools, rules


def test_the_recognisers_guess_is_asked_about_before_the_question_is_asked_again(cfg):
    """Whisper wrote 「水落ちです」 for 20時; its best weighed answer, too weak to take, was 20時: the
    bot asks about it as a yes-or-no question (as the call runtime sets ``state.guess``)."""
    tools, rules = _guessing(cfg)
    tools.state.guess = "20時です"
    reply = rules.reply("水落ちです")
    assert reply == "午後8時でよろしいでしょうか。"
    reply = rules.reply("はい")
    assert tools.state.slots.time == dt.time(20) and "何名様" in reply


def test_a_wrong_guess_denied_asks_the_question_again_and_a_guess_is_used_once(cfg):
    tools, rules = _guessing(cfg)
    tools.state.guess = "22時です"
    assert rules.reply("水落ちです") == "午後10時でよろしいでしょうか。"
    reply = rules.reply("いいえ")
    assert tools.state.slots.time is None and "何時ごろ" in reply
    reply = rules.reply("水落ちです")  # no guess this time: the usual re-ask
    assert "もう一度" in reply and tools.state.pending is None
    tools.state.guess = "19時です"
    rules.reply("水落ちです")
    assert rules.reply("19時半です") and tools.state.slots.time == dt.time(19, 30)  # the answer said again wins


def test_a_guess_as_likely_as_another_value_is_asked_about_only_before_giving_up(cfg):
    """Whisper wrote 「日々です」 for 20時 and found 20時です and 20時半です about as likely: the
    question is asked again first; heard the same way again, the best is asked about rather than
    given up on. Two near guesses that say the same value are one guess."""
    tools, rules = _guessing(cfg)
    tools.state.guess, tools.state.guess_also = "20時です", "20時半です"
    reply = rules.reply("日々です")
    assert "もう一度" in reply and tools.state.pending is None
    tools.state.guess, tools.state.guess_also = "20時です", "20時半です"
    assert rules.reply("日々です") == "午後8時でよろしいでしょうか。"
    rules.reply("はい")
    assert tools.state.slots.time == dt.time(20)
    tools, rules = _guessing(cfg)
    tools.state.guess, tools.state.guess_also = "20時です", "夜の20時です"
    assert rules.reply("日々です") == "午後8時でよろしいでしょうか。"


def test_a_common_surname_guessed_for_a_name_heard_otherwise_is_asked_about(cfg):
    """Whisper wrote 「小話」 and found 小林 nearly as likely: the bot asks about 小林."""
    from pipeline.dialog.rules import RulesAgent

    tools = desk(cfg)
    rules = RulesAgent(tools)
    rules.greeting()
    assert "お名前" in rules.reply("12月24日の19時に3名で")
    tools.state.guess = "小林です"
    assert rules.reply("小話です") == "お名前はコバヤシ様でよろしいでしょうか。"
    rules.reply("はい")
    assert tools.state.slots.name == "小林"
    tools2 = desk(cfg)
    rules2 = RulesAgent(tools2)
    rules2.greeting()
    rules2.reply("12月24日の19時に3名で")
    tools2.state.guess = "小林です"
    assert rules2.reply("小話です") == "お名前はコバヤシ様でよろしいでしょうか。"
    reply = rules2.reply("いいえ")
    assert tools2.state.slots.name is None and "お名前" in reply and "コバヤシ" not in reply
    tools2.state.guess = "小林です"  # the same mishearing again: the guess was refused, the name is taken
    assert rules2.reply("小話です").startswith("コバナシ様ですね")


def _told(cfg, *lines):
    """A rules agent on a fresh desk, greeted and told ``lines``."""
    from pipeline.dialog.rules import RulesAgent

    tools = desk(cfg)
    rules = RulesAgent(tools)
    rules.greeting()
    for line in lines:
        rules.reply(line)
    return tools, rules


def test_no_request_said_to_the_read_back_drops_a_request_taken_from_other_words(cfg):
    """A caller still answering the request question (「特にありません」) at the read-back: the request
    the bot took from a mishearing is dropped and the booking read back again, not re-asked until the
    bot gives up; the booking still waits for a clear yes."""
    tools, rules = _told(cfg, "12月24日の19時に3名で", "田中です", "090-1234-5678")
    assert "ご予約内容を確認" in rules.reply("窓際の席で")
    reply = rules.reply("特にありません")
    assert tools.state.slots.note in (None, "none") and "ご予約内容を確認" in reply and "窓際" not in reply
    assert tools.state.reservation is None
    assert "承りました" in rules.reply("はい") and tools.state.reservation["note"] is None
    # with no request, the caller did not hear the read-back: it is read again, once, not failed
    tools, rules = _told(cfg, "12月24日の19時に3名で", "田中です", "090-1234-5678", "特にありません")
    assert rules.reply("特にありません").startswith("もう一度申し上げます。ご予約内容を確認")
    assert "承りました" in rules.reply("はい")


@pytest.mark.parametrize("question,topic", [
    ("通社長がありますか?", "parking"), ("エーギョージカンは何時ですか", "hours"),  # whisper's kanji, by sound
    ("駐車場はありますか", "parking"), ("中止ありますか", None), ("明日空いてますか", None),
    ("渡辺ですか", None), ("通社長です", None),  # no keyword near, or no question
])
def test_a_question_is_matched_to_the_faq_by_its_sound_when_whisper_wrote_other_kanji(cfg, question, topic):
    match = FAQ(cfg.restaurant.faq).match(question, "ja")
    assert (match.id if match else None) == topic


def test_a_doubtful_name_confirmed_is_kept_as_it_was_read_back(cfg):
    """「山だで」 (whisper's 山田です) read back as ヤマダ and confirmed was booked as 山 (ヤマ): the name
    was parsed a second time and its last kana taken for a copula."""
    from pipeline.dialog.rules import RulesAgent

    tools = desk(cfg)
    rules = RulesAgent(tools)
    rules.greeting()
    rules.reply("12月24日の19時に3名で")
    assert rules.reply("山だで。") == "お名前はヤマダ様でよろしいでしょうか。"
    assert rules.reply("はい").startswith("ヤマダ様ですね") and tools.state.slots.name == "山だ"


def test_a_value_said_again_at_the_read_back_is_taken_as_misheard_and_asked_for_once_more(cfg):
    """Whisper heard 「いいえ、12月5日です」 as 「12月1日です」 each time: the bot changed the date to
    12/1, read it back, heard 「12月1日です」 again and read it back again (the voice eval booked 12/1)."""
    tools, rules = _told(cfg, "12月12日の12時に2名で", "山田です", "090-1234-5678")
    assert "ご予約内容を確認" in rules.reply("特にありません")
    assert "12月1日" in rules.reply("12月1日です")  # a new date at the read-back: taken, read back
    reply = rules.reply("12月1日です")  # the same again instead of a yes: the caller is correcting it
    assert reply.startswith("失礼いたしました。ご来店日をもう一度") and tools.state.asking == "date"
    assert tools.state.heard_wrong == {"date": [repr(dt.date(2026, 12, 1))]}
    tools.state.guess = "12月1日です"  # not guessed
    assert "12月1日" not in rules.reply("じゅうにがつ")
    assert "もう一度" in rules.reply("12月1日です") and tools.state.asking == "date"  # not taken the next time
    assert "12月5日" in rules.reply("12月5日です") and tools.state.slots.date == dt.date(2026, 12, 5)
    assert "承りました" in rules.reply("はい") and tools.state.reservation["date"] == "2026-12-05"
    # a yes with the value is no correction
    tools2, rules2 = _told(cfg, "12月12日の12時に2名で", "山田です", "090-1234-5678", "特にありません")
    assert "もう一度" not in rules2.reply("はい、12月12日です") and not tools2.state.heard_wrong
    # a caller who means the value read back ("no, make it three" to a booking for three) gets it
    tools3, rules3 = _told(cfg, "12月12日の12時に3名で", "山田です", "090-1234-5678", "特にありません")
    assert "もう一度" in rules3.reply("いいえ、3名です")
    assert "もう一度" in rules3.reply("3名です")
    assert "ご予約内容を確認" in rules3.reply("3名です") and tools3.state.slots.party_size == 3


@pytest.mark.parametrize("decline", ["今日は結構です。", "以上です", "結構です"])
def test_a_caller_who_only_asked_a_question_and_declines_is_asked_whether_to_stop(cfg, decline):
    """「今日は結構です」 was booked as today's date, and 「以上です」 re-asked the date until the bot gave up."""
    tools, rules = _told(cfg, "駐車場はありますか")
    assert rules.reply(decline) == "ご予約のお手続きをおやめになりますか。" and tools.state.slots.date is None
    assert "またのお電話をお待ちしております" in rules.reply("はい") and tools.state.ended


@pytest.mark.parametrize("lang,lines,correction,party", [
    ("ja", ("12月18日の19時に3名", "伊藤です"), "いや、人数は4名です。", 4),
    ("en", ("a table on December 18th at 8pm", "2 people", "my name is David Lee"), "No, make it free people.", 3),
])
def test_a_no_to_the_callers_own_number_with_a_correction_after_it_changes_that_and_offers_the_number_again(
        cfg, lang, lines, correction, party):
    """The no was about the party size that follows it: it was taken as declining the number offered and
    the party size dropped (voice eval)."""
    from pipeline.dialog.rules import RulesAgent

    tools = desk(cfg)
    tools.state.language = lang
    tools.state.caller_id = "09011112222"
    rules = RulesAgent(tools)
    rules.greeting()
    for line in lines:
        rules.reply(line)
    assert tools.state.pending == {"kind": "caller_id"}
    reply = rules.reply(correction)
    assert tools.state.slots.party_size == party and tools.state.pending == {"kind": "caller_id"}
    assert ("2222" in reply or "ニー、ニー、ニー、ニー" in reply or "two two two two" in reply)
    rules.reply("はい" if lang == "ja" else "yes")
    assert tools.state.slots.phone == "09011112222"


def test_no_requests_said_to_an_english_read_back_drops_a_misheard_request(cfg):
    tools, rules = _told(cfg, "a table on December 24th at 7pm for 2", "my name is John Smith", "090-1234-5678")
    tools.state.language = "en"
    assert rules.reply("Nor it went.") == "No special requests, is that right?"  # short, naming nothing
    assert "requests" in rules.reply("no")  # the caller had one: asked again, and taken this time
    assert "the request: Nor it went. Is that" in rules.reply("Nor it went.")  # one full stop, not two
    reply = rules.reply("No requests")
    assert tools.state.slots.note in (None, "none") and "Let me read that back" in reply and "Nor it" not in reply


def test_a_request_the_recogniser_guessed_was_none_is_asked_about(cfg):
    """"no requests" heard as 「Nor it went.」 (short, naming nothing requests are about) or with a
    none found nearly as likely: the bot asks whether there are none instead of filing the words as
    the request; a no keeps the request question, and the question is not asked again."""
    from pipeline.dialog.rules import RulesAgent

    tools = desk(cfg, language="en")
    rules = RulesAgent(tools)
    rules.greeting()
    for line in ("December 24th at 7 pm for 2 people", "my name is John Smith", "090 1234 5678"):
        rules.reply(line)
    assert tools.state.asking == "note"
    tools.state.guess = "no requests"
    assert rules.reply("Nor it went.") == "No special requests, is that right?"
    reply = rules.reply("yes")
    assert tools.state.slots.note is None and tools.state.slots.note_done  # no request
    assert tools.state.awaiting_confirmation and "Nor" not in reply
    tools, rules = _told(cfg, "12月24日の19時に2名で", "山田です", "09012345678です")
    assert tools.state.asking == "note"
    tools.state.guess = "特にありません"
    assert rules.reply("きょうです。") == "特にご要望はないということでよろしいでしょうか。"
    assert "ご要望" in rules.reply("いいえ") and not tools.state.slots.note_done
    tools.state.guess = "特にありません"
    rules.reply("きょうです。")
    assert tools.state.slots.note and "きょう" in tools.state.slots.note
    tools, rules = _told(cfg, "12月24日の19時に2名で", "山田です", "09012345678です")
    assert "ご要望を承りました" in rules.reply("窓際の席をお願いします")  # a request naming what it is about
    tools, rules = _told(cfg, "12月24日の19時に2名で", "山田です", "09012345678です")
    assert rules.reply("きょうです。") == "特にご要望はないということでよろしいでしょうか。"  # no guess needed
    tools, rules = _told(cfg, "12月24日の19時に2名で", "山田です", "09012345678です")
    assert "ご予約内容を確認" in rules.reply("特にないです")  # a none as said is not asked about


def test_a_value_refused_and_heard_again_is_taken_as_misheard(cfg):
    """"7 pm" heard as "11 pm" at every try (voice eval en-01): told the restaurant takes no booking
    then, a caller does not ask for it again; the second time it is heard the recogniser is told to
    weigh the other times (``heard_wrong``), framed in the caller's sentence."""
    from pipeline.dialog.rules import RulesAgent
    from pipeline.dialog.understand.sound import expectation

    tools = desk(cfg, language="en")
    rules = RulesAgent(tools)
    rules.greeting()
    rules.reply("Hi, I'd like a table on December 24th at 11 pm for 2.")
    assert tools.state.slots.time is None and not tools.state.heard_wrong.get("time")
    rules.reply("Hi, I'd like a table on December 24th at 11 pm for 2.")
    assert tools.state.heard_wrong["time"] == [repr(dt.time(23))]
    expect = expectation("time", "en", today=NOW.date(), hours=range(11, 22),
                         heard_wrong=tuple(tools.state.heard_wrong["time"]))
    assert "Hi, I'd like a table on December 24th at 7 pm for 2." in expect(
        "Hi, I'd like a table on December 24th at 11 pm for 2.")
    # heard the same way a third time: not taken, the rest said back in English, the time asked for
    reply = rules.reply("Hi, I'd like a table on December 24th at 11 pm for 2.")
    assert reply.startswith("Thursday, December 24th, 2 people") and "、" not in reply and "time" in reply
