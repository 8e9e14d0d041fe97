"""The delivery log on SQLite and PostgreSQL, created by the Alembic migration."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from notification_service.db import DeliveryLog, delivery_id
from notification_service.migrate import upgrade


def test_migration_and_claim_once_semantics(database_url):
    upgrade(database_url)
    upgrade(database_url)  # idempotent
    log = DeliveryLog(database_url)
    nid = str(uuid.uuid4())
    row = log.ensure(notification_id=nid, channel="email", address="a@example.org", booking_version=1)
    assert row.delivery_id == delivery_id(nid, "email", "a@example.org")
    assert log.ensure(notification_id=nid, channel="email", address="a@example.org").delivery_id == row.delivery_id
    outcome, claimed = log.claim(row.delivery_id)
    assert (outcome, claimed.attempts) == ("claimed", 1)
    # a duplicate task while the first attempt is in flight must not send in parallel ...
    assert log.claim(row.delivery_id)[0] == "in_flight"
    # ... but the broker's redelivery after the worker died takes the attempt over
    outcome, claimed = log.claim(row.delivery_id, redelivered=True)
    assert (outcome, claimed.attempts) == ("claimed", 2)
    log.mark(row.delivery_id, "failed", error="503")
    assert log.claim(row.delivery_id)[0] == "claimed"  # the retry of a failed attempt
    log.mark(row.delivery_id, "sent", provider_message_id="p-1")
    assert log.claim(row.delivery_id, redelivered=True)[0] == "done"  # already sent: never again
    assert log.claim(delivery_id(nid, "email", "b@example.org")) == ("missing", None)
    assert [r.status for r in log.for_notification(nid)] == ["sent"]
    with log.engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {"deliveries", "booking_states", "dead_letters"} <= tables
    log.engine.dispose()


def test_booking_versions_older_than_a_cancellation_are_stale(database_url):
    upgrade(database_url)
    log = DeliveryLog(database_url)
    booking = str(uuid.uuid4())
    assert log.observe_booking(booking, 1, cancelled=False) is False
    assert log.observe_booking(booking, 3, cancelled=True) is False
    assert log.observe_booking(booking, 2, cancelled=False) is True
    assert log.observe_booking(booking, 4, cancelled=False) is False  # re-confirmed after the cancellation
    log.record_dead_letter(message_id="m-1", queue="q", task="t", reason="why")
    assert log.dead_letter_reasons() == {"m-1": "why"}
    log.engine.dispose()


def test_migration_matches_the_models(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from notification_service.db import Base

    upgrade(database_url)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
