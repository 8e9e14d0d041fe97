"""The SQL delivery log on SQLite and PostgreSQL, created by the Alembic migrations: the same rules as the fake."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from notification_service.delivery.machine import BookingRef, ClaimResult, delivery_id
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.status import DeliveryStatus

NOW = datetime.now(UTC).replace(microsecond=0)
LEASE = NOW + timedelta(seconds=60)


def _open(log, nid, booking, addresses=(("email", "a@example.org"),)):
    return log.open(nid, "booking.confirmed", booking, list(addresses), NOW)


def test_claims_are_owner_stamped_leases_and_sent_is_final(database_url):
    upgrade(database_url)
    upgrade(database_url)  # idempotent
    log = SqlDeliveryLog(database_url)
    nid = str(uuid.uuid4())
    opened = _open(log, nid, BookingRef(str(uuid.uuid4()), 1))
    did = delivery_id(nid, "email", "a@example.org")
    assert opened.pending == [("email", "a@example.org", did)] and not opened.stale
    assert _open(log, nid, BookingRef(str(uuid.uuid4()), 1)).pending == [("email", "a@example.org", did)]

    assert log.claim(did, "w1", NOW, LEASE).result is ClaimResult.CLAIMED
    assert _open(log, nid, BookingRef(str(uuid.uuid4()), 1)).pending == []  # a re-run dispatch: live attempt
    leased = log.claim(did, "w2", NOW, LEASE)  # a copy, redelivered or not, finds the live lease
    assert (leased.result, leased.lease_owner, leased.attempt) == (ClaimResult.LEASED, "w1", 1)
    assert leased.lease_expires_at == LEASE
    assert log.take_over(did, "someone-else", "w2", NOW, LEASE).result is ClaimResult.LEASED
    taken = log.take_over(did, "w1", "w2", NOW, LEASE)  # w1 is known dead
    assert (taken.result, taken.attempt) == (ClaimResult.CLAIMED, 2)
    # the old attempt cannot record its failure over the new owner's lease
    assert not log.finish(did, "w1", 1, DeliveryStatus.FAILED, NOW, error="timed out")
    assert log.finish(did, "w2", 2, DeliveryStatus.FAILED, NOW, error="503")
    assert log.claim(did, "w3", NOW, LEASE).attempt == 3  # the retry of a failed attempt
    assert log.finish(did, "w3", 3, DeliveryStatus.SENT, NOW, provider_message_id="p-1")
    # nothing moves it out of sent: not a late failure, not a drop, not a dead letter, not a claim
    assert not log.finish(did, "w3", 3, DeliveryStatus.FAILED, NOW, error="late")
    assert not log.drop(did, DeliveryStatus.EXPIRED, "late", NOW)
    log.give_up(message_id=did, queue="q", task="t", reason="why", delivery_id=did)
    assert log.claim(did, "w4", NOW, LEASE).result is ClaimResult.FINAL
    row = log.get(did)
    assert (row.status, row.attempts, row.provider_message_id, row.lease_owner) == ("sent", 3, "p-1", None)
    assert log.claim(delivery_id(nid, "email", "b@example.org"), "w1", NOW, LEASE).result is ClaimResult.MISSING
    assert log.dead_letter_reasons() == {did: "why"}
    with log.engine.connect() as conn:
        assert {"deliveries", "booking_states", "dead_letters"} <= set(sa.inspect(conn).get_table_names())
    log.engine.dispose()


def test_expired_lease_is_claimable(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    nid = str(uuid.uuid4())
    _open(log, nid, BookingRef(str(uuid.uuid4()), 1))
    did = delivery_id(nid, "email", "a@example.org")
    log.claim(did, "w1", NOW, NOW + timedelta(seconds=1))
    later = NOW + timedelta(seconds=2)
    assert log.claim(did, "w2", later, later + timedelta(seconds=60)).result is ClaimResult.CLAIMED
    log.engine.dispose()


def test_booking_versions_older_than_a_cancellation_are_stale(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    booking = str(uuid.uuid4())
    confirmed = _open(log, str(uuid.uuid4()), BookingRef(booking, 1))
    assert not _open(log, str(uuid.uuid4()), BookingRef(booking, 3, cancelled=True)).stale
    assert _open(log, str(uuid.uuid4()), BookingRef(booking, 2)).stale
    assert not _open(log, str(uuid.uuid4()), BookingRef(booking, 4)).stale  # re-confirmed after the cancellation
    # the version-1 send, still queued, is stale when it starts
    did = confirmed.pending[0][2]
    assert log.claim(did, "w1", NOW, LEASE).result is ClaimResult.STALE
    assert log.get(did).status == "stale"
    log.engine.dispose()


def test_migration_matches_the_tables(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from notification_service.delivery.tables import metadata

    upgrade(database_url)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()
