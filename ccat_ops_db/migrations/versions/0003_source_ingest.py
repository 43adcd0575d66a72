"""source ingest: the topology's ingest mapping of a SOURCE location

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 02:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("data_location", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ingest", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("data_location", schema=None) as batch_op:
        batch_op.drop_column("ingest")
