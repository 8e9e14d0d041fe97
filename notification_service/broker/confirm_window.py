"""Publishing a window of messages with publisher confirms: write them all, then collect the answers.

``BlockingChannel.basic_publish`` in confirm mode waits for each message's
confirm before the next is written, and pika's blocking confirm wait has no
timeout. A window writes every message through the blocking channel's
asynchronous channel (``_impl``) and then serves the connection until the
broker has answered each one (it acks several at once) or the deadline
passes; everything runs on the one thread that owns the connection (pika is
not thread-safe).

Messages are published ``mandatory``: one the broker cannot route comes back
as ``basic.return`` *before* its ``basic.ack``, and is reported as returned,
not confirmed.

A nack, or a message still unanswered at the deadline, means the channel is
not to be trusted (:meth:`ConfirmWindow.failure`): on a cluster a channel
whose queue leader died can nack every publish for minutes while a new
connection is acked at once, and a hung node never answers. The caller
reconnects (any node) and publishes those messages again under the same id.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pika
import pika.exceptions
import pika.spec

from notification_service.errors import NotificationError

K = TypeVar("K", bound=Hashable)


class NotConfirmed(NotificationError):
    """Raised when the broker nacked messages of a window or left them unanswered: publish them on a new connection."""

    def __init__(self, nacked: int, unanswered: int) -> None:
        super().__init__(f"{nacked} nacked and {unanswered} unconfirmed")
        self.nacked = nacked
        #: Messages without any answer (the node may hang).
        self.unanswered = unanswered


@dataclass
class Answers(Generic[K]):
    """The broker's answers to one window, by the keys the caller published the messages under."""

    confirmed: list[K] = field(default_factory=list)  # acked and routed: in a queue
    returned: list[K] = field(default_factory=list)   # acked, but no queue was bound (unroutable)
    nacked: list[K] = field(default_factory=list)     # refused by the broker
    unanswered: list[K] = field(default_factory=list)  # no answer: the connection went, or the deadline passed

    def failure(self) -> NotConfirmed | None:
        """Why the channel must not publish the next window (nacks, missing confirms), or None."""
        if not (self.nacked or self.unanswered):
            return None
        return NotConfirmed(len(self.nacked), len(self.unanswered))


class ConfirmWindow(Generic[K]):
    """One channel in confirm mode on ``connection``; a window at a time (:meth:`begin` starts the next)."""

    def __init__(self, connection: pika.BlockingConnection, channel: Any) -> None:
        self.connection = connection
        self._channel = channel._impl  # the asynchronous channel under the BlockingChannel
        self._unanswered: dict[int, K] = {}  # delivery tag -> key
        self._keys: dict[str, K] = {}  # message id -> key, to match a basic.return
        self._acked: list[K] = []
        self._nacked: list[K] = []
        self._returned: set[K] = set()
        self._next_tag = 0  # the broker numbers a confirm-mode channel's publishes from 1
        selected: list[Any] = []
        self._channel.add_on_return_callback(self._on_return)
        self._channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        while not selected:
            connection.process_data_events(time_limit=1)

    @property
    def is_open(self) -> bool:
        return bool(self._channel.is_open)

    def begin(self) -> None:
        """Forget the previous window's answers."""
        self._unanswered, self._keys, self._acked, self._nacked, self._returned = {}, {}, [], [], set()

    def publish(self, key: K, exchange: str, routing_key: str, body: bytes,
                properties: pika.BasicProperties) -> None:
        """Write one message (``mandatory``); its answer arrives while :meth:`wait` serves the connection."""
        if not properties.message_id:
            raise ValueError("a message in a confirm window needs a message_id (a basic.return is matched by it)")
        self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        self._next_tag += 1
        self._unanswered[self._next_tag] = key
        self._keys[properties.message_id] = key

    def wait(self, timeout: float) -> None:
        """Serve the connection until every message was answered or ``timeout`` seconds passed.

        Raises ``ChannelWrongStateError`` when the channel closed meanwhile.
        """
        deadline = time.monotonic() + timeout
        while self._unanswered and self._channel.is_open and (left := deadline - time.monotonic()) > 0:
            self.connection.process_data_events(time_limit=min(left, 1.0))
        if not self._channel.is_open:
            raise pika.exceptions.ChannelWrongStateError("channel closed while waiting for confirms")

    def answers(self) -> Answers[K]:
        """What the broker answered so far in this window (also after an error)."""
        return Answers(confirmed=[k for k in self._acked if k not in self._returned],
                       returned=[k for k in self._acked if k in self._returned], nacked=list(self._nacked),
                       unanswered=list(self._unanswered.values()))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = [t for t in self._unanswered if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            key = self._unanswered.pop(tag, None)
            if key is not None:
                (self._acked if acked else self._nacked).append(key)
        if not self._unanswered:
            self.connection.call_later(0, _nothing)  # ends the process_data_events wait at once

    def _on_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        key = self._keys.get(properties.message_id)
        if key is not None:
            self._returned.add(key)


def _nothing() -> None:
    """A timer callback whose only effect is to end a ``process_data_events`` wait."""
