"""A new booking's transaction as fixed driver SQL: the API's hot path.

SQLAlchemy Core builds, compiles (or looks up) and executes a statement through
its execution context on every call; for the one write that runs per request
that was a fifth of a POST's CPU, and on PostgreSQL each of its five statements
was a round trip. Here each statement is SQL text made once per dialect from
the tables, values go through the columns' own bind processors (so rows are
stored exactly as Core and the ORM store them: SQLite datetimes as naive-UTC
text, JSON through the dialect's serializer), and the driver runs them:

* PostgreSQL: the statements go out as one psycopg pipeline (BEGIN, idempotency
  key, resource lock, booking, outbox rows), then COMMIT: two round trips
  where there were seven, and psycopg prepares each statement on the server
  after a few uses (``prepare_threshold``), so it is not parsed and planned
  again.
* SQLite: the same statements on the sqlite3 connection, under the write lock.

The booking insert carries the overlap check (``INSERT … SELECT … WHERE NOT
EXISTS`` an overlapping active booking). It runs after the resource row is
locked, and under READ COMMITTED a statement's snapshot begins when the
statement does, so it sees every booking committed before the lock was granted.
The outbox rows are inserted only if the booking was (the pipeline cannot stop
half way); an insert of no booking is a ``Conflict`` and rolls back.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from booking_service.core.errors import Conflict
from booking_service.storage.models import ACTIVE, Booking, IdempotencyKey, OutboxMessage, Resource

BOOKINGS = Booking.__table__
OUTBOX = OutboxMessage.__table__
IDEMPOTENCY_KEYS = IdempotencyKey.__table__
RESOURCES = Resource.__table__

BOOKING_COLUMNS = ("id", "resource_id", "status", "version", "starts_at", "ends_at", "customer_name", "customer_email",
                   "customer_locale", "customer_timezone", "push_tokens", "notes", "created_at", "updated_at")
OUTBOX_COLUMNS = ("notification_id", "booking_id", "event", "priority", "payload", "payload_sha256", "correlation_id",
                  "status", "available_at", "expires_at", "attempts", "created_at")
IDEMPOTENCY_COLUMNS = ("client", "key", "request_hash", "status_code", "response", "created_at")


@dataclass(frozen=True)
class _Insert:
    """One INSERT as driver SQL, and how to turn column values into its parameters."""

    sql: str
    processors: tuple[Callable | None, ...]


class Statements:
    """The create transaction's statements for one dialect, made once per engine."""

    def __init__(self, dialect: sa.Dialect):
        self.dialect = dialect
        self.postgresql = dialect.name == "postgresql"
        self.mark = "%s" if self.postgresql else "?"
        self._quote = dialect.identifier_preparer.quote
        self.idempotency = self._insert(IDEMPOTENCY_KEYS, IDEMPOTENCY_COLUMNS)
        overlap = (f"NOT EXISTS (SELECT 1 FROM bookings WHERE resource_id = {self._param(BOOKINGS, 'resource_id')} "
                   f"AND status = '{ACTIVE}' AND starts_at < {self._param(BOOKINGS, 'ends_at')} "
                   f"AND ends_at > {self._param(BOOKINGS, 'starts_at')})")
        self.booking = self._insert(BOOKINGS, BOOKING_COLUMNS, where=overlap)
        self.outbox = self._insert(OUTBOX, OUTBOX_COLUMNS,
                                   where=f"EXISTS (SELECT 1 FROM bookings WHERE id = {self._param(BOOKINGS, 'id')})")
        if self.postgresql:
            # An upsert that always touches the row locks it until the transaction ends, in one statement.
            self.lock = "INSERT INTO resources (id) VALUES (%s) ON CONFLICT (id) DO UPDATE SET id = excluded.id"
        else:  # the transaction already holds SQLite's one write lock
            self.lock = "INSERT INTO resources (id) VALUES (?) ON CONFLICT (id) DO NOTHING"
        self.overlap_processors = tuple(self._processor(BOOKINGS, c) for c in ("resource_id", "ends_at", "starts_at"))

    def _processor(self, table: sa.Table, column: str) -> Callable | None:
        return table.c[column].type.dialect_impl(self.dialect).bind_processor(self.dialect)

    def _param(self, table: sa.Table, column: str) -> str:
        # PostgreSQL types a bare parameter in a SELECT list as text; the cast gives it the column's type.
        if self.postgresql:
            return f"%s::{table.c[column].type.compile(dialect=self.dialect)}"
        return "?"

    def _insert(self, table: sa.Table, columns: Sequence[str], where: str | None = None) -> _Insert:
        names = ", ".join(self._quote(c) for c in columns)
        if where is None:
            sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(self.mark for _ in columns)})"
        else:
            values = ", ".join(self._param(table, c) for c in columns)
            sql = f"INSERT INTO {table.name} ({names}) SELECT {values} WHERE {where}"
        return _Insert(sql, tuple(self._processor(table, c) for c in columns))


