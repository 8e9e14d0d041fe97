"""providers: which provider took each delivery (and each receipt), shared rate-limit and breaker state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("provider", sa.String(40), nullable=True))
    with op.batch_alter_table("receipts") as batch:
        batch.add_column(sa.Column("provider", sa.String(40), nullable=True))
    op.create_table(
        "provider_rates",
        sa.Column("provider", sa.String(40), primary_key=True),
        sa.Column("next_free_at", sa.Float, nullable=False),
        sa.Column("paused_until", sa.Float, nullable=False, server_default="0"),
    )
    op.create_table(
        "provider_breakers",
        sa.Column("provider", sa.String(40), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("open_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provider_breakers")
    op.drop_table("provider_rates")
    with op.batch_alter_table("receipts") as batch:
        batch.drop_column("provider")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("provider")
