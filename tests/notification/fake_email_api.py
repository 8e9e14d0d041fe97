"""A JSON e-mail API on loopback that honours ``Idempotency-Key``: it answers, refuses (503) or hangs.

``mode``: ``"ok"`` takes the message; ``"503"`` answers 503 and takes nothing; ``"hang"``
takes the message but answers only after ``hang_seconds`` (longer than the client waits:
a read timeout on a message that *was* taken). A key taken before is answered with the
same id and is not taken again, as a real provider's idempotency does; ``taken`` counts
how often each key was taken (never more than once here), ``calls`` every request.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEmailApi:
    def __init__(self, port: int = 0, mode: str = "ok", hang_seconds: float = 3.0) -> None:
        self.mode = mode
        self.hang_seconds = hang_seconds
        self.calls: list[dict] = []
        self.taken: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                key = self.headers.get("Idempotency-Key", "")
                with fake.lock:
                    mode = fake.mode
                    fake.calls.append({"key": key, "mode": mode, "to": body.get("to")})
                    if mode != "503" and not fake.taken[key]:
                        fake.taken[key] += 1
                if mode == "503":
                    self._answer(503, {"error": "unavailable"})
                    return
                if mode == "hang":
                    time.sleep(fake.hang_seconds)
                self._answer(200, {"id": f"api-{key}"})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    return  # the client gave up waiting (the "hang" mode): nothing to answer

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/send"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def keys(self) -> list[str]:
        with self.lock:
            return [call["key"] for call in self.calls]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
