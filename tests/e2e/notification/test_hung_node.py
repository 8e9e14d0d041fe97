"""A worker whose broker node hangs goes on consuming from another node of AMQP_URL (issue 16).

A hung node (SIGSTOPped, a frozen VM) closes nothing: its kernel keeps the TCP
connections open and takes what the worker sends, and nothing comes back. The
worker's connections (consumer, events with ``--events`` as deployed, task
publishes) all start on the first node of AMQP_URL, here a proxy to the broker
that can hang like that; the second node is the broker itself.

Before: the event loop waited, without a timeout, for the publisher confirm of
its own event, and a 30 s AMQP heartbeat noticed the silence only after a
minute: nothing was consumed until the node answered again. Now a blocking
read gives up after ``BROKER_READ_TIMEOUT_SECONDS`` and the heartbeat check
leaves the node after two heartbeats (worker/app.py).
"""

from __future__ import annotations

import time

from tests.integration.booking.test_receipts_failover import HangingProxy
from tests.integration.booking.test_relay import _target, proxied_url
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.support import wait_for

#: Measured 16 s (two heartbeats of 4 s and the check's granularity, a blocked read of 3 s, a 2 s handshake on the
#: hung node for the consumer's and the events' new connections); a loaded machine gets room. A 30 s heartbeat
#: took 75 s, and waiting the hang out takes as long as the hang.
RESUME_BOUND = 40.0


def test_a_worker_whose_broker_node_hangs_consumes_again_through_another_node(module_vhost, tmp_path):
    declare_topology(module_vhost)
    proxy = HangingProxy(*_target(module_vhost))
    proxy.restore()  # it forwards
    worker = Worker(f"{proxied_url(module_vhost, proxy)};{module_vhost}", tmp_path, None)
    try:
        worker.start()
        before = notification(tokens=("tok-before",))
        publish(module_vhost, dispatch_message(before))
        wait_for(lambda: worker.email_for(before["notification_id"]), 60, "an e-mail through the first node")

        proxy.hang()
        hung_at = time.monotonic()
        during = notification(tokens=("tok-during",))
        publish(module_vhost, dispatch_message(during))  # straight to the broker: it waits in its lane
        wait_for(lambda: worker.email_for(during["notification_id"]), RESUME_BOUND,
                 "an e-mail while the first node hangs")
        print(f"sent {time.monotonic() - hung_at:.1f} s into the hang")
        assert "Connection to broker lost" in worker.log_text()  # it left the hung node; it did not wait it out
    finally:
        proxy.close()
        worker.stop()
