"""Engines and the session factory.

SQLite (the embedded default) has one writer at a time. Every write
transaction begins ``BEGIN IMMEDIATE`` (so two writers never both read "slot
free" and then both insert), and before that it takes an exclusive ``flock``
on ``<database>-writelock``. The kernel wakes the next waiter the moment the
lock is released, where SQLite's own busy handler would poll in growing sleeps
(1, 2, 5 … 100 ms) and turn 8 concurrent writers into multi-hundred-ms tails.
The flock is released right after COMMIT or ROLLBACK (the connection class
below), so it covers exactly the write transaction. Processes that do not take
the flock (the sqlite3 shell, another program) still meet ``busy_timeout``.

Every engine hides SQL parameters (``hide_parameters``): a database error while
saving a booking would otherwise print the customer's name, e-mail and push
tokens into the log (``[parameters: {...}]``).

PostgreSQL: no ``pool_pre_ping`` (a round trip on every request); a connection
found dead is dropped and the create path runs its transaction again on a new
one when nothing can have been committed (``booking_insert.write``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import sessionmaker

#: SQLite ``synchronous`` in WAL mode: FULL fsyncs the WAL at every commit, so an
#: acknowledged booking survives a power cut (about 0.3 ms per commit on the
#: development machine's disk); NORMAL survives process crashes only.
SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


#: Execution option: this connection only reads; on SQLite it takes no write lock.
READ_ONLY = "booking_read_only"


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


class WriteLockedConnection(sqlite3.Connection):
    """A sqlite3 connection whose write transactions hold a process-wide flock."""

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self._lock_fd: int | None = None
        self._locked = False
        if database not in (":memory:", "") and not str(database).startswith("file:"):
            self._lock_fd = os.open(f"{database}-writelock", os.O_RDWR | os.O_CREAT, 0o600)

    def begin_immediate(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks without spinning; releases the GIL
            self._locked = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._locked and self._lock_fd is not None:  # _locked is only ever set with the lock file open
            self._locked = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._unlock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._unlock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._unlock()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> sa.Engine:
    if url.startswith("sqlite"):
        if sqlite_synchronous.upper() not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"sqlite synchronous must be one of {SQLITE_SYNCHRONOUS}")
        engine = sa.create_engine(
            url, hide_parameters=True,
            connect_args={"timeout": 30, "check_same_thread": False, "factory": WriteLockedConnection},
        )
        _sqlite_pragmas(engine, sqlite_synchronous.upper())
        return engine
    # One sync gunicorn worker serves one request at a time: a small pool suffices.
    return sa.create_engine(url, hide_parameters=True, pool_size=2, max_overflow=8, pool_recycle=1800)


def _sqlite_pragmas(engine: sa.Engine, synchronous: str) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write
    # lock up front; we emit BEGIN IMMEDIATE ourselves (after the flock).
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        if conn.get_execution_options().get(READ_ONLY):
            return  # autocommit reads: WAL readers never wait for the writer
        conn.connection.dbapi_connection.begin_immediate()


def make_session_factory(engine: sa.Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
