"""The reservations store. Everything that does not depend on SQLite's files runs twice through
the ``db_url`` fixture (tests/conftest.py): on a SQLite file and on PostgreSQL."""

import datetime as dt
import multiprocessing as mp
import threading

import pytest

from pipeline.store import (
    FullyBooked,
    Reservation,
    ReservationNotFound,
    ReservationStore,
    StoreError,
    mask_url,
)

D = dt.date(2026, 12, 24)
T = dt.time(19, 0)
CAPACITY = 3


def _book(store: ReservationStore, key: str, **kw) -> Reservation:
    args = dict(date=D, time=T, party_size=2, name="山田", phone="09012345678", note=None,
                capacity=CAPACITY, idempotency_key=key)
    args.update(kw)
    return store.book(**args)


@pytest.fixture
def url(db_url) -> str:
    return db_url


@pytest.fixture
def store(url):
    s = ReservationStore(url)
    yield s
    s.close()


def _consistent(store: ReservationStore, *slots: tuple[dt.date, dt.time]) -> None:
    """Each slot's counter equals the active reservations in it."""
    for d, t in slots:
        assert store.tables_taken(d, t) == store.count_for_slot(d, t), (d, t)


def test_creates_the_sqlite_folder(tmp_path):
    s = ReservationStore(f"sqlite:///{tmp_path / 'data' / 'reservations.db'}")
    s.close()
    assert (tmp_path / "data" / "reservations.db").exists()


def test_survives_reopening(url):
    s = ReservationStore(url)
    r = _book(s, "k1", note="窓際の席", call_id="call-1")
    s.close()
    again = ReservationStore(url)
    try:
        assert again.get(r.id) == r
        assert again.all() == [r]
        assert again.tables_taken(D, T) == 1
    finally:
        again.close()


def test_reservation_fields_and_json(store):
    r = _book(store, "k1", note="誕生日", call_id="c-9")
    assert r.id.startswith("R-") and len(r.id) == 8
    assert r.created_at.tzinfo is not None
    j = r.to_json()
    assert j["date"] == "2026-12-24" and j["time"] == "19:00" and j["party_size"] == 2
    assert j["name"] == "山田" and j["phone"] == "09012345678" and j["note"] == "誕生日"
    assert j["call_id"] == "c-9" and j["id"] == r.id
    assert dt.datetime.fromisoformat(j["created_at"]) == r.created_at
    assert store.get(r.id.lower()) == r


def test_same_idempotency_key_books_once(store):
    first = _book(store, "call-1:confirm")
    again = _book(store, "call-1:confirm", name="someone else")
    assert again == first
    assert store.tables_taken(D, T) == 1
    assert len(store.all()) == 1


def test_capacity_is_respected(store):
    for i in range(CAPACITY):
        _book(store, f"k{i}")
    with pytest.raises(FullyBooked):
        _book(store, "one-too-many")
    assert store.tables_taken(D, T) == CAPACITY
    assert store.free_tables(D, T, CAPACITY) == 0
    assert store.count_for_slot(D, T) == CAPACITY
    # Other slots are unaffected.
    assert _book(store, "later", time=dt.time(19, 30)).time == dt.time(19, 30)


def test_seconds_do_not_make_a_separate_slot(store):
    _book(store, "a", time=dt.time(19, 0, 5))
    assert store.tables_taken(D, dt.time(19, 0)) == 1


def test_cancel_frees_the_table(store):
    rs = [_book(store, f"k{i}") for i in range(CAPACITY)]
    assert store.cancel(rs[0].id)
    assert not store.cancel(rs[0].id)  # already cancelled
    assert not store.cancel("R-NOPE00")
    assert store.get(rs[0].id) is None
    assert store.tables_taken(D, T) == CAPACITY - 1
    assert store.free_tables(D, T, CAPACITY) == 1
    assert _book(store, "new").id not in {r.id for r in rs}
    # The cancelled key may book again; it does not return the cancelled reservation.
    with pytest.raises(FullyBooked):
        _book(store, "k0")


def test_listings(store):
    a = _book(store, "a", time=dt.time(20, 0))
    b = _book(store, "b", time=dt.time(18, 0))
    c = _book(store, "c", date=D + dt.timedelta(days=1))
    assert store.for_date(D) == [b, a]
    assert store.all() == [b, a, c]
    assert store.for_date(D - dt.timedelta(days=1)) == []


def test_get_returns_a_cancelled_reservation_only_when_asked(store):
    r = _book(store, "k1")
    assert store.get(r.id) == r and r.active and r.cancelled_at is None
    assert store.cancel(r.id)
    assert store.get(r.id) is None
    gone = store.get(f" {r.id.lower()} ", include_cancelled=True)
    assert gone is not None and gone.id == r.id and not gone.active
    assert gone.cancelled_at is not None and gone.cancelled_at.tzinfo is not None
    assert store.get("R-NOPE00", include_cancelled=True) is None


