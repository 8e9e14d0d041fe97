"""The delivery state machine with fakes: no broker, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from notification_service.delivery import machine as delivery
from notification_service.delivery.machine import BookingRef, Outcome, SendJob
from notification_service.delivery.status import DeliveryStatus
from tests.notification.fakes import FakeDeliveryLog, FakeOwner, FakeProvider, PermanentError, TransientError

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 60


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def opened(log, booking=None, addresses=(("email", "ada@example.org"),), nid=None):
    nid = nid or str(uuid.uuid4())
    result = delivery.open_deliveries(log, notification_id=nid, event="booking.confirmed",
                                      booking=booking or BookingRef(str(uuid.uuid4()), 1), addresses=list(addresses), now=T0)
    return nid, result


def send(log, did, provider, owner="w1", clock=None, expires_at=None, dead=()):
    return delivery.send(SendJob(did, expires_at), "content", log=log, provider=provider,
                         owner=FakeOwner(owner, set(dead)), lease_seconds=LEASE, now=clock or Clock())


def test_dispatch_opens_every_delivery_once_and_a_rerun_returns_only_pending_ones():
    log = FakeDeliveryLog()
    nid, first = opened(log, addresses=[("email", "a@x.org"), ("push", "tok"), ("push", "tok")])
    assert [c for c, _a, _d in first.pending] == ["email", "push"]
    send(log, first.pending[0][2], FakeProvider())
    _, again = opened(log, nid=nid, addresses=[("email", "a@x.org"), ("push", "tok")])
    assert [c for c, _a, _d in again.pending] == ["push"]  # the e-mail has had its attempt


def test_a_send_claims_sends_and_records_sent_in_two_writes():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    writes = log.writes
    outcome = send(log, did, FakeProvider("p-1"))
    assert (outcome.outcome, outcome.attempt, outcome.provider_message_id) == (Outcome.SENT, 1, "p-1")
    assert log.writes - writes == 2
    assert log.rows[did].status is DeliveryStatus.SENT and log.rows[did].lease_owner is None


def test_sent_is_final_a_copy_never_sends_again():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    send(log, did, FakeProvider())
    provider = FakeProvider()
    assert send(log, did, provider, owner="w2").outcome is Outcome.DONE
    assert provider.calls == []


def test_a_copy_that_finds_a_live_lease_is_deferred_not_sent_in_parallel():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    clock = Clock()
    copy_provider = FakeProvider()
    outcomes = []
    first = FakeProvider("p-1")
    # while the first attempt is at the provider, a copy (e.g. redelivered after a broker crash) runs
    first.during = lambda: outcomes.append(send(log, did, copy_provider, owner="w2", clock=clock))
    assert send(log, did, first, owner="w1", clock=clock).outcome is Outcome.SENT
    assert outcomes[0].outcome is Outcome.DEFERRED and outcomes[0].retry_in >= LEASE
    assert copy_provider.calls == []
    # the deferred copy, run again later, finds it sent
    assert send(log, did, copy_provider, owner="w2", clock=clock).outcome is Outcome.DONE
    assert copy_provider.calls == []


def test_the_redelivered_flag_is_not_a_licence_a_live_lease_of_the_same_process_is_respected():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    log.claim(did, "w1", T0, T0 + timedelta(seconds=LEASE))  # an attempt of this process still running
    provider = FakeProvider()
    assert send(log, did, provider, owner="w1").outcome is Outcome.DEFERRED
    assert provider.calls == []


def test_a_lease_of_a_dead_owner_is_taken_over_at_once():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    log.claim(did, "killed", T0, T0 + timedelta(seconds=LEASE))
    outcome = send(log, did, FakeProvider(), owner="w2", dead={"killed"})
    assert (outcome.outcome, outcome.attempt) == (Outcome.SENT, 2)


def test_an_expired_lease_is_taken_over():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    log.claim(did, "somewhere-else", T0, T0 + timedelta(seconds=LEASE))
    clock = Clock()
    clock.now = T0 + timedelta(seconds=LEASE + 1)
    assert send(log, did, FakeProvider(), owner="w2", clock=clock).outcome is Outcome.SENT


def test_an_attempt_that_lost_its_lease_cannot_overwrite_sent():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    clock = Clock()
    slow = FakeProvider(TransientError("timed out after the provider accepted it"))

    def newer_attempt_sends():
        clock.now = T0 + timedelta(seconds=LEASE + 1)  # the slow attempt's lease ran out
        assert send(log, did, FakeProvider("p-2"), owner="w2", clock=clock).outcome is Outcome.SENT

    slow.during = newer_attempt_sends
    with pytest.raises(TransientError):
        send(log, did, slow, owner="w1", clock=clock)
    assert log.rows[did].status is DeliveryStatus.SENT and log.rows[did].provider_message_id == "p-2"


def test_transient_error_gives_the_lease_back_and_the_retry_claims_at_once():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    with pytest.raises(TransientError):
        send(log, did, FakeProvider(TransientError("503")))
    assert log.rows[did].status is DeliveryStatus.FAILED and log.rows[did].lease_owner is None
    outcome = send(log, did, FakeProvider("p-1"))
    assert (outcome.outcome, outcome.attempt) == (Outcome.SENT, 2)


def test_unexpected_error_also_gives_the_lease_back():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    with pytest.raises(ValueError):
        send(log, did, FakeProvider(ValueError("bug")))
    assert log.rows[did].status is DeliveryStatus.FAILED


def test_permanent_error_records_dead_with_reason():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    with pytest.raises(PermanentError):
        send(log, did, FakeProvider(PermanentError("400 unregistered")))
    assert log.rows[did].status is DeliveryStatus.DEAD and "400 unregistered" in log.rows[did].last_error


def test_notification_older_than_a_processed_cancellation_is_stale_at_dispatch_and_at_send():
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    _, confirmed = opened(log, booking=BookingRef(booking, 1))
    _, cancelled = opened(log, booking=BookingRef(booking, 2, cancelled=True))
    assert not cancelled.stale
    # the confirmation's send, waiting for a retry, runs after the cancellation was processed
    provider = FakeProvider()
    assert send(log, confirmed.pending[0][2], provider).outcome is Outcome.STALE
    assert provider.calls == []
    _, late = opened(log, booking=BookingRef(booking, 1), nid=str(uuid.uuid4()))
    assert late.stale and late.pending == []


def test_expired_send_is_recorded_expired_never_sent_but_sent_stays_sent():
    log = FakeDeliveryLog()
    _, result = opened(log)
    did = result.pending[0][2]
    provider = FakeProvider()
    assert send(log, did, provider, expires_at=T0 - timedelta(seconds=1)).outcome is Outcome.EXPIRED
    assert provider.calls == [] and log.rows[did].status is DeliveryStatus.EXPIRED
    _, other = opened(log)
    other_id = other.pending[0][2]
    send(log, other_id, FakeProvider())
    assert send(log, other_id, provider, expires_at=T0 - timedelta(seconds=1)).outcome is Outcome.DONE
    assert log.rows[other_id].status is DeliveryStatus.SENT


def test_missing_delivery_is_a_permanent_error():
    with pytest.raises(PermanentError):
        send(FakeDeliveryLog(), str(uuid.uuid4()), FakeProvider())


def test_stall_is_ready_work_free_capacity_and_no_progress_twice_in_a_row():
    from notification_service.worker.watchdog import Observation, is_stalled

    stuck = Observation(received=10, ready=5, capacity=3)
    assert not is_stalled(None, stuck)  # one look is not enough
    assert is_stalled(stuck, Observation(received=10, ready=7, capacity=3))
    assert not is_stalled(stuck, Observation(received=11, ready=7, capacity=3))  # it took one: progress
    assert not is_stalled(stuck, Observation(received=10, ready=0, capacity=3))  # nothing waiting
    assert not is_stalled(stuck, Observation(received=10, ready=7, capacity=0))  # busy with what it has
