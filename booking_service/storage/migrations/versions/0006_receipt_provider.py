"""notification_receipts.provider: which provider took the message (issue 17's failover)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 01:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notification_receipts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('notification_receipts', schema=None) as batch_op:
        batch_op.drop_column('provider')
