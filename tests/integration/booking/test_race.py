"""Many clients race for one slot over real HTTP: exactly one wins, the rest get 409, none 500."""

from __future__ import annotations

import threading

import requests
from werkzeug.serving import make_server

from tests.booking.fixtures import AUTH, booking_body

RACERS = 16


def test_concurrent_requests_for_the_same_slot_book_it_once(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/v1/bookings"
    barrier = threading.Barrier(RACERS)
    codes: list[int] = []
    lock = threading.Lock()

    def racer(i: int) -> None:
        body = booking_body(resource="contested-room")
        body["customer"]["name"] = f"Racer {i}"
        barrier.wait()
        code = requests.post(url, json=body, headers=AUTH, timeout=60).status_code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(RACERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        listed = requests.get(url, params={"resource_id": "contested-room"}, headers=AUTH, timeout=10).json()
    finally:
        server.shutdown()
    assert sorted(codes) == [201] + [409] * (RACERS - 1)
    assert len(listed) == 1
