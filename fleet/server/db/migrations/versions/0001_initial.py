"""initial schema: devices, records, samples, rollups, users, audit

Revision ID: 0001
Revises: -
Create Date: 2026-12-01 18:59:18.620772

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('audit',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit'))
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index('ix_audit_ts', ['ts'], unique=False)

    op.create_table('devices',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('first_seen', sa.Float(), nullable=False, comment='unix time the server first heard of it'),
    sa.Column('last_seen', sa.Float(), nullable=False, comment='unix time of the latest message from it'),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('serving', sa.String(length=200), nullable=True),
    sa.Column('profile', sa.String(length=128), nullable=True),
    sa.Column('groups', sa.JSON(), nullable=True, comment='list of group names'),
    sa.Column('update_state', sa.String(length=32), nullable=True),
    sa.Column('update_reason', sa.Text(), nullable=True),
    sa.Column('update_at', sa.Float(), nullable=True),
    sa.Column('desired_version', sa.String(length=64), nullable=True),
    sa.Column('desired_sequence', sa.BigInteger(), nullable=True),
    sa.Column('drifting', sa.Boolean(), nullable=False, comment='latest drift event not yet cleared'),
    sa.Column('drift_at', sa.Float(), nullable=True),
    sa.Column('state', sa.JSON(), nullable=True, comment='the latest retained state document'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_devices'))
    )
    op.create_table('events',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('outbox', sa.String(length=64), nullable=False),
    sa.Column('record_id', sa.BigInteger(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('feature', sa.String(length=128), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('device', 'outbox', 'record_id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_device_ts', ['device', 'ts'], unique=False)
        batch_op.create_index('ix_events_ts', ['ts'], unique=False)
        batch_op.create_index('ix_events_type_ts', ['type', 'ts'], unique=False)

    op.create_table('metrics',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('outbox', sa.String(length=64), nullable=False),
    sa.Column('record_id', sa.BigInteger(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('frames', sa.Integer(), nullable=True),
    sa.Column('fps', sa.Float(), nullable=True),
    sa.Column('latency_p50', sa.Float(), nullable=True),
    sa.Column('latency_p90', sa.Float(), nullable=True),
    sa.Column('latency_p99', sa.Float(), nullable=True),
    sa.Column('inference_p50', sa.Float(), nullable=True),
    sa.Column('dropped', sa.Integer(), nullable=True),
    sa.Column('errors', sa.Integer(), nullable=True),
    sa.Column('cpu_percent', sa.Float(), nullable=True),
    sa.Column('rss_bytes', sa.BigInteger(), nullable=True),
    sa.Column('temperature_c', sa.Float(), nullable=True),
    sa.Column('confidence_mean', sa.Float(), nullable=True),
    sa.Column('drift_max', sa.Float(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('device', 'outbox', 'record_id', name=op.f('pk_metrics'))
    )
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.create_index('ix_metrics_device_ts', ['device', 'ts'], unique=False)
        batch_op.create_index('ix_metrics_ts', ['ts'], unique=False)

    op.create_table('rejected',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('topic', sa.String(length=400), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejected'))
    )
    op.create_table('rollup_1h',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('bucket', sa.Float(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('frames', sa.BigInteger(), nullable=False),
    sa.Column('fps', sa.Float(), nullable=True),
    sa.Column('latency_p50', sa.Float(), nullable=True),
    sa.Column('latency_p99', sa.Float(), nullable=True),
    sa.Column('errors', sa.BigInteger(), nullable=True),
    sa.Column('dropped', sa.BigInteger(), nullable=True),
    sa.Column('cpu_percent', sa.Float(), nullable=True),
    sa.Column('temperature_c', sa.Float(), nullable=True),
    sa.Column('confidence_mean', sa.Float(), nullable=True),
    sa.Column('drift_max', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('device', 'bucket', 'version', name=op.f('pk_rollup_1h'))
    )
    with op.batch_alter_table('rollup_1h', schema=None) as batch_op:
        batch_op.create_index('ix_rollup_1h_bucket', ['bucket'], unique=False)

    op.create_table('rollup_1m',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('bucket', sa.Float(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('frames', sa.BigInteger(), nullable=False),
    sa.Column('fps', sa.Float(), nullable=True),
    sa.Column('latency_p50', sa.Float(), nullable=True),
    sa.Column('latency_p99', sa.Float(), nullable=True),
    sa.Column('errors', sa.BigInteger(), nullable=True),
    sa.Column('dropped', sa.BigInteger(), nullable=True),
    sa.Column('cpu_percent', sa.Float(), nullable=True),
    sa.Column('temperature_c', sa.Float(), nullable=True),
    sa.Column('confidence_mean', sa.Float(), nullable=True),
    sa.Column('drift_max', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('device', 'bucket', 'version', name=op.f('pk_rollup_1m'))
    )
    with op.batch_alter_table('rollup_1m', schema=None) as batch_op:
        batch_op.create_index('ix_rollup_1m_bucket', ['bucket'], unique=False)

    op.create_table('samples',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('sample_id', sa.String(length=128), nullable=False),
    sa.Column('ts', sa.Float(), nullable=True),
    sa.Column('received', sa.Float(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.Integer(), nullable=False),
    sa.Column('ext', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('label', sa.String(length=128), nullable=True, comment='set by a person or a teacher model (issue 16)'),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('device', 'sample_id', name=op.f('pk_samples'))
    )
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.create_index('ix_samples_received', ['received'], unique=False)

    op.create_table('update_history',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=True),
    sa.Column('serving', sa.String(length=200), nullable=True),
    sa.Column('target_version', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('code', sa.String(length=64), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('device', 'at', 'state', name=op.f('pk_update_history'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False, comment='scrypt$n$r$p$salt$hash'),
    sa.Column('role', sa.String(length=16), nullable=False, comment='viewer or operator'),
    sa.Column('created', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('name', name=op.f('uq_users_name'))
    )
    op.create_table('tokens',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='api (bearer token) or session (browser cookie)'),
    sa.Column('name', sa.String(length=128), nullable=True),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('csrf', sa.String(length=64), nullable=True, comment='session tokens: the form token every browser action must carry'),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('expires', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_tokens_token_hash'))
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('tokens')
    op.drop_table('users')
    op.drop_table('update_history')
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_index('ix_samples_received')

    op.drop_table('samples')
    with op.batch_alter_table('rollup_1m', schema=None) as batch_op:
        batch_op.drop_index('ix_rollup_1m_bucket')

    op.drop_table('rollup_1m')
    with op.batch_alter_table('rollup_1h', schema=None) as batch_op:
        batch_op.drop_index('ix_rollup_1h_bucket')

    op.drop_table('rollup_1h')
    op.drop_table('rejected')
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_index('ix_metrics_ts')
        batch_op.drop_index('ix_metrics_device_ts')

    op.drop_table('metrics')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_type_ts')
        batch_op.drop_index('ix_events_ts')
        batch_op.drop_index('ix_events_device_ts')

    op.drop_table('events')
    op.drop_table('devices')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_ts')

    op.drop_table('audit')
    # ### end Alembic commands ###
