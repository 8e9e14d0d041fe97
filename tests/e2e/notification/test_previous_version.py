"""N-1 contract suite: a booking service one version behind keeps working against this notification service.

The previous version publishes every dispatch with the stage name ``notifications.dispatch`` as its
routing key (no lanes) and today's wire format; that key stays bound to the high dispatch lane.
"""

from __future__ import annotations

import pika

import shared
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.support import wait_for

#: The routing key the previous booking service version publishes every dispatch with.
PREVIOUS_DISPATCH_KEY = "notifications.dispatch"


def test_a_dispatch_published_with_the_previous_routing_key_is_delivered(vhost_url, tmp_path):
    declare_topology(vhost_url)
    worker = Worker(vhost_url, tmp_path, None)
    worker.start()
    try:
        for event in ("booking.confirmed", "booking.reminder"):  # a reminder too: it has no lane of its own there
            payload = notification(event=event, tokens=())
            message = dispatch_message(payload)
            publish(vhost_url, body=message.body, routing_key=PREVIOUS_DISPATCH_KEY,
                    properties=pika.BasicProperties(headers=message.headers, **message.properties))
            wait_for(lambda payload=payload: worker.email_for(payload["notification_id"]), timeout=60,
                     what=f"the {event} e-mail")
            assert [r["status"] for r in worker.status(payload["notification_id"])] == ["sent"]
    finally:
        worker.stop()
    assert shared.queue_for_routing_key(PREVIOUS_DISPATCH_KEY) == shared.lane_queue(shared.DISPATCH_QUEUE,
                                                                                      shared.Lane.HIGH)
