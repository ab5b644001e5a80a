"""The LLM agent's turn answered ahead, on the caller's words at a pause, through the real openai
client and a real OpenAI-protocol server on loopback: replayed when the turn ends on the same
words, its request closed when the caller goes on, never a booking made ahead, and a failure ahead
leaving the turn to run as usual.

The clock is fixed at Tuesday 2026-12-01 10:00 in Tokyo.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from zoneinfo import ZoneInfo

import pytest

from pipeline.agents.factory import make_clock, new_agent, open_services
from pipeline.agents.llm import LLMAgent
from pipeline.config import load_config
from pipeline.sim.openai_server import ScriptedOpenAI, Step, booking_policy, error, text, tool
from pipeline.store import ReservationStore
from pipeline.voice.speculation import ReadOnlyStore

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
WORDS = "12月24日の19時に3名でお願いします"
DETAILS = {"date": "12月24日", "time": "19時", "party_size": "3名"}
ASK_NAME = "12月24日の19時に3名様ですね。お名前をお伺いできますか。"


@pytest.fixture
def server():
    with ScriptedOpenAI() as s:
        yield s


@pytest.fixture
def call(tmp_path, server):
    made = []

    def start(db: str = "r.db") -> LLMAgent:
        environ = {"VOICEBOT__STORE__URL": f"sqlite:///{tmp_path}/{db}", "VOICEBOT__LLM__BASE_URL": server.base_url,
                   "VOICEBOT__LLM__TIMEOUT_S": "5"}
        services = open_services(load_config(None, environ=environ))
        made.append(services)
        agent = new_agent(services, kind="llm", clock=make_clock(NOW))
        assert isinstance(agent, LLMAgent)
        agent.greeting()
        return agent

    yield start
    for s in made:
        s.close()


def ahead(agent: LLMAgent, words: str):
    prepared = agent.prepare(words, ReadOnlyStore(agent.tools.store))
    assert prepared is not None
    return prepared


def eventually(check, within_s: float = 10.0) -> bool:
    """A bounded wait for something another thread or the server does (not a timing check)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def without_ids(history: list[dict]) -> list[dict]:
    """The conversation with the server's random tool-call ids left out."""
    out = copy.deepcopy(history)
    for m in out:
        m.pop("tool_call_id", None)
        for c in m.get("tool_calls") or []:
            c.pop("id", None)
    return out


def booked(tmp_path, db: str = "r.db") -> list:
    store = ReservationStore(f"sqlite:///{tmp_path}/{db}")
    try:
        return store.all()
    finally:
        store.close()


# ---------------------------------------------------------------------- the same words: replayed
def test_a_turn_answered_ahead_is_replayed_when_the_words_match(call, server):
    agent = call()
    server.add(tool("update_reservation", DETAILS), text(ASK_NAME))
    before_state, before_history = copy.deepcopy(agent.state), copy.deepcopy(agent.history)
    prepared = ahead(agent, WORDS)
    assert prepared.wait(10)
    assert prepared.outcome == "finished" and prepared.reply == ASK_NAME
    assert len(server.requests) == 2  # the tool round and the reply, both asked ahead
    # nothing of the call changed ahead
    assert agent.state == before_state and agent.history == before_history

    reply = "".join(agent.respond(WORDS))  # the turn, committed on the same words
    assert reply == ASK_NAME
    assert len(server.requests) == 2, "the committed turn asked the model nothing more"
    assert agent.state.slots.date == dt.date(2026, 12, 24) and agent.state.slots.party_size == 3

    # the state ends exactly as if the turn had been run normally
    server.add(tool("update_reservation", DETAILS), text(ASK_NAME))
    normal = call("normal.db")
    assert "".join(normal.respond(WORDS)) == ASK_NAME
    assert normal.state == agent.state
    assert without_ids(normal.history) == without_ids(agent.history)

    # and the next turn goes on from there with the model
    server.add(text("田中様ですね。"))
    assert "".join(agent.respond("田中です")) == "田中様ですね。"
    assert without_ids(server.requests[-1]["messages"][1:-1]) == without_ids(agent.history[:-2])


def test_the_committed_turn_follows_a_reply_still_streaming_ahead(call, server):
    agent = call()
    # the model is slow to start and slow to stream: the turn ends while the reply is on its way
    server.add(tool("update_reservation", DETAILS), text(ASK_NAME, ttft_s=0.5, piece_delay_s=0.05))
    prepared = ahead(agent, WORDS)
    assert eventually(lambda: len(server.requests) == 2)
    reply = "".join(agent.respond(WORDS))
    assert reply == ASK_NAME
    assert len(server.requests) == 2 and not server.cancelled
    assert prepared.outcome == "finished"
    assert agent.state.slots.time == dt.time(19, 0)


