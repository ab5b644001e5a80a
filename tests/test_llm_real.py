"""The LLM agent on a real, small model: Gemma 3 270M (GGUF Q4_K_M) on llama-cpp-python's OpenAI-compatible
server on 127.0.0.1, driven by simulated callers typed into ``voicebot chat``'s code.

The model and the server are built once by ``scripts/real_llm.py build`` into
``${VOICEBOT_CACHE:-~/.cache/voicebot}/real-models`` (scripts/test.sh does it before pytest). A weak model
may fail to book; what is asserted is what must hold whatever the model does: nothing is booked that the
caller did not ask for, and every line the caller says gets an answer. Without the build these tests fail
and say what to run; ``VOICEBOT_TEST_REAL_MODELS=0`` skips them instead. The judging itself is checked on
its own, without the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from real_llm import LlamaServer, RealLLMMissing, judge, llm_config, locate, run_calls
from real_models import SKIP_ENV

from pipeline.config import load_config
from pipeline.sim.personas import PersonaSet, load_personas

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-12-01T10:00"

CALLERS = [
    {"id": "ja-book", "booking": {"date": "+1", "time": "19:00", "party": 3, "name": "田中", "phone": "090-1234-5678"},
     "open": "明日の夜7時に3名でお願いします", "gives": ["date", "time", "party"], "says": {"name": "田中です"}},
    {"id": "en-book", "language": "en",
     "booking": {"date": "12-18", "time": "20:00", "party": 2, "name": "John Smith", "phone": "090-1515-1616"},
     "open": "Hi, I'd like a table on December 18th at 8 pm for two", "gives": ["date", "time", "party"],
     "says": {"name": "my name is John Smith"}},
    {"id": "ja-faq", "wants": "nothing", "open": "すみません、駐車場はありますか",
     "says": {"no_booking": "いえ、今日は結構です。以上です"}, "min_turns": 2},
]


def _callers() -> PersonaSet:
    """Three short calls, with the shipped persona file's cues and default lines."""
    shipped = load_personas().model_dump()
    return PersonaSet.model_validate({"cues": shipped["cues"], "defaults": shipped["defaults"], "personas": CALLERS})


@pytest.fixture(scope="module")
def server():
    try:
        llm = locate()
    except RealLLMMissing as e:
        if os.environ.get(SKIP_ENV) == "0":
            pytest.skip(f"{SKIP_ENV}=0: {e}")
        pytest.fail(str(e), pytrace=False)
    with LlamaServer(llm) as srv:
        yield srv


@pytest.fixture(scope="module")
def calls(server, tmp_path_factory):
    base = load_config(ROOT / "config.yaml", environ={})
    cfg = llm_config(base, server.base_url, f"sqlite:///{tmp_path_factory.mktemp('db') / 'r.db'}")
    # this model rambles to the token cap when let; a shorter cap keeps the test's turns to seconds
    cfg.llm.max_tokens = 64
    pset = _callers()
    return run_calls(cfg, pset, list(pset.personas), now=NOW, max_lines=12)


def _transcript(report) -> str:
    return "\n".join(f"  caller: {t.user}\n  bot ({t.by}): {t.bot}" for t in report.turns)


def test_nothing_is_booked_that_the_caller_did_not_ask_for(calls):
    assert len(calls) == len(CALLERS)
    for r in calls:
        assert r.outcome in ("right", "not done"), f"{r.persona}: {r.why}; in the database: {r.booked}\n{_transcript(r)}"


def test_every_caller_line_is_answered(calls):
    for r in calls:
        assert r.turns, r.persona
        silent = [t.user for t in r.turns if not t.bot.strip()]
        assert not silent, f"{r.persona}: no answer to {silent}\n{_transcript(r)}"


def test_the_real_model_answers_turns_itself(calls):
    # the server was really used: some turns are the model's own words, not the rules agent's
    assert any(t.by == "llm" for r in calls for t in r.turns), "\n".join(_transcript(r) for r in calls)


# ------------------------------------------------------------------------------ the judging, without the model
BOOKING = {"id": "R-AAAAAA", "date": "2026-12-02", "time": "19:00", "party_size": 3, "name": "田中",
           "phone": "09012345678", "note": None}


def test_judge_a_booking_as_asked_is_right_and_none_is_not_done():
    wanted = {k: v for k, v in BOOKING.items() if k != "id"}
    assert judge("book", wanted, None, {}, {"R-AAAAAA": BOOKING}, "ja")[0] == "right"
    assert judge("book", wanted, None, {}, {"R-AAAAAA": {**BOOKING, "name": "タナカ"}}, "ja")[0] == "right"
    assert judge("book", wanted, None, {}, {}, "ja")[0] == "not done"


@pytest.mark.parametrize("got", [{"party_size": 2}, {"time": "20:00"}, {"phone": "09012345679"},
                                 {"name": "鈴木"}, {"note": "窓際の席"}])
def test_judge_a_booking_with_anything_else_is_wrong(got):
    wanted = {k: v for k, v in BOOKING.items() if k != "id"}
    outcome, why = judge("book", wanted, None, {}, {"R-AAAAAA": {**BOOKING, **got}}, "ja")
    assert outcome == "wrong" and why


def test_judge_touching_other_bookings_is_wrong():
    other = {**BOOKING, "id": "R-BBBBBB"}
    assert judge("nothing", None, None, {}, {"R-AAAAAA": BOOKING}, "ja")[0] == "wrong"
    assert judge("cancel", BOOKING, "R-AAAAAA", {"R-AAAAAA": BOOKING, "R-BBBBBB": other},
                 {"R-AAAAAA": BOOKING}, "ja")[0] == "wrong"
    assert judge("cancel", BOOKING, "R-AAAAAA", {"R-AAAAAA": BOOKING}, {}, "ja")[0] == "right"
    changed = {**BOOKING, "time": "20:00"}
    assert judge("change", changed, "R-AAAAAA", {"R-AAAAAA": BOOKING}, {"R-AAAAAA": changed}, "ja")[0] == "right"
    assert judge("change", changed, "R-AAAAAA", {"R-AAAAAA": BOOKING},
                 {"R-AAAAAA": {**BOOKING, "time": "21:00"}}, "ja")[0] == "wrong"
    assert judge("change", changed, "R-AAAAAA", {"R-AAAAAA": BOOKING}, {}, "ja")[0] == "wrong"
    assert judge("change", changed, "R-AAAAAA", {"R-AAAAAA": BOOKING}, {"R-AAAAAA": BOOKING}, "ja")[0] == "not done"
