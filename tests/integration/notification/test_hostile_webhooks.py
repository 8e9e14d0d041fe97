"""The hostile webhook corpus (tests/hostile/webhooks.py) against the receiver on SQLite and PostgreSQL:
each answered with its 4xx in the JSON error shape, never a 500, and nothing stored."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import pytest
import sqlalchemy as sa

from notification_service.delivery.log import delivery_log
from notification_service.delivery.migrate import upgrade
from notification_service.delivery.tables import provider_events, suppressions
from notification_service.settings import Settings
from notification_service.webhooks.app import create_app
from tests.hostile import webhooks

SECRET, MAILGUN_KEY = "hostile-secret", "hostile-mailgun"


@pytest.fixture
def client(database_url):
    upgrade(database_url)
    settings = Settings(database_url=database_url, webhook_secrets=SECRET, mailgun_signing_keys=MAILGUN_KEY)
    return create_app(settings).test_client(), delivery_log(database_url)


def _mailgun_signature() -> dict:
    stamp, token = str(int(time.time())), uuid.uuid4().hex
    return {"timestamp": stamp, "token": token,
            "signature": hmac.new(MAILGUN_KEY.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()}


def _request(case: webhooks.Case):
    headers = {"Content-Type": "application/json"}
    body = case.body
    if case.path == webhooks.GENERIC:
        stamp = str(int(time.time()))
        headers["X-Webhook-Timestamp"] = stamp
        if case.sign == "valid":
            digest = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            headers["X-Signature"] = f"sha256={digest}"
        elif case.sign is not None:
            headers["X-Signature"] = case.sign
    return body, headers


CASES = webhooks.cases() + webhooks.mailgun_signed()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_hostile_webhook_gets_its_4xx_and_stores_nothing(client, case):
    test_client, log = client
    body, headers = _request(case)
    if case in webhooks.mailgun_signed():
        data = json.loads(body)
        body = json.dumps({"signature": _mailgun_signature(), "event-data": data}).encode()
    answer = test_client.post(case.path, data=body, headers=headers)
    assert answer.status_code == case.status, answer.get_data(as_text=True)[:200]
    assert set(answer.json) == {"error", "message"}
    with log.engine.connect() as conn:
        for table in (provider_events, suppressions):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0
