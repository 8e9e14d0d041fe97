"""The webhook receiver as its own process (``notification-service webhooks``, gunicorn) on PostgreSQL:
a signed event becomes a receipt, an unsigned one is refused, and no address reaches its log."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import requests

from notification_service.delivery import machine as delivery
from notification_service.delivery.machine import BookingRef, SendJob
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.providers.content import EmailContent
from notification_service.suppressions.store import Suppressions
from tests import support
from tests.notification.fakes import FakeOwner, FakeProvider

SECRET = "e2e-webhook-secret"
ADA = "ada.e2e@example.org"


def _post(base: str, doc: dict, secret: str | None = SECRET) -> requests.Response:
    body = json.dumps(doc).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Webhook-Timestamp": stamp}
    if secret:
        digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers["X-Signature"] = f"sha256={digest}"
    return requests.post(f"{base}/webhooks/email/http", data=body, headers=headers, timeout=10)


def test_a_gunicorn_webhook_receiver_turns_signed_events_into_receipts(postgres_url):
    upgrade(postgres_url)
    log = SqlDeliveryLog(postgres_url)
    opened = log.open(str(uuid.uuid4()), "booking.confirmed", BookingRef(str(uuid.uuid4()), 1), [("email", ADA)],
                      datetime.now(UTC))
    did = opened.pending[0][2]
    delivery.send(SendJob(did), EmailContent(did, ADA, "s", "t", "h"), log=log,
                  provider=FakeProvider("<e2e@x>", name="email_http"), owner=FakeOwner("w1"), lease_seconds=60)
    port = support.free_port()
    env = {**os.environ, "NOTIFICATION_DATABASE_URL": postgres_url, "NOTIFICATION_WEBHOOK_BIND": f"127.0.0.1:{port}",
           "NOTIFICATION_WEBHOOK_WORKERS": "1", "NOTIFICATION_WEBHOOK_SECRETS": SECRET,
           "NOTIFICATION_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "notification_service.cli", "webhooks"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        support.wait_for(lambda: any("worker ready" in line for line in list(lines)) or proc.poll() is not None,
                         timeout=120, what="the webhook receiver's worker ready")
        assert proc.poll() is None, "".join(lines[-30:])
        assert _post(base, {"id": "e1", "type": "delivered", "message_id": "<e2e@x>",
                            "occurred_at": datetime.now(UTC).isoformat()}, secret=None).status_code == 401
        assert _post(base, {"id": "e2", "type": "complained", "message_id": "<e2e@x>",
                            "occurred_at": datetime.now(UTC).isoformat()}).json() == {"status": "applied"}
        assert [r.status for r in log.receipts_of(did)] == ["sent", "complained"]
        assert Suppressions(log).is_suppressed("email", ADA, datetime.now(UTC))
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(5)
        log.engine.dispose()
    output = "".join(lines)
    assert "webhook event" in output and ADA not in output and "ada.e2e" not in output
