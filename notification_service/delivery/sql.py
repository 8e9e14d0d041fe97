"""The delivery log's hot-path statements, written once with ``:name`` parameters.

The hot path runs them as prepared text on the DBAPI cursor (SQLAlchemy's
statement execution cost more CPU than the statements themselves), so each is
adapted once per driver by :func:`for_driver`.
"""

from __future__ import annotations

import re

from notification_service.delivery.status import ACCEPTED, CLAIMABLE
from notification_service.delivery.supersession import supersedes_sql

_CLAIMABLE_SQL = ", ".join(f"'{s.value}'" for s in CLAIMABLE)
#: A provider took it: a late attempt's ``sent`` never overwrites its events (delivered, bounced, complained).
_ACCEPTED_SQL = ", ".join(f"'{s.value}'" for s in ACCEPTED)

#: Older than a cancellation processed for the booking (every channel).
_CANCELLED = ("EXISTS (SELECT 1 FROM booking_states b WHERE b.booking_id = deliveries.booking_id"
              " AND b.cancelled_version > deliveries.booking_version)")

#: A message of a newer version that supersedes this one was opened on its channel (``supersession.py``).
_SUPERSEDED = ("EXISTS (SELECT 1 FROM deliveries newer WHERE newer.booking_id = deliveries.booking_id"
               " AND newer.channel = deliveries.channel AND newer.booking_version > deliveries.booking_version"
               f" AND {supersedes_sql('newer.event', 'deliveries.event')})")

_STALE = f"({_CANCELLED} OR {_SUPERSEDED})"

#: The delivery's channel and address (``:ahash``, ``suppressions.keys``) are on the suppression list, unexpired.
_SUPPRESSED = ("EXISTS (SELECT 1 FROM suppressions s WHERE s.channel = deliveries.channel"
               " AND s.address_hash = :ahash AND (s.expires_at IS NULL OR s.expires_at > :now))")


def _older_in_flight(outer: str) -> str:
    """Condition on ``older``: a message ``outer`` supersedes, at its provider under a live lease, same channel.

    The newer one waits for it: the customer's last message must be the newer one.
    """
    return (f"older.booking_id = {outer}.booking_id AND older.channel = {outer}.channel"
            f" AND older.booking_version < {outer}.booking_version AND older.status = 'sending'"
            f" AND older.lease_expires_at >= :now AND {supersedes_sql(outer + '.event', 'older.event')}")