# ---- find: a caller ringing back about their booking ----------------------------------------------

def test_find_returns_the_active_bookings_of_a_phone_soonest_first(store):
    later = _book(store, "a", date=D + dt.timedelta(days=3), phone="09012345678")
    evening = _book(store, "b", time=dt.time(20, 0), phone="09012345678")
    early = _book(store, "c", time=dt.time(18, 0), phone="09012345678")
    _book(store, "other", phone="0312345678")
    cancelled = _book(store, "d", time=dt.time(21, 0), phone="09012345678")
    store.cancel(cancelled.id)
    assert store.find("09012345678") == [early, evening, later]
    assert store.find("090-1234-5678") == [early, evening, later]
    assert store.find("０９０ー１２３４ー５６７８") == [early, evening, later]
    assert store.find("09012345678", D) == [early, evening]
    assert store.find("09012345678", date=D + dt.timedelta(days=3)) == [later]
    assert store.find("09012345678", D + dt.timedelta(days=1)) == []
    assert store.find("0312345678") != [] and store.find("09099999999") == []


def test_find_rejects_a_phone_without_digits(store):
    with pytest.raises(ValueError):
        store.find("")
    with pytest.raises(ValueError):
        store.find("tanaka")
    with pytest.raises(ValueError):
        store.find("09012345678", "2026-12-24")


# ---- change ------------------------------------------------------------------------------------------

def test_change_of_time_moves_the_table(store):
    r = _book(store, "k1", note="窓際", call_id="c-1")
    moved = store.change(r.id, time=dt.time(20, 0, 30), capacity=CAPACITY)
    assert moved.time == dt.time(20, 0) and moved.date == D
    assert (moved.id, moved.party_size, moved.name, moved.phone, moved.note, moved.created_at, moved.call_id) == \
        (r.id, r.party_size, r.name, r.phone, r.note, r.created_at, r.call_id)
    assert store.get(r.id) == moved
    assert store.tables_taken(D, T) == 0 and store.tables_taken(D, dt.time(20, 0)) == 1
    _consistent(store, (D, T), (D, dt.time(20, 0)))


def test_change_of_date_only_keeps_the_time(store):
    r = _book(store, "k1")
    other_day = D + dt.timedelta(days=1)
    moved = store.change(r.id.lower(), date=other_day, capacity=CAPACITY)
    assert (moved.date, moved.time) == (other_day, T)
    assert store.tables_taken(D, T) == 0 and store.tables_taken(other_day, T) == 1
    assert store.for_date(D) == [] and store.for_date(other_day) == [moved]


def test_change_to_a_full_slot_is_refused_and_changes_nothing(store):
    r = _book(store, "mine", time=dt.time(18, 0))
    for i in range(CAPACITY):
        _book(store, f"full-{i}")
    with pytest.raises(FullyBooked) as e:
        store.change(r.id, time=T, party_size=4, name="別人", note="変更", capacity=CAPACITY)
    assert (e.value.date, e.value.time) == (D, T)
    assert store.get(r.id) == r
    assert store.tables_taken(D, T) == CAPACITY and store.tables_taken(D, dt.time(18, 0)) == 1
    _consistent(store, (D, T), (D, dt.time(18, 0)))


def test_change_within_the_slot_moves_no_counter_even_when_it_is_full(store):
    rs = [_book(store, f"k{i}", note="窓際") for i in range(CAPACITY)]
    r = rs[0]
    same = store.change(r.id, time=dt.time(19, 0, 59), date=D, party_size=5, capacity=CAPACITY)
    assert (same.date, same.time, same.party_size, same.note) == (D, T, 5, "窓際")
    assert store.tables_taken(D, T) == CAPACITY
    renamed = store.change(r.id, name="田中", capacity=CAPACITY)
    assert renamed.name == "田中" and renamed.party_size == 5 and renamed.note == "窓際"
    assert store.change(r.id, note=None, capacity=CAPACITY).note is None
    assert store.change(r.id, note="誕生日", capacity=CAPACITY).note == "誕生日"
    assert store.change(r.id, capacity=CAPACITY) == store.get(r.id)
    assert store.tables_taken(D, T) == CAPACITY
    _consistent(store, (D, T))


def test_a_changed_booking_frees_its_old_slot_and_cancels_from_its_new_one(store):
    rs = [_book(store, f"k{i}") for i in range(CAPACITY)]
    with pytest.raises(FullyBooked):
        _book(store, "waiting")
    store.change(rs[0].id, time=dt.time(20, 0), capacity=CAPACITY)
    assert _book(store, "waiting").time == T  # the table it left
    assert store.cancel(rs[0].id)
    assert store.tables_taken(D, dt.time(20, 0)) == 0 and store.tables_taken(D, T) == CAPACITY
    _consistent(store, (D, T), (D, dt.time(20, 0)))


