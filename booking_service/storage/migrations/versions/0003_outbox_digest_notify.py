"""outbox: payload_sha256 (validated when written, not again by the relay) and, on PostgreSQL, NOTIFY on insert

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

#: The channel the relay LISTENs on (booking_service.relay.relay.NOTIFY_CHANNEL).
CHANNEL = 'booking_outbox'


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('payload_sha256', sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        # One NOTIFY per inserting statement, delivered at COMMIT (and not at all
        # on rollback): the relay wakes the moment a booking commits, without a
        # round trip in the booking's transaction.
        op.execute(f"""
            CREATE FUNCTION booking_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{CHANNEL}', '');
                RETURN NULL;
            END $$""")
        op.execute("""
            CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
            FOR EACH STATEMENT EXECUTE FUNCTION booking_outbox_notify()""")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
        op.execute("DROP FUNCTION IF EXISTS booking_outbox_notify()")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('payload_sha256')
