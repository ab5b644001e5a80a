"""The reservations database: SQLAlchemy Core, a SQLite file by default, any SQLAlchemy URL.

Capacity is enforced by a counter row per slot, bumped with a conditional UPDATE
(``taken = taken + 1 WHERE taken < capacity``) in the same transaction as the reservation insert.
The database itself decides who gets the last table, so the check holds across threads,
processes and backends without application locks: on PostgreSQL and MySQL the second UPDATE waits
for the first to commit and then re-reads the row; on SQLite every write transaction starts with
``BEGIN IMMEDIATE`` so writers queue on the file lock (with a busy timeout) instead of failing
with "database is locked" halfway through.

Cancelled reservations are kept (``cancelled_at`` set) rather than deleted, so a booking is never
lost from the record; they are invisible to :meth:`ReservationStore.get` and the listings.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Time,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

#: seconds a SQLite writer waits for another process's write lock before giving up
SQLITE_BUSY_TIMEOUT_S = 30.0
_WRITE = "voicebot_write"
# No 0/O, 1/I/L: the code is read out over the phone and typed back by staff.
_ID_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
_ID_LENGTH = 6

metadata = MetaData()

reservations = Table(
    "reservations",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("date", Date, nullable=False, index=True),
    Column("time", Time, nullable=False),
    Column("party_size", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("phone", String(32), nullable=False),
    Column("note", Text),
    Column("created_at", DateTime, nullable=False),  # UTC, stored naive: SQLite keeps no offset
    Column("call_id", String(128)),
    # NULL once cancelled (several NULLs are allowed under UNIQUE), so the key can book again.
    Column("idempotency_key", String(255), unique=True),
    Column("cancelled_key", String(255)),
    Column("cancelled_at", DateTime),
)

slots = Table(
    "slot_counters",
    metadata,
    Column("date", Date, primary_key=True),
    Column("time", Time, primary_key=True),
    Column("taken", Integer, nullable=False, default=0),
)


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message is meant for the operator."""


class FullyBooked(Exception):
    """The slot has no table left."""

    def __init__(self, date: dt.date, time: dt.time):
        super().__init__(f"no table left at {date.isoformat()} {time.strftime('%H:%M')}")
        self.date = date
        self.time = time


@dataclass(frozen=True)
class Reservation:
    id: str
    date: dt.date
    time: dt.time
    party_size: int
    name: str
    phone: str
    note: str | None
    created_at: dt.datetime
    call_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "date": self.date.isoformat(),
            "time": self.time.strftime("%H:%M"),
            "party_size": self.party_size,
            "name": self.name,
            "phone": self.phone,
            "note": self.note,
            "created_at": self.created_at.isoformat(),
            "call_id": self.call_id,
        }


def mask_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable: mask anything that looks like user:password@
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _minute(t: dt.time) -> dt.time:
    # Slots are keyed by wall-clock minute; seconds or a tzinfo would make 19:00 a different key.
    return dt.time(t.hour, t.minute)


def _new_id() -> str:
    return "R-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def _row_to_reservation(row: Any) -> Reservation:
    created = row.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return Reservation(
        id=row.id, date=row.date, time=row.time, party_size=row.party_size, name=row.name,
        phone=row.phone, note=row.note, created_at=created, call_id=row.call_id,
    )


