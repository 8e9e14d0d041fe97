"""The delivery log's hot-path statements, written once with ``:name`` parameters.

The hot path runs them as prepared text on the DBAPI cursor (SQLAlchemy's
statement execution cost more CPU than the statements themselves), so each is
adapted once per driver by :func:`for_driver`.
"""

from __future__ import annotations

import re

from notification_service.delivery.status import CLAIMABLE

_CLAIMABLE_SQL = ", ".join(f"'{s.value}'" for s in CLAIMABLE)

_STALE = ("EXISTS (SELECT 1 FROM booking_states b WHERE b.booking_id = deliveries.booking_id"
          " AND b.cancelled_version > deliveries.booking_version)")

#: The hot path's statements, written once with ``:name`` parameters (see :func:`for_driver`).
SQL = {
    "select_booking": "SELECT highest_version, cancelled_version FROM booking_states WHERE booking_id = :bid",
    "insert_booking": "INSERT INTO booking_states (booking_id, highest_version, cancelled_version, updated_at)"
                      " VALUES (:bid, :version, :cancelled, :now) ON CONFLICT DO NOTHING RETURNING booking_id",
    "update_booking": "UPDATE booking_states SET highest_version = MAX_(highest_version, :version),"
                      " updated_at = :now WHERE booking_id = :bid",
    "update_booking_cancelled": "UPDATE booking_states SET highest_version = MAX_(highest_version, :version),"
                                " cancelled_version = MAX_(COALESCE(cancelled_version, 0), :version),"
                                " updated_at = :now WHERE booking_id = :bid",
    "insert_delivery": "INSERT INTO deliveries (delivery_id, notification_id, channel, address, booking_id,"
                       " booking_version, event, status, attempts, last_error, created_at, updated_at,"
                       " correlation_id, receipt_seq)"
                       " VALUES (:did, :nid, :channel, :address, :bid, :version, :event, :status, 0, :error,"
                       " :now, :now, :cid, :seq) ON CONFLICT DO NOTHING RETURNING delivery_id",
    "pending_of_notification": "SELECT delivery_id FROM deliveries WHERE notification_id = :nid"
                               " AND status = 'pending'",
    "stale_notification": "UPDATE deliveries SET status = 'stale', last_error = :reason, updated_at = :now,"
                          " receipt_seq = receipt_seq + 1 WHERE notification_id = :nid"
                          " AND status IN ('pending', 'failed') RETURNING delivery_id, receipt_seq, attempts",
    "claim": f"UPDATE deliveries SET status = 'sending', attempts = attempts + 1, lease_owner = :owner,"
             f" lease_expires_at = :until, updated_at = :now WHERE delivery_id = :did"
             f" AND (status IN ({_CLAIMABLE_SQL}) OR (status = 'sending' AND lease_expires_at < :now))"
             f" AND NOT {_STALE} RETURNING attempts",
    "take_over": f"UPDATE deliveries SET attempts = attempts + 1, lease_owner = :owner, lease_expires_at = :until,"
                 f" updated_at = :now WHERE delivery_id = :did AND status = 'sending' AND lease_owner = :dead"
                 f" AND NOT {_STALE} RETURNING attempts",
    "why_not": f"SELECT status, attempts, lease_owner, lease_expires_at, {_STALE} FROM deliveries"
               f" WHERE delivery_id = :did",
    "mark_stale": "UPDATE deliveries SET status = 'stale', last_error = :reason, updated_at = :now,"
                  " receipt_seq = receipt_seq + 1 WHERE delivery_id = :did RETURNING receipt_seq, attempts",
    "finish_sent": "UPDATE deliveries SET status = 'sent', sent_at = :now, provider_message_id = :pid,"
                   " lease_owner = NULL, lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
                   " WHERE delivery_id = :did AND status <> 'sent' RETURNING receipt_seq, attempts",
    "finish_failed": "UPDATE deliveries SET status = :status, last_error = :error, lease_owner = NULL,"
                     " lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
                     " WHERE delivery_id = :did AND status = 'sending' AND lease_owner = :owner"
                     " AND attempts = :attempt RETURNING receipt_seq, attempts",
    "drop": f"UPDATE deliveries SET status = :status, last_error = :reason, updated_at = :now,"
            f" receipt_seq = receipt_seq + 1 WHERE delivery_id = :did AND status IN ({_CLAIMABLE_SQL})"
            f" RETURNING receipt_seq, attempts",
    # Not over `dead`: a permanent failure was recorded dead (and its receipt written) by `finish`.
    "mark_dead": "UPDATE deliveries SET status = 'dead', last_error = :reason, updated_at = :now,"
                 " receipt_seq = receipt_seq + 1 WHERE delivery_id = :did AND status IN ('pending', 'failed')"
                 " RETURNING receipt_seq, attempts",
    "insert_receipt": "INSERT INTO receipts (delivery_id, sequence, status, attempt, reason, provider_message_id,"
                      " occurred_at) VALUES (:did, :seq, :rstatus, :attempt, :reason, :pid, :now)",
    "insert_dead_letter": "INSERT INTO dead_letters (message_id, queue, task, reason, created_at)"
                          " VALUES (:mid, :queue, :task, :reason, :now)",
}


def for_driver(sql: str, sqlite_dialect: bool) -> str:
    """SQLite takes ``:name`` as it is; psycopg wants ``%(name)s`` (and GREATEST for a two-value MAX)."""
    if sqlite_dialect:
        return sql.replace("MAX_(", "MAX(")
    sql = sql.replace("MAX_(", "GREATEST(")
    return re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql)
