"""consistency audit: findings (dark and lost objects) and a cursor per location

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=32)


def upgrade() -> None:
    op.create_table(
        "audit_finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("data_location_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=2048), nullable=False),
        sa.Column("kind", _enum("auditfindingkind", "lost", "dark"), nullable=False),
        sa.Column(
            "state",
            _enum(
                "auditfindingstate", "open", "acted", "quarantined", "released", "purged", "gone"
            ),
            nullable=False,
        ),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("expected_size", sa.BigInteger(), nullable=True),
        sa.Column("physical_copy_id", sa.Integer(), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("quarantine_key", sa.String(length=2100), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["data_location_id"],
            ["data_location.id"],
            name=op.f("fk_audit_finding_data_location_id_data_location"),
        ),
        sa.ForeignKeyConstraint(
            ["physical_copy_id"],
            ["physical_copy.id"],
            name=op.f("fk_audit_finding_physical_copy_id_physical_copy"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_finding")),
    )
    with op.batch_alter_table("audit_finding", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_finding_location_state", ["data_location_id", "state"], unique=False
        )
        batch_op.create_index(
            "ix_audit_finding_location_key", ["data_location_id", "key"], unique=False
        )
    op.create_table(
        "audit_cursor",
        sa.Column("data_location_id", sa.Integer(), nullable=False),
        sa.Column("last_key", sa.String(length=2048), nullable=False),
        sa.Column("pass_number", sa.Integer(), nullable=False),
        sa.Column("pass_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pass_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("slice_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("slice_objects", sa.Integer(), nullable=False),
        sa.Column("slice_dark", sa.Integer(), nullable=False),
        sa.Column("slice_lost", sa.Integer(), nullable=False),
        sa.Column("anomaly", sa.Text(), nullable=True),
        sa.Column("anomaly_since", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["data_location_id"],
            ["data_location.id"],
            name=op.f("fk_audit_cursor_data_location_id_data_location"),
        ),
        sa.PrimaryKeyConstraint("data_location_id", name=op.f("pk_audit_cursor")),
    )


def downgrade() -> None:
    op.drop_table("audit_cursor")
    with op.batch_alter_table("audit_finding", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_finding_location_key")
        batch_op.drop_index("ix_audit_finding_location_state")
    op.drop_table("audit_finding")
