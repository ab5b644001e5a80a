"""The fault soak: simulated phone calls over the real websocket while the model, speech recognition
and synthesis fail at random and callers hang up mid-reply (``pipeline/sim/soak.py``).

Nothing may crash, no caller line may go unanswered, and every reservation the bot announced must be
in the database once, within the slot's tables.
"""

from __future__ import annotations

import pytest
from audio_fixtures import ESPEAK, ESPEAK_MISSING

from pipeline.sim.soak import FAILURE_COUNTERS, FAULT_KINDS, SoakOptions, format_report, run_soak

pytestmark = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)


@pytest.fixture(scope="module")
def report(test_models_dir, tmp_path_factory):
    # 30 calls, 8 at once, a seed whose callers also hang up before an answer and during a booking:
    # about three minutes on two cores
    opts = SoakOptions(calls=30, concurrency=8, seed=3)
    return run_soak(opts, config_path=test_models_dir / "config.yaml", workdir=tmp_path_factory.mktemp("soak"))


def test_soak_under_faults_has_no_crash_silence_lost_duplicate_or_overbooked_slot(report):
    counters = {k: report[k] for k in FAILURE_COUNTERS}
    assert counters == dict.fromkeys(FAILURE_COUNTERS, 0), format_report(report)


def test_soak_injected_every_kind_of_fault(report):
    # otherwise the zeros above would prove nothing
    missing = [k for k in FAULT_KINDS if not report["faults"][k]]
    assert not missing, format_report(report)
    assert report["expected_fault_errors"] > 0  # the STT/TTS faults reached the server's error handling


def test_soak_booked_tables_and_calls_raced_for_full_slots(report):
    assert report["calls"] == 30 and report["turns"] >= 30 * 3
    assert report["bookings"] >= 4, format_report(report)
    # at least one booking was refused at the moment of confirming because others took the last table
    assert report["full_slot_refusals"] >= 1, format_report(report)
    # every call was admitted, ended in the runtime, and written to the call log
    assert report["calls_not_ended"] == report["calls_not_logged"] == 0, format_report(report)


# ------------------------------------------------------------------ the soak's own judges, on known input
def test_errors_caused_by_injected_faults_are_expected_and_any_other_is_a_crash():
    import logging
    import sys
    import traceback

    from pipeline.sim.soak import InjectedFault, watching

    log = logging.getLogger("pipeline.soak_judge_test")
    with watching() as (records, tee, _threads):
        for exc in (InjectedFault("planned"), RuntimeError("a real bug")):
            try:
                raise exc
            except Exception:
                log.exception("turn failed")
        try:
            raise ValueError("printed, not logged")
        except ValueError:
            traceback.print_exc(file=sys.stderr)  # as FastRTC does
        log.warning("a fault was handled")
    assert records.expected_errors == 1
    assert [i.detail for i in records.errors] == ["pipeline.soak_judge_test ERROR: turn failed [RuntimeError: a real bug]"]
    assert len(tee.tracebacks()) == 1 and "printed, not logged" in tee.tracebacks()[0]
    assert sum(records.warnings.values()) == 1


def test_the_audit_finds_lost_duplicate_and_overbooked_reservations(tmp_path):
    import datetime as dt
    import json

    from pipeline.sim.soak import audit
    from pipeline.store import ReservationStore

    url = f"sqlite:///{tmp_path / 'r.db'}"
    day, seven = dt.date(2026, 12, 24), dt.time(19)
    with ReservationStore(url) as store:
        def book(call, key):
            return store.book(date=day, time=seven, party_size=2, name="田中", phone="09012345678", note=None,
                              capacity=3, idempotency_key=key, call_id=call)

        a = book("c1", "k1")
        book("c2", "k2")
        book("c2", "k3")  # a second row for one call, and a third in a slot of two tables
    records = [
        {"event": "turn", "call_id": "c1", "reply": "予約番号はR-ZZZZZZです。"},  # not in the database
        {"event": "call_end", "call_id": "c1", "reservation": {**a.to_json(), "party_size": 3}},  # not as booked
        {"event": "call_end", "call_id": "c2", "reservation": None},
    ]
    log_path = tmp_path / "calls.jsonl"
    log_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    found = audit(url, log_path, {"c1", "c2", "c3"}, capacity=2)
    assert len(found.lost) == 2 and any("R-ZZZZZZ" in x for x in found.lost) and any("party_size" in x for x in found.lost)
    assert any(x.startswith("c2: 2 reservations") for x in found.duplicates)
    assert found.over_capacity == ["2026-12-24 19:00: 3 reservations for 2 tables"]
    assert set(found.ended) == {"c1", "c2"} and len(found.unannounced) == 2


# ------------------------------------------------------------------ spread over two workers on one database
def test_soak_spread_over_two_workers_loses_and_doubles_nothing(db_url, test_models_dir, tmp_path):
    # Each call's webhook is signed by one worker and its stream served by the other (Twilio's checks
    # on), both booking the same few tables through their own connections to one database.
    opts = SoakOptions(calls=12, concurrency=4, seed=3, workers=2, store_url=db_url)
    report = run_soak(opts, config_path=test_models_dir / "config.yaml", workdir=tmp_path)
    counters = {k: report[k] for k in FAILURE_COUNTERS}
    assert counters == dict.fromkeys(FAILURE_COUNTERS, 0), format_report(report)
    assert report["workers"] == 2 and report["calls"] == 12
    assert report["calls_not_ended"] == report["calls_not_logged"] == 0, format_report(report)
    assert report["bookings"] >= 1, format_report(report)
