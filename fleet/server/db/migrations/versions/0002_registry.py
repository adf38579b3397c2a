"""model registry and rollouts: devices.desired_scope, model_versions, model_aliases, alias_history, rollouts, rollout_steps

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 20:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('desired_scope', sa.String(length=16), nullable=True,
                                      comment="device: it follows its own desired document; null: its groups'"))
    op.create_table('model_versions',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('package_id', sa.String(length=64), nullable=False),
    sa.Column('profile', sa.String(length=128), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('signer', sa.String(length=64), nullable=True, comment='signing key id'),
    sa.Column('registered_by', sa.String(length=64), nullable=False),
    sa.Column('registered', sa.Float(), nullable=False),
    sa.Column('parent', sa.String(length=64), nullable=True, comment='parent version of the same model'),
    sa.Column('lineage', sa.JSON(), nullable=False,
              comment='source, calibration/validation digests, recipe, tools, git'),
    sa.Column('meta', sa.JSON(), nullable=False, comment='the package-meta/1 chunk document devices download by'),
    sa.PrimaryKeyConstraint('name', 'version', name=op.f('pk_model_versions'))
    )
    op.create_table('model_aliases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=True, comment='device or group:NAME'),
    sa.Column('moved_by', sa.String(length=64), nullable=False),
    sa.Column('moved', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'alias', name=op.f('pk_model_aliases'))
    )
    op.create_table('alias_history',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('previous', sa.String(length=64), nullable=True),
    sa.Column('target', sa.String(length=200), nullable=True),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False, comment='promote, revert or move'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alias_history'))
    )
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        batch_op.create_index('ix_alias_history_name_alias', ['name', 'alias'], unique=False)
    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('from_version', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('canaries', sa.JSON(), nullable=False),
    sa.Column('waves', sa.JSON(), nullable=False, comment='list of device lists'),
    sa.Column('plan', sa.JSON(), nullable=False, comment='window, timeouts and thresholds'),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('acted', sa.Boolean(), nullable=False, comment="the current state's entry action was done"),
    sa.Column('resume_state', sa.String(length=16), nullable=True),
    sa.Column('stage_started', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollouts'))
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index('ix_rollouts_state', ['state'], unique=False)
    op.create_table('rollout_steps',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=False),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_steps_rollout_id_rollouts'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rollout_steps'))
    )
    with op.batch_alter_table('rollout_steps', schema=None) as batch_op:
        batch_op.create_index('ix_rollout_steps_rollout', ['rollout_id'], unique=False)


def downgrade() -> None:
    op.drop_table('rollout_steps')
    op.drop_table('rollouts')
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        batch_op.drop_index('ix_alias_history_name_alias')
    op.drop_table('alias_history')
    op.drop_table('model_aliases')
    op.drop_table('model_versions')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('desired_scope')
