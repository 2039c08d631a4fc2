"""file identity of images; an id of the database

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
import uuid
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('file_id', sa.String(length=48), nullable=True))
        batch_op.create_index(batch_op.f('ix_images_file_id'), ['file_id'], unique=False)
    with op.batch_alter_table('index_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('database_id', sa.String(length=32), nullable=True))
    op.execute(sa.text("UPDATE index_state SET database_id = :id").bindparams(id=uuid.uuid4().hex))
    with op.batch_alter_table('index_state', schema=None) as batch_op:
        batch_op.alter_column('database_id', existing_type=sa.String(length=32), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('index_state', schema=None) as batch_op:
        batch_op.drop_column('database_id')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_file_id'))
        batch_op.drop_column('file_id')
