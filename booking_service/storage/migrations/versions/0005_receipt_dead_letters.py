"""receipt_dead_letters: why the receipts consumer dead-lettered a message, by message id

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'receipt_dead_letters',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('message_id', sa.String(length=100), nullable=True),
        sa.Column('routing_key', sa.String(length=255), nullable=True),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('receipt_dead_letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_receipt_dead_letters_message_id'), ['message_id'], unique=False)


def downgrade() -> None:
    op.drop_table('receipt_dead_letters')
