"""Location lookups, primary-buffer failover, the operation-location matrix and pool names."""

from __future__ import annotations

import pytest

from ccat_dagster.cli.locations import format_locations_table
from ccat_dagster.lifecycle.common.locations import (
    LocationError,
    describe_locations,
    get_primary_buffer_for_site,
    get_sites_with_source_locations,
    is_lta_site,
    is_source_site,
    lta_sites,
    resolve_location,
)
from ccat_dagster.lifecycle.common.names import pool_name
from ccat_dagster.lifecycle.common.operations import (
    QUEUE_OPERATIONS_BY_LOCATION_TYPE,
    OperationType,
)
from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_dagster.simulate import demo_topology
from ccat_ops_db.models import LocationType, Site
from ccat_ops_db.topology import apply_topology


@pytest.fixture
def topology(tmp_path) -> dict:
    return demo_topology(tmp_path / "home")


@pytest.fixture
def applied(session, topology) -> dict:
    apply_topology(session, topology)
    session.commit()
    return topology


def _site(session, short_name: str) -> Site:
    return session.query(Site).filter_by(short_name=short_name).one()


def _cologne_buffers(topology: dict, *, primary_active: bool) -> dict:
    cologne = next(s for s in topology["sites"] if s["short_name"] == "cologne")
    cologne["locations"] = [loc for loc in cologne["locations"] if loc["type"] != "BUFFER"]
    for name, priority, active in [
        ("buffer_primary", 1, primary_active),
        ("buffer_secondary", 2, True),
        ("buffer_backup", 3, False),
    ]:
        storage = {"kind": "disk", "path": f"/tmp/ccat-test/{name}"}
        cologne["locations"].append(
            {
                "name": name,
                "type": "BUFFER",
                "priority": priority,
                "active": active,
                "storage": storage,
            }
        )
    return topology


def test_primary_buffer_is_the_active_one_with_lowest_priority_and_fails_over(session, topology):
    apply_topology(session, _cologne_buffers(topology, primary_active=True))
    session.commit()
    cologne = _site(session, "cologne")
    assert get_primary_buffer_for_site(session, cologne).name == "buffer_primary"

    apply_topology(session, _cologne_buffers(topology, primary_active=False))
    session.commit()
    assert get_primary_buffer_for_site(session, cologne).name == "buffer_secondary"


def test_site_without_active_buffer_has_no_primary_buffer(session, applied):
    # The LTA-only view: a site whose buffers are all inactive yields None, never an inactive one.
    us = next(s for s in applied["sites"] if s["short_name"] == "us")
    for loc in us["locations"]:
        if loc["type"] == "BUFFER":
            loc["active"] = False
    apply_topology(session, applied)
    session.commit()
    assert get_primary_buffer_for_site(session, _site(session, "us")) is None
    assert get_primary_buffer_for_site(session, _site(session, "ccat")).name == "telescope_buffer"


def test_source_and_lta_sites(session, applied):
    assert [s.short_name for s in get_sites_with_source_locations(session)] == ["ccat"]
    assert [s.short_name for s in lta_sites(session)] == ["cologne", "us"]
    ccat, cologne = _site(session, "ccat"), _site(session, "cologne")
    assert is_source_site(ccat)
    assert not is_lta_site(ccat)
    assert is_lta_site(cologne)
    assert not is_source_site(cologne)


def test_deactivated_lta_site_is_no_longer_an_lta_site(session, applied):
    us = next(s for s in applied["sites"] if s["short_name"] == "us")
    next(loc for loc in us["locations"] if loc["name"] == "lta")["active"] = False
    apply_topology(session, applied)
    session.commit()
    assert [s.short_name for s in lta_sites(session)] == ["cologne"]
    assert not is_lta_site(_site(session, "us"))


def test_resolve_location_by_qualified_or_unique_name(session, applied):
    assert resolve_location(session, "cologne/buffer").site.short_name == "cologne"
    located = resolve_location(session, "primecam_raw_data")
    assert (located.site.short_name, located.name) == ("ccat", "primecam_raw_data")


def test_resolve_location_ambiguous_name_lists_candidates(session, applied):
    with pytest.raises(LocationError) as excinfo:
        resolve_location(session, "buffer")
    message = str(excinfo.value)
    assert "ambiguous" in message
    assert "cologne/buffer" in message
    assert "us/buffer" in message
    assert "site/name" in message


def test_resolve_location_unknown_name_lists_known_ones(session, applied):
    with pytest.raises(LocationError) as excinfo:
        resolve_location(session, "cologne/tape")
    message = str(excinfo.value)
    assert "unknown location 'cologne/tape'" in message
    assert "cologne/lta" in message


def test_operation_location_matrix_is_the_documented_matrix():
    o = OperationType
    assert QUEUE_OPERATIONS_BY_LOCATION_TYPE == {
        LocationType.SOURCE: (o.RAW_DATA_PACKAGE_CREATION, o.DELETION, o.MONITORING),
        LocationType.BUFFER: (
            o.DATA_TRANSFER_PACKAGE_CREATION,
            o.DATA_TRANSFER,
            o.DATA_TRANSFER_UNPACKING,
            o.DELETION,
            o.MONITORING,
        ),
        LocationType.LONG_TERM_ARCHIVE: (o.LONG_TERM_ARCHIVE_TRANSFER, o.MONITORING),
        LocationType.PROCESSING: (o.STAGING, o.DELETION, o.MONITORING),
    }
    assert o.RAW_DATA_PACKAGE_CREATION.value == "raw_data_package_creation"


def test_pool_names_follow_the_queue_naming_convention(session, applied):
    buffer = resolve_location(session, "cologne/buffer")
    assert pool_name(buffer, OperationType.DATA_TRANSFER) == "cologne_buffer_data_transfer"
    lta = resolve_location(session, "cologne/lta")
    assert (
        pool_name(lta, OperationType.LONG_TERM_ARCHIVE_TRANSFER)
        == "cologne_lta_long_term_archive_transfer"
    )
    with pytest.raises(ValueError, match="not valid at cologne/lta"):
        pool_name(lta, OperationType.DELETION)  # nothing is ever deleted from an LTA


def test_list_locations_shows_every_location_with_operations_and_pools(session, applied):
    rows = describe_locations(session)
    assert len(rows) == 7
    table = format_locations_table(rows)
    assert table.splitlines()[0].split() == [
        "SITE",
        "LOCATION",
        "TYPE",
        "STORAGE",
        "PRIORITY",
        "ACTIVE",
    ]
    assert "ccat_primecam_raw_data_raw_data_package_creation" in table
    assert "cologne_buffer_data_transfer_unpacking" in table
    assert "us_lta_long_term_archive_transfer" in table
    assert "us_lta_deletion" not in table
    lta_row = next(r for r in rows if (r.site, r.location) == ("cologne", "lta"))
    # an archive's monitoring pool is the re-verification's (the scrub); nothing lists a pool no
    # op uses
    assert lta_row.pools == (
        ("long_term_archive_transfer", "cologne_lta_long_term_archive_transfer"),
        ("monitoring", "cologne_lta_monitoring"),
    )


def test_policy_defaults_without_rows_and_overrides_from_topology(session, topology):
    assert get_policy(session) == Policy()
    assert Policy().buffer_thresholds_percent.emergency == 95
    topology["policy"] = {"max_critical_transfers": 2, "data_transfer_package_max_wait_minutes": 5}
    apply_topology(session, topology)
    session.commit()
    policy = get_policy(session)
    assert policy.max_critical_transfers == 2
    assert policy.data_transfer_package_max_wait_minutes == 5
    assert policy.max_normal_transfers == 5
