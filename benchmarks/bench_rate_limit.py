"""Benchmark: what the shared provider rate limit costs per send, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/bench_rate_limit.py [-n 2000] [--database sqlite,postgresql]

For each database (a fresh SQLite file; a fresh PostgreSQL database on TEST_POSTGRES_URL's server), the
notification migrations, then ``RateLimiter.acquire`` as the send worker calls it:

* ``no wait, 1 thread``: a rate far above what is asked (the slot is always now): the one upsert per send;
* ``no wait, 8 threads``: the same from 8 threads at once (they take turns on the write lock / row lock);
* ``at the limit, 8 threads``: 8 threads at 200/s, each slot in the future: the upsert, the sleep, and the
  read of ``paused_until`` after it (a 429 during the sleep voids the slot). Wall time here is how late a
  caller returned after its slot, not the sleep itself.

CPU is this process's (user + system, ``time.process_time``) per acquire; PostgreSQL's server-side CPU is
not in it. Prints one table row per database and case.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from notification_service.delivery.migrate import upgrade  # noqa: E402 - after the sys.path insert above
from notification_service.delivery.repository import SqlDeliveryLog  # noqa: E402
from notification_service.providers.rate_limit import RateLimiter  # noqa: E402

PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(q * len(ordered) + 0.999999) - 1)] if ordered else float("nan")


def run_case(limiter: RateLimiter, provider: str, n: int, threads: int,
             rate: float) -> tuple[float, float, list[float]]:
    """(CPU seconds of this process, wall seconds, per-acquire wall seconds) of ``n`` acquires over ``threads``
    threads."""
    walls: list[float] = []
    lock = threading.Lock()
    limited = rate < 1e6

    def one(_i: int) -> None:
        started = time.time()
        slot = limiter.acquire(provider, rate)
        ended = time.time()
        with lock:
            walls.append(ended - slot if limited else ended - started)

    cpu0, wall0 = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    return time.process_time() - cpu0, time.monotonic() - wall0, walls


def databases(kinds: list[str], tmp: pathlib.Path):
    for kind in kinds:
        if kind == "sqlite":
            yield kind, f"sqlite:///{tmp / 'notification.db'}", lambda: None
            continue
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        name = f"bench_rate_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

        def drop(admin=admin, name=name) -> None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        yield kind, admin.url.set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="acquires per case (the limited case: n / 4)")
    parser.add_argument("--database", default="sqlite,postgresql")
    args = parser.parse_args()
    cases = [("no wait, 1 thread", 1, 1e9, args.n), ("no wait, 8 threads", 8, 1e9, args.n),
             ("at the limit (200/s), 8 threads", 8, 200.0, args.n // 4)]
    print(f"| database | case | acquires | acquires/s | CPU µs / acquire | wall ms p50 | wall ms p99 | "
          f"({os.cpu_count()} cores)")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp:
        for kind, url, drop in databases(args.database.split(","), pathlib.Path(tmp)):
            try:
                upgrade(url)
                log = SqlDeliveryLog(url)
                limiter = RateLimiter(log.writes, max_wait=60.0)
                limiter.acquire("warm-up", 1e9)
                for label, threads, rate, n in cases:
                    cpu, wall, walls = run_case(limiter, f"bench-{threads}-{rate:g}", n, threads, rate)
                    print(f"| {kind} | {label} | {n} | {n / wall:.0f} | {cpu / n * 1e6:.0f} | "
                          f"{pct(walls, 0.5) * 1e3:.2f} | "
                          f"{pct(walls, 0.99) * 1e3:.2f} |", flush=True)
                log.engine.dispose()
            finally:
                drop()


if __name__ == "__main__":
    main()