#: A lease that has ended (a NULL end, from before leases had one, counts as ended).
_ENDED = "(lease_expires_at IS NULL OR lease_expires_at < :now)"

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
    # Supersession at dispatch: this notification's deliveries that a newer version's message already
    # opened on their channel made stale (run only when the booking has a newer version).
    "stale_superseded": f"UPDATE deliveries SET status = 'stale', last_error = :reason, updated_at = :now,"
                        f" receipt_seq = receipt_seq + 1 WHERE notification_id = :nid"
                        f" AND status IN ('pending', 'failed') AND {_SUPERSEDED}"
                        f" RETURNING delivery_id, receipt_seq, attempts",
    # PostgreSQL only: a claim takes its turn with dispatches of the same booking (which hold the
    # booking's row FOR UPDATE), so a claim never decides on a snapshot taken before a newer
    # version's dispatch committed while committing after that version's own claim looked.
    "gate_booking": "SELECT 1 FROM booking_states WHERE booking_id ="
                    " (SELECT booking_id FROM deliveries WHERE delivery_id = :did) FOR SHARE",
    "claim": f"UPDATE deliveries SET status = 'sending', attempts = attempts + 1, lease_owner = :owner,"
             f" lease_expires_at = :until, updated_at = :now WHERE delivery_id = :did"
             f" AND (status IN ({_CLAIMABLE_SQL}) OR (status = 'sending' AND {_ENDED}))"
             f" AND NOT {_STALE} AND NOT {_SUPPRESSED}"
             f" AND NOT EXISTS (SELECT 1 FROM deliveries older WHERE {_older_in_flight('deliveries')})"
             f" RETURNING attempts, provider",
    "take_over": f"UPDATE deliveries SET attempts = attempts + 1, lease_owner = :owner, lease_expires_at = :until,"
                 f" updated_at = :now WHERE delivery_id = :did AND status = 'sending' AND lease_owner = :dead"
                 f" AND NOT {_STALE} AND NOT {_SUPPRESSED} RETURNING attempts, provider",
    "why_not": f"SELECT status, attempts, lease_owner, lease_expires_at, {_CANCELLED}, {_SUPERSEDED}, {_SUPPRESSED}"
               f" FROM deliveries WHERE delivery_id = :did",
    "older_in_flight": f"SELECT older.lease_owner, older.lease_expires_at FROM deliveries d, deliveries older"
                       f" WHERE d.delivery_id = :did AND {_older_in_flight('d')}"
                       f" ORDER BY older.lease_expires_at DESC LIMIT 1",
    # A stale delivery is recorded stale unless a live attempt holds it: one whose lease has not
    # ended and whose owner is not known dead (``:dead``, or NULL) may still be at the provider.
    "mark_stale": f"UPDATE deliveries SET status = :status, last_error = :reason, lease_owner = NULL,"
                  f" lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
                  f" WHERE delivery_id = :did AND (status IN ({_CLAIMABLE_SQL})"
                  f" OR (status = 'sending' AND ({_ENDED} OR lease_owner = :dead)))"
                  f" RETURNING receipt_seq, attempts",
    "finish_sent": "UPDATE deliveries SET status = 'sent', sent_at = :now, provider_message_id = :pid,"
                   " provider = :provider,"
                   " lease_owner = NULL, lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
                   " WHERE delivery_id = :did AND status NOT IN (" + _ACCEPTED_SQL + ")"
                   " RETURNING receipt_seq, attempts",
    # A provider that may have the message pins the delivery to it until it is sent (never unpinned).
    "finish_failed": "UPDATE deliveries SET status = :status, last_error = :error, lease_owner = NULL,"
                     " provider = COALESCE(:provider, provider),"
                     " lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
                     " WHERE delivery_id = :did AND status = 'sending' AND lease_owner = :owner"
                     " AND attempts = :attempt RETURNING receipt_seq, attempts",
    # An attempt that called no provider (every breaker open) is given back: not counted, claimable at once.
    "release": "UPDATE deliveries SET status = 'failed', attempts = attempts - 1, last_error = :error,"
               " lease_owner = NULL, lease_expires_at = NULL, updated_at = :now, receipt_seq = receipt_seq + 1"
               " WHERE delivery_id = :did AND status = 'sending' AND lease_owner = :owner AND attempts = :attempt"
               " RETURNING receipt_seq, attempts",
    "drop": f"UPDATE deliveries SET status = :status, last_error = :reason, updated_at = :now,"
            f" receipt_seq = receipt_seq + 1 WHERE delivery_id = :did AND status IN ({_CLAIMABLE_SQL})"
            f" RETURNING receipt_seq, attempts",
    # Not over `dead`: a permanent failure was recorded dead (and its receipt written) by `finish`.
    "mark_dead": "UPDATE deliveries SET status = 'dead', last_error = :reason, updated_at = :now,"
                 " receipt_seq = receipt_seq + 1 WHERE delivery_id = :did AND status IN ('pending', 'failed')"
                 " RETURNING receipt_seq, attempts",
    "insert_receipt": "INSERT INTO receipts (delivery_id, sequence, status, attempt, reason, provider_message_id,"
                      " occurred_at, provider) VALUES (:did, :seq, :rstatus, :attempt, :reason, :pid, :now, :provider)",
    "address_of": "SELECT channel, address FROM deliveries WHERE delivery_id = :did",
    "insert_dead_letter": "INSERT INTO dead_letters (message_id, queue, task, reason, created_at)"
                          " VALUES (:mid, :queue, :task, :reason, :now)",
}


def for_driver(sql: str, sqlite_dialect: bool) -> str:
    """SQLite takes ``:name`` as it is; psycopg wants ``%(name)s`` (and GREATEST for a two-value MAX)."""
    if sqlite_dialect:
        return sql.replace("MAX_(", "MAX(")
    sql = sql.replace("MAX_(", "GREATEST(")
    return re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql)
