"""index deliveries by booking, channel and version (supersession by newer versions)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_booking_channel_version", "deliveries", ["booking_id", "channel", "booking_version"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_booking_channel_version", table_name="deliveries")
