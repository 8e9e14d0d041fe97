"""Dead-letter queue operations with pika: list, show, replay, purge.

Reading never loses a message: messages are fetched with ``basic_get`` and
left unacked, so closing the channel puts every one of them back. Replay
republishes to the origin queue through the ``notifications`` exchange with
publisher confirms and ``mandatory=True`` and only then acks the dead letter;
one it cannot replay (poison, returned, nacked) is nacked back into its queue
and reported, and the replay goes on with the next.
A replayed message loses every header the workers' envelope guard refuses on
arrival (the ``x-death`` RabbitMQ wrote, and any other reserved ``x-`` header),
so it arrives for work like a fresh one. What is printed never holds an
address or a push token: ``show`` masks them in the body, and a stored reason
is masked too (reasons written before addresses were kept out of them).

Over 200 lines on purpose: list, show, replay and purge share the fetch-and-leave-unacked loop,
the header stripping and the masking; split, each would carry a copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pika

import shared
from notification_service.broker.connection import connect
from notification_service.worker import envelope_guard as envelope

#: What stands in for an address or token in anything printed.
MASK = "<redacted>"
#: Something shaped like an e-mail address, in free text (a reason, an undecodable body).
_ADDRESS = re.compile(r"[^\s@\"'<>(),;:\[\]]+@[^\s@\"'<>(),;:\[\]]+")
#: Task keyword arguments and ``notification.requested`` recipient fields that are personal data.
_PERSONAL_KWARGS = ("to", "token")
_PERSONAL_RECIPIENT = ("email", "push_tokens")


class DlqError(RuntimeError):
    """A dead-letter operation could not be completed."""


@dataclass
class DeadMessage:
    dlq: str
    delivery_tag: int
    properties: pika.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def message_id(self) -> str | None:
        """The task id (at most 200 characters, as the reason is stored under)."""
        value = self.headers.get("id") or self.properties.message_id
        return str(value)[:200] if value else None

    @property
    def task(self) -> str | None:
        return self.headers.get("task")

    @property
    def deaths(self) -> list[dict]:
        """The ``x-death`` records; anything else in the header (it is not to be trusted) is left out."""
        value = self.headers.get("x-death")
        return [d for d in value if isinstance(d, dict)] if isinstance(value, list) else []

    @property
    def origin_queue(self) -> str:
        # Each work queue dead-letters into its own DLQ, so the DLQ names the origin; x-death's
        # queue may have been forged by the publisher (a replay would have gone there).
        return self.dlq.removesuffix(shared.names.DLQ_SUFFIX)

    @property
    def death_count(self) -> int:
        counts = [d.get("count", 1) for d in self.deaths]
        return sum(c for c in counts if isinstance(c, int) and not isinstance(c, bool))

    def summary(self, reasons: dict[str, str]) -> dict[str, Any]:
        broker_reason = self.deaths[0].get("reason") if self.deaths else None
        return {
            "message_id": self.message_id,
            "task": self.task,
            "origin_queue": self.origin_queue,
            "dlq": self.dlq,
            "death_count": self.death_count,
            "reason": mask_addresses(reasons.get(self.message_id or "") or broker_reason),
            "broker_reason": broker_reason,
            "priority": self.properties.priority,
        }


def dlq_names(queue: str | None) -> list[str]:
    if queue:
        base = queue.removesuffix(shared.names.DLQ_SUFFIX)
        if base not in shared.WORK_QUEUES:
            raise DlqError(f"unknown queue {queue!r}; one of {', '.join(shared.WORK_QUEUES)}")
        return [shared.dead_letter_queue(base)]
    return [shared.dead_letter_queue(q) for q in shared.WORK_QUEUES]


def _fetch_all(channel, dlq: str) -> Iterator[DeadMessage]:
    """Every message currently in ``dlq``, left unacked on ``channel``."""
    count = channel.queue_declare(dlq, passive=True).method.message_count
    for _ in range(count):
        method, properties, body = channel.basic_get(dlq, auto_ack=False)
        if method is None:
            return
        yield DeadMessage(dlq, method.delivery_tag, properties, body)


def list_messages(amqp_url: str, queue: str | None = None) -> list[DeadMessage]:
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        found = [m for dlq in dlq_names(queue) for m in _fetch_all(channel, dlq)]
        channel.close()  # unacked → requeued, nothing lost
        return found
    finally:
        connection.close()


@dataclass(frozen=True)
class Outcome:
    """What ``replay`` did with one dead letter: replayed (``problem`` is None), or skipped and why."""

    #: The message id as printed (addresses masked), or ``<dlq>#<delivery tag>`` for one without an id.
    message_id: str
    dlq: str
    queue: str
    problem: str | None = None
    #: True when skipped because the workers would refuse it (it will never replay as it is); False when
    #: the broker refused it (no route, a nack, a closed channel): it may replay once that is fixed.
    poison: bool = False


def _label(message: DeadMessage) -> str:
    return mask_addresses(message.message_id) if message.message_id else f"{message.dlq}#{message.delivery_tag}"


def _replay_properties(message: DeadMessage) -> pika.BasicProperties:
    headers = envelope.strip_reserved(message.headers)
    if "retries" in headers:
        headers["retries"] = 0  # an operator replay gets a fresh retry budget
    p = message.properties
    return pika.BasicProperties(
        content_type=p.content_type, content_encoding=p.content_encoding, headers=headers,
        delivery_mode=p.delivery_mode or 2, priority=p.priority, correlation_id=p.correlation_id,
        reply_to=p.reply_to, expiration=None, message_id=p.message_id, timestamp=p.timestamp,
        type=p.type, app_id=p.app_id,
    )


def _publish(channel, message: DeadMessage) -> str | None:
    """Republish ``message`` to its origin queue and wait for the confirm; why the broker refused it, or None."""
    try:
        channel.basic_publish(shared.EXCHANGE, message.origin_queue, message.body, _replay_properties(message),
                              mandatory=True)
    except pika.exceptions.UnroutableError:
        return f"returned unroutable: no queue takes routing key {message.origin_queue} on {shared.EXCHANGE}"
    except pika.exceptions.NackError:
        return f"nacked by the broker (is {message.origin_queue} full or rejecting publishes?)"
    return None


def _replay_one(channel, message: DeadMessage) -> Outcome:
    """Replay one fetched dead letter: acked after the confirm, or nacked back into its DLQ with the reason."""
    problem = poison_reason(message)
    poison = problem is not None
    if problem is None:
        problem = _publish(channel, message)
    if problem is None:
        channel.basic_ack(message.delivery_tag)
    else:
        channel.basic_nack(message.delivery_tag, requeue=True)
    return Outcome(_label(message), message.dlq, message.origin_queue, mask_addresses(problem), poison)


def replay(amqp_url: str, *, message_id: str | None = None, queue: str | None = None, task: str | None = None,
           report: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Republish matching dead letters to their origin queue, each on its own; return what happened to each.

    A replayed dead letter is acked only after the broker confirmed its copy. One that cannot
    be replayed is nacked back into its dead-letter queue (requeued) and reported with the
    reason, and replay goes on with the next: a poison message (one the workers' envelope
    guard refuses), one the broker returns (no route: its work queue is gone) or nacks. A
    channel the broker closes (the exchange deleted, a permission) puts the rest of that
    dead-letter queue back as it was; they are reported, and the next queue gets a new channel.
    ``report`` hears of each outcome as it happens, so an interrupted replay has said what it did.
    """
    outcomes: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if report is not None:
            report(outcome)

    connection = connect(amqp_url)
    try:
        channel = None
        for dlq in dlq_names(queue):
            if channel is None or not channel.is_open:
                channel = connection.channel()
                channel.confirm_delivery()
            # Every message of the DLQ is fetched (unacked) before any is nacked back, or a
            # requeued one would be fetched again in place of the next.
            messages = list(_fetch_all(channel, dlq))
            wanted = []
            for message in messages:
                if (message_id and message.message_id != message_id) or (task and message.task != task):
                    channel.basic_nack(message.delivery_tag, requeue=True)
                else:
                    wanted.append(message)
            for index, message in enumerate(wanted):
                try:
                    record(_replay_one(channel, message))
                except pika.exceptions.ChannelClosed as exc:
                    # The broker put every unacked message of this channel back into its DLQ.
                    closed = f"the broker closed the channel: {exc.reply_code} {mask_addresses(exc.reply_text)}"
                    record(Outcome(_label(message), dlq, message.origin_queue, closed))
                    for rest in wanted[index + 1:]:
                        record(Outcome(_label(rest), dlq, rest.origin_queue, f"not tried: {closed}"))
                    break
        if channel is not None and channel.is_open:
            channel.close()
    finally:
        connection.close()
    return outcomes


