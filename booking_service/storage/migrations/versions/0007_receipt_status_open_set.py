"""notification_receipts.status up to 32 characters: statuses are an open set for the booking side (issue 18)

A receipt with a status this service does not know yet (``delivered``, ``complained``,
or one a newer notification service invents) is stored, never dead-lettered; the contract
bounds a status to ``^[a-z_]{1,32}$``, so the column holds every one the contract lets in
(PostgreSQL refused a 17-character one into VARCHAR(16) with a DataError).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 01:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notification_receipts', schema=None) as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=16), type_=sa.String(length=32),
                              existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('notification_receipts', schema=None) as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=32), type_=sa.String(length=16),
                              existing_nullable=False)
