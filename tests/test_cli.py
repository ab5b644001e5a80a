"""The `voicebot` command as a user runs it: a real process, stdin, a database file, a fresh clone."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

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


# ------------------------------------------------------------------------------------- a first run
def _fresh_clone(tmp_path: Path) -> Path:
    """The project's config.yaml in a folder with nothing else: no data/, no models/."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text((ROOT / "config.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return cfg


def test_a_first_run_without_a_data_folder_says_what_is_missing_and_what_works_offline(tmp_path):
    cfg = _fresh_clone(tmp_path)
    for command, env in (("ui", {}), ("serve", {"VOICEBOT__TWILIO__VALIDATE": "false"})):
        run = voicebot(command, "--no-download", "--config", str(cfg), env=env)
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith("error: model files are missing:"), run.stderr
        # what works with no models and no network
        assert "`voicebot chat`" in run.stderr
        assert "uv run python scripts/make_test_models.py DIR" in run.stderr and "--config DIR/config.yaml" in run.stderr
    assert (tmp_path / "data").is_dir()  # the call log's folder, made at start-up
    listed = voicebot("reservations", "--config", str(cfg))
    assert listed.returncode == 0 and listed.stdout == "no reservations\n" and not listed.stderr
    assert (tmp_path / "data" / "reservations.db").is_file()


def test_a_call_log_folder_that_cannot_be_made_is_one_line_at_start_up(tmp_path):
    cfg = _fresh_clone(tmp_path)
    (tmp_path / "data").write_text("not a folder")
    run = voicebot("ui", "--no-download", "--config", str(cfg))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"error: logging.call_log: cannot create the folder {tmp_path / 'data'}: a file of that name is in the way"]


def test_models_status_says_what_works_offline(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["models", "status", "--config", str(_fresh_clone(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert out.count("MISSING") == 3
    assert "`voicebot chat`" in err and "scripts/make_test_models.py DIR" in err


# ------------------------------------------------------------------------------------ reservations
def _book(db: Path, *sizes: int):
    from pipeline.store import ReservationStore

    store = ReservationStore(f"sqlite:///{db}")
    try:
        return [store.book(date=dt.date(2026, 12, 2), time=dt.time(18 + i), party_size=n, name=name,
                           phone=f"0901234567{i}", note=note, capacity=3, idempotency_key=f"k{i}")
                for i, (n, name, note) in enumerate(zip(sizes, ["田中", "Smith", "佐々木"],
                                                        [None, "window seat\nplease", "誕生日"], strict=False))]
    finally:
        store.close()


def test_reservations_lists_a_table_with_a_header_and_one_person_or_people(tmp_path):
    db = tmp_path / "r.db"
    one, three = _book(db, 1, 3)
    run = voicebot("reservations", db=db)
    assert run.returncode == 0, run.stderr
    header, *rows = run.stdout.splitlines()
    assert header.split() == ["ID", "DATE", "TIME", "PARTY", "NAME", "PHONE", "NOTE"]
    assert len(rows) == 2  # a note's line break does not start a row
    assert rows[0].split() == [one.id, "2026-12-02", "18:00", "1", "person", "田中", "09012345670"]
    assert rows[1].split() == [three.id, "2026-12-02", "19:00", "3", "people", "Smith", "09012345671", "window",
                               "seat", "please"]
    # the columns line up on screen, where a kanji takes two columns
    def column(line: str, text: str) -> int:
        before = line[:line.index(text)]
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in before)

    assert column(header, "NAME") == column(rows[0], "田中") == column(rows[1], "Smith")
    assert column(header, "PHONE") == column(rows[0], "0901") == column(rows[1], "0901")


def test_reservations_json_is_one_object_per_active_reservation(tmp_path):
    from pipeline.store import ReservationStore

    db = tmp_path / "r.db"
    booked = _book(db, 2, 1, 4)
    store = ReservationStore(f"sqlite:///{db}")
    assert store.cancel(booked[1].id)
    store.close()
    run = voicebot("reservations", "--json", db=db)
    assert run.returncode == 0, run.stderr
    assert [json.loads(line) for line in run.stdout.splitlines()] == [booked[0].to_json(), booked[2].to_json()]


# ------------------------------------------------------------------------------- the clock of calls
@pytest.mark.parametrize("command", ["ui", "serve", "phone"])
def test_voice_commands_refuse_a_bad_now_before_loading_anything(tmp_path, command):
    run = voicebot(command, "--now", "next week", "--config", str(_fresh_clone(tmp_path)),
                   env={"VOICEBOT__TWILIO__VALIDATE": "false"})
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "error: --now expects an ISO-8601 date-time such as 2026-12-01T10:00, got 'next week'"]


def test_the_now_of_serve_and_ui_is_the_clock_of_their_calls(test_models_dir, tmp_path):
    from pipeline.cli import build_parser, load_runtime
    from pipeline.config import load_config

    for command in ("serve", "ui"):
        args = build_parser().parse_args(
            [command, "--config", str(test_models_dir / "config.yaml"), "--no-download", "--now", NOW])
        assert args.now == NOW
        cfg = load_config(args.config, environ={"VOICEBOT__STORE__URL": f"sqlite:///{tmp_path / command}.db"})
        runtime = load_runtime(cfg, args)
        try:
            call = runtime.get_call(language="ja")
            "".join(call.agent.respond("明日の19時に3名で"))
            # "tomorrow" of 2026-12-01, whatever today is
            assert call.agent.state.slots.to_json()["date"] == "2026-12-02"
        finally:
            runtime.close()


def test_a_bad_override_in_the_environment_is_blamed_on_its_variable(tmp_path):
    run = voicebot("chat", db=tmp_path / "r.db", env={"VOICEBOT__RESTAURANT__MAX_PARTY_SIZE": "abc"})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: invalid configuration from the environment:\n")
    assert "restaurant.max_party_size (set by the environment variable VOICEBOT__RESTAURANT__MAX_PARTY_SIZE)" in run.stderr
