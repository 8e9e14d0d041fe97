"""The HTTP front under gunicorn: slow clients hold nothing, and gunicorn's own errors use the API's shape.

Figures (p50/p99 while 50 clients hold half-sent requests) come from
``benchmarks/bench_slow_clients.py``; this test checks behaviour: every other client is answered.
"""

from __future__ import annotations

import json
import socket
import uuid

import pytest
import requests

from tests.booking.fixtures import API_KEY, booking_body
from tests.booking.gunicorn_process import serve
from tests.support import free_port

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _env(settings, port: int) -> dict:
    return {"BOOKING_DATABASE_URL": settings.database_url, "BOOKING_API_KEYS": API_KEY,
            "BOOKING_BIND": f"127.0.0.1:{port}", "BOOKING_LOG_FORMAT": "json",
            # Far longer than the client timeouts below: a worker held by a slow client is
            # not rescued by gunicorn killing it during the test.
            "BOOKING_WORKER_TIMEOUT": "120"}


def _raw(port: int, request: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except ConnectionResetError:
            # The server answered and closed with part of the request unread: the kernel resets.
            assert data, "reset before any answer"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_fifty_half_sent_requests_never_hold_the_api(settings):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serve(_env(settings, port), workers=2):
        slow = []
        try:
            for i in range(50):
                conn = socket.create_connection(("127.0.0.1", port), timeout=30)
                # Half the clients stop inside the headers, half inside a chunked body.
                if i % 2:
                    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                else:
                    conn.sendall(b"POST /v1/bookings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
                                 + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + b"5\r\n{\"re")
                slow.append(conn)
            # A sync worker held by a slow client answers nobody until gunicorn's timeout
            # (120 s here): these 5 s client timeouts would fail, not wait.
            for _ in range(40):
                assert requests.get(base + "/healthz", timeout=5).status_code == 200
            for _ in range(10):
                response = requests.post(base + "/v1/bookings", json=booking_body(), headers=AUTH, timeout=5)
                assert response.status_code == 201, response.text
        finally:
            for conn in slow:
                conn.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_gunicorn_answers_in_the_error_shape_and_chunked_bodies_over_the_limit_get_413(settings):
    port = free_port()
    env = {**_env(settings, port), "BOOKING_MAX_BODY_BYTES": "1024"}
    with serve(env, workers=1):
        body = json.dumps({**booking_body(), "notes": "x" * 4000}).encode()
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 500]), body[i:i + 500]) for i in range(0, len(body), 500))
        status, headers, raw = _raw(port, b"POST /v1/bookings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                    + API_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked + b"0\r\n\r\n")
        assert status == 413 and json.loads(raw)["error"]["code"] == 413
        cases = {
            414: b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            431: b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
            400: b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        }
        for expected, request in cases.items():
            status, headers, raw = _raw(port, request)
            assert status == expected, raw[:300]
            assert headers["content-type"] == "application/json", raw[:300]
            error = json.loads(raw)["error"]
            assert error["code"] == expected and error["message"] and uuid.UUID(error["request_id"])
            assert headers["x-request-id"] == error["request_id"]
