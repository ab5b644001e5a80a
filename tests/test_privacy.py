"""Callers' names and phone numbers in the logs: masking, the registry the booking tools feed, and
the call log's retention (pruning, atomic rewrites with writers appending meanwhile)."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.privacy import (
    CallLogJanitor,
    PiiFilter,
    PiiRegistry,
    append_call_log,
    call_log_record,
    install_pii_filter,
    mask_pii,
    prune_call_log,
    register_pii,
    remove_pii_filter,
    start_call_log_janitor,
)

NOW = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _fresh_registry():
    from pipeline.privacy import REGISTRY

    REGISTRY.clear()
    yield
    REGISTRY.clear()


# -------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("text, masked", [
    ("090-1234-5678", "090-****-**78"),
    ("tel: 09012345678.", "tel: 090******78."),
    ("電話番号は090 1234 5678です", "電話番号は090 **** **78です"),
    ("０９０－１２３４－５６７８", "０９０－****－**７８"),
    ("090ー1234ー5678", "090ー****ー**78"),
    ("03-1234-5678", "**-****-**78"),
    ("(03) 1234-5678", "(**) ****-**78"),
    ("+81 90 1234 5678", "+** ** **** **78"),
    ("From=+819012345678", "From=+**********78"),
    ("〇九〇一二三四五六七八", "*********七八"),
    ("03-1234-5678 19:00", "**-****-**78 19:00"),
    ("090-1111-2222 と 080-3333-4444", "090-****-**22 と 080-****-**44"),
])
def test_phone_numbers_are_masked_to_their_last_two_digits(text, masked):
    assert mask_pii(text) == masked


@pytest.mark.parametrize("text, masked", [
    ("電話番号はゼロキューゼロ、イチニーサンヨン、ゴーロクナナハチです", "電話番号は***、****、**ナナハチです"),
    ("ぜろきゅうぜろいちにさんよんごろくななはち", "*********ななはち"),
    ("ゼロ、キュウ、ゼロ、の、イチ、ニー、サン、ヨン、の、ゴー、ロク、ナナ、ハチ",  # the bot's read-back
     "*、*、*、の、*、*、*、*、の、*、*、ナナ、ハチ"),
    ("ゼロキューゼロ、イチニーサンヨン", "***、**サンヨン"),  # half a number in one turn is still masked
    ("My number is zero nine zero, one two three four, five six seven eight.",
     "My number is * * *, * * * *, * * seven eight."),
    ("nine oh one two three four five six", "* * * * * * five six"),
])
def test_phone_numbers_read_out_as_words_are_masked_too(text, masked):
    assert mask_pii(text) == masked


@pytest.mark.parametrize("text", [
    "田中さん、二名で、19時にお願いします", "I would like one table for two at seven", "イチニーサン", "サンニンです",
    "someone ate nine tons", "ごごしちじに", "one two three four five",  # five digit words: no phone number
])
def test_a_few_number_words_in_speech_are_left_alone(text):
    assert mask_pii(text) == text


@pytest.mark.parametrize("text", [
    "2026-12-24 19:00", "12月24日の19時に3名", "call MZ00000000000000000000000000000001 started",
    "gap 612.4 ms", "1735689600", "二〇二六年", "reservation R-20261224-0001", "price 12,000 yen",
    "09012345678901234",  # too long to be a phone number
])
def test_dates_times_ids_and_other_numbers_are_left_alone(text):
    assert mask_pii(text) == text


def test_registered_names_and_numbers_are_masked_wherever_they_appear():
    register_pii("田中")
    register_pii("Ann Lee")
    register_pii("09011112222")
    out = mask_pii("田中様, Ann Lee, announcement, ゼロ、キュウ、ゼロ、の、イチ、イチ、イチ、イチ、の、ニー、ニー、ニー、ニー")
    assert "田中" not in out and "Ann Lee" not in out and "イチ" not in out
    assert "announcement" in out
    assert mask_pii("ann lee") == "***"  # however the transcript capitalised it


def test_the_registry_is_bounded_and_forgets_the_oldest_first():
    reg = PiiRegistry(limit=3)
    for name in ("佐藤", "鈴木", "高橋", "田中"):
        reg.register(name)
    assert len(reg) == 3
    assert reg.mask("佐藤 田中") == "佐藤 ***"
    reg.register("x")  # one letter would mask half the log
    assert "x" not in reg


def test_the_booking_tools_register_the_name_and_phone_they_accept(test_config, tmp_path):
    from pipeline.cli import run_chat

    cfg = test_config.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{tmp_path / 'r.db'}"
    out = io.StringIO()
    run_chat(cfg, ["明日の19時に3名で", "山本です", "080-2345-6789"], out, kind="rules", now="2026-12-01T10:00")
    assert mask_pii("山本様") == "***様"
    assert "2345" not in mask_pii("08023456789")


# ---------------------------------------------------------------------------------------- log filter
def test_the_log_filter_masks_messages_args_and_tracebacks(caplog):
    register_pii("山田")
    caplog.handler.addFilter(PiiFilter())
    log = logging.getLogger("pipeline.test")
    with caplog.at_level(logging.INFO):
        log.info("caller %s gave %s", "山田", "090-1234-5678")
        log.info("直接 09087654321 山田太郎")
        try:
            raise ValueError("bad phone 080-1111-2222 for 山田")
        except ValueError:
            log.exception("booking failed for %s", {"phone": "09033334444"})
    assert [r.getMessage() for r in caplog.records[:2]] == ["caller *** gave 090-****-**78", "直接 090******21 ***太郎"]
    for secret in ("1234", "8765", "1111-2222", "3333", "山田"):
        assert secret not in caplog.text, caplog.text
    assert "ValueError" in caplog.text  # the traceback is kept, masked


def test_a_record_whose_message_cannot_be_formatted_comes_out_masked_and_flagged(capsys):
    register_pii("山田")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PiiFilter())
    log = logging.getLogger("pipeline.test.badformat")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("caller %s at %d", "山田", "090-1234-5678")  # %d of a string
        log.warning("no placeholder for 090-8765-4321", "山田")  # an argument too many
        log.warning("%(phone)s", ["09011112222"])  # a mapping key of a list
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("caller %s at %d [log formatting error: TypeError: ")
    assert lines[0].endswith("; arguments: ('***', '090-****-**78')]")
    assert lines[1].startswith("no placeholder for 090-****-**21 [log formatting error: TypeError: ")
    assert lines[2] == "%(phone)s [log formatting error: TypeError: format requires a mapping; arguments: (['090******22'],)]"
    text = stream.getvalue() + capsys.readouterr().err
    for secret in ("山田", "1234", "8765", "1111"):
        assert secret not in text, text
    assert "Logging error" not in text  # the handler's error path, which prints the raw arguments, never ran


def test_the_cli_installs_the_filter_on_the_root_handlers(capsys):
    from pipeline.cli import _setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []  # let basicConfig install its own handler, as in a fresh process
    try:
        _setup_logging("INFO", mask_pii=True)
        assert root.handlers and all(any(isinstance(f, PiiFilter) for f in h.filters) for h in root.handlers)
        register_pii("中村")
        logging.getLogger("pipeline.somewhere").warning("%s: 090-1234-5678", "中村")
        err = capsys.readouterr().err
        assert "*** : 090-****-**78".replace(" :", ":") in err and "中村" not in err
    finally:
        for h in root.handlers:
            h.close()
        root.handlers, root.level = saved[0], saved[1]


def test_install_is_idempotent_and_removable():
    logger = logging.getLogger("pipeline.test.install")
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    try:
        install_pii_filter(logger)
        install_pii_filter(logger)
        assert sum(isinstance(f, PiiFilter) for f in handler.filters) == 1
        remove_pii_filter(logger)
        assert not handler.filters
    finally:
        logger.removeHandler(handler)


# ------------------------------------------------------------------------------------------- call log
class _Settings:
    def __init__(self, retention=30, mask=False):
        self.call_log_retention_days = retention
        self.call_log_mask_pii = mask


TURN = {"event": "turn", "call_id": "c1", "turn": 2, "gap_ms": 600.0, "transcript": "佐々木です 090-1234-5678",
        "transcript_raw": "佐々木です 090-1234-5678。ご視聴ありがとうございました", "reply": "佐々木様ですね", "heard": None}
END = {"event": "call_end", "call_id": "c1", "transcript": [{"role": "user", "text": "佐々木です"}],
       "slots": {"date": "2026-12-02", "name": "佐々木", "phone": "09012345678", "note": "卵アレルギー"},
       "reservation": {"id": "R1", "date": "2026-12-02", "name": "佐々木", "phone": "09012345678", "note": None}}


def test_call_log_records_keep_transcripts_by_default_and_lose_them_at_retention_zero():
    assert call_log_record(_Settings(), TURN) == TURN
    turn = call_log_record(_Settings(retention=0), TURN)
    assert turn == {"event": "turn", "call_id": "c1", "turn": 2, "gap_ms": 600.0}
    end = call_log_record(_Settings(retention=0), END)
    assert "transcript" not in end
    assert end["slots"] == {"date": "2026-12-02"} and end["reservation"] == {"id": "R1", "date": "2026-12-02"}
    assert "佐々木" not in json.dumps(end, ensure_ascii=False)


def test_call_log_records_are_masked_when_asked():
    register_pii("佐々木")
    text = json.dumps(call_log_record(_Settings(mask=True), END), ensure_ascii=False)
    assert "佐々木" not in text and "09012345678" not in text and "090******78" in text
    assert "卵アレルギー" in text


def test_the_runtime_writes_the_call_log_through_the_privacy_settings(test_config, tmp_path):
    from pipeline.voice.runtime import VoiceRuntime

    cfg = test_config.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{tmp_path / 'r.db'}"
    cfg.logging.call_log_retention_days = 0
    runtime = VoiceRuntime(cfg, stt=None, tts=None, vad=None, call_log=tmp_path / "calls.jsonl", prerender=False)
    try:
        runtime.write_log(dict(TURN))
    finally:
        runtime.close()
    line = json.loads((tmp_path / "calls.jsonl").read_text(encoding="utf-8"))
    assert line["turn"] == 2 and "transcript" not in line and "reply" not in line


def _line(at: dt.datetime, **extra) -> str:
    return json.dumps({"at": at.isoformat(timespec="milliseconds"), "event": "turn", **extra}, ensure_ascii=False)


def _write(path, lines, tail=""):
    path.write_text("".join(line + "\n" for line in lines) + tail, encoding="utf-8")


def test_pruning_keeps_recent_lines_and_drops_old_ones(tmp_path):
    path = tmp_path / "calls.jsonl"
    old, recent, today = _line(NOW - dt.timedelta(days=40), n=1), _line(NOW - dt.timedelta(days=10), n=2), _line(NOW, n=3)
    _write(path, [old, recent, "not json", today], tail='{"at": "partial line being writ')
    assert prune_call_log(path, 30, now=NOW) == 1
    assert path.read_text(encoding="utf-8") == "\n".join([recent, "not json", today]) + '\n{"at": "partial line being writ'
    assert prune_call_log(path, 30, now=NOW) == 0  # nothing more to drop: not rewritten


def test_retention_zero_keeps_nothing_and_null_keeps_everything(tmp_path):
    path = tmp_path / "calls.jsonl"
    lines = [_line(NOW - dt.timedelta(days=400)), _line(NOW - dt.timedelta(minutes=1))]
    _write(path, lines)
    assert prune_call_log(path, None, now=NOW) == 0
    assert path.read_text(encoding="utf-8").splitlines() == lines
    assert prune_call_log(path, 0, now=NOW) == 2
    assert path.read_text(encoding="utf-8") == ""
    assert prune_call_log(tmp_path / "missing.jsonl", 30) == 0


def test_pruning_while_writers_append_loses_and_cuts_no_line(tmp_path):
    path = tmp_path / "calls.jsonl"
    now = dt.datetime.now(dt.UTC)
    _write(path, [_line(now - dt.timedelta(days=99), n=-i) for i in range(200)])
    written, stop = [], threading.Event()

    def writer():
        # As VoiceRuntime.write_log does.
        i = 0
        while not stop.is_set():
            line = _line(dt.datetime.now(dt.UTC), n=i, text="x" * 300)
            append_call_log(path, line)
            written.append(line)
            i += 1
            time.sleep(0.0005)

    def pruner():
        for k in range(10):
            append_call_log(path, _line(now - dt.timedelta(days=99), n=-1000 - k))
            prune_call_log(path, 30)

    threads = [threading.Thread(target=writer), threading.Thread(target=pruner), threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(timeout=60)
    stop.set()
    threads[0].join(timeout=10)
    prune_call_log(path, 30)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line)["n"] >= 0 for line in lines), "an old line survived"
    assert sorted(lines) == sorted(written), f"{len(written)} written, {len(lines)} kept"


# A process of its own appending to the log for a while, each line tagged with the writer's name
# and a serial number; it prints how many lines it wrote.
_WRITER = """
import datetime as dt, json, sys, time
from pipeline.privacy import append_call_log
path, tag, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
i, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    append_call_log(path, json.dumps({"at": dt.datetime.now(dt.UTC).isoformat(), "w": tag, "i": i}))
    i += 1