_STATEMENTS: weakref.WeakKeyDictionary[sa.Dialect, Statements] = weakref.WeakKeyDictionary()


def statements_for(engine: sa.Engine) -> Statements:
    """The engine's statements, made on first use."""
    statements = _STATEMENTS.get(engine.dialect)
    if statements is None:
        statements = _STATEMENTS[engine.dialect] = Statements(engine.dialect)
    return statements


def _bind(processors: Sequence[Callable | None], values: Sequence) -> tuple:
    return tuple(p(v) if p else v for p, v in zip(processors, values, strict=True))


def parameters(statements: Statements, booking: Mapping, outbox_rows: Sequence[Mapping], response: dict | None,
               idempotency) -> dict:
    """Every statement's driver parameters, made before the transaction begins."""
    booking_params = _bind(statements.booking.processors, [booking[c] for c in BOOKING_COLUMNS])
    overlap = _bind(statements.overlap_processors, [booking["resource_id"], booking["ends_at"], booking["starts_at"]])
    outbox = [
        _bind(statements.outbox.processors, [row[c] for c in OUTBOX_COLUMNS]) + (booking["id"],)
        for row in outbox_rows
    ]
    key = None
    if idempotency is not None:
        key = _bind(statements.idempotency.processors, [idempotency.client, idempotency.key, idempotency.request_hash,
                                                         201, response, booking["created_at"]])
    conflict = (f"Resource {booking['resource_id']!r} is already booked between {booking['starts_at'].isoformat()} "
                f"and {booking['ends_at'].isoformat()}.")
    return {"booking": booking_params + overlap, "outbox": outbox, "idempotency": key,
            "resource": (booking["resource_id"],), "conflict": conflict}


def _run_sqlite(driver, statements: Statements, params: dict) -> bool:
    driver.begin_immediate()
    cursor = driver.cursor()
    try:
        if params["idempotency"] is not None:  # first: a reused key fails here, before any other work
            cursor.execute(statements.idempotency.sql, params["idempotency"])
        cursor.execute(statements.lock, params["resource"])
        cursor.execute(statements.booking.sql, params["booking"])
        if cursor.rowcount != 1:
            return False
        cursor.executemany(statements.outbox.sql, params["outbox"])
        return True
    finally:
        cursor.close()


def _run_postgresql(driver, statements: Statements, params: dict) -> bool:
    with driver.pipeline():
        cursor = driver.cursor()
        if params["idempotency"] is not None:  # first: a reused key fails here, before any other work
            cursor.execute(statements.idempotency.sql, params["idempotency"])
        cursor.execute(statements.lock, params["resource"])
        inserted = driver.cursor()
        inserted.execute(statements.booking.sql, params["booking"])
        cursor.executemany(statements.outbox.sql, params["outbox"])
    # Leaving the block synced the pipeline: every result is in, errors were raised.
    return inserted.rowcount == 1


def write(engine: sa.Engine, statements: Statements, params: dict) -> None:
    """Run the create transaction; once more if the pooled connection was found dead before COMMIT.

    Raises ``Conflict`` when the slot is taken and SQLAlchemy's
    ``IntegrityError`` (wrapping the driver's) when a constraint refused a row,
    such as an Idempotency-Key used before.
    """
    run = _run_postgresql if statements.postgresql else _run_sqlite
    dbapi = engine.dialect.loaded_dbapi
    for attempt in (1, 2):
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            if driver is None:  # typed Optional for an invalidated connection; a fresh checkout has one
                raise sa.exc.InvalidRequestError("the pool handed out a connection without a DBAPI connection")
            try:
                inserted = run(driver, statements, params)
            except dbapi.Error as exc:
                if engine.dialect.is_disconnect(exc, driver, None):
                    conn.invalidate()
                    if attempt == 1:  # nothing was committed on a dead connection: run it again on a new one
                        continue
                    raise
                driver.rollback()
                if isinstance(exc, dbapi.IntegrityError):
                    raise sa.exc.IntegrityError(None, None, exc) from exc
                raise
            except BaseException:
                driver.rollback()
                raise
            if not inserted:
                driver.rollback()
                raise Conflict(params["conflict"])
            driver.commit()  # a disconnect here (outcome unknown) propagates
            return
    raise AssertionError("not reached")