def purge(amqp_url: str, queue: str | None = None) -> dict[str, int]:
    connection = connect(amqp_url)
    try:
        channel = connection.channel()
        return {dlq: channel.queue_purge(dlq).method.message_count for dlq in dlq_names(queue)}
    finally:
        connection.close()


#: How much of an undecodable body ``show`` prints.
SHOW_RAW_BYTES = 2000


def poison_reason(message: DeadMessage) -> str | None:
    """Why ``message``, as replay republishes it, is not a runnable task message (the workers' guard), or None."""
    p = message.properties
    headers = envelope.strip_reserved(message.headers) if p.headers is not None else None
    problem, _ = envelope.inspect(headers, p.content_type, p.content_encoding, message.body, None)
    return problem


def mask_addresses(text: Any) -> Any:
    """``text`` with everything shaped like an e-mail address masked (non-strings as they are)."""
    return _ADDRESS.sub(MASK, text) if isinstance(text, str) else text


def mask_personal(body: Any) -> Any:
    """A decoded task body with its addresses and push tokens masked (a copy; other shapes as they are)."""
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict)):
        return body
    kwargs = {k: (MASK if k in _PERSONAL_KWARGS else v) for k, v in body[1].items()}
    message = kwargs.get("message")
    if isinstance(message, dict) and isinstance(message.get("recipient"), dict):
        recipient = {k: (MASK if k in _PERSONAL_RECIPIENT else v) for k, v in message["recipient"].items()}
        kwargs["message"] = {**message, "recipient": recipient}
    return [body[0], kwargs, body[2]]


def show(message: DeadMessage, reasons: dict[str, str]) -> dict[str, Any]:
    detail = message.summary(reasons)
    try:
        body: Any = mask_personal(envelope.decode(message.body, message.properties.content_encoding))
    except envelope.Poison as exc:
        detail["undecodable"] = str(exc)
        body = mask_addresses(message.body[:SHOW_RAW_BYTES].decode("utf-8", "replace"))
    headers = {k: v for k, v in message.headers.items()}
    detail.update({"headers": headers, "content_type": message.properties.content_type, "body": body})
    return detail
