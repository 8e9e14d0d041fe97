"""How the notification service's own pika clients (the receipts publisher, the dead-letter CLI) reach RabbitMQ.

Timeouts are chosen for a cluster's failover. A node that died refuses the
connection at once and pika tries the next parameter set (one per node,
random order). A hung node sends nothing: pika closes a connection after one
heartbeat check interval (``heartbeat + 5`` s) without a byte received, and
the broker sends a heartbeat every ``heartbeat / 2`` s, so with 3 s a hung
node is left 8 to 16 s after it stopped (two check intervals at worst). The
price: the client must serve the connection at least every ~3 s or the broker
closes it; the receipts
publisher serves it between its database transactions, and a closed
connection costs a reconnect (its unconfirmed receipts go out again under the
same message id). A node that accepts TCP but never completes the handshake
costs ``CONNECT_TIMEOUT_SECONDS`` before the next is tried.
"""

from __future__ import annotations

import pika
import pika.exceptions

from shared.amqp_url import pika_urls

#: AMQP heartbeat timeout proposed to the broker (pika's value wins the negotiation); see the module docstring.
HEARTBEAT_SECONDS = 3
#: Longest a single node may take to accept TCP and complete the AMQP (and TLS) handshake.
CONNECT_TIMEOUT_SECONDS = 3
#: A connection the broker blocks (a memory or disk alarm) is given up after this long.
BLOCKED_TIMEOUT_SECONDS = 30


def parameters(amqp_url: str, *, last: str = "") -> list[pika.URLParameters]:
    """One attempt per node and call, the nodes of a cluster in random order and the node ``last`` (``host:port``,
    the one the caller just failed on) after the others (pika tries each in turn;
    a long-running caller owns its backoff), with the heartbeat and timeouts of the module docstring."""
    found = []
    for url in pika_urls(amqp_url, last=last):
        params = pika.URLParameters(url)
        params.heartbeat = HEARTBEAT_SECONDS
        params.blocked_connection_timeout = BLOCKED_TIMEOUT_SECONDS
        params.connection_attempts = 1
        params.socket_timeout = CONNECT_TIMEOUT_SECONDS
        params.stack_timeout = CONNECT_TIMEOUT_SECONDS
        found.append(params)
    return found


def abort(connection: pika.BlockingConnection, reason: str) -> None:
    """Drop ``connection`` at once, without the closing handshake, which a hung node would never answer.

    pika has no public abort: this is what its own heartbeat checker does to a silent
    connection (``Connection._terminate_stream``); the I/O loop then runs once to let the
    socket go, and reports the reason as the error it raises.
    """
    if connection.is_closed:
        return
    connection._impl._terminate_stream(pika.exceptions.AMQPConnectionError(reason))
    try:
        connection.process_data_events(time_limit=0)
    except pika.exceptions.AMQPError:
        if not connection.is_closed:  # anything but the reason given above, raised back once it is gone
            raise


def connect(amqp_url: str) -> pika.BlockingConnection:
    """A connection to the first node of ``amqp_url`` that answers (pika raises when none does)."""
    return pika.BlockingConnection(parameters(amqp_url))
