"""`voicebot chat` and `voicebot reservations` as a user runs them: a real process, stdin, a database file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-12-01T10:00"


def voicebot(*args: str, stdin: str = "", db: Path | None = None, env: dict | None = None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("VOICEBOT__")}
    if db is not None:
        e["VOICEBOT__STORE__URL"] = f"sqlite:///{db}"
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, env=e, timeout=120)


def test_a_booking_made_in_chat_is_in_the_database_after_a_restart(tmp_path):
    db = tmp_path / "r.db"
    script = "明日の19時に3名で\n田中です\n090-1234-5678\n特にありません\nはい\n以上です\n"
    run = voicebot("chat", "--agent", "rules", "--json", "--now", NOW, stdin=script, db=db)
    assert run.returncode == 0, run.stderr
    turns = [json.loads(line) for line in run.stdout.splitlines()]
    assert turns[0]["user"] is None
    assert set(turns[0]) == {"user", "bot", "state", "reservation", "ended"}
    booked = turns[-1]["reservation"]
    assert turns[-1]["ended"] is True
    assert {k: booked[k] for k in ("date", "time", "party_size", "name", "phone", "note")} == {
        "date": "2026-12-02", "time": "19:00", "party_size": 3, "name": "田中", "phone": "09012345678", "note": None}
    # a new process on the same file: the reservation survived
    listed = voicebot("reservations", "--json", db=db)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == [booked["id"]]
    human = voicebot("reservations", "--date", "2026-12-02", db=db)
    assert booked["id"] in human.stdout and "田中" in human.stdout


def test_chat_in_english_without_json_prints_the_conversation(tmp_path):
    run = voicebot("chat", "--language", "en", "--now", NOW, stdin="next Friday at 7 pm for two\n", db=tmp_path / "r.db")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("bot: Thank you for calling AI-SHIFT")
    assert "December 11th" in lines[1] and "May I have the name" in lines[1]


def test_bad_flags_and_config_give_a_message_not_a_traceback(tmp_path):
    bad_now = voicebot("chat", "--now", "yesterday", db=tmp_path / "r.db")
    assert bad_now.returncode == 2 and "--now" in bad_now.stderr and "Traceback" not in bad_now.stderr
    cfg = tmp_path / "config.yaml"
    cfg.write_text("restaurant:\n  max_party_size: -1\n")
    bad_cfg = voicebot("chat", "--config", str(cfg))
    assert bad_cfg.returncode == 2 and "restaurant.max_party_size" in bad_cfg.stderr
    assert "Traceback" not in bad_cfg.stderr
    no_llm = voicebot("chat", "--agent", "llm", db=tmp_path / "r.db", env={"VOICEBOT__LLM__BASE_URL": "null"})
    assert no_llm.returncode == 2 and "llm.base_url" in no_llm.stderr
    (tmp_path / "a-file").write_text("")
    bad_db = voicebot("chat", db=tmp_path / "a-file" / "r.db", stdin="")
    assert bad_db.returncode == 1 and "error:" in bad_db.stderr and "Traceback" not in bad_db.stderr


def test_garbage_on_stdin_never_crashes_the_chat(tmp_path):
    junk = "\n".join(["", "   ", "🍣🍣🍣", "a" * 5000, "\x00\x01", "？？？", "12月99日", "-1名", "0名", "DROP TABLE reservations;"])
    run = voicebot("chat", "--json", "--now", NOW, stdin=junk + "\n", db=tmp_path / "r.db")
    assert run.returncode == 0, run.stderr
    turns = [json.loads(line) for line in run.stdout.splitlines()]
    assert all(t["bot"] for t in turns)
    assert all(t["reservation"] is None for t in turns)
