"""The delivery log's tables (SQLAlchemy Core), the one source for the Alembic migrations."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("delivery_id", sa.String(36), primary_key=True),
    sa.Column("notification_id", sa.String(36), nullable=False, index=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(4096), nullable=False),
    sa.Column("booking_id", sa.String(36), nullable=True),
    sa.Column("booking_version", sa.Integer, nullable=True),
    sa.Column("event", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("provider_message_id", sa.String(500), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    # The attempt that holds the delivery while it is `sending`: "host:pid:start-ticks" and until when.
    sa.Column("lease_owner", sa.String(300), nullable=True),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    # Request id of the booking call behind the notification (carried by every receipt).
    sa.Column("correlation_id", sa.String(200), nullable=True),
    # Sequence number of the delivery's last receipt: every status-changing statement adds one
    # (RETURNING it) and writes the receipt in the same transaction, so receipts are gapless.
    sa.Column("receipt_seq", sa.Integer, nullable=False, server_default="0"),
    # The provider that took the message (the channel's providers are a list, tried in order), or,
    # after a timeout that may have left it there, the one its next attempt must go back to.
    sa.Column("provider", sa.String(40), nullable=True),
    sa.UniqueConstraint("notification_id", "channel", "address", name="uq_delivery_address"),
    # Supersession and the wait for an older message in flight look up a booking's deliveries
    # on one channel by version (delivery/supersession.py), on every claim.
    sa.Index("ix_deliveries_booking_channel_version", "booking_id", "channel", "booking_version"),
    # A provider's event finds its delivery by the provider's message id (webhooks/).
    sa.Index("ix_deliveries_provider_message", "provider_message_id"),
)

booking_states = sa.Table(
    "booking_states", metadata,
    sa.Column("booking_id", sa.String(36), primary_key=True),
    sa.Column("highest_version", sa.Integer, nullable=False),
    sa.Column("cancelled_version", sa.Integer, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(200), nullable=True, index=True),
    sa.Column("queue", sa.String(200), nullable=True),
    sa.Column("task", sa.String(200), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

#: The receipts outbox: one row per status change of a delivery, written in the same
#: transaction as the change; the receipt publisher sends it to ``notifications.receipts``
#: and sets ``published_at`` after the broker's confirm. ``reason`` is the raw text (it is
#: scrubbed and masked when the message is built); ``locked_until``/``lease_owner`` keep
#: several publishers off each other's rows.
receipts = sa.Table(
    "receipts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", sa.String(36), nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("provider_message_id", sa.String(500), nullable=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("lease_owner", sa.String(300), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("provider", sa.String(40), nullable=True),
    sa.UniqueConstraint("delivery_id", "sequence", name="uq_receipt_sequence"),
    sa.Index("ix_receipts_unpublished", "published_at", "id"),
)

#: Each provider's send rate across every worker process and host that shares this database: a
#: GCRA cell (``next_free_at``, epoch seconds, the earliest time the next send may start) moved
#: forward by one interval per send, and ``paused_until`` set by a 429 / ``Retry-After``.
provider_rates = sa.Table(
    "provider_rates", metadata,
    sa.Column("provider", sa.String(40), primary_key=True),
    sa.Column("next_free_at", sa.Float, nullable=False),
    sa.Column("paused_until", sa.Float, nullable=False, server_default="0"),
)

#: Each provider's circuit breaker as the worker processes share it: ``open`` until ``open_until``
#: (epoch seconds), then one probe (``half_open``); ``closed`` after a success.
provider_breakers = sa.Table(
    "provider_breakers", metadata,
    sa.Column("provider", sa.String(40), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("open_until", sa.Float, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
)

#: The suppression list: a channel and address never sent to again (until ``expires_at``, when set).
#: ``address_hash`` is ``suppressions.keys.address_hash`` (SHA-256 of the normalised address): the raw
#: address is neither stored here nor shown. ``source``: ``bounce``, ``complaint``, ``unregistered``,
#: ``operator``.
suppressions = sa.Table(
    "suppressions", metadata,
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("address_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("source", sa.String(40), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
)

#: Every provider event the webhook receiver accepted, once per (provider, event id); ``delivery_id`` is
#: NULL when no delivery had its ``provider_message_id`` (kept and counted, not an error).
provider_events = sa.Table(
    "provider_events", metadata,
    sa.Column("provider", sa.String(40), primary_key=True),
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("provider_message_id", sa.String(500), nullable=False),
    sa.Column("delivery_id", sa.String(36), nullable=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_provider_events_message", "provider", "provider_message_id"),
)
