"""The one way the booking service's long-running processes (relay, receipts consumer) connect to RabbitMQ.

Timeouts are chosen for a cluster's failover (the targets: deliveries resume
within 5 s of a node's death, 15 s of a node hanging):

* a node that died refuses the connection at once, and pika tries the next
  parameter set (one per node, random order);
* a hung node (SIGSTOPped, or a partition) sends nothing and answers nothing.
  pika closes a connection after one heartbeat check interval without a byte
  received, and checks every ``heartbeat + 5`` s; the broker sends a heartbeat
  every ``heartbeat / 2`` s. With 3 s a hung node is left 8 to 16 s after it
  stopped (two check intervals at worst; measured: 16 s). The price
  is that the client must serve the connection (``process_data_events``) at
  least every ~3 s, or the broker closes it: both processes serve it between
  every database transaction, and a closed connection only costs a reconnect
  (a relay's unconfirmed rows go out again with the same task id). The relay
  does not wait for heartbeats while publishing: a confirm that does not come
  within ``BOOKING_RELAY_CONFIRM_TIMEOUT_SECONDS`` already makes it reconnect.
* a node that accepts TCP but never completes the AMQP handshake (hung, too)
  costs ``stack_timeout`` before pika tries the next one.
"""

from __future__ import annotations

import pika
import pika.exceptions

from shared.amqp_url import pika_urls

#: AMQP heartbeat timeout proposed to the broker (pika's value wins the negotiation); see the module docstring.
HEARTBEAT_SECONDS = 3
#: Longest a single node may take to accept TCP and complete the AMQP (and TLS) handshake.
CONNECT_TIMEOUT_SECONDS = 3
#: A connection the broker blocks (a memory or disk alarm) is given up after this long and made again.
BLOCKED_TIMEOUT_SECONDS = 30


def parameters(amqp_url: str, *, last: str = "") -> list[pika.URLParameters]:
    """One attempt per node and call, the nodes of a cluster in random order and the node ``last`` (``host:port``,
    the one the caller just failed on) after the others (pika tries each in turn;
    the caller owns the capped backoff), with the heartbeat and timeouts of the module docstring."""
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


def node_of(connection: pika.BlockingConnection) -> str:
    """``host:port`` of the node ``connection`` went to (of several in ``AMQP_URL``), for logs."""
    params = connection._impl.params  # pika keeps the parameter set it connected with; no public accessor
    return f"{params.host}:{params.port}"


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
