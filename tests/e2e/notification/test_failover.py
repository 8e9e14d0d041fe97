"""A real worker with ``EMAIL_PROVIDERS=http,smtp`` while the HTTP e-mail API is down: refusing, then 503.

Every e-mail goes out through the SMTP secondary, once; the delivery log and each
``sent`` receipt the worker publishes name ``email_smtp``; the API takes nothing.
"""

from __future__ import annotations

import collections

from tests.integration.notification.test_receipts import bind_test_queue, drain
from tests.notification.fake_email_api import FakeEmailApi
from tests.notification.fake_smtp import message_ids
from tests.notification.harness import Worker, declare_topology, dispatch_message, notification, publish
from tests.support import free_port, wait_for


def test_with_the_primary_down_every_email_goes_out_once_through_the_secondary(module_vhost, tmp_path, smtp):
    declare_topology(module_vhost)
    port = free_port()  # nothing listens yet: connections are refused
    worker = Worker(module_vhost, tmp_path, None, EMAIL_PROVIDERS="http,smtp",
                    EMAIL_HTTP_URL=f"http://127.0.0.1:{port}/send", SMTP_HOST="127.0.0.1",
                    SMTP_PORT=str(smtp.server_address[1]), NOTIFICATION_BREAKER_FAILURES="3",
                    NOTIFICATION_BREAKER_OPEN_SECONDS="2", NOTIFICATION_RECEIPTS_POLL_SECONDS="0.2").start()
    connection, queue = bind_test_queue(module_vhost)
    api: FakeEmailApi | None = None
    sent: list[str] = []

    def send_one() -> None:
        payload = notification(tokens=(), email=f"guest{len(sent)}@example.org")
        publish(module_vhost, dispatch_message(payload))
        sent.append(str(payload["notification_id"]))

    def all_sent() -> bool:
        return all(rows and all(r["status"] == "sent" for r in rows)
                   for rows in (worker.status(nid) for nid in sent))

    try:
        for _ in range(10):
            send_one()
        wait_for(all_sent, 60, "every e-mail sent while the primary refuses connections")
        api = FakeEmailApi(port=port, mode="503")  # the primary is back, answering 503 to everything
        for _ in range(10):
            send_one()
        # One more every poll until the primary's breaker let a probe through to the 503s.
        wait_for(lambda: api.calls or send_one(), 60, "a probe reaching the primary", interval=0.5)
        wait_for(all_sent, 60, "every e-mail sent while the primary answers 503")
        seen: list = []
        wait_for(lambda: len([m for _p, m in drain(connection, queue, seen) if m["status"] == "sent"]) >= len(sent),
                 60, "a sent receipt per e-mail")
    finally:
        connection.close()
        worker.stop()
        if api is not None:
            api.close()

    rows = [row for nid in sent for row in worker.status(nid)]
    assert len(rows) == len(sent) and {(r["status"], r["provider"]) for r in rows} == {("sent", "email_smtp")}
    dids = {r["delivery_id"] for r in rows}
    delivered = collections.Counter(mid.strip("<>").partition("@")[0] for mid in message_ids(smtp))
    assert delivered == dict.fromkeys(dids, 1)  # each once: no duplicate
    assert api is not None and api.calls and not api.taken  # the primary was called and took nothing
    receipts = [m for _p, m in seen if m["status"] == "sent"]
    assert {m["delivery_id"] for m in receipts} == dids and {m["provider"] for m in receipts} == {"email_smtp"}
    log = worker.log_text()
    assert '"failover"' in log and "guest0@example.org" not in log
