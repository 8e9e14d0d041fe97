"""The providers' circuit breakers as every worker process shares them: the ``provider_breakers`` table.

``providers.breaker.SharedState`` on the delivery log's database, with its
engine and write lock (SQLite's writers take turns there). A write never
replaces a newer one (``updated_at``); the probe is claimed with one
conditional UPDATE, so only one process's probe goes out at a time. A probe
whose process died is claimable again after ``probe_timeout`` seconds.
"""

from __future__ import annotations

import sqlalchemy as sa

from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.sql import for_driver
from notification_service.providers.breaker import BreakerRow

_READ = "SELECT state, failures, open_until, updated_at FROM provider_breakers WHERE provider = :provider"
_WRITE = ("INSERT INTO provider_breakers (provider, state, failures, open_until, updated_at)"
          " VALUES (:provider, :state, :failures, :open_until, :updated_at) ON CONFLICT (provider) DO UPDATE"
          " SET state = excluded.state, failures = excluded.failures, open_until = excluded.open_until,"
          " updated_at = excluded.updated_at WHERE provider_breakers.updated_at <= excluded.updated_at")
_CLAIM_PROBE = ("UPDATE provider_breakers SET state = 'half_open', updated_at = :now WHERE provider = :provider"
                " AND ((state = 'open' AND open_until <= :now) OR (state = 'half_open' AND updated_at < :stale))")


class SqlBreakerState:
    def __init__(self, store: SqlDeliveryLog, probe_timeout: float) -> None:
        self.store = store
        self.probe_timeout = probe_timeout
        self.sql = {name: for_driver(text, store.sqlite) for name, text in
                    (("write", _WRITE), ("claim_probe", _CLAIM_PROBE))}

    def read(self, provider: str) -> BreakerRow | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.text(_READ), {"provider": provider}).first()
        return None if row is None else BreakerRow(row[0], row[1], float(row[2]), float(row[3]))

    def write(self, provider: str, row: BreakerRow) -> None:
        with self.store.writes.transaction() as cur:
            cur.execute(self.sql["write"], {"provider": provider, "state": row.state, "failures": row.failures,
                                            "open_until": row.open_until, "updated_at": row.updated_at})

    def claim_probe(self, provider: str, now: float) -> bool:
        """True when this process may send the probe: it claimed it, or no process has written the row."""
        with self.store.writes.transaction() as cur:
            cur.execute(self.sql["claim_probe"], {"provider": provider, "now": now,
                                                  "stale": now - self.probe_timeout})
            if cur.rowcount == 1:
                return True
        return self.read(provider) is None
