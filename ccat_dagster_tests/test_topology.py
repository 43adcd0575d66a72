"""Topology YAML: full validation before any write, idempotent apply, deactivation not deletion."""

from __future__ import annotations

import copy
from dataclasses import asdict, fields

import pytest
from sqlalchemy import event, func, select

from ccat_dagster.lifecycle.common.policy import Policy, get_policy
from ccat_dagster.simulate import default_topology, demo_topology
from ccat_ops_db.models import (
    DataLocation,
    DiskDataLocation,
    LocationType,
    RawDataFile,
    S3DataLocation,
    Site,
)
from ccat_ops_db.topology import (
    POLICY_DEFAULTS,
    TopologyError,
    apply_topology,
    dump_topology,
    load_topology,
    parse_topology,
    show_topology,
)


@pytest.fixture
def topology(tmp_path) -> dict:
    return demo_topology(tmp_path / "home")


def _location(topology: dict, site: str, name: str) -> dict:
    for s in topology["sites"]:
        if s["short_name"] == site:
            for loc in s["locations"]:
                if loc["name"] == name:
                    return loc
    raise KeyError(f"{site}/{name}")


def _site(topology: dict, short_name: str) -> dict:
    return next(s for s in topology["sites"] if s["short_name"] == short_name)


def _apply(session, topology):
    summary = apply_topology(session, topology)
    session.commit()
    return summary


def test_apply_creates_sites_locations_and_policy(session, topology):
    topology["policy"] = {"max_normal_transfers": 7, "buffer_thresholds_percent": {"warning": 60}}
    summary = _apply(session, topology)

    sites = {s.short_name: s for s in session.scalars(select(Site))}
    assert set(sites) == {"ccat", "cologne", "us"}
    locations = {
        (loc.site.short_name, loc.name): loc for loc in session.scalars(select(DataLocation))
    }
    assert len(locations) == 7
    source = locations[("ccat", "primecam_raw_data")]
    assert isinstance(source, DiskDataLocation)
    assert source.location_type is LocationType.SOURCE
    assert source.path == _location(topology, "ccat", "primecam_raw_data")["storage"]["path"]
    assert locations[("cologne", "lta")].location_type is LocationType.LONG_TERM_ARCHIVE
    assert len(summary.created) == 10  # 3 sites + 7 locations

    policy = get_policy(session)
    assert policy.max_normal_transfers == 7
    assert policy.buffer_thresholds_percent.warning == 60
    assert policy.buffer_thresholds_percent.critical == 85  # completed with the default
    assert policy.max_retries == 3


def test_default_topology_file_is_valid_and_has_s3_and_remote_disk(session):
    summary = _apply(session, default_topology())
    assert summary.changed
    lta = session.scalars(
        select(DataLocation)
        .join(Site)
        .where(Site.short_name == "cologne", DataLocation.name == "lta")
    ).one()
    assert isinstance(lta, S3DataLocation)
    assert lta.bucket == "ccat-lta"
    buffer = session.scalars(
        select(DiskDataLocation).join(Site).where(Site.short_name == "us")
    ).first()
    assert buffer.host
    assert buffer.user == "ccat"


def test_reapplying_the_same_topology_writes_nothing(session, engine, topology):
    _apply(session, topology)
    session.expire_all()
    before = {loc.id: loc.updated_at for loc in session.scalars(select(DataLocation))}
    session.expire_all()

    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 (statement is arg 2)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        summary = _apply(session, copy.deepcopy(topology))
    finally:
        event.remove(engine, "before_cursor_execute", listener)

    assert not summary.changed
    writes = [
        s for s in statements if s.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))
    ]
    assert writes == []
    session.expire_all()
    after = {loc.id: loc.updated_at for loc in session.scalars(select(DataLocation))}
    assert after == before


