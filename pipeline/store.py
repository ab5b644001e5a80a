"""The reservations database: SQLAlchemy Core, a SQLite file by default, any SQLAlchemy URL.

Capacity is enforced by a counter row per slot, bumped with a conditional UPDATE
(``taken = taken + 1 WHERE taken < capacity``) in the same transaction as the reservation insert.
The database itself decides who gets the last table, so the check holds across threads,
processes and backends without application locks: on PostgreSQL and MySQL the second UPDATE waits
for the first to commit and then re-reads the row; on SQLite every write transaction starts with
``BEGIN IMMEDIATE`` so writers queue on the file lock (with a busy timeout) instead of failing
with "database is locked" halfway through.

Cancelling and changing a booking lock its row first (``SELECT ... FOR UPDATE``; SQLite's write lock
already serialises them), so a racing cancel or change re-reads what the first one committed: a
double cancel gives back one table, and a change always returns the table of the slot the booking
really holds. A change takes the new slot's table with the same conditional UPDATE as a booking and
gives the old one back in the same transaction; the two counters are updated in a fixed order
(date, time) so that two changes crossing between the same slots cannot deadlock.

Cancelled reservations are kept (``cancelled_at`` set) rather than deleted, so a booking is never
lost from the record; they are invisible to the listings, to :meth:`ReservationStore.find` and to
:meth:`ReservationStore.get` unless it is asked for them (``include_cancelled=True``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Time,
    create_engine,
    delete,
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
#: the PostgreSQL advisory lock held while creating the tables (any fixed number: "voicebot")
_SCHEMA_LOCK = 0x766F6963

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
# find(phone): a caller ringing back about their booking. Created on existing databases too.
_phone_index = Index("ix_reservations_phone", reservations.c.phone)

slots = Table(
    "slot_counters",
    metadata,
    Column("date", Date, primary_key=True),
    Column("time", Time, primary_key=True),
    Column("taken", Integer, nullable=False, default=0),
)


# ---- shared call state: what several `voicebot serve` workers on one database must agree on ------
stream_tokens = Table(
    "stream_tokens",
    metadata,
    Column("token", String(128), primary_key=True),
    Column("data", Text, nullable=False),  # JSON: what the webhook bound to the token
    Column("expires_at", DateTime, nullable=False),  # UTC, naive
    Column("used_at", DateTime),
)
webhooks_seen = Table(
    "webhooks_seen",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("seen_at", DateTime, nullable=False, index=True),
)
# One row to lock: taking a line counts the lines in use while holding it, so the cap holds across
# workers without a counter that a crashed worker would leave wrong.
line_lock = Table("line_lock", metadata, Column("id", Integer, primary_key=True))
call_lines = Table(
    "call_lines",
    metadata,
    Column("call_id", String(128), primary_key=True),
    Column("worker", String(128), nullable=False),
    Column("heartbeat_at", DateTime, nullable=False),
)


@dataclass(frozen=True)
class TokenRedemption:
    """A stream token presented by a media websocket: the data bound to it, or why it is refused."""

    ok: bool
    data: dict[str, Any] | None = None
    #: "unknown" (never issued here), "used" (presented before), "expired"
    reason: str = ""


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message is meant for the operator."""


class ReservationNotFound(LookupError):
    """No active reservation has this id (it never existed, or it was cancelled)."""

    def __init__(self, id: str):
        super().__init__(f"no active reservation {id}")
        self.id = id


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
    #: when it was cancelled (UTC); None while it stands
    cancelled_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.cancelled_at is None

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


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    return t.replace(tzinfo=dt.UTC) if t is not None and t.tzinfo is None else t


def _row_to_reservation(row: Any) -> Reservation:
    return Reservation(
        id=row.id, date=row.date, time=row.time, party_size=row.party_size, name=row.name,
        phone=row.phone, note=row.note, created_at=_utc(row.created_at), call_id=row.call_id,
        cancelled_at=_utc(row.cancelled_at),
    )


def _digits(phone: str) -> str:
    # Full-width and other Unicode decimal digits count, as the dialog's phone parser accepts them.
    return "".join(str(int(c)) for c in phone if c.isdecimal())


def _normal_id(id: str) -> str:
    return id.strip().upper()


def _check_date(date: Any) -> None:
    if not isinstance(date, dt.date) or isinstance(date, dt.datetime):
        raise ValueError(f"date must be a datetime.date, got {date!r}")


