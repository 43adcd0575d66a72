"""source ingest: the topology's ingest mapping of a SOURCE location, and its findings

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
    op.create_table(
        "ingest_finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("data_location_id", sa.Integer(), nullable=False),
        sa.Column("relative_path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["data_location_id"],
            ["data_location.id"],
            name=op.f("fk_ingest_finding_data_location_id_data_location"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_finding")),
        sa.UniqueConstraint(
            "data_location_id",
            "relative_path",
            name=op.f("uq_ingest_finding_data_location_id_relative_path"),
        ),
    )
    with op.batch_alter_table("ingest_finding", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ingest_finding_data_location_id"), ["data_location_id"], unique=False
        )


def downgrade() -> None:
    op.drop_table("ingest_finding")
    with op.batch_alter_table("data_location", schema=None) as batch_op:
        batch_op.drop_column("ingest")