def test_change_of_a_missing_or_cancelled_reservation_is_not_found(store):
    r = _book(store, "k1")
    store.cancel(r.id)
    for rid in (r.id, "R-NOPE00"):
        with pytest.raises(ReservationNotFound) as e:
            store.change(rid, time=dt.time(20, 0), capacity=CAPACITY)
        assert isinstance(e.value, LookupError) and e.value.id == rid
        with pytest.raises(ReservationNotFound):
            store.change(rid, party_size=3, capacity=CAPACITY)
    assert store.tables_taken(D, T) == 0 and store.tables_taken(D, dt.time(20, 0)) == 0


def test_change_rejects_bad_arguments(store):
    r = _book(store, "k1")
    for bad in (dict(party_size=0), dict(party_size=True), dict(date="2026-12-25"), dict(time="20:00"),
                dict(name=" "), dict(note=3), dict(capacity=0)):
        with pytest.raises(ValueError):
            store.change(r.id, **{"capacity": CAPACITY, **bad})
    assert store.get(r.id) == r and store.tables_taken(D, T) == 1


def test_in_memory_database_works_across_threads():
    s = ReservationStore("sqlite://")
    _book(s, "a")
    seen = []
    th = threading.Thread(target=lambda: seen.append(s.tables_taken(D, T)))
    th.start()
    th.join()
    assert seen == [1]


def test_bad_arguments_are_rejected(store):
    with pytest.raises(ValueError):
        _book(store, "x", party_size=0)
    with pytest.raises(ValueError):
        _book(store, "x", date="2026-12-24")
    with pytest.raises(ValueError):
        _book(store, "")
    assert store.all() == []


# ---- bad URLs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "words"), [
    ("nonsense", "invalid database URL"),
    ("", "invalid database URL"),
    ("nosuchdb://localhost/x", "unknown database kind"),
])
def test_nonsense_url_is_a_clear_store_error(url, words):
    with pytest.raises(StoreError, match=words):
        ReservationStore(url)


def test_unopenable_sqlite_path_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="cannot open the reservations database"):
        ReservationStore(f"sqlite:///{tmp_path}")  # a folder, not a file


def test_missing_driver_error_masks_the_password():
    with pytest.raises(StoreError) as e:
        ReservationStore("postgresql+nosuchdriver://user:s3cret@localhost/db")
    assert "s3cret" not in str(e.value)
    assert "user:***@localhost" in str(e.value)


def test_mask_url():
    assert mask_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "pw" not in mask_url("not a url://u:pw@h")


# ---- races ---------------------------------------------------------------------------------------

def _race_threads(store: ReservationStore, n: int) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = _book(store, f"racer-{i}")
        except FullyBooked as e:
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    return results


@pytest.mark.parametrize("n", [2, 8])
def test_threads_racing_for_the_last_table(store, n):
    for i in range(CAPACITY - 1):
        _book(store, f"pre-{i}")
    results = _race_threads(store, n)
    won = [r for r in results if isinstance(r, Reservation)]
    lost = [r for r in results if isinstance(r, FullyBooked)]
    assert len(won) == 1 and len(lost) == n - 1
    assert store.tables_taken(D, T) == CAPACITY
    assert store.count_for_slot(D, T) == CAPACITY
    assert len(store.for_date(D)) == CAPACITY


def test_threads_racing_with_one_idempotency_key_book_once(store):
    n = 8
    barrier = threading.Barrier(n)
    results: list[Reservation] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        r = _book(store, "the-same-key")
        with lock:
            results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert len(results) == n and len({r.id for r in results}) == 1
    assert store.tables_taken(D, T) == 1


