"""CPU per POST /v1/bookings in-process (no gunicorn, no network), beside a bare Flask endpoint.

    .venv/bin/python benchmarks/profile_post.py bare|sqlite|postgresql [N] [--cprofile FILE]

One thread, the Flask test client, ``time.process_time()`` per request: steadier
than the gunicorn benchmark on a shared machine. Under py-spy it gives the
profile of a POST (``py-spy record -r 500 -f raw -o post.raw -- .venv/bin/python
benchmarks/profile_post.py sqlite 4000``). PostgreSQL: a throwaway database on
``TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pathlib
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import Flask, jsonify, request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from booking_service.api.app import create_app  # noqa: E402
from booking_service.settings import Settings  # noqa: E402
from booking_service.storage.migrate import upgrade  # noqa: E402

HEADERS = {"Authorization": "Bearer bench", "Content-Type": "application/json"}


def body(i: int) -> bytes:
    start = datetime(2035, 1, 1, tzinfo=UTC) + timedelta(hours=2 * i)
    return json.dumps({"resource_id": f"bench-{i % 50}", "starts_at": start.isoformat(),
                       "ends_at": (start + timedelta(hours=1)).isoformat(),
                       "customer": {"name": "Bench", "email": "bench@example.org",
                                    "timezone": "Europe/Paris"}}).encode()


def bare_app() -> Flask:
    app = Flask(__name__)

    @app.post("/v1/bookings")
    def create():
        return jsonify(request.get_json()), 201

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["bare", "sqlite", "postgresql"])
    parser.add_argument("n", type=int, nargs="?", default=2000)
    parser.add_argument("--cprofile", help="write a cProfile (CPU time) of the measured requests here")
    args = parser.parse_args()
    admin = database = None
    if args.target == "bare":
        app = bare_app()
    else:
        if args.target == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
        else:
            admin = sa.create_engine(os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"),
                                     isolation_level="AUTOCOMMIT")
            database = f"profile_{uuid.uuid4().hex[:8]}"
            with admin.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{database}"'))
            url = admin.url.set(database=database).render_as_string(hide_password=False)
        upgrade(url)
        # The request log line is written (JSON, INFO, to stderr) as in production.
        app = create_app(Settings(database_url=url, api_keys=("bench",), log_format="json", log_level="INFO"))
    client = app.test_client()
    offset = int(time.time()) % 10000 * 1000
    try:
        for i in range(50):  # warm-up: imports, pool, prepared statements
            client.post("/v1/bookings", data=body(offset + 10**6 + i), headers=HEADERS)
        profile = cProfile.Profile(time.process_time) if args.cprofile else None
        if profile:
            profile.enable()
        started = time.process_time()
        for i in range(args.n):
            response = client.post("/v1/bookings", data=body(offset + i), headers=HEADERS)
            if response.status_code != 201:
                raise SystemExit(f"POST answered {response.status_code}: {response.data[:300]!r}")
        cpu = (time.process_time() - started) / args.n * 1000
        if profile:
            profile.disable()
            profile.dump_stats(args.cprofile)
    finally:
        if database:
            app.extensions["booking_engine"].dispose()
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    print(f"{args.target}: {cpu:.3f} ms CPU per POST ({args.n} requests)")


if __name__ == "__main__":
    main()
