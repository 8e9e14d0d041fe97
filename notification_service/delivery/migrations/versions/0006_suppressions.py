"""suppressions and provider events: the suppression list, the webhook receiver's events

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("address_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "provider_events",
        sa.Column("provider", sa.String(40), primary_key=True),
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("provider_message_id", sa.String(500), nullable=False),
        sa.Column("delivery_id", sa.String(36), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_provider_events_message", "provider_events", ["provider", "provider_message_id"])
    op.create_index("ix_deliveries_provider_message", "deliveries", ["provider_message_id"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_provider_message", table_name="deliveries")
    op.drop_index("ix_provider_events_message", table_name="provider_events")
    op.drop_table("provider_events")
    op.drop_table("suppressions")
