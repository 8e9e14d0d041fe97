"""The SQL delivery log on SQLite and PostgreSQL, created by the Alembic migrations: the same rules as the fake."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from notification_service.delivery.machine import (
    STALE_REASON,
    SUPERSEDED_REASON,
    BookingRef,
    ClaimResult,
    delivery_id,
)
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


def _open_event(log, booking, version, event, addresses=(("email", "a@example.org"),)):
    nid = str(uuid.uuid4())
    opened = log.open(nid, event, BookingRef(booking, version, event == "booking.cancelled"), list(addresses), NOW)
    return nid, opened


def test_a_newer_version_supersedes_older_messages_of_its_kind_on_its_channel(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    booking = str(uuid.uuid4())
    both = [("email", "a@example.org"), ("push", "tok")]
    confirmed_nid, confirmed = _open_event(log, booking, 1, "booking.confirmed", both)
    _, old_reminder = _open_event(log, booking, 1, "booking.reminder", both)
    _open_event(log, booking, 2, "booking.rescheduled")  # e-mail only
    mail, push = (delivery_id(confirmed_nid, c, a) for c, a in both)
    assert log.claim(mail, "w1", NOW, LEASE).result is ClaimResult.STALE
    assert [(r.status, r.reason) for r in log.receipts_of(mail)] == [("stale", SUPERSEDED_REASON)]
    assert log.claim(push, "w1", NOW, LEASE).result is ClaimResult.CLAIMED  # no newer push was opened
    assert log.claim(old_reminder.pending[0][2], "w1", NOW, LEASE).result is ClaimResult.STALE
    # dispatched only now: stale from the start on the channel the reschedule took, pending on the other
    _, late = _open_event(log, booking, 1, "booking.confirmed", both)
    assert not late.stale and [c for c, _a, _d in late.pending] == ["push"]
    assert _open_event(log, booking, 1, "booking.confirmed")[1].stale
    # the reminder of the new version is not superseded by its own reschedule; a newer reminder's is
    _, new_reminder = _open_event(log, booking, 2, "booking.reminder")
    _open_event(log, booking, 3, "booking.reminder")
    assert log.claim(new_reminder.pending[0][2], "w1", NOW, LEASE).result is ClaimResult.STALE
    _, reschedule_3 = _open_event(log, booking, 3, "booking.rescheduled")
    assert log.claim(reschedule_3.pending[0][2], "w1", NOW, LEASE).result is ClaimResult.CLAIMED
    log.engine.dispose()


def test_a_newer_message_waits_while_an_older_one_it_supersedes_is_at_its_provider(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    booking = str(uuid.uuid4())
    _, confirmed = _open_event(log, booking, 1, "booking.confirmed")
    old = confirmed.pending[0][2]
    assert log.claim(old, "w1", NOW, LEASE).result is ClaimResult.CLAIMED
    _, rescheduled = _open_event(log, booking, 2, "booking.rescheduled")
    new = rescheduled.pending[0][2]
    waiting = log.claim(new, "w2", NOW, LEASE)
    assert (waiting.result, waiting.lease_owner, waiting.lease_expires_at) == (ClaimResult.WAITING, "w1", LEASE)
    assert log.get(new).status == "pending"
    assert log.finish(old, "w1", 1, DeliveryStatus.SENT, NOW, provider_message_id="p-1")
    assert log.claim(new, "w2", NOW, LEASE).result is ClaimResult.CLAIMED
    # an older attempt whose lease ended holds nothing up
    _, third = _open_event(log, booking, 3, "booking.rescheduled")
    after = LEASE + timedelta(seconds=1)
    assert log.claim(third.pending[0][2], "w3", after, after + timedelta(seconds=60)).result is ClaimResult.CLAIMED
    log.engine.dispose()


def test_a_stale_delivery_left_sending_by_a_dead_or_expired_owner_is_recorded_stale_at_once(database_url):
    upgrade(database_url)
    log = SqlDeliveryLog(database_url)
    booking = str(uuid.uuid4())
    killed, expired, live = (_open_event(log, booking, 1, "booking.confirmed")[1].pending[0][2] for _ in range(3))
    assert log.claim(killed, "killed", NOW, LEASE).result is ClaimResult.CLAIMED
    assert log.claim(expired, "elsewhere", NOW, NOW + timedelta(seconds=1)).result is ClaimResult.CLAIMED
    assert log.claim(live, "busy", NOW, LEASE).result is ClaimResult.CLAIMED
    _open_event(log, booking, 2, "booking.cancelled")
    later = NOW + timedelta(seconds=2)

    # the owner is known dead to the copy: take_over records it stale instead of answering LEASED
    assert log.claim(killed, "w2", later, LEASE).result is ClaimResult.LEASED
    assert log.take_over(killed, "killed", "w2", later, LEASE).result is ClaimResult.STALE
    # the lease ended: the claim itself records it stale
    assert log.claim(expired, "w2", later, LEASE).result is ClaimResult.STALE
    for did in (killed, expired):
        row = log.get(did)
        assert (row.status, row.lease_owner, row.lease_expires_at) == ("stale", None, None)
        assert [(r.status, r.reason) for r in log.receipts_of(did)][-1] == ("stale", STALE_REASON)
    # a live attempt of a live owner may be at the provider: the copy waits for its lease, no longer
    assert log.claim(live, "w2", later, LEASE).result is ClaimResult.LEASED
    assert log.get(live).status == "sending"
    after = LEASE + timedelta(seconds=1)
    assert log.claim(live, "w2", after, after + timedelta(seconds=60)).result is ClaimResult.STALE
    log.engine.dispose()
