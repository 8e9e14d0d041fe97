"""The delivery log's SQLAlchemy engine: one per database, with SQLite made fit for several writers.

``hide_parameters=True`` on every engine: a failed statement's message (the
CLI's, a log line's, a dead-letter reason's) never carries its parameters,
which are addresses, tokens and error texts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=16, max_overflow=64,
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # BEGIN is emitted below
            cursor = dbapi_connection.cursor()
            # WAL: the CLI and the other worker processes read while one writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            # WAL + NORMAL survives a killed worker (the SIGKILL test); only an OS crash can
            # lose the last commits. FULL costs an fsync per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pool_pre_ping: a dead pooled connection fails one task, which is retried anyway.
    return sa.create_engine(url, pool_size=16, max_overflow=64, hide_parameters=True)
