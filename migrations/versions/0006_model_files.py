"""the bytes of each model's file, stored with the rows

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('model_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('model_files_pkey')),
    sa.UniqueConstraint('content_hash', name=op.f('model_files_content_hash_key'))
    )


def downgrade() -> None:
    op.drop_table('model_files')