class ReservationStore:
    def __init__(self, url: str):
        self.url = url
        self._shown_url = mask_url(url)
        # One shared connection for an in-memory database (each connection would otherwise get
        # its own empty database), so operations on it must take turns.
        self._memory_lock: threading.Lock | None = None
        self.engine = self._create_engine(url)
        try:
            with self._write() as conn:
                metadata.create_all(conn)
        except SQLAlchemyError as e:
            self.engine.dispose()
            raise StoreError(f"cannot open the reservations database {self._shown_url}: {_reason(e)}") from e
        log.info("reservations database ready at %s", self._shown_url)

    def _create_engine(self, url: str) -> Engine:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StoreError(
                f"invalid database URL {self._shown_url!r}: expected a SQLAlchemy URL such as "
                "sqlite:///data/reservations.db or postgresql+psycopg://user:pass@host/db"
            ) from None
        kwargs: dict[str, Any] = {}
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite:
            db = parsed.database or ""
            memory = db in ("", ":memory:") or parsed.query.get("mode") == "memory"
            if memory:
                kwargs["poolclass"] = StaticPool
                self._memory_lock = threading.Lock()
            elif not db.startswith("file:"):
                try:
                    Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StoreError(f"cannot create the folder for the database {self._shown_url}: {e}") from None
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        try:
            engine = create_engine(url, **kwargs)
        except NoSuchModuleError:
            raise StoreError(
                f"invalid database URL {self._shown_url!r}: unknown database kind "
                f"{parsed.drivername!r} (e.g. sqlite, postgresql+psycopg)"
            ) from None
        except ImportError as e:
            raise StoreError(
                f"cannot open the reservations database {self._shown_url}: its driver is not installed ({e})"
            ) from None
        except (ArgumentError, TypeError, ValueError) as e:
            raise StoreError(f"invalid database URL {self._shown_url!r}: {e}") from None
        if is_sqlite:
            _sqlite_transactions(engine)
        return engine

    # ---- transactions ---------------------------------------------------------------------------

    @contextmanager
    def _serial(self) -> Iterator[None]:
        if self._memory_lock is None:
            yield
        else:
            with self._memory_lock:
                yield

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self._serial(), self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._serial(), self.engine.connect() as conn:
            yield conn

    def _wrap(self, what: str, e: SQLAlchemyError) -> StoreError:
        log.error("reservations database error while %s: %s", what, e)
        return StoreError(f"reservations database {self._shown_url} failed while {what}: {_reason(e)}")

    # ---- queries --------------------------------------------------------------------------------

    def tables_taken(self, d: dt.date, t: dt.time) -> int:
        try:
            with self._read() as conn:
                taken = conn.execute(
                    select(slots.c.taken).where(slots.c.date == d, slots.c.time == _minute(t))
                ).scalar()
        except SQLAlchemyError as e:
            raise self._wrap("reading a slot", e) from e
        return int(taken or 0)

    def free_tables(self, d: dt.date, t: dt.time, capacity: int) -> int:
        return max(0, capacity - self.tables_taken(d, t))

    def get(self, id: str) -> Reservation | None:
        try:
            with self._read() as conn:
                row = conn.execute(
                    select(reservations).where(reservations.c.id == id.strip().upper(),
                                               reservations.c.cancelled_at.is_(None))
                ).first()
        except SQLAlchemyError as e:
            raise self._wrap("reading a reservation", e) from e
        return _row_to_reservation(row) if row else None

    def _list(self, *where: Any) -> list[Reservation]:
        q = (select(reservations).where(reservations.c.cancelled_at.is_(None), *where)
             .order_by(reservations.c.date, reservations.c.time, reservations.c.created_at, reservations.c.id))
        try:
            with self._read() as conn:
                return [_row_to_reservation(r) for r in conn.execute(q)]
        except SQLAlchemyError as e:
            raise self._wrap("listing reservations", e) from e

    def all(self) -> list[Reservation]:
        return self._list()

    def for_date(self, d: dt.date) -> list[Reservation]:
        return self._list(reservations.c.date == d)

    def count_for_slot(self, d: dt.date, t: dt.time) -> int:
        """Active reservations in a slot, counted from the reservations themselves (audits)."""
        try:
            with self._read() as conn:
                return int(conn.execute(
                    select(func.count()).select_from(reservations).where(
                        reservations.c.date == d, reservations.c.time == _minute(t),
                        reservations.c.cancelled_at.is_(None))
                ).scalar_one())
        except SQLAlchemyError as e:
            raise self._wrap("counting reservations", e) from e

    def _by_key(self, key: str) -> Reservation | None:
        with self._read() as conn:
            row = conn.execute(select(reservations).where(reservations.c.idempotency_key == key)).first()
        return _row_to_reservation(row) if row else None

    # ---- writes ---------------------------------------------------------------------------------

    def _ensure_slot(self, d: dt.date, t: dt.time) -> None:
        """Create the slot's counter row if missing, in its own transaction.

        An empty counter row is harmless, so creating it apart from the booking keeps the
        booking transaction free of unique-constraint failures that would abort it on PostgreSQL.
        """
        try:
            with self._write() as conn:
                exists = conn.execute(
                    select(slots.c.taken).where(slots.c.date == d, slots.c.time == t)
                ).first()
                if exists is None:
                    conn.execute(insert(slots).values(date=d, time=t, taken=0))
        except IntegrityError:
            pass  # another writer created it between our SELECT and INSERT

    def book(self, *, date: dt.date, time: dt.time, party_size: int, name: str, phone: str,
             note: str | None, capacity: int, idempotency_key: str, call_id: str | None = None) -> Reservation:
        """Take a table at ``date`` ``time`` or raise :class:`FullyBooked`.

        Calling again with the same ``idempotency_key`` returns the first reservation and books
        nothing, so a retried tool call or a repeated "yes" cannot double-book.
        """
        if not isinstance(date, dt.date) or isinstance(date, dt.datetime):
            raise ValueError(f"date must be a datetime.date, got {date!r}")
        if not isinstance(time, dt.time):
            raise ValueError(f"time must be a datetime.time, got {time!r}")
        if not isinstance(party_size, int) or party_size < 1:
            raise ValueError(f"party_size must be a positive integer, got {party_size!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity!r}")
        if not idempotency_key:
            raise ValueError("idempotency_key must not be empty")
        t = _minute(time)
        try:
            existing = self._by_key(idempotency_key)
            if existing is not None:
                return existing
            self._ensure_slot(date, t)
            for _attempt in range(5):
                try:
                    return self._book_once(date, t, party_size, name, phone, note, capacity,
                                           idempotency_key, call_id)
                except FullyBooked:
                    # The same key may have taken the last table a moment ago in another process.
                    existing = self._by_key(idempotency_key)
                    if existing is not None:
                        return existing
                    raise
                except IntegrityError:
                    # The whole transaction (counter included) was rolled back: either the same key
                    # committed first elsewhere, or the random id collided; both are safe to retry.
                    existing = self._by_key(idempotency_key)
                    if existing is not None:
                        return existing
                    log.warning("reservation id collision; retrying with a new id")
        except SQLAlchemyError as e:
            raise self._wrap("booking", e) from e
        raise StoreError("could not allocate a unique reservation id")

    def _book_once(self, d: dt.date, t: dt.time, party_size: int, name: str, phone: str, note: str | None,
                   capacity: int, key: str, call_id: str | None) -> Reservation:
        with self._write() as conn:
            row = conn.execute(select(reservations).where(reservations.c.idempotency_key == key)).first()
            if row is not None:
                return _row_to_reservation(row)
            took = conn.execute(
                update(slots)
                .where(slots.c.date == d, slots.c.time == t, slots.c.taken < capacity)
                .values(taken=slots.c.taken + 1)
            )
            if took.rowcount == 0:
                raise FullyBooked(d, t)
            res = Reservation(
                id=_new_id(), date=d, time=t, party_size=party_size, name=name, phone=phone, note=note,
                created_at=dt.datetime.now(dt.UTC).replace(microsecond=0), call_id=call_id,
            )
            conn.execute(insert(reservations).values(
                id=res.id, date=d, time=t, party_size=party_size, name=name, phone=phone, note=note,
                created_at=res.created_at.replace(tzinfo=None), call_id=call_id, idempotency_key=key,
            ))
        log.info("booked %s: %s %s, %d people", res.id, d.isoformat(), t.strftime("%H:%M"), party_size)
        return res

    def cancel(self, id: str) -> bool:
        """Cancel an active reservation and give its table back; False if there is none."""
        rid = id.strip().upper()
        try:
            with self._write() as conn:
                row = conn.execute(
                    select(reservations).where(reservations.c.id == rid, reservations.c.cancelled_at.is_(None))
                ).first()
                if row is None:
                    return False
                conn.execute(
                    update(reservations).where(reservations.c.id == rid).values(
                        cancelled_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                        cancelled_key=row.idempotency_key, idempotency_key=None,
                    )
                )
                conn.execute(
                    update(slots)
                    .where(slots.c.date == row.date, slots.c.time == row.time, slots.c.taken > 0)
                    .values(taken=slots.c.taken - 1)
                )
        except SQLAlchemyError as e:
            raise self._wrap("cancelling", e) from e
        log.info("cancelled %s", rid)
        return True

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ReservationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(e: SQLAlchemyError) -> str:
    # The DBAPI's own message, without SQLAlchemy's SQL echo and background link.
    orig = getattr(e, "orig", None)
    return str(orig) if orig is not None else str(e).split("\n")[0]


def _sqlite_transactions(engine: Engine) -> None:
    """Take over BEGIN from pysqlite so writes can use BEGIN IMMEDIATE.

    pysqlite otherwise begins transactions lazily at the first INSERT/UPDATE: two processes that
    both read first would both hold read locks and one would fail on upgrade, busy timeout or not.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
