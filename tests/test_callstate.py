"""Shared call state in the database, so several `voicebot serve` workers agree: one-time stream
tokens, webhook replay protection and the line cap. On SQLite and PostgreSQL (the ``db_url`` fixture)."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import threading

import pytest

from pipeline.store import ReservationStore

T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)


@pytest.fixture
def two(db_url):
    """Two workers: two stores on one database, as two `serve` processes would have."""
    a, b = ReservationStore(db_url), ReservationStore(db_url)
    yield a, b
    a.close()
    b.close()


def test_a_token_issued_by_one_worker_is_accepted_once_by_any(two):
    a, b = two
    a.issue_token("tok-1", {"call_sid": "CA1", "from": "+819012345678"}, ttl_s=60, now=T0)
    got = b.redeem_token("tok-1", now=T0 + dt.timedelta(seconds=5))
    assert got.ok and got.data == {"call_sid": "CA1", "from": "+819012345678"}
    assert b.redeem_token("tok-1", now=T0 + dt.timedelta(seconds=6)).reason == "used"
    assert a.redeem_token("tok-1", now=T0 + dt.timedelta(seconds=6)).reason == "used"


def test_unknown_and_expired_tokens_are_refused(two):
    a, b = two
    a.issue_token("tok-2", {}, ttl_s=60, now=T0)
    assert b.redeem_token("made-up", now=T0).reason == "unknown"
    assert b.redeem_token("", now=T0).reason == "unknown"
    assert b.redeem_token("x" * 10_000, now=T0).reason == "unknown"
    assert b.redeem_token("tok-2", now=T0 + dt.timedelta(seconds=61)).reason == "expired"


def test_racing_workers_redeem_a_token_exactly_once(db_url):
    ReservationStore(db_url).issue_token("tok-race", {"n": 1}, ttl_s=60)
    stores = [ReservationStore(db_url) for _ in range(6)]
    results: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def go(s):
        barrier.wait()
        results.append(s.redeem_token("tok-race").ok)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]


def test_a_replayed_webhook_is_refused_by_every_worker(two):
    a, b = two
    assert a.first_sighting("sig-1", now=T0)
    assert not b.first_sighting("sig-1", now=T0 + dt.timedelta(seconds=1))
    assert not a.first_sighting("sig-1", now=T0 + dt.timedelta(seconds=2))
    # forgotten after the keep time, when Twilio's own timestamp check has long refused it anyway
    assert b.first_sighting("sig-1", keep_s=60, now=T0 + dt.timedelta(hours=2))


def test_the_line_cap_holds_across_workers_and_frees_lines(two):
    a, b = two
    assert a.take_line("c1", 2, worker="a", now=T0)
    assert b.take_line("c2", 2, worker="b", now=T0)
    assert not a.take_line("c3", 2, worker="a", now=T0)
    assert not b.take_line("c3", 2, worker="b", now=T0)
    assert a.lines_in_use(now=T0) == 2
    b.release_line("c2")
    assert a.take_line("c3", 2, worker="a", now=T0)


def test_a_dead_workers_lines_are_freed_after_its_heartbeats_stop(two):
    a, b = two
    assert a.take_line("c1", 1, worker="a", now=T0, stale_s=30)
    a.touch_line("c1", now=T0 + dt.timedelta(seconds=20))
    assert not b.take_line("c2", 1, worker="b", now=T0 + dt.timedelta(seconds=40), stale_s=30)
    assert b.take_line("c2", 1, worker="b", now=T0 + dt.timedelta(seconds=60), stale_s=30)


def _take(url: str, call_id: str, cap: int, out) -> None:
    s = ReservationStore(url)
    out.put(s.take_line(call_id, cap, worker=call_id))
    s.close()


def test_processes_racing_for_the_last_lines_never_exceed_the_cap(db_url):
    ReservationStore(db_url).close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(db_url, f"call-{i}", 3, out)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = [out.get(timeout=5) for _ in procs]
    assert got.count(True) == 3
    assert ReservationStore(db_url).lines_in_use() == 3


def test_beyond_max_pending_the_oldest_unused_tokens_are_forgotten(two, caplog):
    a, b = two
    for i in range(4):
        a.issue_token(f"tok-p{i}", {"i": i}, ttl_s=60 + i, max_pending=3, now=T0)
    assert b.redeem_token("tok-p0", now=T0).reason == "unknown"  # the oldest, forgotten
    assert [b.redeem_token(f"tok-p{i}", now=T0).ok for i in (1, 2, 3)] == [True, True, True]
    assert "more than 3 stream tokens pending" in caplog.text


def test_one_heartbeat_renews_every_line_of_a_worker_and_no_other(two):
    a, b = two
    assert a.take_line("c1", 3, worker="a", now=T0, stale_s=30)
    assert a.take_line("c2", 3, worker="a", now=T0, stale_s=30)
    assert b.take_line("c3", 3, worker="b", now=T0, stale_s=30)
    assert a.touch_lines("a", now=T0 + dt.timedelta(seconds=25)) == 2
    # b's line was not renewed: it is taken back; a's two stand
    assert b.take_line("c4", 3, worker="b", now=T0 + dt.timedelta(seconds=40), stale_s=30)
    assert a.lines_in_use(stale_s=30, now=T0 + dt.timedelta(seconds=40)) == 3
    assert not b.take_line("c5", 3, worker="b", now=T0 + dt.timedelta(seconds=40), stale_s=30)
