"""The deletion matrix for bundles that went through a relay site (a RELAY route): the copies at
the source buffer and at the relay site's buffer go once the destination unpacked the data, not
before, and a pending onward hop keeps them. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from ccat_dagster.lifecycle.deletion import rules as d
from ccat_dagster_tests import factories as f
from ccat_dagster_tests.test_lifecycle.test_deletion_rules import blocked_reasons, copy_at
from ccat_ops_db.models import LocationType, Site, Status


@pytest.fixture
def relayed(session, topo):
    """A bundle of the telescope that arrived at the buffer of ``hub`` (a relay site with only a
    BUFFER: nothing unpacks it there)."""
    hub = Site(name="Relay hub", short_name="hub")
    session.add(hub)
    topo.sites["hub"] = hub
    f._add_location(topo, hub, "buffer", LocationType.BUFFER)
    session.flush()
    dtp = f.bundle(topo, [f.file_raw_data_package(topo)])
    f.transfer(topo, dtp, to_site="hub", route_kind="relay", unpack_status=Status.PENDING)
    session.commit()
    return dtp


def _deletable(session, rule, location) -> bool:
    return bool(d.find_deletable(session, rule, location=location))


def test_relayed_bundle_is_kept_at_source_and_relay_until_unpacked_at_the_destination(
    session, topo, relayed
):
    source, hub = topo.source_buffer, topo.buffer("hub")
    assert not _deletable(session, d.RULE_DTP_SOURCE_BUFFER, source)
    assert not _deletable(session, d.RULE_DTP_RELAY_BUFFER, hub)
    assert (
        "no COMPLETED, unpacked DataTransfer to an LTA site"
        in blocked_reasons(session, d.RULE_DTP_RELAY_BUFFER, copy_at(session, hub, dtp=relayed))[0]
    )

    onward = f.transfer(
        topo,
        relayed,
        to_site="cologne",
        origin=hub,
        status=Status.IN_PROGRESS,
        unpack_status=Status.PENDING,
    )
    session.commit()
    assert not _deletable(session, d.RULE_DTP_SOURCE_BUFFER, source)
    assert not _deletable(session, d.RULE_DTP_RELAY_BUFFER, hub)

    onward.status = Status.COMPLETED
    session.commit()
    assert not _deletable(session, d.RULE_DTP_RELAY_BUFFER, hub), "arrived, not yet unpacked"

    onward.unpack_status = Status.COMPLETED
    session.commit()
    assert _deletable(session, d.RULE_DTP_SOURCE_BUFFER, source)
    assert _deletable(session, d.RULE_DTP_RELAY_BUFFER, hub)
    # the relay rule looks only at relay sites, the source rule only at source sites
    assert not _deletable(session, d.RULE_DTP_RELAY_BUFFER, source)
    assert not _deletable(session, d.RULE_DTP_SOURCE_BUFFER, hub)


def test_relay_buffer_copy_is_kept_while_a_transfer_from_it_is_unfinished(session, topo, relayed):
    hub = topo.buffer("hub")
    f.transfer(topo, relayed, to_site="cologne", origin=hub)
    session.commit()
    assert _deletable(session, d.RULE_DTP_RELAY_BUFFER, hub)
    # a second hop from the relay (e.g. to another archive) that failed keeps the copy
    us = Site(name="US archive", short_name="us")
    session.add(us)
    f._add_location(topo, us, "buffer", LocationType.BUFFER)
    f._add_location(topo, us, "lta", LocationType.LONG_TERM_ARCHIVE)
    session.flush()
    f.transfer(topo, relayed, to_site="us", origin=hub, status=Status.FAILED)
    session.commit()
    assert not _deletable(session, d.RULE_DTP_RELAY_BUFFER, hub)
    assert (
        "not yet COMPLETED"
        in blocked_reasons(session, d.RULE_DTP_RELAY_BUFFER, copy_at(session, hub, dtp=relayed))[0]
    )
