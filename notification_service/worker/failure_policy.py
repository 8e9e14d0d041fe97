"""The failure policy, written once: the Celery Task base class of every notification task.

Celery does most of it (DESIGN.md "Worker semantics"):

* ``autoretry_for=(Exception,)`` minus ``dont_autoretry_for=(PermanentError,)``:
  transient provider errors *and* unexpected ones (a bug, the database away)
  retry with ``retry_backoff`` (exponential, base NOTIFICATION_RETRY_BASE_SECONDS),
  ``retry_jitter`` (full jitter) and ``retry_backoff_max`` (NOTIFICATION_RETRY_MAX_SECONDS,
  at most 15 minutes: RabbitMQ's consumer timeout is 30); these are set per app by
  ``task_annotations``;
* a task that fails for good is *rejected* without requeue because
  ``task_acks_on_failure`` is off, so RabbitMQ dead-letters it into ``<queue>.dlq``.

How long a failure is retried depends on what it is (``NotificationTask.check_budget``):

* an *outage* (a provider's ``TransientError``, the database or the broker away)
  is retried for as long as the notification can still be useful: until it is
  older than NOTIFICATION_MAX_AGE_SECONDS (24 h by default, counted from when the
  delivery was opened, or the request for a dispatch), or until its ``expires``
  (a reminder past its booking's start is recorded ``expired``, not sent late).
  A provider outage of hours dead-letters nothing; the breaker (``channel_hold``)
  keeps such messages in their queue instead of spending calls on them;
* a *bug* (any other exception) is retried NOTIFICATION_MAX_RETRIES times: more
  would not fix it;
* a permanent error (a 4xx, an invalid address, a contract violation) is not retried.

Retries wait in the broker, not in a worker: on quorum queues Celery publishes a
countdown retry through its native delayed delivery (``celery_delayed_*``), so a
worker killed during the countdown loses nothing. Every retry or deferral names
the lane queue its message came from (Celery would otherwise send it back by the
delivery's routing key, which after a delayed hop is the delay-prefixed one, or
to the default queue). Native delayed delivery counts whole seconds (below one
second it refuses the publish), so a delay is rounded up.

A retry whose publish fails (a broker failover outlasting the publish retry
policy, a nack) is *requeued*, not dead-lettered as Celery would
(``Reject(requeue=False)``): the failure is the broker's, not the message's.

What Celery cannot do is here: a provider's ``Retry-After`` replaces the
backoff; arguments that do not fit the task are a contract violation at once
(retrying cannot make them fit); every message a worker publishes (a retry, a
deferral, a fan-out) carries ``argsrepr``/``kwargsrepr`` of ids only, so no
address, token or text reaches headers, events or Flower; and the reason a
message is given up is stored (``dead_letters``, and the delivery's own row)
before RabbitMQ moves it.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

import amqp.exceptions
import kombu.exceptions
import sqlalchemy.exc
import structlog
from celery import Task
from celery.exceptions import Reject
from kombu.transport.native_delayed_delivery import MAX_NUMBER_OF_BITS_TO_USE

import shared
from notification_service.delivery.log import delivery_log
from notification_service.delivery.timestamps import aware
from notification_service.errors import ChannelUnavailable, ContractViolation, PermanentError, TransientError
from notification_service.runtime import metrics
from notification_service.settings import Settings
from notification_service.worker import channel_hold

log = structlog.get_logger("notification_service.worker.failure_policy")

#: Keyword arguments that may appear in argsrepr/kwargsrepr: ids, never personal data.
SAFE_KWARGS = ("delivery_id", "notification_id", "booking_id", "booking_version", "event")


#: The prefix native delayed delivery puts before a routing key (one bit of the delay per level).
_DELAY_PREFIX = re.compile(rf"^(?:[01]\.){{{MAX_NUMBER_OF_BITS_TO_USE}}}")

#: Pause before a message whose retry could not be published goes back to its queue: a broker
#: that refuses publishes for minutes (a channel nacked after a failover) then costs one
#: redelivery per pause, well inside the queue's x-delivery-limit, instead of a tight loop.
PUBLISH_FAILURE_PAUSE_SECONDS = 5.0


#: Failures that are an outage of something the task needs, not a fault of the task or its
#: message: retried for as long as the notification can still be useful.
OUTAGES: tuple[type[BaseException], ...] = (
    TransientError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError,
    amqp.exceptions.ConnectionError, kombu.exceptions.OperationalError)


class TooOld(TransientError):
    """An outage outlasted NOTIFICATION_MAX_AGE_SECONDS: the notification is dead-lettered, its cause kept."""


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OUTAGES) and not isinstance(exc, PermanentError)


def safe_kwargsrepr(kwargs: dict) -> str:
    return repr({key: kwargs[key] for key in SAFE_KWARGS if key in kwargs})


def broker_delay(countdown: float | None) -> float | None:
    """A delay native delayed delivery can carry: whole seconds, at least one (None, 0: at once)."""
    if countdown is None or countdown <= 0:
        return countdown
    return float(math.ceil(countdown))


def lane_queue_of(task_name: str, delivery_info: dict | None) -> str:
    """The lane queue a message was delivered from: by its routing key (a delayed hop's prefix
    removed, a legacy key resolved), else the task's stage in the lane of the message's priority."""
    info = delivery_info or {}
    key = _DELAY_PREFIX.sub("", str(info.get("routing_key") or ""), count=1)
    stage = shared.TASK_STAGES.get(task_name, shared.DISPATCH_QUEUE)
    return shared.queue_for_routing_key(key) or shared.lane_queue(stage, shared.lane_for(info.get("priority")))


def retry_annotations(settings: Settings) -> dict:
    """``task_annotations`` for every notification task: Celery's retry settings from ours."""
    return {"*": {
        # No count for an outage (``NotificationTask.retry`` bounds it by age); a bug's count is checked there too.
        "max_retries": None,
        # Celery's backoff factor is a whole number of seconds.
        "retry_backoff": max(1, round(settings.retry_base_seconds)),
        "retry_backoff_max": int(settings.retry_max_seconds),
        "retry_jitter": True,
    }}


