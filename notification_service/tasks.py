"""Celery tasks: dispatch a notification, send one e-mail, send one push.

Failure policy (DESIGN.md "Worker semantics"):

* ``TransientError`` → ``self.retry`` with full-jitter exponential backoff (or
  the provider's ``Retry-After``), never more than NOTIFICATION_RETRY_MAX_SECONDS;
* ``PermanentError``, a contract violation, or retries exhausted → the reason is
  stored (``deliveries.last_error`` + ``dead_letters``) and the task raises
  ``Reject(requeue=False)`` so RabbitMQ dead-letters the message into ``<queue>.dlq``.

Expired reminders: Celery itself drops a message whose ``expires`` has passed
(it acks it and sends ``task_revoked``); ``record_expired`` below stores that as
status ``expired`` in the delivery log. The fan-out carries the expiry to the send
tasks, which drop (and record) a send that waited for retries past it. Not a dead
letter: nothing to repair.
"""

from __future__ import annotations

import functools
import inspect
import random
from datetime import datetime, timezone

import structlog
from celery import shared_task, signals
from celery.exceptions import Reject, Retry
from marshmallow import ValidationError

import shared
from shared.wire import CORRELATION_HEADER

from . import metrics
from .config import Settings
from .db import delivery_log
from .errors import PermanentError, TransientError
from .providers import EmailContent, PushContent, email_provider, push_provider
from .templates import render

log = structlog.get_logger("notification_service.tasks")
#: ``last_error`` of deliveries dropped because a newer cancellation was processed.
STALE = "older than a processed cancellation"
#: ``last_error`` of deliveries dropped because their message expired (a reminder after the start).
EXPIRED = "expired before it was sent"


def settings_of(task) -> Settings:
    settings = getattr(task.app, "settings", None)
    return settings if settings is not None else Settings.from_env()


