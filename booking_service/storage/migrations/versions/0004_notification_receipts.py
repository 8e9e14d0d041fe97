"""notification_receipts: delivery receipts from the notification service, unique per (delivery_id, sequence)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'notification_receipts',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('delivery_id', sa.String(length=36), nullable=False),
        sa.Column('sequence', sa.Integer(), nullable=False),
        sa.Column('notification_id', sa.String(length=36), nullable=False),
        sa.Column('booking_id', sa.String(length=36), nullable=False),
        sa.Column('booking_version', sa.Integer(), nullable=False),
        sa.Column('event', sa.String(length=40), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('recipient', sa.String(length=300), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('reason', sa.String(length=200), nullable=True),
        sa.Column('provider_message_id', sa.String(length=500), nullable=True),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('correlation_id', sa.String(length=200), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('delivery_id', 'sequence', name='uq_notification_receipt'),
    )
    with op.batch_alter_table('notification_receipts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_receipts_notification_id'), ['notification_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_receipts_booking_id'), ['booking_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_receipts_received_at'), ['received_at'], unique=False)


def downgrade() -> None:
    op.drop_table('notification_receipts')
