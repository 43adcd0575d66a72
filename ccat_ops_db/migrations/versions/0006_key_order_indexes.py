"""key order indexes: the consistency audit reads one slice of keys at a time

An index on each ``relative_path`` the audit ranges over (raw files, package tars, bundles), in
code point order: under the "C" collation on PostgreSQL, plain on SQLite. Without them a slice's
catalogue read scanned every copy at the location, so an audit run cost grew with the location
instead of with its slice.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 02:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index name, table)
KEY_INDEXES = (
    ("ix_raw_data_file_key", "raw_data_file"),
    ("ix_raw_data_package_key", "raw_data_package"),
    ("ix_data_transfer_package_key", "data_transfer_package"),
)


# the column under the "C" collation on PostgreSQL (models.KEY_ORDER_POSTGRESQL_OPS)
POSTGRESQL_OPS = {"relative_path": 'COLLATE "C"'}


def upgrade() -> None:
    for name, table in KEY_INDEXES:
        op.create_index(name, table, ["relative_path"], postgresql_ops=POSTGRESQL_OPS)


def downgrade() -> None:
    for name, table in KEY_INDEXES:
        op.drop_index(name, table_name=table)