def _check_time(time: Any) -> None:
    if not isinstance(time, dt.time):
        raise ValueError(f"time must be a datetime.time, got {time!r}")


def _check_party(party_size: Any) -> None:
    if not isinstance(party_size, int) or isinstance(party_size, bool) or party_size < 1:
        raise ValueError(f"party_size must be a positive integer, got {party_size!r}")


def _check_capacity(capacity: Any) -> None:
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer, got {capacity!r}")


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
                if conn.dialect.name == "postgresql":
                    # Workers starting together would race to create the same tables (and fail on
                    # PostgreSQL's catalogue); SQLite's write lock already serialises them.
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
                metadata.create_all(conn)
                _phone_index.create(conn, checkfirst=True)
                if conn.execute(select(line_lock.c.id)).first() is None:
                    conn.execute(insert(line_lock).values(id=1))
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

    def get(self, id: str, *, include_cancelled: bool = False) -> Reservation | None:
        """The active reservation with this id (any case, spaces around it ignored), else None.

        With ``include_cancelled`` a cancelled one is returned too; its ``active`` is False.
        """
        q = select(reservations).where(reservations.c.id == _normal_id(id))
        if not include_cancelled:
            q = q.where(reservations.c.cancelled_at.is_(None))
        try:
            with self._read() as conn:
                row = conn.execute(q).first()
        except SQLAlchemyError as e:
            raise self._wrap("reading a reservation", e) from e
        return _row_to_reservation(row) if row else None

    def find(self, phone: str, date: dt.date | None = None) -> list[Reservation]:
        """The active reservations made with this phone number, on ``date`` if given, soonest first.

        The number is compared as digits only (``090-1234-5678`` finds ``09012345678``); past
        bookings are included, the caller decides what is still relevant.
        """
        digits = _digits(phone)
        if not digits:
            raise ValueError(f"phone must contain digits, got {phone!r}")
        where = [reservations.c.phone == digits]
        if date is not None:
            _check_date(date)
            where.append(reservations.c.date == date)
        return self._list(*where)

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
        _check_date(date)
        _check_time(time)
        _check_party(party_size)
        _check_capacity(capacity)
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

    def _locked_active(self, conn: Connection, rid: str) -> Any:
        """The active row with this id, locked until the transaction ends (None if there is none).

        On PostgreSQL a racing cancel or change waits here and then reads the committed row.
        """
        return conn.execute(
            select(reservations)
            .where(reservations.c.id == rid, reservations.c.cancelled_at.is_(None))
            .with_for_update()
        ).first()

    def cancel(self, id: str) -> bool:
        """Cancel an active reservation and give its table back; False if there is none.

        Of two racing cancels of one reservation exactly one returns True and frees the table.
        """
        rid = _normal_id(id)
        try:
            with self._write() as conn:
                row = self._locked_active(conn, rid)
                if row is None:
                    return False
                done = conn.execute(
                    update(reservations)
                    .where(reservations.c.id == rid, reservations.c.cancelled_at.is_(None))
                    .values(
                        cancelled_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                        cancelled_key=row.idempotency_key, idempotency_key=None,
                    )
                )
                if done.rowcount != 1:  # cancelled meanwhile; only reachable without row locks
                    return False
                conn.execute(
                    update(slots)
                    .where(slots.c.date == row.date, slots.c.time == row.time, slots.c.taken > 0)
                    .values(taken=slots.c.taken - 1)
                )
        except SQLAlchemyError as e:
            raise self._wrap("cancelling", e) from e
        log.info("cancelled %s", rid)
        return True

    def change(self, id: str, *, date: dt.date | None = None, time: dt.time | None = None,
               party_size: int | None = None, name: str | None = None,
               note: str | None | EllipsisType = ..., capacity: int) -> Reservation:
        """Change an active reservation in one transaction and return it as it is now.

        ``None`` (and ``...`` for ``note``, where ``None`` clears it) leaves a field as it is. When
        the slot changes, a table is taken in the new slot only if one is left (``capacity`` tables
        per slot) and the old slot's table is given back, together; when it does not, no counter
        moves. Raises :class:`FullyBooked` when the new slot is full and
        :class:`ReservationNotFound` when no active reservation has this id; then nothing changes.
        """
        if date is not None:
            _check_date(date)
        if time is not None:
            _check_time(time)
        if party_size is not None:
            _check_party(party_size)
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if note is not ... and note is not None and not isinstance(note, str):
            raise ValueError(f"note must be a string or None, got {note!r}")
        _check_capacity(capacity)
        rid = _normal_id(id)
        try:
            if date is not None or time is not None:
                # Not knowing the old slot yet, make sure the counter row of the new one exists;
                # when only one of date/time is given, the other comes from the booking.
                current = self.get(rid)
                if current is None:
                    raise ReservationNotFound(rid)
                self._ensure_slot(date if date is not None else current.date,
                                  _minute(time if time is not None else current.time))
            for _attempt in range(3):
                try:
                    return self._change_once(rid, date, time, party_size, name, note, capacity)
                except _SlotMissing as missing:
                    # A racing change moved the booking between our look-up and our lock.
                    self._ensure_slot(missing.date, missing.time)
        except SQLAlchemyError as e:
            raise self._wrap("changing a reservation", e) from e
        raise StoreError(f"could not change {rid}: its slot kept moving")

    def _change_once(self, rid: str, date: dt.date | None, time: dt.time | None, party_size: int | None,
                     name: str | None, note: str | None | EllipsisType, capacity: int) -> Reservation:
        with self._write() as conn:
            row = self._locked_active(conn, rid)
            if row is None:
                raise ReservationNotFound(rid)
            old = (row.date, row.time)
            new = (date if date is not None else row.date, _minute(time) if time is not None else row.time)
            values: dict[str, Any] = {}
            if new != old:
                # A fixed order of counter updates: two changes crossing between the same two
                # slots would otherwise each hold one counter and wait for the other's.
                for slot in sorted((old, new)):
                    if slot == new:
                        took = conn.execute(
                            update(slots)
                            .where(slots.c.date == new[0], slots.c.time == new[1], slots.c.taken < capacity)
                            .values(taken=slots.c.taken + 1)
                        )
                        if took.rowcount == 0:
                            exists = conn.execute(
                                select(slots.c.taken).where(slots.c.date == new[0], slots.c.time == new[1])
                            ).first()
                            if exists is None:
                                raise _SlotMissing(*new)
                            raise FullyBooked(*new)
                    else:
                        conn.execute(
                            update(slots)
                            .where(slots.c.date == old[0], slots.c.time == old[1], slots.c.taken > 0)
                            .values(taken=slots.c.taken - 1)
                        )
                values.update(date=new[0], time=new[1])
            if party_size is not None:
                values["party_size"] = party_size
            if name is not None:
                values["name"] = name
            if note is not ...:
                values["note"] = note
            if values:
                conn.execute(update(reservations).where(reservations.c.id == rid).values(**values))
            changed = conn.execute(select(reservations).where(reservations.c.id == rid)).one()
        if values:
            log.info("changed %s: %s", rid, ", ".join(sorted(values)))
        return _row_to_reservation(changed)

    # ---- shared call state ----------------------------------------------------------------------
    def issue_token(self, token: str, data: dict[str, Any], ttl_s: float, *, max_pending: int | None = None,
                    now: dt.datetime | None = None) -> None:
        """Remember a one-time stream token and what it stands for (the call's SID, the caller's number).

        With ``max_pending``, at most that many tokens wait unused: the oldest beyond it are forgotten
        (their streams will be refused), so a flood of calls cannot grow the table without bound."""
        t = _utc_naive(now)
        try:
            with self._write() as conn:
                conn.execute(delete(stream_tokens).where(stream_tokens.c.expires_at < t - dt.timedelta(hours=1)))
                conn.execute(insert(stream_tokens).values(
                    token=token, data=json.dumps(data, ensure_ascii=False),
                    expires_at=t + dt.timedelta(seconds=ttl_s)))
                if max_pending is not None:
                    pending = (select(stream_tokens.c.token)
                               .where(stream_tokens.c.used_at.is_(None), stream_tokens.c.expires_at > t)
                               .order_by(stream_tokens.c.expires_at.desc()).offset(max_pending))
                    dropped = conn.execute(delete(stream_tokens).where(stream_tokens.c.token.in_(
                        select(pending.subquery().c.token)))).rowcount
                    if dropped:
                        log.warning("more than %d stream tokens pending: forgot the %d oldest", max_pending, dropped)
        except SQLAlchemyError as e:
            raise self._wrap("issuing a stream token", e) from e

    def redeem_token(self, token: str, *, now: dt.datetime | None = None) -> TokenRedemption:
        """Accept a token once, in whichever worker it is presented; later or late presentations are refused."""
        if not isinstance(token, str) or not token or len(token) > 128:
            return TokenRedemption(False, reason="unknown")
        t = _utc_naive(now)
        try:
            with self._write() as conn:
                took = conn.execute(
                    update(stream_tokens)
                    .where(stream_tokens.c.token == token, stream_tokens.c.used_at.is_(None),
                           stream_tokens.c.expires_at > t)
                    .values(used_at=t)
                )
                row = conn.execute(select(stream_tokens).where(stream_tokens.c.token == token)).first()
        except SQLAlchemyError as e:
            raise self._wrap("redeeming a stream token", e) from e
        if took.rowcount == 1 and row is not None:
            return TokenRedemption(True, json.loads(row.data))
        if row is None:
            return TokenRedemption(False, reason="unknown")
        return TokenRedemption(False, reason="used" if row.used_at is not None else "expired")

    def first_sighting(self, key: str, *, keep_s: float = 3600.0, now: dt.datetime | None = None) -> bool:
        """True the first time ``key`` (a webhook's signature) is seen by any worker, False on a replay."""
        t = _utc_naive(now)
        try:
            with self._write() as conn:
                conn.execute(delete(webhooks_seen).where(webhooks_seen.c.seen_at < t - dt.timedelta(seconds=keep_s)))
                if conn.execute(select(webhooks_seen.c.key).where(webhooks_seen.c.key == key[:255])).first():
                    return False
                conn.execute(insert(webhooks_seen).values(key=key[:255], seen_at=t))
                return True
        except IntegrityError:
            return False  # another worker recorded it between our SELECT and INSERT
        except SQLAlchemyError as e:
            raise self._wrap("checking a webhook for replay", e) from e

    def take_line(self, call_id: str, cap: int, *, worker: str = "", stale_s: float = 120.0,
                  now: dt.datetime | None = None) -> bool:
        """Take one of ``cap`` lines shared by every worker on this database; False when all are busy.

        Lines whose worker stopped sending heartbeats (:meth:`touch_line`) for ``stale_s`` are freed."""
        t = _utc_naive(now)
        try:
            with self._write() as conn:
                conn.execute(select(line_lock.c.id).where(line_lock.c.id == 1).with_for_update()).first()
                conn.execute(delete(call_lines).where(call_lines.c.heartbeat_at < t - dt.timedelta(seconds=stale_s)))
                if conn.execute(select(call_lines.c.call_id).where(call_lines.c.call_id == call_id)).first():
                    return True
                used = conn.execute(select(func.count()).select_from(call_lines)).scalar_one()
                if used >= cap:
                    return False
                conn.execute(insert(call_lines).values(call_id=call_id, worker=worker[:128], heartbeat_at=t))
                return True
        except SQLAlchemyError as e:
            raise self._wrap("taking a line", e) from e

    def touch_line(self, call_id: str, *, now: dt.datetime | None = None) -> None:
        try:
            with self._write() as conn:
                conn.execute(update(call_lines).where(call_lines.c.call_id == call_id)
                             .values(heartbeat_at=_utc_naive(now)))
        except SQLAlchemyError as e:
            raise self._wrap("keeping a line", e) from e

    def touch_lines(self, worker: str, *, now: dt.datetime | None = None) -> int:
        """A heartbeat for every line ``worker`` holds (one statement, however many calls); how many."""
        try:
            with self._write() as conn:
                return conn.execute(update(call_lines).where(call_lines.c.worker == worker[:128])
                                    .values(heartbeat_at=_utc_naive(now))).rowcount
        except SQLAlchemyError as e:
            raise self._wrap("keeping a worker's lines", e) from e

    def release_line(self, call_id: str) -> None:
        try:
            with self._write() as conn:
                conn.execute(delete(call_lines).where(call_lines.c.call_id == call_id))
        except SQLAlchemyError as e:
            raise self._wrap("releasing a line", e) from e

    def lines_in_use(self, *, stale_s: float = 120.0, now: dt.datetime | None = None) -> int:
        t = _utc_naive(now)
        with self._read() as conn:
            return conn.execute(select(func.count()).select_from(call_lines)
                                .where(call_lines.c.heartbeat_at >= t - dt.timedelta(seconds=stale_s))).scalar_one()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ReservationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SlotMissing(Exception):
    def __init__(self, date: dt.date, time: dt.time):
        super().__init__(f"no counter row for {date} {time}")
        self.date = date
        self.time = time


def _utc_naive(t: dt.datetime | None) -> dt.datetime:
    """UTC without an offset, as the tables store it (SQLite keeps none)."""
    t = t or dt.datetime.now(dt.UTC)
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


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