print(i)
"""


def test_no_line_is_lost_when_processes_append_while_the_log_is_pruned_again_and_again(tmp_path):
    path = tmp_path / "logs" / "calls.jsonl"
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=99)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{k}", "2"], cwd=root, env=env,
                                stdout=subprocess.PIPE, text=True) for k in range(4)]
    done = threading.Event()

    def deschedule():
        # The scheduler at its worst: a writer frozen for 80 ms at any point of its append.
        k = 0
        while not done.is_set():
            w = writers[k % len(writers)]
            k += 1
            if w.poll() is None:
                os.kill(w.pid, signal.SIGSTOP)
                time.sleep(0.08)
                os.kill(w.pid, signal.SIGCONT)
            time.sleep(0.005)

    stopper = threading.Thread(target=deschedule)
    stopper.start()
    prunes = 0
    try:
        while any(w.poll() is None for w in writers):
            # an old line each time, so that every prune really rewrites the file
            append_call_log(path, _line(old, n=-1))
            prunes += prune_call_log(path, 30) > 0
    finally:
        done.set()
        stopper.join()
        counts = [int(w.communicate(timeout=60)[0]) for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0, 0]
    prune_call_log(path, 30)
    kept = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(kept) == sum(counts)
    assert sorted((r["w"], r["i"]) for r in kept) == sorted((f"w{k}", i) for k, n in enumerate(counts)
                                                             for i in range(n))
    assert prunes >= 5, "the writers finished before the log was pruned a few times"


def test_a_log_not_written_yet_is_not_pruned_and_its_folder_appears_with_the_first_line(tmp_path, caplog):
    path = tmp_path / "data" / "calls.jsonl"
    with caplog.at_level(logging.DEBUG, logger="pipeline.privacy"):
        janitor = CallLogJanitor(path, 30).start()
        janitor.stop()
    assert not caplog.records and not (tmp_path / "data").exists()
    append_call_log(path, _line(NOW, n=1))
    assert json.loads(path.read_text(encoding="utf-8"))["n"] == 1


def test_a_call_log_that_cannot_be_written_is_a_one_line_warning(test_config, tmp_path, caplog):
    from pipeline.voice.runtime import VoiceRuntime

    (tmp_path / "data").write_text("a file where the folder should be")
    cfg = test_config.model_copy(deep=True)
    cfg.store.url = f"sqlite:///{tmp_path / 'r.db'}"
    runtime = VoiceRuntime(cfg, stt=None, tts=None, vad=None, call_log=tmp_path / "data" / "calls.jsonl",
                           prerender=False)
    try:
        with caplog.at_level(logging.WARNING):
            runtime.write_log(dict(TURN))
            CallLogJanitor(tmp_path / "data" / "calls.jsonl", 30).prune()
    finally:
        runtime.close()
    assert caplog.records and all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)


def test_the_janitor_prunes_at_start_and_then_on_its_interval(test_config, tmp_path):
    path = tmp_path / "calls.jsonl"
    now = dt.datetime.now(dt.UTC)
    _write(path, [_line(now - dt.timedelta(days=31), n=1), _line(now, n=2)])
    cfg = test_config.model_copy(deep=True)
    cfg.logging.call_log = str(path)
    janitor = start_call_log_janitor(cfg)
    try:
        assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [2]
    finally:
        janitor.stop()
    cfg.logging.call_log_retention_days = None
    assert start_call_log_janitor(cfg) is None

    fast = CallLogJanitor(path, 30, interval_s=0.05).start()
    try:
        with path.open("a") as f:
            f.write(_line(now - dt.timedelta(days=60), n=3) + "\n")
        deadline = time.monotonic() + 5
        while "\"n\": 3" in path.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [2]
    finally:
        fast.stop()