# ---------------------------------------------------------------------- the caller goes on: cancelled
def test_when_the_caller_goes_on_the_request_ahead_is_closed_and_nothing_is_kept(call, server):
    agent = call()
    before_state, before_history = copy.deepcopy(agent.state), copy.deepcopy(agent.history)
    server.add(Step(text="12月24日ですね。", ttft_s=30))  # the model has not answered yet
    prepared = ahead(agent, "12月24日の")
    assert eventually(lambda: len(server.requests) == 1)
    agent.drop_prepared()  # the caller went on
    assert eventually(lambda: len(server.cancelled) == 1), "the server saw the request closed"
    assert prepared.wait(10) and prepared.outcome == "cancelled"
    assert not server.completed
    assert agent.state == before_state and agent.history == before_history


def test_a_turn_on_other_words_cancels_the_one_ahead_and_runs_on_its_own(call, server):
    agent = call()
    server.add(Step(text="12月24日ですね。", ttft_s=30))
    prepared = ahead(agent, "12月24日の")
    assert eventually(lambda: len(server.requests) == 1)
    server.add(tool("update_reservation", DETAILS), text(ASK_NAME))
    assert "".join(agent.respond(WORDS)) == ASK_NAME
    assert eventually(lambda: len(server.cancelled) == 1)
    assert prepared.outcome == "cancelled"
    assert len(server.requests) == 3
    # what the model was asked in the committed turn is the committed words only
    assert server.requests[1]["messages"][-1] == {"role": "user", "content": WORDS}
    assert all("12月24日ですね。" != m.get("content") for m in agent.history)


def test_a_turn_prepared_on_an_older_conversation_is_not_replayed(call, server):
    agent = call()
    server.add(text("はい、どうぞ。"))
    prepared = ahead(agent, "もしもし")
    assert prepared.wait(10) and prepared.outcome == "finished"
    server.add(text("ご用件をどうぞ。"))
    assert "".join(agent.respond("こんにちは")) == "ご用件をどうぞ。"  # another turn came first
    server.add(text("はい、聞こえております。"))
    assert "".join(agent.respond("もしもし")) == "はい、聞こえております。"
    assert len(server.requests) == 3


# ---------------------------------------------------------------------- no booking ahead
def test_no_booking_is_made_ahead_and_the_committed_turn_books_once(call, server, tmp_path):
    agent = call()
    server.responder = booking_policy("ja")
    for words in ("12月24日", "19時", "3名", "田中です", "090-1234-5678", "特にありません"):
        assert "".join(agent.respond(words)).strip()
    assert agent.state.awaiting_confirmation
    before_state, asked = copy.deepcopy(agent.state), len(server.requests)

    prepared = ahead(agent, "はい")
    assert prepared.wait(10)
    assert prepared.outcome == "stopped", "it stops at confirm_booking"
    assert len(server.requests) == asked + 1
    assert booked(tmp_path) == [] and agent.state == before_state

    reply = "".join(agent.respond("はい"))
    assert len(booked(tmp_path)) == 1 and agent.state.reservation is not None
    assert str(agent.state.reservation["id"]) in reply
    # the confirm_booking round was replayed: only the announcement was asked now
    assert len(server.requests) == asked + 2


# ---------------------------------------------------------------------- failures ahead
def test_a_failure_ahead_leaves_the_turn_to_the_model_as_usual(call, server):
    agent = call()
    server.add(error(500))
    prepared = ahead(agent, WORDS)
    assert prepared.wait(10) and prepared.outcome == "failed"
    server.add(tool("update_reservation", DETAILS), text(ASK_NAME))
    assert "".join(agent.respond(WORDS)) == ASK_NAME
    assert len(server.requests) == 3
    assert agent.state.slots.date == dt.date(2026, 12, 24)


def test_when_the_model_fails_ahead_and_again_the_rules_agent_answers(call, server):
    agent = call()
    server.add(error(500))
    prepared = ahead(agent, WORDS)
    assert prepared.wait(10) and prepared.outcome == "failed"
    server.add(error(500), error(500))  # the committed turn's request and its retry
    reply = "".join(agent.respond(WORDS))
    assert reply.strip(), "the caller always gets an answer"
    assert agent.state.slots.date == dt.date(2026, 12, 24), "the rules agent took the date"
    assert agent.state.turn == 1
