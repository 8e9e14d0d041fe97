"""The hostile HTTP corpus (tests/hostile/http.py) replayed against the app on SQLite and PostgreSQL."""

from __future__ import annotations

import jsonschema
import pytest
import sqlalchemy as sa

from booking_service.storage.models import Booking, IdempotencyKey, OutboxMessage
from tests.booking.fixtures import AUTH
from tests.hostile.http import VALID, cases

CASES = cases()


def stored(session_factory) -> dict:
    """Everything a request could have written."""
    with session_factory() as s:
        return {
            "bookings": s.execute(sa.select(Booking.id, Booking.version, Booking.starts_at)).all(),
            "outbox": s.execute(sa.select(sa.func.count()).select_from(OutboxMessage)).scalar_one(),
            "keys": s.execute(sa.select(sa.func.count()).select_from(IdempotencyKey)).scalar_one(),
        }


@pytest.fixture
def error_schema(client) -> dict:
    spec = client.get("/openapi.json").json
    return {"$ref": "#/components/schemas/Error", "components": spec["components"]}


def fully_rescheduled(client, settings) -> str:
    """A booking of its own resource, rescheduled as often as the settings allow."""
    created = client.post("/v1/bookings", json={**VALID, "resource_id": "room-hostile-moved"}, headers=AUTH)
    assert created.status_code == 201, created.json
    for n in range(settings.max_reschedules):
        move = {"starts_at": f"2031-04-{n + 1:02d}T09:00:00Z", "ends_at": f"2031-04-{n + 1:02d}T10:00:00Z"}
        moved = client.patch(f"/v1/bookings/{created.json['id']}", json=move, headers=AUTH)
        assert moved.status_code == 200, moved.json
    return created.json["id"]


def test_every_hostile_request_gets_its_4xx_in_the_error_shape_and_stores_nothing(client, session_factory, settings,
                                                                                  error_schema):
    existing = client.post("/v1/bookings", json=VALID, headers=AUTH)
    assert existing.status_code == 201, existing.json
    ids = {"booking_id": existing.json["id"], "fully_rescheduled_id": fully_rescheduled(client, settings)}
    before = stored(session_factory)
    answers = {}
    for case in CASES:
        response = client.open(case.path.format(**ids), method=case.method, data=case.body,
                               headers={**AUTH, **case.headers, "X-Request-ID": f"hostile-{case.name}"})
        answers[case.name] = response.status_code
        assert response.status_code == case.status, (case.name, response.status_code, response.data[:300])
        assert response.is_json, case.name
        jsonschema.validate(response.json, error_schema)
        error = response.json["error"]
        assert error["code"] == case.status and error["request_id"] == f"hostile-{case.name}", case.name
        if case.status == 405:
            assert response.headers["Allow"], case.name
    assert not [name for name, status in answers.items() if status >= 500]
    assert stored(session_factory) == before
