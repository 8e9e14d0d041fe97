"""A database error while saving a booking never puts the customer's data into the log."""

from __future__ import annotations

import sqlalchemy as sa

from booking_service.api.app import create_app
from booking_service.storage.db import make_engine
from tests.booking.fixtures import AUTH, booking_body

NAME, EMAIL, TOKEN = "Refused Customer", "refused.customer@example.org", "tok-refused-secret"


def _refuse(engine: sa.Engine, table: str, column: str, value: str) -> None:
    """Make the database itself refuse new rows of ``table`` whose ``column`` is ``value`` (old rows stay)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # A CHECK violation's DETAIL quotes the whole row: "Failing row contains (..., e-mail, ...)".
            conn.execute(sa.text(f"ALTER TABLE {table} ADD CONSTRAINT refuse_{column} "
                                 f"CHECK ({column} <> '{value}') NOT VALID"))
        else:
            conn.execute(sa.text(f"CREATE TRIGGER refuse_{column} BEFORE INSERT ON {table} "
                                 f"WHEN NEW.{column} = '{value}' "
                                 "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))


def test_every_engine_hides_sql_parameters(database_url):
    engine = make_engine(database_url)
    try:
        assert engine.hide_parameters is True
    finally:
        engine.dispose()


def test_a_database_error_while_saving_a_booking_logs_no_customer_data(settings, capfd):
    app = create_app(settings)  # made here, so its log lines go to capfd
    client = app.test_client()
    try:
        cancelled = client.post("/v1/bookings", json=booking_body(name=NAME, email=EMAIL, push_tokens=[TOKEN]),
                                headers=AUTH).json
        engine = app.extensions["booking_engine"]
        _refuse(engine, "bookings", "customer_email", EMAIL)  # the create path: driver SQL
        _refuse(engine, "outbox", "event", "booking.cancelled")  # the cancel path: the ORM, with the payload
        capfd.readouterr()
        created = client.post("/v1/bookings", json=booking_body(name=NAME, email=EMAIL, push_tokens=[TOKEN]),
                              headers=AUTH)
        cancel = client.post(f"/v1/bookings/{cancelled['id']}/cancel", headers=AUTH)
        log = "".join(capfd.readouterr())
    finally:
        app.extensions["booking_engine"].dispose()
    assert created.status_code == cancel.status_code == 500
    assert log.count("unhandled_database_error") == 2, log
    for secret in (NAME, EMAIL, TOKEN, "Refused", "refused.customer"):
        assert secret not in log, log
    assert "parameters" not in log or "hidden" in log
