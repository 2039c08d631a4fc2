"""the vector index a user asked for: FAISS factory string, memory budget, target recall

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('index_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('index_type', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('max_memory', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('target_recall', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('index_state', schema=None) as batch_op:
        batch_op.drop_column('target_recall')
        batch_op.drop_column('max_memory')
        batch_op.drop_column('index_type')
