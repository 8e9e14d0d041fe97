"""The failure policy, written once: the Celery Task base class of every notification task.

Celery does most of it (DESIGN.md "Worker semantics"):

* ``autoretry_for=(Exception,)`` minus ``dont_autoretry_for=(PermanentError,)``:
  transient provider errors *and* unexpected ones (a bug, the database away)
  retry with ``retry_backoff`` (exponential, base NOTIFICATION_RETRY_BASE_SECONDS),
  ``retry_jitter`` (full jitter) and ``retry_backoff_max`` (NOTIFICATION_RETRY_MAX_SECONDS,
  at most 15 minutes: RabbitMQ's consumer timeout is 30), at most ``max_retries``
  (NOTIFICATION_MAX_RETRIES) times; these are set per app by ``task_annotations``;
* a task that fails for good (permanent error, contract violation, retries
  exhausted) is *rejected* without requeue because ``task_acks_on_failure`` is
  off, so RabbitMQ dead-letters it into ``<queue>.dlq``.

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

import structlog
from celery import Task
from celery.exceptions import Reject
from kombu.transport.native_delayed_delivery import MAX_NUMBER_OF_BITS_TO_USE

import shared
from notification_service.delivery.log import delivery_log
from notification_service.errors import ContractViolation, PermanentError, TransientError
from notification_service.runtime import metrics
from notification_service.settings import Settings

log = structlog.get_logger("notification_service.worker.failure_policy")

#: Keyword arguments that may appear in argsrepr/kwargsrepr: ids, never personal data.
SAFE_KWARGS = ("delivery_id", "notification_id", "booking_id", "booking_version", "event")


#: The prefix native delayed delivery puts before a routing key (one bit of the delay per level).
_DELAY_PREFIX = re.compile(rf"^(?:[01]\.){{{MAX_NUMBER_OF_BITS_TO_USE}}}")

#: Pause before a message whose retry could not be published goes back to its queue: a broker
#: that refuses publishes for minutes (a channel nacked after a failover) then costs one
#: redelivery per pause, well inside the queue's x-delivery-limit, instead of a tight loop.
PUBLISH_FAILURE_PAUSE_SECONDS = 5.0


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
        "max_retries": settings.max_retries,
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