def test_changed_priority_active_and_path_are_updated(session, topology, tmp_path):
    _apply(session, topology)
    _location(topology, "cologne", "buffer")["priority"] = 2
    _location(topology, "us", "lta")["active"] = False
    new_path = str(tmp_path / "elsewhere")
    _location(topology, "ccat", "telescope_buffer")["storage"]["path"] = new_path
    summary = _apply(session, topology)

    assert len(summary.updated) == 3
    assert any("priority 1 -> 2" in u for u in summary.updated)
    session.expire_all()
    by_name = {
        (loc.site.short_name, loc.name): loc for loc in session.scalars(select(DataLocation))
    }
    assert by_name[("cologne", "buffer")].priority == 2
    assert by_name[("us", "lta")].active is False
    assert by_name[("ccat", "telescope_buffer")].path == new_path


def test_location_missing_from_file_is_deactivated_not_deleted(session, topology):
    _apply(session, topology)
    cologne = _site(topology, "cologne")
    cologne["locations"] = [
        loc for loc in cologne["locations"] if loc["name"] != "ramses_processing"
    ]
    summary = _apply(session, topology)

    assert summary.deactivated == ["cologne/ramses_processing (not in the topology)"]
    session.expire_all()
    processing = session.scalars(
        select(DataLocation).where(DataLocation.name == "ramses_processing")
    ).one()
    assert processing.active is False
    assert session.scalar(select(func.count()).select_from(DataLocation)) == 7


def test_site_missing_from_file_is_deactivated_with_its_locations(session, topology):
    _apply(session, topology)
    topology["sites"] = [s for s in topology["sites"] if s["short_name"] != "us"]
    _apply(session, topology)
    session.expire_all()
    us = session.scalars(select(Site).where(Site.short_name == "us")).one()
    assert us.active is False
    assert [loc.active for loc in us.locations] == [False, False]
    # What show prints can be applied again without changes (inactive site included).
    assert not _apply(session, show_topology(session)).changed


def test_show_round_trips_through_yaml(session, topology, tmp_path):
    _apply(session, topology)
    shown = show_topology(session)
    path = tmp_path / "shown.yaml"
    path.write_text(dump_topology(shown))
    assert not _apply(session, path).changed
    assert [s["short_name"] for s in shown["sites"]] == ["ccat", "cologne", "us"]


def test_ingest_key_is_stored_shown_and_changed(session, topology, tmp_path):
    _location(topology, "ccat", "primecam_raw_data")["ingest"] = INGEST
    _apply(session, topology)
    [source] = [
        loc
        for site in show_topology(session)["sites"]
        for loc in site["locations"]
        if loc["name"] == "primecam_raw_data"
    ]
    assert source["ingest"] == INGEST | {"settle_seconds": 60}
    path = tmp_path / "shown.yaml"
    path.write_text(dump_topology(show_topology(session)))
    assert not _apply(session, path).changed

    _location(topology, "ccat", "primecam_raw_data")["ingest"] = {
        "pattern": "{obs_unit}/{instrument_module}/**",
        "ready": "settled",
        "settle_seconds": 30,
    }
    assert any("ingest" in line for line in _apply(session, topology).updated)
    del _location(topology, "ccat", "primecam_raw_data")["ingest"]
    _apply(session, topology)
    assert all(
        "ingest" not in loc for s in show_topology(session)["sites"] for loc in s["locations"]
    )


def test_removed_policy_key_falls_back_to_default(session, topology):
    topology["policy"] = {"max_retries": 9}
    _apply(session, topology)
    assert get_policy(session).max_retries == 9
    del topology["policy"]
    summary = _apply(session, topology)
    assert summary.policy == ["max_retries reset to default 3"]
    assert get_policy(session).max_retries == 3


def test_policy_dataclass_mirrors_topology_policy_keys():
    defaults = asdict(Policy())
    assert {f.name for f in fields(Policy)} == set(POLICY_DEFAULTS)
    assert defaults == POLICY_DEFAULTS


# --------------------------------------------------------------------------- invalid files


INGEST = {
    "pattern": "{obs_unit}/{instrument_module}/*",
    "ready": "marker",
    "marker": "{obs_unit}/{instrument_module}/.complete",
}


def _set(site: str, name: str, key: str, value):
    def mutate(t):
        _location(t, site, name)[key] = value

    return mutate


