"""The delivery state machine with fakes: no broker, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notification_service.delivery import machine as delivery
from notification_service.delivery.machine import BookingRef, Outcome, SendJob
from notification_service.delivery.status import DeliveryStatus
from notification_service.providers.content import EmailContent
from notification_service.suppressions.keys import address_hash
from tests.notification.fakes import FakeDeliveryLog, FakeOwner, FakeProvider, PermanentError, TransientError

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 60


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


#: What the provider is given (its address is the suppression key).
CONTENT = EmailContent(delivery_id="d", to="ada@example.org", subject="s", text="t", html="h")


def opened(log, booking=None, addresses=(("email", "ada@example.org"),), nid=None):
    nid = nid or str(uuid.uuid4())
    result = delivery.open_deliveries(log, notification_id=nid, event="booking.confirmed",
                                      booking=booking or BookingRef(str(uuid.uuid4()), 1), addresses=list(addresses),
                                      now=T0)
    return nid, result


def send(log, did, provider, owner="w1", clock=None, expires_at=None, dead=()):
    return delivery.send(SendJob(did, expires_at), CONTENT, log=log, provider=provider,
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


# --- newer versions (issue 15, item 5) and stale deliveries left sending (item 10) -------------


def open_event(log, booking_id, version, event, addresses=(("email", "ada@example.org"),)):
    return delivery.open_deliveries(log, notification_id=str(uuid.uuid4()), event=event,
                                    booking=BookingRef(booking_id, version, event == "booking.cancelled"),
                                    addresses=list(addresses), now=T0)


def test_kinds_a_schedule_message_supersedes_older_schedules_and_reminders_a_reminder_only_reminders():
    from notification_service.delivery.supersession import supersedes

    assert supersedes("booking.rescheduled", "booking.confirmed")
    assert supersedes("booking.rescheduled", "booking.rescheduled")
    assert supersedes("booking.confirmed", "booking.reminder")
    assert supersedes("booking.reminder", "booking.reminder")
    assert not supersedes("booking.reminder", "booking.confirmed")
    assert not supersedes("booking.reminder", "booking.rescheduled")
    assert supersedes("booking.cancelled", "booking.reminder") and supersedes("booking.cancelled", "booking.confirmed")
    assert not supersedes(None, "booking.confirmed") and not supersedes("booking.rescheduled", None)


def test_a_confirmation_dispatched_after_its_reschedule_is_stale_on_that_channel_only():
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    rescheduled = open_event(log, booking, 2, "booking.rescheduled")  # e-mail only
    late = open_event(log, booking, 1, "booking.confirmed", [("email", "ada@example.org"), ("push", "tok")])
    assert not late.stale and [c for c, _a, _d in late.pending] == ["push"]
    assert open_event(log, booking, 1, "booking.confirmed").stale  # nothing left to send: stale
    assert send(log, rescheduled.pending[0][2], FakeProvider()).outcome is Outcome.SENT


def test_a_confirmation_queued_before_its_reschedule_was_dispatched_is_stale_when_its_send_starts():
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    confirmed = open_event(log, booking, 1, "booking.confirmed")
    open_event(log, booking, 2, "booking.rescheduled")
    provider = FakeProvider()
    did = confirmed.pending[0][2]
    assert send(log, did, provider).outcome is Outcome.STALE
    assert provider.calls == [] and log.rows[did].last_error == delivery.SUPERSEDED_REASON


def test_a_reminder_of_the_new_version_is_not_superseded_by_its_reschedule_but_the_old_reminder_is():
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    old_reminder = open_event(log, booking, 1, "booking.reminder")
    new_reminder = open_event(log, booking, 2, "booking.reminder")
    open_event(log, booking, 2, "booking.rescheduled")
    assert send(log, new_reminder.pending[0][2], FakeProvider()).outcome is Outcome.SENT
    assert send(log, old_reminder.pending[0][2], FakeProvider()).outcome is Outcome.STALE


def test_a_newer_message_waits_while_the_older_one_is_at_its_provider_and_goes_after_it():
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    confirmed = open_event(log, booking, 1, "booking.confirmed")
    clock = Clock()
    waited = []

    def reschedule_meanwhile():
        rescheduled = open_event(log, booking, 2, "booking.rescheduled")
        waited.append(send(log, rescheduled.pending[0][2], FakeProvider(), owner="w2", clock=clock))
        waited.append(rescheduled.pending[0][2])

    first = FakeProvider("p-1")
    first.during = reschedule_meanwhile
    assert send(log, confirmed.pending[0][2], first, owner="w1", clock=clock).outcome is Outcome.SENT
    result, rescheduled_id = waited
    assert result.outcome is Outcome.WAITING and 1.0 <= result.retry_in <= delivery.WAITING_POLL_SECONDS
    later = FakeProvider("p-2")
    assert send(log, rescheduled_id, later, owner="w2", clock=clock).outcome is Outcome.SENT  # after the older one
    assert len(later.calls) == 1


def test_a_stale_delivery_left_sending_by_a_dead_owner_is_recorded_stale_at_once():
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    did = open_event(log, booking, 1, "booking.confirmed").pending[0][2]
    log.claim(did, "killed", T0, T0 + timedelta(seconds=LEASE))  # its worker was SIGKILLed mid-send
    open_event(log, booking, 2, "booking.cancelled")
    provider = FakeProvider()
    assert send(log, did, provider, owner="w2", dead={"killed"}).outcome is Outcome.STALE
    assert provider.calls == [] and log.rows[did].status is DeliveryStatus.STALE
    assert log.rows[did].last_error == delivery.STALE_REASON and log.rows[did].lease_owner is None


def test_a_stale_delivery_left_sending_by_an_expired_owner_is_recorded_stale_at_once():
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    did = open_event(log, booking, 1, "booking.confirmed").pending[0][2]
    log.claim(did, "elsewhere", T0, T0 + timedelta(seconds=LEASE))  # another host: never presumed dead
    open_event(log, booking, 2, "booking.rescheduled")
    clock = Clock()
    assert send(log, did, FakeProvider(), owner="w2", clock=clock).outcome is Outcome.DEFERRED  # live lease
    clock.now = T0 + timedelta(seconds=LEASE, microseconds=1)
    assert send(log, did, FakeProvider(), owner="w2", clock=clock).outcome is Outcome.STALE


def test_a_delivery_log_answering_with_an_ended_lease_fails_the_send_instead_of_deferring_it():
    class EndedLease(FakeDeliveryLog):
        def claim(self, did, owner, now, lease_until, **_):
            return delivery.Claim(delivery.ClaimResult.LEASED, 1, "elsewhere", now - timedelta(seconds=1))

    with pytest.raises(RuntimeError, match="ended lease"):
        send(EndedLease(), str(uuid.uuid4()), FakeProvider())


#: Who holds the lease in the way, what the delivery is, and when the copy looks (seconds after T0).
_HOLDERS = ("live", "dead")
_SITUATIONS = ("fresh", "cancelled", "superseded", "behind-older")


@given(holder=st.sampled_from(_HOLDERS), situation=st.sampled_from(_SITUATIONS),
       looks=st.lists(st.floats(min_value=0, max_value=3 * LEASE), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_invariant_no_copy_is_ever_deferred_past_the_moment_its_lease_ends(holder, situation, looks):
    log = FakeDeliveryLog()
    booking = str(uuid.uuid4())
    clock = Clock()
    old = open_event(log, booking, 1, "booking.confirmed").pending[0][2]
    log.claim(old, "holder", T0, T0 + timedelta(seconds=LEASE))  # an attempt at the provider, or killed there
    did = old
    if situation == "cancelled":
        open_event(log, booking, 2, "booking.cancelled")
    elif situation == "superseded":
        open_event(log, booking, 2, "booking.rescheduled")
    elif situation == "behind-older":  # the copy is the newer message, behind the older one's lease
        did = open_event(log, booking, 2, "booking.rescheduled").pending[0][2]
    lease_end = T0 + timedelta(seconds=LEASE)
    dead = {"holder"} if holder == "dead" else set()
    for offset in sorted(looks):
        clock.now = T0 + timedelta(seconds=offset)
        result = send(log, did, FakeProvider(), owner="copy", clock=clock, dead=dead)
        if result.outcome in (Outcome.DEFERRED, Outcome.WAITING):
            assert clock.now <= lease_end, "deferred on a lease that has ended"
            assert clock.now + timedelta(seconds=result.retry_in) <= lease_end + timedelta(seconds=1)
        if result.outcome is Outcome.DEFERRED:  # a dead holder's lease is taken over or dropped, not waited for
            assert holder == "live"
    if clock.now > lease_end:
        assert log.rows[did].status in (DeliveryStatus.SENT, DeliveryStatus.STALE)


def test_a_suppressed_address_is_recorded_suppressed_and_no_provider_is_called():
    log, provider = FakeDeliveryLog(), FakeProvider()
    log.suppressed.add(address_hash("email", " Ada@Example.org "))
    _nid, result = opened(log)
    did = result.pending[0][2]
    assert send(log, did, provider).outcome is Outcome.SUPPRESSED
    assert provider.calls == []
    assert log.rows[did].status is DeliveryStatus.SUPPRESSED
    assert send(log, did, provider).outcome is Outcome.DONE  # final: a redelivered copy does nothing


def test_an_address_off_the_suppression_list_is_sent():
    log, provider = FakeDeliveryLog(), FakeProvider()
    log.suppressed.add(address_hash("email", "bob@example.org"))
    _nid, result = opened(log)
    assert send(log, result.pending[0][2], provider).outcome is Outcome.SENT
    assert len(provider.calls) == 1
