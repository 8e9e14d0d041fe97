"""Which failures the receipts consumer takes for an outage (back off, get the receipt again) and which for poison."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from booking_service.receipts.poison import Contradiction, is_outage, reason


class _DriverError(Exception):
    """Stands for a driver exception: psycopg's carry a SQLSTATE, and their text may quote the value."""

    sqlstate = "22003"


def _wrapped(kind: type[sa.exc.DBAPIError]) -> sa.exc.DBAPIError:
    return kind("INSERT INTO notification_receipts ...", {"recipient": "grace@example.org"},
                _DriverError('value "grace@example.org" is out of range'))


@pytest.mark.parametrize("kind", [sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError])
def test_a_database_that_is_away_or_not_migrated_yet_is_an_outage(kind):
    assert is_outage(_wrapped(kind))
    assert is_outage(ConnectionRefusedError()) and is_outage(sa.exc.TimeoutError())


@pytest.mark.parametrize("error", [
    _wrapped(sa.exc.DataError), _wrapped(sa.exc.IntegrityError), OverflowError("date value out of range"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), RecursionError(), KeyError("booking"),
    sa.exc.StatementError("bind", "INSERT", {}, OverflowError()), Contradiction("contradicts the outbox"),
], ids=lambda error: type(error).__name__)
def test_data_the_database_refuses_and_any_other_failure_is_poison(error):
    assert not is_outage(error)


def test_a_reason_names_the_error_class_and_sqlstate_never_the_value():
    assert reason(_wrapped(sa.exc.DataError)) == "the database refused it: _DriverError (22003)"
    assert reason(OverflowError("grace@example.org")) == "cannot be applied: OverflowError"
    assert reason(Contradiction("contradicts the outbox: booking.id of notification_id differ")).startswith(
        "contradicts the outbox")
