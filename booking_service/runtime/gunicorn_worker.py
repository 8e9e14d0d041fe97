"""The API's gunicorn worker: gevent, so a slow client costs a greenlet, not a worker.

A sync worker reads a request's headers itself: five clients that send half a request
line and stop held all five workers of a 2-core host until gunicorn's timeout killed
them (30 s), and nothing else was answered meanwhile. gunicorn's gthread worker defers a
connection only until its *first* bytes arrive, then blocks a pool thread on the rest.
Under gevent every connection waits in a greenlet of its own, so 50 half-sent requests
cost 50 small stacks while every other client is served; the database drivers cooperate
(psycopg 3 waits through the patched ``selectors``; SQLite statements are local and short).

gunicorn answers what it cannot parse (a bad request line, 414, 431, a bad chunk) before
the app sees the request, with an HTML page of its own. This worker writes those in the
API's error shape instead (``api/errors.py``), without a request id header because no
request reached the app.
"""

from __future__ import annotations

import json
import uuid

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.http import HTTP_STATUS_CODES


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with the API's JSON error shape instead of HTML."""
    request_id = str(uuid.uuid4())
    body = json.dumps({"error": {"code": status_int, "status": HTTP_STATUS_CODES.get(status_int, reason),
                                 "message": mesg[:500], "request_id": request_id}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n"
            "X-Content-Type-Options: nosniff\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


class ApiWorker(GeventWorker):
    """gunicorn's gevent worker whose own error answers use the API's error shape."""

    def init_process(self) -> None:
        # ``Worker.handle_error`` looks ``util.write_error`` up at each call; this process is ours alone.
        util.write_error = write_json_error
        super().init_process()
