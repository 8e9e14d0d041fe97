"""receipts outbox, per-delivery receipt sequence, correlation id on deliveries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("correlation_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("receipt_seq", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "receipts",
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
        sa.UniqueConstraint("delivery_id", "sequence", name="uq_receipt_sequence"),
    )
    op.create_index("ix_receipts_unpublished", "receipts", ["published_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_receipts_unpublished", table_name="receipts")
    op.drop_table("receipts")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("receipt_seq")
        batch.drop_column("correlation_id")