def _set_storage(site: str, name: str, key: str, value):
    def mutate(t):
        storage = _location(t, site, name)["storage"]
        if value is None:
            storage.pop(key, None)
        else:
            storage[key] = value

    return mutate


def _set_site(short_name: str, key: str, value):
    def mutate(t):
        _site(t, short_name)[key] = value

    return mutate


def _duplicate_site(t):
    t["sites"].append(copy.deepcopy(_site(t, "us")) | {"name": "Other"})


def _duplicate_location(t):
    site = _site(t, "cologne")
    site["locations"].append(copy.deepcopy(site["locations"][1]))


def _drop_source_buffer(t):
    _location(t, "ccat", "telescope_buffer")["active"] = False


def _drop_all_ltas(t):
    for site in t["sites"]:
        site["locations"] = [l for l in site["locations"] if l["type"] != "LONG_TERM_ARCHIVE"]  # noqa: E741


def _thresholds(**values):
    def mutate(t):
        t["policy"] = {"buffer_thresholds_percent": values}

    return mutate


def _s3_without_bucket(t):
    _location(t, "cologne", "lta")["storage"] = {"kind": "s3", "endpoint_url": "http://x"}


INVALID_CASES = {
    "unknown location type": (
        _set("cologne", "lta", "type", "ARCHIVE"),
        [
            "sites[1].locations[1] (cologne/lta)",
            "unknown location type 'ARCHIVE'",
            "LONG_TERM_ARCHIVE",
        ],
    ),
    "unknown storage kind": (
        _set_storage("cologne", "lta", "kind", "ftp"),
        ["sites[1].locations[1] (cologne/lta)", "unknown storage kind 'ftp'", "disk, s3, tape"],
    ),
    "duplicate site short_name": (_duplicate_site, ["sites[3] (us)", "duplicate site short_name"]),
    "duplicate location name": (
        _duplicate_location,
        ["sites[1].locations[3] (cologne/lta)", "duplicate location name 'lta'"],
    ),
    "disk without path": (
        _set_storage("us", "lta", "path", None),
        ["sites[2].locations[1] (us/lta)", "disk storage needs a path"],
    ),
    "s3 without bucket": (
        _s3_without_bucket,
        ["sites[1].locations[1] (cologne/lta)", "s3 storage needs a bucket"],
    ),
    "source site without active buffer": (
        _drop_source_buffer,
        ["sites[0] (ccat)", "SOURCE location but no active BUFFER"],
    ),
    "no long-term archive": (_drop_all_ltas, ["no active LONG_TERM_ARCHIVE"]),
    "thresholds out of order": (
        _thresholds(warning=90, critical=85, emergency=95),
        ["policy.buffer_thresholds_percent", "0 < warning < critical < emergency <= 100"],
    ),
    "threshold above 100": (
        _thresholds(emergency=101),
        ["policy.buffer_thresholds_percent", "emergency=101"],
    ),
    "unknown location key": (
        _set("us", "buffer", "priorty", 2),
        ["sites[2].locations[0] (us/buffer)", "unknown key 'priorty'", "did you mean 'priority'"],
    ),
    "unknown site key": (_set_site("us", "locatoins", []), ["sites[2] (us)", "'locatoins'"]),
    "unsafe location name": (
        _set("cologne", "buffer", "name", "Cologne-Buffer"),
        [
            "sites[1].locations[0] (cologne/Cologne-Buffer)",
            "not a safe identifier",
            "cologne_buffer",
        ],
    ),
    "unsafe site short_name": (
        _set_site("us", "short_name", "US"),
        ["sites[2] (US)", "not a safe identifier"],
    ),
    "source not on disk": (
        _set("ccat", "primecam_raw_data", "storage", {"kind": "s3", "bucket": "raw"}),
        ["sites[0].locations[0] (ccat/primecam_raw_data)", "SOURCE location must be on disk"],
    ),
    "relative disk path": (
        _set_storage("us", "lta", "path", "archive/lta"),
        ["sites[2].locations[1] (us/lta)", "must be absolute"],
    ),
    "ingest on a buffer": (
        _set("us", "buffer", "ingest", {"pattern": "{obs_unit}/{instrument_module}/*"}),
        ["sites[2].locations[0] (us/buffer)", "ingest is set on a BUFFER location"],
    ),
    "ingest pattern without the module": (
        _set("ccat", "primecam_raw_data", "ingest", {"pattern": "{obs_unit}/*"}),
        ["sites[0].locations[0] (ccat/primecam_raw_data)", "must name {instrument_module}"],
    ),
    "ingest marker missing": (
        _set("ccat", "primecam_raw_data", "ingest", {**INGEST, "marker": None}),
        ["(ccat/primecam_raw_data)", "ingest.ready is marker but ingest.marker is missing"],
    ),
    "ingest pattern leaving the root": (
        _set("ccat", "primecam_raw_data", "ingest", {**INGEST, "pattern": "../{obs_unit}/x"}),
        ["(ccat/primecam_raw_data)", "'..' path component"],
    ),
    "unknown ingest key": (
        _set("ccat", "primecam_raw_data", "ingest", {**INGEST, "patern": "x"}),
        ["(ccat/primecam_raw_data)", "unknown key 'patern'", "did you mean 'pattern'"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID_CASES))
def test_invalid_topology_is_rejected_naming_the_entry_and_database_unchanged(
    session, topology, case
):
    _apply(session, topology)
    before = show_topology(session)
    mutate, expected = INVALID_CASES[case]
    bad = copy.deepcopy(topology)
    _location(bad, "ccat", "primecam_raw_data")["priority"] = 5  # a valid change, not applied
    mutate(bad)

    with pytest.raises(TopologyError) as excinfo:
        apply_topology(session, bad)
    session.rollback()

    message = str(excinfo.value)
    for text in expected:
        assert text in message
    assert "nothing was changed" in message
    session.expire_all()
    assert show_topology(session) == before


def test_all_problems_are_reported_together():
    bad = default_topology()
    _location(bad, "cologne", "lta")["type"] = "ARCHIVE"
    _location(bad, "us", "buffer")["storage"]["kind"] = "nfs"
    bad["policy"]["max_retires"] = 3
    with pytest.raises(TopologyError) as excinfo:
        parse_topology(bad)
    assert len(excinfo.value.errors) == 3
    message = str(excinfo.value)
    assert "cologne/lta" in message
    assert "us/buffer" in message
    assert "max_retires" in message


def test_changing_storage_kind_is_refused_with_advice(session, topology):
    _apply(session, topology)
    _location(topology, "cologne", "lta")["storage"] = {"kind": "s3", "bucket": "new-bucket"}
    with pytest.raises(TopologyError) as excinfo:
        apply_topology(session, topology)
    session.rollback()
    message = str(excinfo.value)
    assert "sites[1].locations[1] (cologne/lta)" in message
    assert "storage kind cannot change from disk to s3" in message
    assert "add a new location" in message
    assert "active: false" in message
    session.expire_all()
    lta = session.scalars(
        select(DataLocation)
        .join(Site)
        .where(Site.short_name == "cologne", DataLocation.name == "lta")
    ).one()
    assert isinstance(lta, DiskDataLocation)


def test_location_type_may_change_only_while_the_location_holds_no_data(
    session, topology, tmp_path
):
    _apply(session, topology)
    _location(topology, "cologne", "ramses_processing")["type"] = "BUFFER"
    assert _apply(session, topology).updated  # empty location: a typo may be fixed

    from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files

    root = _location(topology, "ccat", "primecam_raw_data")["storage"]["path"]
    (tmp_path / "home" / "ccat" / "primecam_raw_data" / "f.dat").write_bytes(b"x")
    register_raw_data_files(session, "primecam_raw_data", "obs_1", "mod", [f"{root}/f.dat"])
    session.commit()
    _location(topology, "ccat", "primecam_raw_data")["type"] = "BUFFER"
    with pytest.raises(TopologyError, match="already holds data"):
        apply_topology(session, topology)
    session.rollback()
    assert session.scalar(select(func.count()).select_from(RawDataFile)) == 1


def test_unreadable_and_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(bad)
