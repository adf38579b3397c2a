"""labels and re-training: sample_labels, retrain_runs, retrain_steps, dataset_snapshots

Revision ID: 0003_retrain
Revises: 0003_regdl
Create Date: 2026-12-01 22:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003_retrain'
down_revision: Union[str, Sequence[str], None] = '0003_regdl'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('sample_labels',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('sample_id', sa.String(length=128), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False, comment='person, import or teacher'),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=True, comment="teacher labels: the teacher model's probability"),
    sa.Column('boxes', sa.JSON(), nullable=True, comment='detection: [[class, x0, y0, x1, y1] normalised], or null'),
    sa.Column('by', sa.String(length=64), nullable=False, comment='user, import file or teacher model digest'),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device', 'sample_id', 'origin', name=op.f('pk_sample_labels'))
    )
    op.create_index('ix_sample_labels_at', 'sample_labels', ['at'], unique=False)
    op.create_table('retrain_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('parent', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False, comment='why it started: each trigger with its figures'),
    sa.Column('policy', sa.JSON(), nullable=False, comment='the retrain.yaml it runs under'),
    sa.Column('snapshot', sa.String(length=64), nullable=True, comment='dataset snapshot id (sha256)'),
    sa.Column('candidate', sa.String(length=64), nullable=True, comment='the version it registered'),
    sa.Column('rollout_id', sa.Integer(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True, comment='local training process (its own process group)'),
    sa.Column('worker', sa.String(length=128), nullable=True, comment='remote worker that claimed the training'),
    sa.Column('claimed', sa.Float(), nullable=True),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.Column('stage_started', sa.Float(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True, comment='why it failed or stopped'),
    sa.Column('gates', sa.JSON(), nullable=True, comment='every gate with its figures'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retrain_runs'))
    )
    op.create_index('ix_retrain_runs_state', 'retrain_runs', ['state'], unique=False)
    op.create_table('retrain_steps',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=24), nullable=False),
    sa.Column('to_state', sa.String(length=24), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['retrain_runs.id'], name=op.f('fk_retrain_steps_run_id_retrain_runs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retrain_steps'))
    )
    op.create_index('ix_retrain_steps_run', 'retrain_steps', ['run_id'], unique=False)
    op.create_table('dataset_snapshots',
    sa.Column('id', sa.String(length=64), nullable=False,
              comment='sha256 of the canonical sample ids, labels and base'),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('samples', sa.JSON(), nullable=False, comment='[[device, sample_id, label, origin, split]] sorted'),
    sa.Column('base', sa.JSON(), nullable=True, comment="the parent's training data reference: path and sha256"),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_snapshots'))
    )


def downgrade() -> None:
    op.drop_table('dataset_snapshots')
    op.drop_index('ix_retrain_steps_run', table_name='retrain_steps')
    op.drop_table('retrain_steps')
    op.drop_index('ix_retrain_runs_state', table_name='retrain_runs')
    op.drop_table('retrain_runs')
    op.drop_index('ix_sample_labels_at', table_name='sample_labels')
    op.drop_table('sample_labels')
