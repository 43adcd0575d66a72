"""The consistency audit reads the catalogue one slice of keys at a time; that read must find
the slice through an index in code point order (``ix_*_key``, migration 0006: "C" collation on
PostgreSQL), not by walking every copy at the location, so an audit run costs what its slice
costs however many copies the location holds. Checked on each backend's own query plan for a
location of a few thousand raw files and a narrow key range, after ANALYZE."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from ccat_dagster.lifecycle.audit.catalogue import copies_in_range
from ccat_dagster_tests import factories as f

PACKAGES, FILES_PER_PACKAGE = 1500, 2


def _plans(session, call) -> list[str]:
    """The query plan of every SELECT ``call`` sends, as one text each."""
    statements: list[tuple[str, object]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    engine = session.get_bind()
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    explain = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    conn = session.connection()
    return [
        "\n".join(str(row[-1]) for row in conn.exec_driver_sql(f"{explain} {sql}", params))
        for sql, params in statements
    ]


@pytest.mark.slow
def test_a_slice_of_the_audit_reads_the_catalogue_through_the_key_order_index(session, tmp_path):
    topo = f.make_topology(session, tmp_path)
    packages = [
        f.file_raw_data_package(topo, f"p{i:04d}", n_files=FILES_PER_PACKAGE, write=False)
        for i in range(PACKAGES)
    ]
    session.commit()
    session.execute(sa.text("ANALYZE"))
    session.commit()

    # a slice of one package's raw files at the SOURCE, and of a few package tars at the buffer
    middle = packages[PACKAGES // 2]
    found: list = []
    files = _plans(
        session,
        lambda: found.extend(
            copies_in_range(session, topo.source, f"raw/{middle.name}/", f"raw/{middle.name}/~")
        ),
    )
    assert len(found) == FILES_PER_PACKAGE
    tars = _plans(
        session,
        lambda: copies_in_range(session, topo.source_buffer, "packages/p0700", "packages/p0703~"),
    )
    # copies_in_range asks once per copy type: raw files, package tars (, bundles: none here)
    assert "ix_raw_data_file_key" in files[0], files[0]
    assert "ix_raw_data_package_key" in tars[1], tars[1]
