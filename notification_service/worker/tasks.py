"""The Celery tasks: thin adapters from a task message to the delivery state machine.

``dispatch`` validates a ``notification.requested`` message, creates its
deliveries (``delivery.open_deliveries``) and publishes one send task per
delivery still pending; ``send_email``/``send_push`` run one attempt
(``delivery.send``). Retries, dead letters and what may be published are the
Task base class's business (``policy.NotificationTask``).

Expired reminders: Celery itself drops a message whose ``expires`` has passed
(it acks it and sends ``task_revoked``); ``record_expired`` stores that as
``expired`` in the delivery log. The fan-out carries the expiry to the send
tasks as an argument (as Celery's ``expires`` it would become an AMQP TTL and
RabbitMQ would dead-letter it instead), and a send retried past it is recorded
``expired``, not sent late. Not a dead letter: nothing to repair.
"""

from __future__ import annotations

import random
import time
from datetime import datetime

import structlog
from celery import shared_task, signals
from marshmallow import ValidationError

import shared
from notification_service.delivery import machine as delivery
from notification_service.delivery.log import delivery_log
from notification_service.delivery.owner import process_owner
from notification_service.delivery.status import DeliveryStatus
from notification_service.delivery.timestamps import aware
from notification_service.errors import ChannelUnavailable, ContractViolation
from notification_service.providers import EmailContent, PushContent
from notification_service.providers.chain import ProviderChain
from notification_service.providers.channels import email_provider, push_provider
from notification_service.rendering.templates import render
from notification_service.runtime import metrics
from notification_service.worker import channel_hold
from notification_service.worker.failure_policy import NotificationTask, safe_kwargsrepr
from shared.wire import CORRELATION_HEADER

log = structlog.get_logger("notification_service.worker.tasks")


def correlation_id_of(request) -> str | None:
    """The correlation id of the current message: header first, then the payload."""
    headers = getattr(request, "headers", None) or {}
    value = getattr(request, CORRELATION_HEADER, None) or headers.get(CORRELATION_HEADER)
    if value:
        return value
    kwargs = getattr(request, "kwargs", None) or {}
    message = kwargs.get("message")
    if isinstance(message, dict) and message.get("correlation_id"):
        return message["correlation_id"]
    return kwargs.get("correlation_id")


@signals.task_prerun.connect
def _bind_context(task_id=None, task=None, **_kwargs) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(correlation_id=correlation_id_of(task.request), task_id=task_id,
                                           task=task.name)


@signals.task_postrun.connect
def _unbind_context(**_kwargs) -> None:
    structlog.contextvars.clear_contextvars()


def _load(message) -> dict:
    try:
        return shared.load_notification_requested(message)
    except ValidationError as exc:
        raise ContractViolation(str(exc.messages)) from None


def _addresses(data: dict) -> list[tuple[str, str]]:
    recipient = data["recipient"]
    pairs = [(shared.CHANNEL_EMAIL, recipient["email"])]
    pairs += [(shared.CHANNEL_PUSH, token) for token in recipient.get("push_tokens") or []]
    return pairs


def _booking(data: dict) -> delivery.BookingRef:
    booking = data["booking"]
    cancelled = booking["status"] == "cancelled" or data["event"] is shared.Event.CANCELLED
    return delivery.BookingRef(str(booking["id"]), booking["version"], cancelled)


@shared_task(bind=True, base=NotificationTask, name=shared.DISPATCH_TASK)
def dispatch(self, message=None, **_ignored):
    """Validate, drop stale ones, render and fan out one send task per pending delivery."""
    data = _load(message)
    notification_id = str(data["notification_id"])
    event = data["event"].value
    cid = data["correlation_id"]
    parts = {shared.CHANNEL_EMAIL: render(data, shared.CHANNEL_EMAIL)}
    if data["recipient"].get("push_tokens"):
        parts[shared.CHANNEL_PUSH] = render(data, shared.CHANNEL_PUSH)
    booking = _booking(data)
    opened = delivery.open_deliveries(delivery_log(self.settings.database_url), notification_id=notification_id,
                                      event=event, booking=booking, addresses=_addresses(data), correlation_id=cid)
    if opened.stale:
        log.info("stale notification dropped", booking_version=booking.version)
        return "stale"
    priority = int(shared.Priority.from_name(data["priority"]))
    common = {"notification_id": notification_id, "booking_id": booking.booking_id,
              "booking_version": booking.version, "event": event, "correlation_id": cid}
    if self.request.expires:
        common["expires_at"] = str(self.request.expires)
    for channel, address, did in opened.pending:
        if channel == shared.CHANNEL_EMAIL:
            email = parts[channel]
            task, kwargs = send_email, dict(common, delivery_id=did, to=address, subject=email["subject"],
                                            text=email["txt"], html=email["html"])
        else:
            push = parts[channel]
            task, kwargs = send_push, dict(common, delivery_id=did, token=address, title=push["title"],
                                           body=push["body"])
        task.apply_async(kwargs=kwargs, task_id=did, priority=priority, headers={CORRELATION_HEADER: cid},
                         argsrepr="()", kwargsrepr=safe_kwargsrepr(kwargs))
    log.info("dispatched", deliveries=len(opened.pending), priority=data["priority"])
    return "dispatched"


