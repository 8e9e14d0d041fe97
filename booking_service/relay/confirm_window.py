"""Publishing a batch as one window of publisher confirms.

Every message of the batch is written to the socket with ``mandatory=True``,
then the confirms are collected (the broker acks several at once with
``multiple``): one round trip per batch, not per row. A row counts as published
only once the broker confirmed it; a returned (unroutable) row is refused
(retried later with backoff: no queue is bound). A nacked row, or one without
an answer within the bound, is released to be tried again at once, and the
outcome says the channel is not to be trusted (``NotConfirmed``): on a cluster
a channel whose queue leader died can nack every publish for minutes, or the
node it is on hangs and never answers, while a new connection is acked at
once. The relay reconnects, to any node, and publishes the rows again under
the same task id (the workers' dedupe key).

pika's ``BlockingChannel`` waits for each confirm inside ``basic_publish``, so
the window publishes through the channel's asynchronous implementation
(``BlockingChannel._impl``, a ``pika.channel.Channel``) and drives its I/O with
the ``BlockingConnection``'s ``process_data_events``: still one thread, one
connection (pika is not thread-safe).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

import shared
from booking_service.relay.message import OutboxRow
from booking_service.relay.outbox_lease import Claimed

#: Why a confirmed but returned row was not delivered.
UNROUTABLE = "unroutable: no queue bound for notifications.dispatch"
#: Why a nacked row was not delivered (it is released, and goes out again on a new connection).
NACKED = "nacked by the broker; sent again on a new connection"
#: Longest single wait for confirms, so a closed channel is noticed soon.
_CONFIRM_SLICE_SECONDS = 1.0


def end_wait() -> None:
    """A callback whose only effect is to end a ``process_data_events`` wait."""


class NotConfirmed(Exception):
    """Raised when the broker nacked rows of a window, or did not answer them in time: reconnect."""

    def __init__(self, nacked: int, unanswered: int, sent: int) -> None:
        super().__init__(f"{nacked} nacked and {unanswered} unconfirmed of {sent}")
        self.nacked = nacked
        #: Rows without any answer (the node may hang).
        self.unanswered = unanswered


@dataclass
class Outcome:
    """What the broker said about one window, and the error that cut it short (the caller re-raises it).

    ``released`` holds the nacked rows (also in ``nacked``) and the unanswered ones: both are sent again.
    """

    published: list[OutboxRow]
    refused: list[tuple[OutboxRow, str]]
    released: list[OutboxRow]
    error: pika.exceptions.AMQPError | OSError | None = None
    nacked: list[OutboxRow] = field(default_factory=list)

    def failure(self) -> Exception | None:
        """Why this channel must not publish the next batch (the error, nacks, missing confirms), or None."""
        if self.error is not None:
            return self.error
        if self.released:
            return NotConfirmed(len(self.nacked), len(self.released) - len(self.nacked),
                                len(self.published) + len(self.refused) + len(self.released))
        return None


@dataclass
class _Window:
    """Publishes in flight on the channel: delivery tag → row, and what the broker said."""

    rows: dict[int, OutboxRow] = field(default_factory=dict)
    acked: list[OutboxRow] = field(default_factory=list)
    nacked: list[OutboxRow] = field(default_factory=list)
    returned: set[str] = field(default_factory=set)

    def settle(self, tag: int, multiple: bool, ack: bool) -> None:
        tags = [t for t in self.rows if t <= tag] if multiple else [tag]
        for t in tags:
            row = self.rows.pop(t, None)
            if row is not None:
                (self.acked if ack else self.nacked).append(row)

    def outcome(self, sent: Sequence[OutboxRow], error: pika.exceptions.AMQPError | OSError | None) -> Outcome:
        # The broker sends basic.return before the basic.ack of the same message,
        # so a returned row is always among the acked ones by now.
        published = [r for r in self.acked if r.notification_id not in self.returned]
        refused = [(r, UNROUTABLE) for r in self.acked if r.notification_id in self.returned]
        acked = {r.id for r in self.acked}
        released = [r for r in sent if r.id not in acked]  # nacked or never answered
        return Outcome(published, refused, released, error, nacked=list(self.nacked))


class ConfirmChannel:
    """A channel in confirm mode on the relay's connection, publishing one window at a time."""

    def __init__(self, connection: pika.BlockingConnection, channel: BlockingChannel) -> None:
        self.connection = connection
        self.channel = channel
        #: The asynchronous channel behind ``channel``: publishes without waiting (see the module docstring).
        self._impl: pika.channel.Channel = channel._impl
        self._window = _Window()
        self._next_tag = 0

    @classmethod
    def open(cls, connection: pika.BlockingConnection) -> ConfirmChannel:
        """Open a channel, check the exchange exists and select confirms on it."""
        channel = connection.channel()
        # The booking user may only publish: check the exchange exists, declare nothing.
        channel.exchange_declare(shared.EXCHANGE, passive=True)
        confirms = cls(connection, channel)
        selected: list[pika.frame.Method] = []
        confirms._impl.add_on_return_callback(confirms._on_return)
        confirms._impl.confirm_delivery(ack_nack_callback=confirms._on_confirm, callback=selected.append)
        while not selected:
            connection.process_data_events(time_limit=1)
        return confirms

    def publish(self, claimed: Sequence[Claimed], wait_seconds: float) -> Outcome:
        """Publish the batch and wait up to ``wait_seconds`` for its confirms.

        A broker or socket error does not escape: it is returned in the outcome
        with the answers that came before it, so the caller records those first.
        The wait also serves heartbeats, but does not rely on them: a node that
        hangs is noticed at ``wait_seconds``, long before a heartbeat check.
        """
        window = self._window = _Window()
        error: pika.exceptions.AMQPError | OSError | None = None
        try:
            for row, message in claimed:
                self._impl.basic_publish(shared.EXCHANGE, message.routing_key, message.body,
                                         pika.BasicProperties(headers=message.headers, **message.properties),
                                         mandatory=True)
                self._next_tag += 1
                window.rows[self._next_tag] = row
            deadline = time.monotonic() + wait_seconds
            while window.rows and self._impl.is_open and (left := deadline - time.monotonic()) > 0:
                self.connection.process_data_events(time_limit=min(left, _CONFIRM_SLICE_SECONDS))
            if not self._impl.is_open:  # closed by the broker (e.g. the exchange was deleted): reconnect
                raise pika.exceptions.ChannelWrongStateError("channel closed while publishing")
        except (pika.exceptions.AMQPError, OSError) as exc:
            error = exc
        return window.outcome([row for row, _message in claimed], error)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        self._window.settle(method.delivery_tag, method.multiple, isinstance(method, pika.spec.Basic.Ack))
        if not self._window.rows:
            # Callbacks of the async channel are no BlockingConnection events, so
            # process_data_events would wait out its time limit: a due timer ends it now.
            self.connection.call_later(0, end_wait)

    def _on_return(self, _channel: pika.channel.Channel, _method: pika.spec.Basic.Return,
                   properties: pika.spec.BasicProperties, _body: bytes) -> None:
        self._window.returned.add(properties.message_id)
