"""decisions that two contents are not duplicates

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('distinct_pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('first_hash', sa.String(length=64), nullable=False),
    sa.Column('second_hash', sa.String(length=64), nullable=False),
    sa.Column('decided_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('first_hash < second_hash', name='ck_distinct_pairs_ordered'),
    sa.PrimaryKeyConstraint('id', name=op.f('distinct_pairs_pkey')),
    sa.UniqueConstraint('first_hash', 'second_hash', name=op.f('distinct_pairs_first_hash_second_hash_key'))
    )


def downgrade() -> None:
    op.drop_table('distinct_pairs')
