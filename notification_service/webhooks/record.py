"""A provider event stored once and applied to its delivery, with its receipt, in one transaction.

* stored once per (provider, event id): a duplicate or redelivered webhook changes nothing;
* matched to its delivery by ``provider_message_id`` on the e-mail channel (with or without the
  ``<>`` of a Message-ID); an event of a message nobody here sent is stored with no delivery;
* applied only upwards in ``events.EVENT_RANK`` (sent < delivered < bounced < complained), writing the
  receipt beside the status change; a soft bounce is stored and changes nothing;
* a hard bounce or a complaint puts the delivery's channel and address on the suppression list.
"""

from __future__ import annotations

import enum
from datetime import datetime

from notification_service.delivery.repository import SqlDeliveryLog
from notification_service.delivery.sql import for_driver
from notification_service.suppressions.keys import address_hash
from notification_service.suppressions.store import upsert
from notification_service.webhooks.events import EVENT_STATUS, SUPPRESSING, ProviderEvent, lower_ranks


class Recorded(str, enum.Enum):
    APPLIED = "applied"      # the delivery's status changed (receipt written)
    UNCHANGED = "unchanged"  # matched, but its delivery already stands at this status or a later one
    UNMATCHED = "unmatched"  # no delivery has this provider message id: stored and counted
    DUPLICATE = "duplicate"  # this (provider, event id) was stored before: nothing changed


_SQL = {
    "find": "SELECT delivery_id, channel, address FROM deliveries WHERE provider_message_id IN (:bare, :bracketed)"
            " AND channel = 'email' ORDER BY created_at LIMIT 1",
    "insert": "INSERT INTO provider_events (provider, event_id, kind, provider_message_id, delivery_id, occurred_at,"
              " received_at) VALUES (:provider, :eid, :kind, :pid, :did, :occurred, :now)"
              " ON CONFLICT DO NOTHING RETURNING event_id",
    **{f"apply_{status.value}": "UPDATE deliveries SET status = :status, last_error = :reason, updated_at = :now,"
                                " receipt_seq = receipt_seq + 1 WHERE delivery_id = :did AND status IN ("
                                + ", ".join(f"'{s}'" for s in lower_ranks(status)) + ")"
                                " RETURNING receipt_seq, attempts, provider"
       for status in EVENT_STATUS.values()},
}


class EventRecorder:
    """Records events on the delivery log's database (its write lock: one transaction per event)."""

    def __init__(self, store: SqlDeliveryLog) -> None:
        self.store = store
        self.sql = {name: for_driver(text, store.sqlite) for name, text in _SQL.items()}

    def record(self, event: ProviderEvent, now: datetime) -> Recorded:
        bare = event.message_id.strip().strip("<>")
        ts, occurred = self.store.time(now), self.store.time(event.occurred_at)
        with self.store.writes.transaction() as cur:
            cur.execute(self.sql["find"], {"bare": bare, "bracketed": f"<{bare}>"})
            match = cur.fetchone()
            did = match[0] if match else None
            cur.execute(self.sql["insert"], {"provider": event.provider, "eid": event.event_id, "kind": event.kind,
                                             "pid": event.message_id, "did": did, "occurred": occurred, "now": ts})
            if not cur.fetchall():
                return Recorded.DUPLICATE
            if match is None:
                return Recorded.UNMATCHED
            status = EVENT_STATUS.get(event.kind)
            if status is None:  # a soft bounce: the provider retries; kept for the record
                return Recorded.UNCHANGED
            reason = SUPPRESSING.get(event.kind, (None, None))[0]
            cur.execute(self.sql[f"apply_{status.value}"], {"status": status.value, "reason": reason, "now": ts,
                                                            "did": did})
            row = cur.fetchone()
            if event.kind in SUPPRESSING:  # even when the delivery already stood higher: the address is dead
                _did, channel, address = match
                reason, source = SUPPRESSING[event.kind]
                upsert(cur, self.store.sqlite, channel=channel, ahash=address_hash(channel, address), reason=reason,
                       source=source, now=ts, expires=None)
            if row is None:
                return Recorded.UNCHANGED
            self.store.write_receipt(cur, match[0], row[:2], status.value, occurred, reason=reason,
                                     provider_message_id=event.message_id, provider=row[2])
            return Recorded.APPLIED
