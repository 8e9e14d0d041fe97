"""POST a booking and PATCH it at once, 50 times, through the whole mesh (issue 15, item 5).

The confirmation (v1) and the reschedule (v2) are published moments apart and
race through dispatch and the send queues of two workers, while the push
provider answers 503 to about a third of the calls (so a message's retry can
come after a newer one's send, as in the fault run). Whatever the order, the last
message the customer gets on each channel is the reschedule: a confirmation
that arrives after it is recorded stale, and a reschedule that finds the
confirmation at the provider waits for it.
"""

from __future__ import annotations

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer

import pytest

import shared
from tests.e2e.mesh.conftest import FakePush

ROUNDS = 50


class FlakyPush(FakePush):
    """The e2e push provider, answering 503 (``Retry-After: 1``) to a seeded third of the calls.

    ``FakePush``'s handler reads ``status`` once per call, under its lock: here each read is a draw.
    """

    chance = random.Random(15)

    @property
    def status(self) -> int:
        return 503 if self.chance.random() < 0.3 else 200

    @status.setter
    def status(self, _value: int) -> None:
        return  # FakePush's constructor sets its default; every answer is drawn instead


@pytest.fixture
def fake_push():
    fake = FlakyPush()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1/projects/fake/messages:send"
    yield fake
    server.shutdown()


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def book_and_move(mesh, round_number: int) -> tuple[str, str]:
    """One round: POST, then PATCH to another day at once. Returns (booking id, push token)."""
    token = f"device-race-{round_number}-{uuid.uuid4().hex[:6]}"
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    created = mesh.post("/v1/bookings", json={
        "resource_id": f"room-{uuid.uuid4().hex[:8]}",
        "starts_at": iso(start), "ends_at": iso(start + timedelta(hours=1)),
        "customer": {"name": "Ada Lovelace", "email": "ada@example.org", "locale": "en",
                     "timezone": "Europe/Berlin", "push_tokens": [token]},
    })
    assert created.status_code == 201, created.text
    moved_to = start + timedelta(days=1)
    moved = mesh.patch(f"/v1/bookings/{created.json()['id']}",
                       json={"starts_at": iso(moved_to), "ends_at": iso(moved_to + timedelta(hours=1))})
    assert moved.status_code == 200, moved.text
    assert moved.json()["version"] == 2
    return created.json()["id"], token


def test_post_then_patch_at_once_the_last_message_is_always_the_reschedule(mesh, fake_push, tmp_path):
    mesh.start(  # a second worker: the two versions' messages may run in different processes
        "worker2",
        "celery", "-A", "notification_service.celery_app", "worker",
        "--queues", ",".join(shared.WORK_QUEUES),  # every lane, as the Procfile's two workers do
        "--pool", "threads", "--concurrency", "4", "--hostname", f"e2e2-{tmp_path.name}@%h",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    )  # fmt: skip
    with ThreadPoolExecutor(4) as pool:  # rounds overlap, as clients' requests do
        rounds = list(pool.map(lambda n: book_and_move(mesh, n), range(ROUNDS)))

    confirmations_sent = 0
    for booking_id, token in rounds:
        rows = mesh.settled(booking_id, 4)  # confirmation and reschedule, e-mail and push, each final
        for channel in ("email", "push"):
            mine = [r for r in rows if r.channel == channel]
            assert {(r.event, r.booking_version) for r in mine} == {("booking.confirmed", 1),
                                                                    ("booking.rescheduled", 2)}
            sent = sorted((r for r in mine if r.status == "sent"), key=lambda r: r.sent_at)
            assert sent and sent[-1].event == "booking.rescheduled", (booking_id, channel, mine)
            assert {r.status for r in mine if r.event == "booking.confirmed"} <= {"sent", "stale"}
            confirmations_sent += len(sent) - 1
        # what the customer got, in the order they got it
        pushes = [c["json"]["message"]["data"]["event"] for c in fake_push.delivered()
                  if c["json"]["message"]["token"] == token]
        assert pushes[-1] == "booking.rescheduled" and pushes.count("booking.rescheduled") == 1, pushes
        assert len(mesh.emails_for(booking_id, "booking.rescheduled")) == 1
        assert len(mesh.emails_for(booking_id, "booking.confirmed")) <= 1
    print(f"{ROUNDS} rounds: {confirmations_sent} confirmations went out before their reschedule, "
          f"{2 * ROUNDS - confirmations_sent} were stale")
