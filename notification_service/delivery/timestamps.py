"""Timestamps as the delivery log's columns hold them, and back.

SQLAlchemy stores a ``DateTime`` on SQLite as naive UTC text; the hot path
writes through the DBAPI cursor, so it writes that format itself, and reads
turn it back into an aware datetime.
"""

from __future__ import annotations

from datetime import UTC, datetime


def to_column(moment: datetime, sqlite: bool) -> datetime | str:
    """``moment`` as the column stores it (SQLite: naive UTC text; PostgreSQL: the datetime itself)."""
    if sqlite:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return moment


def aware(value: datetime | str | None) -> datetime | None:
    """A stored timestamp as an aware datetime (SQLite keeps naive UTC text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
