"""device package credentials and grants; alias moves recorded as intent then outcome; per-model locks

Revision ID: 0003_regdl
Revises: 0002
Create Date: 2026-12-01 22:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003_regdl'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('device_credentials',
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('device', name=op.f('pk_device_credentials')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_device_credentials_token_hash'))
    )
    op.create_table('package_grants',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False, comment='device id or group:NAME'),
    sa.Column('granted', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('sha256', 'target', name=op.f('pk_package_grants'))
    )
    op.create_table('model_locks',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('since', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_model_locks'))
    )
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state', sa.String(length=16), nullable=True,
                                      comment='publishing, published, moved (no target) or failed; null: before 0003'))
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('alias_history', schema=None) as batch_op:
        batch_op.drop_column('error')
        batch_op.drop_column('state')
    op.drop_table('model_locks')
    op.drop_table('package_grants')
    op.drop_table('device_credentials')