class NotificationTask(Task):
    abstract = True
    acks_late = True
    autoretry_for = (Exception,)
    dont_autoretry_for = (PermanentError,)
    #: Expected ways to fail: Celery logs them in one line, without a traceback (our own
    #: "dead-lettered" line carries the reason); anything else is a bug and keeps its traceback.
    throws = (PermanentError, TransientError)

    @property
    def settings(self) -> Settings:
        settings = getattr(self.app, "settings", None)
        return settings if settings is not None else Settings.from_env()

    def __call__(self, *args, **kwargs):
        try:
            self.__header__(*args, **kwargs)
        except TypeError as exc:
            raise ContractViolation(f"bad task arguments: {exc}") from None
        return self.run(*args, **kwargs)

    def republish_options(self) -> dict:
        """Options of every message this task republishes: ids-only reprs, back to its own lane."""
        kwargs = self.request.kwargs or {}
        return {"argsrepr": "()", "kwargsrepr": safe_kwargsrepr(kwargs),
                "queue": lane_queue_of(self.name, self.request.delivery_info)}

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None, max_retries=None,
              **options):
        if exc is not None:
            self.check_budget(exc)
        if isinstance(exc, ChannelUnavailable):
            # Every provider of the channel refused on its open breaker: stop taking the channel's messages
            # until a probe may go (this one comes back then, through the broker's delayed delivery).
            channel_hold.hold(exc.channel, exc.retry_in)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            countdown = max(0.0, min(float(self.retry_backoff_max), retry_after))
        options = {**self.republish_options(), **options}
        try:
            return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta,
                                 countdown=broker_delay(countdown), max_retries=max_retries, **options)
        except Reject as rejected:
            # Celery raises Reject only when publishing the retry failed, and without requeue,
            # i.e. it would dead-letter a message that did nothing wrong.
            if rejected.requeue:
                raise
            log.error("retry could not be published; requeued", error=repr(rejected.reason)[:300],
                      queue=options["queue"], pause=PUBLISH_FAILURE_PAUSE_SECONDS)
            metrics.TASKS.labels(self.name, "requeued").inc()
            time.sleep(PUBLISH_FAILURE_PAUSE_SECONDS)
            raise Reject(rejected.reason, requeue=True) from None

    # -- the retry budget -------------------------------------------------------

    def check_budget(self, exc: BaseException) -> None:
        """Raise (the task then fails and is dead-lettered) when ``exc`` may not be retried again."""
        attempts = (self.request.retries or 0) + 1
        if not is_outage(exc):
            if attempts > self.settings.max_retries:
                raise exc
            return
        started = self.started_at()
        if started is None:
            return
        age = (datetime.now(UTC) - started).total_seconds()
        if age >= self.settings.max_age_seconds:
            raise TooOld(f"given up after {attempts} attempts over {age / 3600:.1f} h, older than "
                         f"NOTIFICATION_MAX_AGE_SECONDS ({self.settings.max_age_seconds:.0f} s): {exc}") from exc

    def started_at(self) -> datetime | None:
        """When the notification's work began: its delivery opened (send tasks) or its request (dispatch)."""
        kwargs = self.request.kwargs or {}
        did = kwargs.get("delivery_id")
        try:
            if isinstance(did, str):
                row = delivery_log(self.settings.database_url).get(did)
                return aware(row.created_at) if row is not None else None
            message = kwargs.get("message")
            requested = message.get("requested_at") if isinstance(message, dict) else None
            return aware(str(requested)) if requested else None
        except (ValueError, sqlalchemy.exc.SQLAlchemyError) as lookup:
            # The database away too: no age known, so no reason to give up on it yet.
            log.warning("age of the notification unknown", error=type(lookup).__name__)
            return None

    def defer(self, countdown: float) -> None:
        """Look at this message again in ``countdown`` seconds without spending a retry."""
        signature = self.signature_from_request(countdown=broker_delay(countdown),
                                                retries=self.request.retries or 0, **self.republish_options())
        signature.apply_async()

    # -- outcomes ---------------------------------------------------------------

    def on_success(self, retval, task_id, args, kwargs):
        metrics.TASKS.labels(self.name, str(retval)).inc()

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        metrics.RETRIES.labels(self.name).inc()
        metrics.TASKS.labels(self.name, "retry").inc()
        log.warning("retrying", error=str(exc) if isinstance(exc, TransientError) else repr(exc),
                    retries=self.request.retries)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        retries = self.request.retries or 0
        if isinstance(exc, ContractViolation):
            reason = f"contract violation: {exc}"
        elif isinstance(exc, PermanentError):
            reason = f"permanent: {exc}"
        elif isinstance(exc, TooOld):
            reason = str(exc)
            metrics.GAVE_UP.labels(self.name).inc()
        elif isinstance(exc, TransientError):
            reason = f"retries exhausted after {retries + 1} attempts: {exc}"
        else:
            reason = f"unexpected error after {retries + 1} attempts: {exc!r}"
        queue = lane_queue_of(self.name, self.request.delivery_info)
        did = (kwargs or {}).get("delivery_id") if isinstance(kwargs, dict) else None
        try:
            delivery_log(self.settings.database_url).give_up(
                message_id=task_id, queue=queue, task=self.name, reason=reason,
                delivery_id=did if isinstance(did, str) else None)
        except Exception as store_error:  # noqa: BLE001 - the message is dead-lettered all the same; say why the reason is missing
            log.error("could not store dead-letter reason", error=repr(store_error))
        metrics.DEAD_LETTERS.labels(queue or "", "task").inc()
        metrics.TASKS.labels(self.name, "dead").inc()
        log.error("dead-lettered", reason=reason, queue=queue)
