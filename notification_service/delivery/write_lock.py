"""Write transactions on the delivery log's database, taken in turns by every writer of the process.

On SQLite the process keeps one DBAPI connection and its threads take turns
on it (a lock), so they never sleep in SQLite's busy handler waiting for each
other, and worker processes take turns on a ``<database>-writelock`` file
lock (readers such as the CLI need no lock in WAL mode). Every transaction
begins ``IMMEDIATE``: SQLite has no ``FOR UPDATE``, so claims are atomic
across threads and processes. On PostgreSQL each transaction checks a pooled
connection out. Every transaction counts in
``notification_db_transactions_total``.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import PoolProxiedConnection

from notification_service.runtime import metrics


class WriteLock:
    """Hands out one write transaction at a time per SQLite database; thread-safe."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._connection: PoolProxiedConnection | None = None
        self._lock_file: int | None = None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A DBAPI cursor in one write transaction: committed when the block ends, rolled back if it raises."""
        if self.sqlite:
            with self._lock:
                yield from self._sqlite_transaction()
            return
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                yield cursor
            except BaseException:
                connection.rollback()
                raise
            else:
                connection.commit()
            finally:
                metrics.DB_TRANSACTIONS.inc()
                cursor.close()
        finally:
            connection.close()  # back to the pool

    def _sqlite_transaction(self) -> Iterator[Any]:
        """The body of a SQLite transaction; the caller holds the thread lock."""
        connection, lock_file = self._sqlite_connection()
        # Worker processes queue on a file lock the kernel hands over at once, instead
        # of sleeping in SQLite's busy handler (1, 2, 5 … 100 ms steps) for each other.
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        cursor = connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            else:
                cursor.execute("COMMIT")
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
            metrics.DB_TRANSACTIONS.inc()
            cursor.close()

    def _sqlite_connection(self) -> tuple[PoolProxiedConnection, int]:
        """The process's connection and lock file, opened on first use (never at import or construction)."""
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        if self._lock_file is None:
            database = self.engine.url.database
            if not database:
                raise ValueError("the delivery log on SQLite needs a database file (workers share it), not :memory:")
            # A descriptor, not a file object: only flock reads it, for as long as the process lives.
            self._lock_file = os.open(database + "-writelock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        return self._connection, self._lock_file