def _run_threads(jobs: list) -> list[object]:
    """Run each job in its own thread, all released at once; each one's result or exception."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    return results


@pytest.mark.parametrize("n", [2, 8])
def test_threads_racing_to_cancel_one_reservation_give_back_one_table(store, n):
    for k in range(5):
        rs = [_book(store, f"r{k}-{i}") for i in range(CAPACITY)]
        results = _run_threads([lambda rid=rs[0].id: store.cancel(rid)] * n)
        assert sorted(results, key=str) == [False] * (n - 1) + [True], results
        assert store.tables_taken(D, T) == CAPACITY - 1
        _consistent(store, (D, T))
        for r in rs[1:]:
            store.cancel(r.id)
        assert store.tables_taken(D, T) == 0


@pytest.mark.parametrize("n", [2, 8])
def test_threads_changing_into_the_last_table(store, n):
    for i in range(CAPACITY - 1):
        _book(store, f"pre-{i}")
    elsewhere = [_book(store, f"mover-{i}", time=dt.time(17, i)) for i in range(n)]
    results = _run_threads([lambda r=r: store.change(r.id, time=T, capacity=CAPACITY) for r in elsewhere])
    won = [r for r in results if isinstance(r, Reservation)]
    lost = [r for r in results if isinstance(r, FullyBooked)]
    assert len(won) == 1 and len(lost) == n - 1, results
    assert store.tables_taken(D, T) == CAPACITY
    _consistent(store, (D, T), *((D, r.time) for r in elsewhere))
    stayed = [r for r in elsewhere if r.id != won[0].id]
    assert all(store.get(r.id) == r for r in stayed)


def test_a_change_and_a_booking_racing_for_the_last_table(store):
    for k in range(5):
        day = D + dt.timedelta(days=k)
        for i in range(CAPACITY - 1):
            _book(store, f"pre-{k}-{i}", date=day)
        mover = _book(store, f"mover-{k}", date=day, time=dt.time(18, 0))
        results = _run_threads([
            lambda rid=mover.id: store.change(rid, time=T, capacity=CAPACITY),
            lambda key=f"caller-{k}", day=day: _book(store, key, date=day),
        ])
        assert sorted(type(r).__name__ for r in results) == ["FullyBooked", "Reservation"], results
        assert store.tables_taken(day, T) == CAPACITY
        _consistent(store, (day, T), (day, dt.time(18, 0)))


def test_threads_changing_one_reservation_leave_every_counter_right(store):
    others = [_book(store, f"other-{i}") for i in range(CAPACITY - 1)]
    r = _book(store, "mine")
    times = [dt.time(18, i) for i in range(8)]
    results = _run_threads([lambda t=t: store.change(r.id, time=t, capacity=CAPACITY) for t in times])
    assert all(isinstance(x, Reservation) for x in results), results
    final = store.get(r.id)
    assert final is not None and final.time in times
    assert store.tables_taken(D, T) == len(others)
    _consistent(store, (D, T), *((D, t) for t in times))
    assert sum(store.tables_taken(D, t) for t in times) == 1


def test_threads_swapping_two_bookings_between_two_slots_do_not_deadlock(store):
    x, y = dt.time(18, 0), dt.time(20, 0)
    a = _book(store, "a", time=x)
    b = _book(store, "b", time=y)
    for k in range(20):
        to_a, to_b = (y, x) if k % 2 == 0 else (x, y)
        results = _run_threads([
            lambda t=to_a: store.change(a.id, time=t, capacity=2),
            lambda t=to_b: store.change(b.id, time=t, capacity=2),
        ])
        assert all(isinstance(r, Reservation) for r in results), results
        assert store.tables_taken(D, x) == 1 and store.tables_taken(D, y) == 1
        _consistent(store, (D, x), (D, y))


def _process_racer(url: str, key: str, barrier, out, move: str | None = None) -> None:
    """Book ``key`` at D T, or with ``move`` change that reservation to D T, in a process of its own."""
    s = ReservationStore(url)
    try:
        barrier.wait(timeout=60)
        try:
            r = s.change(move, time=T, capacity=CAPACITY) if move else _book(s, key)
            out.put((key, "ok", r.id))
        except FullyBooked:
            out.put((key, "full", None))
    except Exception as e:  # reported to the parent, which fails the test with it
        out.put((key, "error", repr(e)))
    finally:
        s.close()


def _race_processes(url: str, racers: list[tuple[str, str | None]]) -> list[tuple]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(racers))
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_racer, args=(url, key, barrier, out, move)) for key, move in racers]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return results


def test_processes_racing_for_the_last_table(url, store):
    for i in range(CAPACITY - 1):
        _book(store, f"pre-{i}")
    results = _race_processes(url, [("proc-0", None), ("proc-1", None)])
    outcomes = sorted(r[1] for r in results)
    assert outcomes == ["full", "ok"], results
    assert store.tables_taken(D, T) == CAPACITY
    assert store.count_for_slot(D, T) == CAPACITY


def test_processes_changing_and_booking_for_the_last_table(url, store):
    for i in range(CAPACITY - 1):
        _book(store, f"pre-{i}")
    movers = [_book(store, f"mover-{i}", time=dt.time(18, i)) for i in range(2)]
    results = _race_processes(url, [("book", None)] + [(f"change-{r.id}", r.id) for r in movers])
    outcomes = sorted(r[1] for r in results)
    assert outcomes == ["full", "full", "ok"], results
    assert store.tables_taken(D, T) == CAPACITY
    _consistent(store, (D, T), *((D, r.time) for r in movers))
