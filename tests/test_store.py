import datetime as dt
import multiprocessing as mp
import threading

import pytest

from pipeline.store import FullyBooked, Reservation, ReservationStore, StoreError, mask_url

D = dt.date(2026, 12, 24)
T = dt.time(19, 0)
CAPACITY = 3


def _book(store: ReservationStore, key: str, **kw) -> Reservation:
    args = dict(date=D, time=T, party_size=2, name="山田", phone="09012345678", note=None,
                capacity=CAPACITY, idempotency_key=key)
    args.update(kw)
    return store.book(**args)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'reservations.db'}"


@pytest.fixture
def store(url):
    s = ReservationStore(url)
    yield s
    s.close()


def test_creates_the_folder_and_survives_reopening(url, tmp_path):
    s = ReservationStore(url)
    r = _book(s, "k1", note="窓際の席", call_id="call-1")
    s.close()
    assert (tmp_path / "data" / "reservations.db").exists()
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


def _process_racer(url: str, key: str, barrier, out) -> None:
    s = ReservationStore(url)
    try:
        barrier.wait(timeout=60)
        try:
            out.put((key, "ok", _book(s, key).id))
        except FullyBooked:
            out.put((key, "full", None))
    except Exception as e:  # reported to the parent, which fails the test with it
        out.put((key, "error", repr(e)))
    finally:
        s.close()


def test_processes_racing_for_the_last_table(url, store):
    for i in range(CAPACITY - 1):
        _book(store, f"pre-{i}")
    ctx = mp.get_context("spawn")
    n = 2
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_racer, args=(url, f"proc-{i}", barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * n
    outcomes = sorted(r[1] for r in results)
    assert outcomes == ["full", "ok"], results
    assert store.tables_taken(D, T) == CAPACITY
    assert store.count_for_slot(D, T) == CAPACITY
