"""The LLM agent through the real openai client, a real OpenAI-protocol server on loopback and a real
reservations database: what the scripted model does and what actually gets booked.

The clock is fixed at Tuesday 2026-12-01 10:00 in Tokyo.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from zoneinfo import ZoneInfo

import pytest

from pipeline.agents.factory import make_clock, new_agent, open_services
from pipeline.agents.llm import _TOO_MANY_STEPS, MAX_HISTORY, LLMAgent
from pipeline.cli import run_chat
from pipeline.config import load_config
from pipeline.dialog.rules import PHRASES
from pipeline.sim.openai_server import ScriptedOpenAI, Step, booking_policy, error, hang, text, tool, tools
from pipeline.store import ReservationStore

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
FULL = {"date": "12月24日", "time": "19時", "party_size": "3名", "name": "田中です", "phone": "090-1234-5678",
        "note": "特にありません"}


@pytest.fixture
def server():
    with ScriptedOpenAI() as s:
        yield s


def make_cfg(tmp_path, server, **llm):
    environ = {"VOICEBOT__STORE__URL": f"sqlite:///{tmp_path}/r.db", "VOICEBOT__LLM__BASE_URL": server.base_url,
               "VOICEBOT__LLM__TIMEOUT_S": "0.5"}
    environ.update({f"VOICEBOT__LLM__{k.upper()}": str(v) for k, v in llm.items()})
    return load_config(None, environ=environ)


@pytest.fixture
def call(tmp_path, server):
    """An LLM agent for one call, with its services closed afterwards."""
    made = []

    def start(**llm) -> LLMAgent:
        services = open_services(make_cfg(tmp_path, server, **llm))
        made.append(services)
        agent = new_agent(services, kind="llm", clock=make_clock(NOW))
        assert isinstance(agent, LLMAgent)
        return agent

    yield start
    for s in made:
        s.close()


def say(agent, words: str) -> list[str]:
    return list(agent.respond(words))


def booked(tmp_path) -> list:
    store = ReservationStore(f"sqlite:///{tmp_path}/r.db")
    try:
        return store.all()
    finally:
        store.close()


def last_tool_result(body: dict) -> dict:
    msg = body["messages"][-1]
    assert msg["role"] == "tool", msg
    return json.loads(msg["content"])


def say_read_back(body: dict) -> Step:
    return text(last_tool_result(body)["say_exactly"])


def announce_booking(body: dict) -> Step:
    result = last_tool_result(body)
    assert result["ok"], result
    return text(f"ご予約を承りました。予約番号は{result['reservation']['id']}です。")


# ---------------------------------------------------------------------- the happy path
def test_a_whole_booking_by_the_model_lands_in_the_database(call, server, tmp_path):
    agent = call()
    greeting = agent.greeting()
    assert greeting and not server.requests, "the greeting needs no LLM call"
    server.add(
        tool("update_reservation", {"date": "12月24日", "time": "夜7時", "party_size": "3名"}),
        text("かしこまりました。ご予約のお名前をお伺いできますか。"),
        tool("update_reservation", {"name": "田中です"}), text("お電話番号をお願いいたします。"),
        tool("update_reservation", {"phone": "090-1234-5678"}), text("何かご要望はございますか。"),
        tool("update_reservation", {"note": "特にありません"}), tool("read_back_reservation"), say_read_back,
        tool("confirm_booking"), announce_booking,
    )
    first = say(agent, "12月24日の夜7時に3名でお願いします")
    assert "".join(first) == "かしこまりました。ご予約のお名前をお伺いできますか。"
    assert len(first) > 1, "text deltas must stream, not arrive as one block"
    # the model's raw phrases were parsed by the tools
    assert last_tool_result(server.requests[1])["applied"] == {"date": "2026-12-24", "time": "19:00", "party_size": 3}
    say(agent, "田中です")
    say(agent, "090-1234-5678")
    readback = "".join(say(agent, "特にありません"))
    assert "以上でよろしいでしょうか" in readback and agent.state.awaiting_confirmation
    assert booked(tmp_path) == [], "nothing is booked before the caller's yes"
    reply = "".join(say(agent, "はい"))
    rows = booked(tmp_path)
    assert len(rows) == 1
    r = rows[0]
    assert (r.date, r.time, r.party_size, r.name, r.phone, r.note) == (
        dt.date(2026, 12, 24), dt.time(19, 0), 3, "田中", "09012345678", None)
    assert agent.state.reservation["id"] == r.id and r.id in reply
    assert server.errors == []


def test_requests_carry_the_tools_the_model_and_streaming(call, server):
    agent = call(model="my-model", temperature=0.1, max_tokens=123)
    agent.greeting()
    server.add(text("はい。"))
    say(agent, "もしもし")
    body = server.requests[0]
    assert body["model"] == "my-model" and body["stream"] is True
    assert body["temperature"] == 0.1 and body["max_tokens"] == 123
    names = {t["function"]["name"] for t in body["tools"]}
    assert {"update_reservation", "read_back_reservation", "confirm_booking", "answer_faq", "end_call"} <= names
    assert [m["role"] for m in body["messages"]] == ["system", "assistant", "user"]
    assert body["messages"][1]["content"] == PHRASES["ja"]["greeting"].format(name="AI-SHIFT")


def test_system_prompt_names_the_restaurant_today_and_the_rules(call, server):
    agent = call()
    server.add(text("はい。"))
    say(agent, "もしもし")
    prompt = server.requests[0]["messages"][0]["content"]
    for needle in ("AI-SHIFT", "2026-12-01", "Tuesday", "11:00-22:00", "10:00-23:00", "12-29", "1 to 4",
                   "read_back_reservation", "say_exactly", "confirm_booking", "answer_faq", "end_call",
                   "update_reservation", "Japanese", "markdown"):
        assert needle in prompt, needle


def test_text_is_yielded_as_it_arrives(call, server):
    agent = call()
    server.add(text("一二三四五六七八九十" * 2, piece_chars=2, piece_delay_s=0.05))
    started = time.monotonic()
    gen = agent.respond("もしもし")
    first = next(gen)
    first_at = time.monotonic() - started
    rest = list(gen)
    total = time.monotonic() - started
    assert first and rest and "".join([first, *rest]) == "一二三四五六七八九十" * 2
    assert total > 0.4 and first_at < total / 2, (first_at, total)


# ---------------------------------------------------------------------- the booking guard
def test_confirm_booking_without_a_read_back_books_nothing(call, server, tmp_path):
    agent = call()
    server.add(tool("update_reservation", FULL), tool("confirm_booking"), text("確認いたします。"))
    assert "".join(say(agent, "はい、12月24日19時3名、田中、09012345678、要望なしで予約お願いします")) == "確認いたします。"
    result = last_tool_result(server.requests[2])
    assert result["ok"] is False and result["code"] == "not_read_back"
    assert booked(tmp_path) == [] and agent.state.reservation is None


def test_confirm_booking_in_the_read_back_turn_books_nothing(call, server, tmp_path):
    agent = call()
    server.add(tool("update_reservation", FULL), tool("read_back_reservation"), tool("confirm_booking"),
               text("ご確認をお願いします。"))
    say(agent, "はい、12月24日19時3名、田中、09012345678、要望なし")
    assert last_tool_result(server.requests[3])["code"] == "not_read_back"
    assert booked(tmp_path) == []


def test_confirm_booking_without_the_callers_yes_books_nothing(call, server, tmp_path):
    agent = call()
    server.add(tool("update_reservation", FULL), tool("read_back_reservation"), say_read_back)
    say(agent, "12月24日19時3名、田中、09012345678、要望なし")
    server.add(tool("confirm_booking"), text("よろしいでしょうか。"))
    say(agent, "ちょっと待ってください")
    assert last_tool_result(server.requests[4])["code"] == "no_explicit_yes"
    assert booked(tmp_path) == []
    # the same read-back, and now a real yes
    server.add(tool("confirm_booking"), announce_booking)
    say(agent, "はい、お願いします")
    assert len(booked(tmp_path)) == 1


# ---------------------------------------------------------------------- tool errors are messages
def test_unknown_tool_and_bad_arguments_go_back_to_the_model(call, server):
    agent = call()
    server.add(tool("reserve_table", {"date": "明日"}), tool("update_reservation", '{"date": "明日'),
               tools(("update_reservation", '["not", "an", "object"]'), ("update_reservation", {"date": "明日"})),
               text("明日ですね。何時ごろがよろしいでしょうか。"))
    reply = "".join(say(agent, "明日お願いします"))
    assert reply == "明日ですね。何時ごろがよろしいでしょうか。"
    assert "unknown tool" in last_tool_result(server.requests[1])["error"]
    assert "JSON" in last_tool_result(server.requests[2])["error"]
    results = [json.loads(m["content"]) for m in server.requests[3]["messages"] if m["role"] == "tool"][-2:]
    assert results[0]["ok"] is False and results[1]["ok"] is True
    assert agent.state.slots.date == dt.date(2026, 12, 2)


# ---------------------------------------------------------------------- faults fall back to the rules agent
@pytest.mark.parametrize("fault", [error(500), error(429), error(503), hang(5), Step(ttft_s=5),
                                   Step(text="えっと", malformed=True)],
                         ids=["500", "429", "503", "hang-mid-stream", "hang-before-headers", "malformed-stream"])
def test_a_failing_llm_turn_is_answered_by_the_rules_agent(call, server, fault, caplog):
    agent = call()
    agent.greeting()
    # the request and its one retry (text already said is never retried)
    server.add(*([fault] if fault.malformed else [fault, fault]))
    started = time.monotonic()
    reply = "".join(say(agent, "12月24日でお願いします"))
    # not a speed test: a hung server must not hold the caller past the silence budget (2 s)
    assert time.monotonic() - started < 3
    assert reply.strip(), "the caller always gets an answer"
    assert agent.state.slots.date == dt.date(2026, 12, 24), "the rules agent took the date"
    assert agent.state.turn == 1, "the turn is counted once"
    assert any(agent.tools.call_id in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    if fault.malformed:
        assert reply.startswith("えっと"), "text already said stays"
    # the next turn goes to the model again, which sees the fallback's reply in the history
    server.add(text("19時ですね。何名様でしょうか。"))
    assert "".join(say(agent, "19時で")) == "19時ですね。何名様でしょうか。"
    retried = 1 if fault.malformed else 2  # text already said is never retried
    assert len(server.requests) == retried + 1
    history = server.requests[-1]["messages"]
    assert history[-2] == {"role": "assistant", "content": reply}


@pytest.mark.parametrize("fault", [error(500), error(429), Step(ttft_s=5)], ids=["500", "429", "slow-first-token"])
def test_a_failed_request_is_retried_once_within_the_budget(call, server, fault):
    agent = call()
    agent.greeting()
    server.add(fault, tool("update_reservation", {"date": "12月24日"}), text("12月24日ですね。何時ごろがよろしいですか。"))
    reply = "".join(say(agent, "12月24日でお願いします"))
    assert reply == "12月24日ですね。何時ごろがよろしいですか。", "the model's answer, after one retry"
    assert len(server.requests) == 3
    assert agent.state.slots.date == dt.date(2026, 12, 24)


def test_after_two_failed_turns_the_rules_agent_finishes_the_call(call, server):
    agent = call()
    agent.greeting()
    server.add(error(500), error(500), error(503), error(503))
    assert "".join(say(agent, "12月24日でお願いします")).strip()
    assert "".join(say(agent, "19時で")).strip()
    assert agent.degraded
    asked = len(server.requests)
    reply = "".join(say(agent, "2名です"))
    assert len(server.requests) == asked, "no more requests to a model that keeps failing"
    assert "名様" in reply and agent.state.slots.party_size == 2
    assert agent.state.slots.date == dt.date(2026, 12, 24) and agent.state.slots.time == dt.time(19)


def test_a_model_that_never_records_details_is_replaced_by_the_rules_agent(call, server):
    agent = call()
    agent.greeting()
    server.add(text("かしこまりました。"), text("承知しました。"))
    say(agent, "12月24日でお願いします")
    assert not agent.degraded
    say(agent, "19時で")
    assert agent.degraded == "the model does not call the tools"
    assert agent.state.slots.time == dt.time(19), "the ignored details were recorded"
    asked = len(server.requests)
    say(agent, "12月24日の19時に2名です")
    assert len(server.requests) == asked
    assert agent.state.slots.date == dt.date(2026, 12, 24) and agent.state.slots.party_size == 2


def test_an_unreachable_server_falls_back(tmp_path, server):
    cfg = make_cfg(tmp_path, server)
    server.stop()
    services = open_services(cfg)
    try:
        agent = new_agent(services, kind="llm", clock=make_clock(NOW))
        agent.greeting()
        assert "".join(agent.respond("12月24日")).strip()
        assert agent.state.slots.date == dt.date(2026, 12, 24)
    finally:
        services.close()


def test_booking_then_fault_still_announces_the_reservation(call, server, tmp_path):
    agent = call()
    server.add(tool("update_reservation", FULL), tool("read_back_reservation"), say_read_back)
    say(agent, "12月24日19時3名、田中、09012345678、要望なし")
    server.add(tool("confirm_booking"), error(500))
    reply = "".join(say(agent, "はい"))
    rows = booked(tmp_path)
    assert len(rows) == 1 and rows[0].id in reply


# ---------------------------------------------------------------------- bounds
def test_max_tool_steps_is_respected(call, server):
    agent = call(max_tool_steps=2)
    server.responder = lambda body: tool("get_reservation_status")
    reply = "".join(say(agent, "予約したいです"))
    assert reply == _TOO_MANY_STEPS["ja"]
    assert len(server.requests) == 3
    assert [b.get("tool_choice") for b in server.requests] == [None, None, "none"]
    tool_msgs = [m for m in agent.history if m["role"] == "tool"]
    assert len(tool_msgs) == 2
    # the history stays valid for the next request: every tool call has its result
    server.responder = None
    server.add(text("はい。"))
    say(agent, "もしもし")
    _assert_valid_history(server.requests[-1]["messages"])


def _assert_valid_history(messages: list[dict]) -> None:
    assert messages[0]["role"] == "system"
    pending: set[str] = set()
    for m in messages[1:]:
        if m["role"] == "tool":
            assert m["tool_call_id"] in pending, m
            pending.discard(m["tool_call_id"])
        else:
            assert not pending, f"tool calls without results before {m}"
            pending = {c["id"] for c in m.get("tool_calls") or []}
    assert not pending


def test_history_is_bounded_without_splitting_tool_rounds(call, server):
    agent = call()
    agent.greeting()

    def responder(body):
        if body["messages"][-1]["role"] == "user":
            return tool("get_reservation_status", say="少々お待ちください。")
        return text("はい、承知しました。")

    server.responder = responder
    for i in range(30):
        assert "".join(say(agent, f"質問{i}です")) == "少々お待ちください。はい、承知しました。"
    for body in server.requests:
        assert len(body["messages"]) <= MAX_HISTORY + 1 + 3
        _assert_valid_history(body["messages"])
    assert len(agent.history) <= MAX_HISTORY and agent.history[0]["role"] == "user"
    assert agent.history[-1]["content"] == "はい、承知しました。"


# ---------------------------------------------------------------------- barge-in
def test_interrupted_rewrites_what_the_model_thinks_it_said(call, server):
    agent = call()
    agent.greeting()
    server.add(text("12月24日ですね。お時間は何時ごろがよろしいでしょうか。ちなみに当店は"))
    say(agent, "12月24日")
    agent.interrupted("12月24日ですね。")
    server.add(text("19時ですね。"))
    say(agent, "19時で")
    messages = server.requests[1]["messages"]
    assert messages[-2] == {"role": "assistant", "content": "12月24日ですね。"}
    assert not any("ちなみに" in (m.get("content") or "") for m in messages)


def test_a_reply_cut_off_mid_stream_keeps_only_what_was_yielded(call, server):
    agent = call()
    server.add(text("一二三四五六七八九十", piece_chars=2))
    gen = agent.respond("もしもし")
    first = next(gen)
    gen.close()  # the caller barged in: the handler stops reading
    agent.interrupted(first)
    server.add(text("はい。"))
    say(agent, "すみません")
    messages = server.requests[1]["messages"]
    assert messages[-2] == {"role": "assistant", "content": first}
    _assert_valid_history(messages)


def test_interrupted_around_tool_calls_keeps_the_history_valid(call, server):
    agent = call()
    server.add(tool("update_reservation", {"date": "12月24日"}, say="確認します。"), text("24日ですね。お時間は？"))
    assert "".join(say(agent, "12月24日")) == "確認します。24日ですね。お時間は？"
    agent.interrupted("確認します。24日")
    server.add(text("はい。"))
    say(agent, "19時")
    messages = server.requests[2]["messages"]
    _assert_valid_history(messages)
    spoken = [m["content"] for m in messages if m["role"] == "assistant" and m.get("content")]
    assert spoken[-2:] == ["確認します。", "24日"]


# ---------------------------------------------------------------------- ending
def test_end_call_finishes_the_turn_and_the_call(call, server):
    agent = call()
    server.add(tool("end_call", {"reason": "caller hung up"}))
    reply = "".join(say(agent, "やっぱりいいです、さようなら"))
    assert reply == PHRASES["ja"]["goodbye"], "a goodbye is said even if the model only called end_call"
    assert agent.state.ended and len(server.requests) == 1
    assert say(agent, "もしもし") == [] and len(server.requests) == 1


def test_end_call_after_text_says_only_the_text(call, server):
    agent = call()
    server.add(tool("end_call", say="お電話ありがとうございました。失礼いたします。"))
    assert "".join(say(agent, "以上です")) == "お電話ありがとうございました。失礼いたします。"
    assert agent.state.ended and len(server.requests) == 1


# ---------------------------------------------------------------------- voicebot chat --agent llm
def test_voicebot_chat_with_the_llm_agent_books(tmp_path, server):
    server.responder = booking_policy("ja")
    cfg = make_cfg(tmp_path, server)
    lines = ["12月24日", "19時", "3名", "田中です", "090-1234-5678", "特にありません", "はい", "以上です"]
    out = io.StringIO()
    code = run_chat(cfg, [x + "\n" for x in lines], out, kind="llm", now=NOW.isoformat(), as_json=True)
    assert code == 0
    turns = [json.loads(x) for x in out.getvalue().splitlines()]
    transcript = "\n".join(f"{t['user']} -> {t['bot']}" for t in turns)
    assert all(t["bot"].strip() for t in turns), transcript
    final = turns[-1]
    assert final["ended"] is True, transcript
    res = final["reservation"]
    assert res and {k: res[k] for k in ("date", "time", "party_size", "name", "phone", "note")} == {
        "date": "2026-12-24", "time": "19:00", "party_size": 3, "name": "田中", "phone": "09012345678",
        "note": None}, transcript
    assert [r.id for r in booked(tmp_path)] == [res["id"]]
    assert res["id"] in " ".join(t["bot"] for t in turns)
    assert server.errors == []


def test_voicebot_chat_with_the_llm_agent_books_in_english(tmp_path, server):
    server.responder = booking_policy("en")
    cfg = make_cfg(tmp_path, server)
    lines = ["December 24th", "7 pm", "three people", "My name is John Smith", "090-1234-5678", "no requests",
             "yes", "that's all"]
    out = io.StringIO()
    code = run_chat(cfg, [x + "\n" for x in lines], out, kind="llm", now=NOW.isoformat(), language="en",
                    as_json=True)
    assert code == 0
    turns = [json.loads(x) for x in out.getvalue().splitlines()]
    transcript = "\n".join(f"{t['user']} -> {t['bot']}" for t in turns)
    res = turns[-1]["reservation"]
    assert res and (res["date"], res["time"], res["party_size"], res["name"]) == (
        "2026-12-24", "19:00", 3, "John Smith"), transcript
    assert "Let me read that back" in transcript and turns[-1]["ended"] is True


def test_a_caller_speaking_english_switches_the_call_to_english(call, server):
    agent = call()
    agent.greeting()
    server.add(text("Of course. What date would you like?"), text("Sure."))
    say(agent, "Hello, I'd like to book a table please")
    assert agent.state.language == "en"
    say(agent, "hmm")
    prompts = [b["messages"][0]["content"] for b in server.requests]
    assert "This call is in English" in prompts[0] and prompts[0] == prompts[1]
