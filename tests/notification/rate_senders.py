"""A process of sender threads behind the shared rate limit, and the loopback e-mail API they call.

``python -m tests.notification.rate_senders DATABASE_URL API_URL GO_FILE --tag p0 --rate 20 --threads 4
--count 10``: builds the worker's own pieces (``HttpEmailProvider`` behind ``RateLimitedProvider`` on the
delivery log's database), prints ``ready``, waits for ``GO_FILE`` to exist (so that every process starts
together), then each thread sends ``count`` e-mails; a provider's TransientError (a 429) is counted and the
thread goes on with its next e-mail, as the next task would.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.errors import TransientError
from notification_service.providers import EmailContent, HttpEmailProvider
from notification_service.providers.rate_limit import RateLimiter
from notification_service.providers.rate_limited import RateLimitedProvider
from notification_service.settings import Settings


@dataclass(frozen=True)
class Call:
    key: str            # Idempotency-Key: "<tag>-<thread>-<n>"
    arrived: float      # epoch seconds the request reached the API
    answered: float     # epoch seconds its answer was sent
    status: int


class FakeEmailApi:
    """A JSON e-mail API on 127.0.0.1 that records every call; ``throttle_call`` (1-based) is answered 429."""

    def __init__(self, throttle_call: int | None = None, retry_after: str = "2") -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.throttle_call, self.retry_after = throttle_call, retry_after
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                return

            def do_POST(self):  # noqa: N802 - http.server naming
                arrived = time.time()
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake.lock:
                    number = len(fake.calls) + 1
                    status = 429 if number == fake.throttle_call else 200
                    body = json.dumps({"id": f"m-{number}"}).encode()
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", fake.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    fake.calls.append(Call(self.headers.get("Idempotency-Key") or "", arrived, time.time(), status))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/send"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def snapshot(self) -> list[Call]:
        with self.lock:
            return sorted(self.calls, key=lambda call: call.arrived)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("api_url")
    parser.add_argument("go_file")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    settings = Settings(email_backend="http", email_http_url=args.api_url, database_url=args.database_url)
    limiter = RateLimiter(SqlDeliveryLog(args.database_url).writes, settings.rate_limit_max_wait)
    provider = RateLimitedProvider("email_http", HttpEmailProvider(settings), limiter, args.rate)
    throttled = 0

    def run(thread: int) -> None:
        nonlocal throttled
        for n in range(args.count):
            content = EmailContent(delivery_id=f"{args.tag}-{thread}-{n}", to="ada@example.org", subject="s",
                                   text="t", html="<p>t</p>", headers={})
            try:
                provider.send(content)
            except TransientError:
                throttled += 1

    print("ready", flush=True)
    while not os.path.exists(args.go_file):
        time.sleep(0.01)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"done throttled={throttled}", flush=True)


if __name__ == "__main__":
    main()
