"""The keypad (Twilio's DTMF) as answers, and handing the call to a person."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from pipeline.agents.factory import new_agent, open_services
from pipeline.config import load_config
from pipeline.dialog.keypad import keypad_text
from pipeline.dialog.state import DialogState

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))


@pytest.fixture
def services(tmp_path):
    cfg = load_config(None, environ={"VOICEBOT__STORE__URL": f"sqlite:///{tmp_path}/r.db"})
    s = open_services(cfg)
    yield s
    s.close()


def agent(services, **state):
    a = new_agent(services, kind="rules", clock=lambda: NOW, language="ja")
    for k, v in state.items():
        setattr(a.state, k, v)
    a.greeting()
    return a


def say(a, text):
    return "".join(a.respond(text))


@pytest.mark.parametrize("state,keys,want", [
    (DialogState(asking="phone"), "09012345678#", "09012345678"),
    (DialogState(asking="manage_phone"), "0312345678", "0312345678"),
    (DialogState(asking="confirm", awaiting_confirmation=True), "1", "はい"),
    (DialogState(asking="confirm", awaiting_confirmation=True, language="en"), "2", "no"),
    (DialogState(asking="phone", pending={"kind": "caller_id"}), "1", "はい"),
    (DialogState(asking="phone", pending={"kind": "caller_id"}), "2", "いいえ"),
    (DialogState(asking="phone", pending={"kind": "caller_id"}), "09012345678#", "09012345678"),
    (DialogState(asking="date", pending={"kind": "end"}), "2", "いいえ"),
    (DialogState(asking="party_size"), "3", "3"),
    (DialogState(asking="phone"), "#", None),
])
def test_keys_stand_for_the_answer_the_bot_waits_for(state, keys, want):
    assert keypad_text(state, keys) == want


def test_a_number_typed_on_the_keypad_is_booked(services):
    a = agent(services, keypad=True)
    for line in ("12月24日の19時に3名で", "田中です"):
        say(a, line)
    say(a, keypad_text(a.state, "09012345678#"))
    say(a, "特にありません")
    say(a, keypad_text(a.state, "1"))
    assert a.state.reservation and a.state.reservation["phone"] == "09012345678"


def test_after_a_failed_number_the_bot_offers_the_keypad_on_the_phone(services):
    a = agent(services, keypad=True)
    for line in ("12月24日の19時に3名で", "田中です"):
        say(a, line)
    assert "ボタン" in say(a, "えーと")
    b = agent(services, keypad=False)
    for line in ("12月24日の19時に3名で", "田中です"):
        say(b, line)
    assert "ボタン" not in say(b, "えーと")


def test_asking_for_a_person_transfers_when_the_call_can_be(services):
    a = agent(services, can_transfer=True)
    reply = say(a, "お店の人と話したいです")
    assert "おつなぎいたします" in reply and a.state.transfer_requested and a.state.ended
    b = agent(services, can_transfer=False)
    reply = say(b, "お店の人と話したいです")
    assert "03-1234-5678" in reply and not b.state.transfer_requested and not b.state.ended


def test_giving_up_transfers_when_the_call_can_be(services):
    a = agent(services, can_transfer=True)
    for _ in range(3):
        reply = say(a, "うーん")
    assert a.state.transfer_requested and "おつなぎいたします" in reply