def _expires(value) -> datetime | None:
    if not value:
        return None
    try:
        return aware(str(value))
    except ValueError:
        return None  # unreadable: send rather than drop a notification


def _held(task: NotificationTask, chain: ProviderChain) -> bool:
    """Every provider of the channel refuses calls (breakers open): hold the channel, put this message back.

    Nothing is claimed or recorded (no attempt, no receipt); the message waits in the broker until the
    earliest breaker lets a probe through, and this worker takes no more of the channel's messages till then.
    """
    until = chain.unavailable_until()
    if until is None:
        return False
    wait = until - time.time()
    if wait <= 0:
        return False
    # Held for as long as the outage lasts, but not past the notification's usefulness: too old, it is
    # dead-lettered here (TooOld) as a retry would be.
    task.check_budget(ChannelUnavailable(chain.channel, wait))
    channel_hold.hold(chain.channel, wait)
    # Spread the messages that come back over a second or two: one of them is the probe.
    task.defer(wait + random.uniform(0.0, 2.0))
    metrics.TASKS.labels(task.name, "held").inc()
    log.info("every provider's breaker is open; deferred", channel=chain.channel, countdown=round(wait, 1))
    return True


def _send(task: NotificationTask, did: str, provider: ProviderChain, content, expires_at) -> str:
    settings = task.settings
    if _held(task, provider):
        return "held"
    result = delivery.send(delivery.SendJob(did, _expires(expires_at)), content,
                           log=delivery_log(settings.database_url), provider=provider,
                           owner=process_owner(), lease_seconds=settings.lease_seconds)
    if result.outcome is delivery.Outcome.DEFERRED:
        # Another attempt holds a live lease (a copy after a broker crash, a re-run dispatch):
        # never send in parallel; look again when that lease ends.
        log.info("another attempt holds the delivery; deferred", countdown=round(result.retry_in, 1))
        task.defer(result.retry_in)
    elif result.outcome is delivery.Outcome.WAITING:
        # An older message of the booking is at its provider on this channel: this newer one goes
        # after it, so the customer's last message is the newest.
        log.info("an older message of the booking is being sent; deferred", countdown=round(result.retry_in, 1))
        task.defer(result.retry_in)
    elif result.outcome is delivery.Outcome.SENT:
        log.info("sent", attempt=result.attempt, provider=result.provider)
    elif result.outcome is delivery.Outcome.SUPPRESSED:
        log.info("on the suppression list; recorded suppressed, not sent")
    return result.outcome.value


@shared_task(bind=True, base=NotificationTask, name=shared.EMAIL_TASK)
def send_email(self, *, delivery_id, notification_id, to, subject, text, html, correlation_id=None,
               booking_id=None, booking_version=None, event=None, expires_at=None, **_ignored):
    headers = {
        "X-Notification-Id": notification_id,
        "X-Notification-Event": event or "",
        "X-Booking-Id": booking_id or "",
        "X-Booking-Version": str(booking_version or ""),
        "X-Correlation-Id": correlation_id or "",
    }
    content = EmailContent(delivery_id=delivery_id, to=to, subject=subject, text=text, html=html, headers=headers)
    return _send(self, delivery_id, email_provider(self.settings), content, expires_at)


@shared_task(bind=True, base=NotificationTask, name=shared.PUSH_TASK)
def send_push(self, *, delivery_id, notification_id, token, title, body, correlation_id=None,
              booking_id=None, booking_version=None, event=None, expires_at=None, **_ignored):
    data = {"notification_id": notification_id, "event": event or "", "booking_id": booking_id or ""}
    content = PushContent(delivery_id=delivery_id, token=token, title=title, body=body, data=data)
    return _send(self, delivery_id, push_provider(self.settings), content, expires_at)


@signals.task_revoked.connect
def record_expired(request=None, expired=False, sender=None, **_kwargs) -> None:
    """An expired message (e.g. a reminder after the booking started) is acked by Celery: record it."""
    if not expired or request is None:
        return
    settings = sender.settings if isinstance(sender, NotificationTask) else None
    if settings is None:
        return
    store = delivery_log(settings.database_url)
    kwargs = getattr(request, "kwargs", None) or {}
    now = delivery.utcnow()
    if getattr(sender, "name", None) == shared.DISPATCH_TASK:
        try:
            data = shared.load_notification_requested(kwargs.get("message"))
        except ValidationError as exc:
            log.warning("expired message broke the contract", task_id=request.id, error=str(exc.messages))
            return
        opened = delivery.open_deliveries(store, notification_id=str(data["notification_id"]),
                                          event=data["event"].value, booking=_booking(data),
                                          addresses=_addresses(data), now=now, correlation_id=data["correlation_id"])
        for _channel, _address, did in opened.pending:
            store.drop(did, DeliveryStatus.EXPIRED, delivery.EXPIRED_REASON, now)
    elif kwargs.get("delivery_id"):
        store.drop(kwargs["delivery_id"], DeliveryStatus.EXPIRED, delivery.EXPIRED_REASON, now)
    metrics.TASKS.labels(getattr(sender, "name", ""), "expired").inc()
    log.info("expired message dropped", task_id=request.id)