def backoff(retries: int, settings: Settings, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``retries + 1`` (full jitter, capped)."""
    if retry_after is not None:
        return max(0.0, min(settings.retry_max_seconds, retry_after))
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * (2 ** retries))
    return random.uniform(0, ceiling)


def correlation_id_of(request) -> str | None:
    """The correlation id of the current message: header first, then the payload."""
    value = getattr(request, CORRELATION_HEADER, None) or (getattr(request, "headers", None) or {}).get(CORRELATION_HEADER)
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
    structlog.contextvars.bind_contextvars(
        correlation_id=correlation_id_of(task.request), task_id=task_id, task=task.name
    )


@signals.task_postrun.connect
def _unbind_context(**_kwargs) -> None:
    structlog.contextvars.clear_contextvars()


def dead_letter(task, reason: str, *, did: str | None = None) -> Reject:
    """Record why the current message is given up and return the Reject to raise."""
    settings = settings_of(task)
    queue = (task.request.delivery_info or {}).get("routing_key") or shared.TASK_QUEUES.get(task.name)
    try:
        store = delivery_log(settings.database_url)
        if did:
            store.mark(did, "dead", error=reason)
        store.record_dead_letter(message_id=task.request.id, queue=queue, task=task.name, reason=reason)
    except Exception as exc:  # noqa: BLE001 - the message must still be dead-lettered; the reason is logged
        log.error("could not store dead-letter reason", error=repr(exc))
    metrics.DEAD_LETTERS.labels(queue or "", "task").inc()
    metrics.TASKS.labels(task.name, "dead").inc()
    log.error("dead-lettered", reason=reason, queue=queue)
    return Reject(reason, requeue=False)


def guarded(body):
    """Unexpected exceptions (a bug, the database down) retry like transient ones, then dead-letter.

    Stock Celery would ack a task that raised, i.e. lose the notification. A
    message whose arguments do not fit the task is dead-lettered at once:
    retrying cannot make them fit.
    """
    signature = inspect.signature(body)

    @functools.wraps(body)
    def wrapper(self, *args, **kwargs):
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise dead_letter(self, f"contract violation: bad task arguments: {exc}")
        try:
            return body(self, *args, **kwargs)
        except (Retry, Reject):
            raise
        except Exception as exc:  # noqa: BLE001 - classified right here
            settings = settings_of(self)
            retries = self.request.retries or 0
            if retries >= settings.max_retries:
                raise dead_letter(self, f"unexpected error after {retries + 1} attempts: {exc!r}",
                                  did=kwargs.get("delivery_id")) from exc
            log.exception("unexpected error; retrying", retries=retries)
            if kwargs.get("delivery_id"):
                _release(settings, kwargs["delivery_id"], repr(exc))
            metrics.RETRIES.labels(self.name).inc()
            metrics.TASKS.labels(self.name, "retry").inc()
            raise self.retry(countdown=backoff(retries, settings), max_retries=settings.max_retries, exc=exc)

    return wrapper


def _release(settings: Settings, did: str, error: str) -> None:
    """Mark a delivery ``failed`` so that its retry (a fresh message) may claim it again."""
    try:
        delivery_log(settings.database_url).mark(did, "failed", error=error)
    except Exception as exc:  # noqa: BLE001 - the database may be what failed; the retry still goes out
        log.error("could not record the failed attempt", error=repr(exc))


def _is_past(iso_timestamp: str) -> bool:
    try:
        moment = datetime.fromisoformat(iso_timestamp)
    except ValueError:
        return False  # unreadable: send rather than drop a notification
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment <= datetime.now(timezone.utc)


def _addresses(message: dict) -> list[tuple[str, str]]:
    recipient = message["recipient"]
    pairs = [(shared.CHANNEL_EMAIL, recipient["email"])]
    pairs += [(shared.CHANNEL_PUSH, token) for token in dict.fromkeys(recipient.get("push_tokens") or [])]
    return pairs


@shared_task(bind=True, name=shared.DISPATCH_TASK, acks_late=True)
@guarded
def dispatch(self, message=None, **_ignored):
    """Validate, drop stale ones, render and fan out one send task per channel and address."""
    settings = settings_of(self)
    try:
        data = shared.load_notification_requested(message)
    except ValidationError as exc:
        raise dead_letter(self, f"contract violation: {exc.messages}")
    store = delivery_log(settings.database_url)
    notification_id = str(data["notification_id"])
    booking = data["booking"]
    event = data["event"].value
    cid = data["correlation_id"]
    structlog.contextvars.bind_contextvars(correlation_id=cid, notification_id=notification_id)
    cancelled = booking["status"] == "cancelled" or data["event"] is shared.Event.CANCELLED
    common = dict(notification_id=notification_id, booking_id=str(booking["id"]),
                  booking_version=booking["version"], event=event)
    if store.observe_booking(str(booking["id"]), booking["version"], cancelled):
        for channel, address in _addresses(data):
            store.drop(store.ensure(channel=channel, address=address, **common).delivery_id, "stale", STALE)
        metrics.TASKS.labels(self.name, "stale").inc()
        log.info("stale notification dropped", booking_version=booking["version"])
        return "stale"
    priority = int(shared.Priority.from_name(data["priority"]))
    try:
        email_parts = render(data, shared.CHANNEL_EMAIL)
        push_parts = render(data, shared.CHANNEL_PUSH) if data["recipient"].get("push_tokens") else None
    except PermanentError as exc:
        raise dead_letter(self, str(exc))
    sent = 0
    for channel, address in _addresses(data):
        row = store.ensure(channel=channel, address=address, **common)
        if row.status != "pending":
            # A re-run dispatch (broker redelivery, relay resend): a delivery past `pending`
            # already has its task (in flight, waiting for a retry, done, or dead-lettered).
            continue
        ids = dict(delivery_id=row.delivery_id, correlation_id=cid, **common)
        if self.request.expires:
            # Carried as an argument, not as Celery's `expires`: that would also set an AMQP TTL,
            # and RabbitMQ would dead-letter an expired reminder instead of it being recorded.
            ids["expires_at"] = str(self.request.expires)
        if channel == shared.CHANNEL_EMAIL:
            task, kwargs = shared.EMAIL_TASK, dict(ids, to=address, subject=email_parts["subject"],
                                                     text=email_parts["txt"], html=email_parts["html"])
        else:
            task, kwargs = shared.PUSH_TASK, dict(ids, token=address, title=push_parts["title"], body=push_parts["body"])
        self.app.tasks[task].apply_async(
            kwargs=kwargs,
            task_id=row.delivery_id,
            priority=priority,
            queue=shared.TASK_QUEUES[task],
            headers={CORRELATION_HEADER: cid},
            # Flower and logs show these: ids only, never addresses or content.
            argsrepr="()",
            kwargsrepr=f"{{'delivery_id': '{row.delivery_id}', 'notification_id': '{notification_id}'}}",
        )
        sent += 1
    metrics.TASKS.labels(self.name, "dispatched").inc()
    log.info("dispatched", deliveries=sent, notification_event=event, priority=data["priority"])
    return sent


def _send(task, did: str, provider, content, booking_id=None, booking_version=None, expires_at=None) -> str:
    settings = settings_of(task)
    store = delivery_log(settings.database_url)
    structlog.contextvars.bind_contextvars(delivery_id=did)
    if expires_at and _is_past(expires_at) and store.drop(did, "expired", EXPIRED):
        # e.g. a reminder whose send waited for retries until after the booking started
        metrics.TASKS.labels(task.name, "expired").inc()
        log.info("expired delivery dropped")
        return "expired"
    if booking_id and booking_version and store.is_stale(booking_id, booking_version):
        # Fanned out before the cancellation was processed (e.g. waiting for a retry):
        # the customer must not get "confirmed" after "cancelled".
        if store.drop(did, "stale", STALE):
            metrics.TASKS.labels(task.name, "stale").inc()
            log.info("stale delivery dropped", booking_version=booking_version)
            return "stale"
    outcome, _row = store.claim(did, redelivered=bool((task.request.delivery_info or {}).get("redelivered")))
    if outcome == "missing":
        raise dead_letter(task, f"delivery {did} is not in the delivery log (log reset or wrong database?)")
    if outcome != "claimed":
        metrics.TASKS.labels(task.name, "skipped").inc()
        log.info("not sending", reason="already sent or dropped" if outcome == "done" else "another attempt in flight")
        return "skipped"
    try:
        provider_id = provider.send(content)
    except PermanentError as exc:
        raise dead_letter(task, f"permanent: {exc}", did=did)
    except TransientError as exc:
        retries = task.request.retries or 0
        if retries >= settings.max_retries:
            raise dead_letter(task, f"retries exhausted after {retries + 1} attempts: {exc}", did=did)
        countdown = backoff(retries, settings, exc.retry_after)
        store.mark(did, "failed", error=str(exc))
        metrics.RETRIES.labels(task.name).inc()
        metrics.TASKS.labels(task.name, "retry").inc()
        log.warning("transient failure; retrying", error=str(exc), countdown=round(countdown, 3), retries=retries)
        raise task.retry(countdown=countdown, max_retries=settings.max_retries, exc=exc)
    store.mark(did, "sent", provider_message_id=str(provider_id)[:500])
    metrics.TASKS.labels(task.name, "sent").inc()
    log.info("sent")
    return "sent"


@shared_task(bind=True, name=shared.EMAIL_TASK, acks_late=True)
@guarded
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
    return _send(self, delivery_id, email_provider(settings_of(self)), content, booking_id, booking_version, expires_at)


@shared_task(bind=True, name=shared.PUSH_TASK, acks_late=True)
@guarded
def send_push(self, *, delivery_id, notification_id, token, title, body, correlation_id=None,
              booking_id=None, booking_version=None, event=None, expires_at=None, **_ignored):
    data = {"notification_id": notification_id, "event": event or "", "booking_id": booking_id or ""}
    content = PushContent(delivery_id=delivery_id, token=token, title=title, body=body, data=data)
    return _send(self, delivery_id, push_provider(settings_of(self)), content, booking_id, booking_version, expires_at)


@signals.task_revoked.connect
def record_expired(request=None, expired=False, sender=None, **_kwargs) -> None:
    """An expired message (e.g. a reminder after the booking started) is acked by Celery: log it."""
    if not expired or request is None:
        return
    settings = settings_of(sender) if sender is not None else Settings.from_env()
    store = delivery_log(settings.database_url)
    kwargs = getattr(request, "kwargs", None) or {}
    name = getattr(sender, "name", None)
    if name == shared.DISPATCH_TASK:
        try:
            data = shared.load_notification_requested(kwargs.get("message"))
        except ValidationError as exc:
            log.warning("expired message broke the contract", task_id=request.id, error=str(exc.messages))
            return
        for channel, address in _addresses(data):
            row = store.ensure(channel=channel, address=address, notification_id=str(data["notification_id"]),
                               booking_id=str(data["booking"]["id"]), booking_version=data["booking"]["version"],
                               event=data["event"].value)
            store.drop(row.delivery_id, "expired", EXPIRED)
    elif kwargs.get("delivery_id"):
        store.drop(kwargs["delivery_id"], "expired", EXPIRED)
    metrics.TASKS.labels(name or "", "expired").inc()
    log.info("expired message dropped", task_id=request.id)
