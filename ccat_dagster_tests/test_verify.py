"""``ccat verify`` on a real pipeline (real_topology on local disks, both ops-DB backends; one
test on PostgreSQL with the moto S3 archive and the telescope buffer over a real sshd): no
violation in any healthy state, and each planted fault reported with its kind, and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance
from sqlalchemy import delete, select, update
from sqlalchemy import inspect as sa_inspect
from typer.testing import CliRunner

from ccat_dagster.cli import app
from ccat_dagster.lifecycle.deletion.rules import RULE_RDF_DELETION_POSSIBLE, RULE_RDP_SOURCE_BUFFER
from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.lifecycle.integrity import verify_catalogue
from ccat_dagster.simulate import simulate_instrument
from ccat_dagster.storage.factory import StorageRegistry
from ccat_dagster_tests.dagster_instance import instance_for_test
from ccat_dagster_tests.pipeline_support import drive, real_topology, setup_pipeline
from ccat_ops_db.models import (
    AuditLog,
    DataLocation,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataPackage,
    Site,
)
from ccat_ops_db.session import session_scope

S = PhysicalCopyStatus


@dataclass
class Pipeline:
    url: str
    root: Path
    instance: DagsterInstance

    def drive(self, **kwargs) -> None:
        report = drive(self.url, self.instance, **kwargs)
        assert not report.failed_runs, report.failed_runs


@pytest.fixture
def pipeline(ops_db_url, tmp_path):
    """Two obs units x two modules x two files filed at the telescope, nothing moved yet."""
    setup_pipeline(
        ops_db_url,
        real_topology(tmp_path),
        tmp_path,
        n_obs_units=2,
        files_per_unit=2,
        max_size=200_000,
    )
    with instance_for_test() as instance:
        yield Pipeline(ops_db_url, tmp_path, instance)


def verify(*args: str) -> tuple[int, dict]:
    """``ccat verify --json ARGS``: exit code and the report."""
    result = CliRunner().invoke(app, ["verify", "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def found(report: dict) -> set[tuple[str, str, str | None]]:
    return {(v["kind"], v["object"], v["location"]) for v in report["violations"]}


def assert_clean(*args: str) -> dict:
    code, report = verify(*args)
    assert report["violations"] == [], report["violations"]
    assert report["ok"], report["violations"]
    assert code == 0
    return report


def assert_found(expected: set[tuple[str, str, str | None]], *args: str) -> dict:
    """Exactly these violations (kind, object, location), exit 1."""
    code, report = verify(*args)
    assert found(report) == expected, json.dumps(report["violations"], indent=1)
    assert code == 1
    assert not report["ok"]
    return report


def location_id(session, name: str) -> int:
    site, loc = name.split("/")
    return session.scalar(
        select(DataLocation.id).join(Site).where(Site.short_name == site, DataLocation.name == loc)
    )


def packages(url: str) -> list[tuple[int, str, str]]:
    """(id, name, key) of every package, by id."""
    with session_scope(url) as session:
        return [
            (p.id, p.name, p.relative_path)
            for p in session.scalars(select(RawDataPackage).order_by(RawDataPackage.id))
        ]


def files_of(url: str, package_id: int) -> list[str]:
    with session_scope(url) as session:
        return sorted(
            session.scalars(
                select(RawDataFile.relative_path).where(
                    RawDataFile.raw_data_package_id == package_id
                )
            )
        )


def set_copy_status(url, location: str, status: S, **entity: int) -> S:
    """Set a copy's status behind the pipeline's back (no audit record); returns the old one."""
    ((column, entity_id),) = entity.items()
    with session_scope(url) as session:
        copy = session.scalars(
            select(PhysicalCopy).where(
                PhysicalCopy.data_location_id == location_id(session, location),
                getattr(PhysicalCopy, column) == entity_id,
            )
        ).one()
        old, copy.status = copy.status, status
        return old


def flip_byte(path: Path, offset: int = 700) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def pkg(name: str) -> str:
    return f"RawDataPackage {name}"


def raw(path: str) -> str:
    return f"RawDataFile {path}"


# --------------------------------------------------------------------------- healthy states


def test_healthy_pipeline_has_no_violation_at_any_stage(pipeline):
    root = pipeline.root
    # filed only: the SOURCE copies prove every file
    report = assert_clean()
    c = report["counters"]
    assert c["files_checked"] == c["files_proven"] == 8
    assert c["copies_read"] == c["copies_checked"] == 8
    assert report["not_checked"] == []  # (f) and (g) read the test's Dagster instance

    # packaged and bundled at the telescope, nothing transferred
    pipeline.drive(sites=["ccat"], include_schedules=False)
    c = assert_clean()["counters"]
    assert c["copies_checked"] == 8 + 4 + 1  # files, package tars, one bundle (3 MB max)
    assert c["archived_packages"] == 0

    # archived in both archives, every buffer still full (no cleanup yet)
    pipeline.drive(include_schedules=False)
    c = assert_clean()["counters"]
    assert c["archived_packages"] == 4
    assert c["lta_copies_expected"] == 8
    assert c["files_proven"] == 8
    assert c["copies_read"] == c["copies_checked"]

    # cleaned up by the rules: buffers empty, raw files DELETION_POSSIBLE
    pipeline.drive()
    report = assert_clean()
    c = report["counters"]
    assert c["deleted_copies"] > 0
    assert c["deletion_records"] >= c["deleted_copies"]
    assert c["copies_checked"] == 8 + 8  # raw files at the SOURCE, two archive copies each
    assert not any((root / "ccat" / "buffer").rglob("*.tar"))

    # the text output says the same, and nothing on stderr pollutes --json
    result = CliRunner().invoke(app, ["verify"])
    assert result.exit_code == 0, result.output
    assert "OK: no violation" in result.stdout
    assert "raw data files: 8 checked, 8 proven by a read" in result.stdout


# --------------------------------------------------------------------------- planted faults


def test_planted_violations_are_reported_with_their_kind(pipeline):
    url, root = pipeline.url, pipeline.root
    pipeline.drive(include_schedules=False)
    (p1, name1, key1), (p2, name2, key2), *_ = packages(url)

    # a truncated (partial) buffer copy under its final name
    tar = root / "ccat" / "buffer" / key1
    original = tar.read_bytes()
    tar.write_bytes(original[:1000])
    report = assert_found({("size_mismatch", pkg(name1), "ccat/telescope_buffer")})
    (v,) = report["violations"]
    assert v["check"] == "e"
    assert v["key"] == key1
    assert "1000 bytes" in v["detail"]
    assert v["action"]
    tar.write_bytes(original)
    assert_clean()

    pipeline.drive()  # cleanup: the telescope buffer copies go, with their evidence
    us_tar = root / "us" / "lta" / key1
    original = us_tar.read_bytes()

    # a flipped byte in an archive copy: only reading the bytes finds it
    flip_byte(us_tar)
    report = assert_found({("checksum_mismatch", pkg(name1), "us/lta")})
    assert report["violations"][0]["check"] == "b"
    flip_byte(us_tar)
    assert_clean()

    # the archive object is gone, the catalogue still says PRESENT
    us_tar.unlink()
    assert_found({("object_missing", pkg(name1), "us/lta")})
    us_tar.write_bytes(original)
    assert_clean()

    # an archive copy set DELETED: never allowed, and the package now misses that archive
    set_copy_status(url, "us/lta", S.DELETED, raw_data_package_id=p1)
    assert_found(
        {
            ("lta_copy_deleted", pkg(name1), "us/lta"),
            ("lta_copy_not_present", pkg(name1), "us/lta"),
        }
    )
    set_copy_status(url, "us/lta", S.PRESENT, raw_data_package_id=p1)
    assert_clean()

    # no copy row at all at an archive: the package was never archived there
    with session_scope(url) as session:
        copy = session.scalars(
            select(PhysicalCopy).where(
                PhysicalCopy.data_location_id == location_id(session, "us/lta"),
                PhysicalCopy.raw_data_package_id == p1,
            )
        ).one()
        kind = type(copy)
        saved = {a.key: getattr(copy, a.key) for a in sa_inspect(copy).mapper.column_attrs}
        session.delete(copy)
    report = assert_found({("lta_copy_not_present", pkg(name1), "us/lta")})
    assert "never archived to this location" in report["violations"][0]["detail"]
    with session_scope(url) as session:
        session.add(kind(**saved))
    assert_clean()

    # a location that cannot be read is reported once, as such, not as missing data
    (root / "us" / "lta").rename(root / "us" / "lta-unmounted")
    report = assert_found({("unreadable", "location", "us/lta")})
    assert "directory missing" in report["violations"][0]["detail"]
    assert report["counters"]["copies_not_checked"] == 4
    (root / "us" / "lta-unmounted").rename(root / "us" / "lta")

    # a BAD archive copy the system knows about is a violation until it is repaired
    set_copy_status(url, "cologne/lta", S.BAD, raw_data_package_id=p1)
    report = assert_found({("lta_copy_not_present", pkg(name1), "cologne/lta")})
    assert "repair pending" in report["violations"][0]["detail"]
    assert report["counters"]["copies_known_unusable"] == 1
    set_copy_status(url, "cologne/lta", S.PRESENT, raw_data_package_id=p1)

    # a DELETED copy with no audit record naming its rule
    with session_scope(url) as session:
        victim = session.scalars(
            select(RawDataFile).where(RawDataFile.raw_data_package_id == p2)
        ).first()
        victim_id, victim_path = victim.id, victim.relative_path
    source = "ccat/primecam_raw_data"
    set_copy_status(url, source, S.DELETED, raw_data_file_id=victim_id)
    assert_found({("deletion_without_audit", raw(victim_path), source)})
    # recorded by the DELETION_POSSIBLE rule, in the old form (no last_copy_outside_lta):
    # that rule always removed the last copy outside the archives, so it needs the check
    with session_scope(url) as session:
        copy_id = session.scalar(
            select(PhysicalCopy.id).where(PhysicalCopy.raw_data_file_id == victim_id)
        )
        record = AuditLog(
            entity_type="physical_copy",
            entity_id=copy_id,
            data_location_id=location_id(session, source),
            old_status=S.DELETION_IN_PROGRESS.value,
            new_status=S.DELETED.value,
            reason=RULE_RDF_DELETION_POSSIBLE,
            evidence={"rule": RULE_RDF_DELETION_POSSIBLE, "key": victim_path},
        )
        session.add(record)
        session.flush()
        planted = record.id
    assert_found({("deletion_without_lta_evidence", raw(victim_path), source)})
    check = {"ok": True, "location": "us/lta", "key": key2, "checked_at": "2026-01-01T00:00:00"}
    with session_scope(url) as session:
        session.execute(
            update(AuditLog)
            .where(AuditLog.id == planted)
            .values(
                evidence={
                    "rule": RULE_RDF_DELETION_POSSIBLE,
                    "last_copy_outside_lta": True,
                    "lta_verification": [check],
                }
            )
        )
    assert_clean()
    with session_scope(url) as session:
        session.execute(delete(AuditLog).where(AuditLog.id == planted))
    set_copy_status(url, source, S.DELETION_POSSIBLE, raw_data_file_id=victim_id)
    assert_clean()

    # a source-buffer package deletion whose evidence lacks the live archive check
    with session_scope(url) as session:
        record = session.scalars(
            select(AuditLog)
            .join(PhysicalCopy, PhysicalCopy.id == AuditLog.entity_id)
            .where(
                AuditLog.entity_type == "physical_copy",
                AuditLog.new_status == S.DELETED.value,
                AuditLog.reason == RULE_RDP_SOURCE_BUFFER,
                PhysicalCopy.raw_data_package_id == p2,
            )
        ).one()
        record_id, evidence = record.id, dict(record.evidence)
    assert [check["ok"] for check in evidence["lta_verification"]] == [True, True]

    def set_evidence(value: dict) -> None:
        with session_scope(url) as session:
            session.execute(update(AuditLog).where(AuditLog.id == record_id).values(evidence=value))

    without = {k: v for k, v in evidence.items() if k != "lta_verification"}
    expected = {("deletion_without_lta_evidence", pkg(name2), "ccat/telescope_buffer")}
    set_evidence(without)
    report = assert_found(expected)
    assert RULE_RDP_SOURCE_BUFFER in report["violations"][0]["detail"]
    # the new form: the last copy outside the archives needs a passing check...
    failed = [{**check, "ok": False} for check in evidence["lta_verification"]]
    set_evidence({**without, "last_copy_outside_lta": True, "lta_verification": failed})
    assert_found(expected)
    # ...every recorded check passed (the gate deletes only then), not just one...
    one_passed = [failed[0], evidence["lta_verification"][1]]
    set_evidence({**without, "last_copy_outside_lta": True, "lta_verification": one_passed})
    assert_found(expected)
    # ...and the source-buffer rule is always checked, last copy or not
    set_evidence({**without, "last_copy_outside_lta": False})
    assert_found(expected)
    set_evidence(evidence)

    # the bug-1 loss: both archive copies of a package bad and its SOURCE files deleted
    flip_byte(root / "us" / "lta" / key2)
    (root / "cologne" / "lta" / key2).unlink()
    expected = {
        ("checksum_mismatch", pkg(name2), "us/lta"),
        ("object_missing", pkg(name2), "cologne/lta"),
    }
    assert_found(expected)  # the SOURCE copies still hold every file
    lost = files_of(url, p2)
    for path in lost:
        (root / "ccat" / "src" / path).unlink()
    expected |= {("object_missing", raw(p), "ccat/primecam_raw_data") for p in lost}
    report = assert_found(
        expected | {("no_good_copy", raw(p), "ccat/primecam_raw_data") for p in lost}
    )
    no_good = [v for v in report["violations"] if v["kind"] == "no_good_copy"]
    assert all(v["check"] == "a" and "us/lta: checksum_mismatch" in v["detail"] for v in no_good)


def test_source_file_changed_or_deleted_before_packaging(pipeline):
    url, root = pipeline.url, pipeline.root
    pipeline.drive()
    new = simulate_instrument(
        root / "ccat" / "src",
        n_obs_units=1,
        modules=("pcam_280ghz",),
        files_per_unit=3,
        min_size=5_000,
        max_size=20_000,
        seed=9,
    )
    with session_scope(url) as session:
        register_raw_data_files(
            session,
            "ccat/primecam_raw_data",
            new[0].obs_unit,
            "pcam_280ghz",
            [f.path for f in new],
        )
    assert_clean()  # filed, not packaged: the SOURCE copies hold them
    changed, grown, gone = new
    rel = {f.path: str(f.path.relative_to(root / "ccat" / "src")) for f in new}
    flip_byte(changed.path, offset=100)
    with open(grown.path, "ab") as fh:
        fh.write(b"appended after filing")
    gone.path.unlink()
    src = "ccat/primecam_raw_data"
    assert_found(
        {
            ("checksum_mismatch", raw(rel[changed.path]), src),
            ("size_mismatch", raw(rel[grown.path]), src),
            ("object_missing", raw(rel[gone.path]), src),
            *{("no_good_copy", raw(rel[f.path]), src) for f in new},
        }
    )
    # only what was filed counts: the other files are proven by their archived packages
    _, report = verify("--site", "ccat")
    assert report["counters"]["files_proven"] == 8


# --------------------------------------------------------------------------- scope, sample


def test_sample_and_scope_limit_what_is_read(pipeline):
    url, root = pipeline.url, pipeline.root
    pipeline.drive()
    with session_scope(url) as session:
        sizes = dict(
            session.execute(select(RawDataPackage.relative_path, RawDataPackage.size)).all()
        )
        file_bytes = sum(session.scalars(select(RawDataFile.size)))
    everything = assert_clean()["counters"]
    assert everything["copies_read"] == everything["copies_checked"] == 16
    assert everything["bytes_read"] == 2 * sum(sizes.values()) + file_bytes

    # one archive: its four copies, nothing else read; catalogue clauses for it only
    c = assert_clean("--location", "us/lta")["counters"]
    assert c["locations"] == 1
    assert c["copies_checked"] == c["copies_read"] == 4
    assert c["bytes_read"] == sum(sizes.values())
    assert c["lta_copies_expected"] == 4
    # one site: the SOURCE files (and empty buffer), no archive
    c = assert_clean("--site", "ccat")["counters"]
    assert c["locations"] == 2
    assert c["copies_checked"] == 8
    assert c["lta_copies_expected"] == 0
    assert c["files_checked"] == c["files_proven"] == 8
    # a location that holds nothing of theirs judges no file
    c = assert_clean("--location", "us/buffer")["counters"]
    assert c["copies_checked"] == c["files_checked"] == 0

    # a sample: every copy stat'ed, a deterministic subset read, at least one per location
    _, first = verify("--sample", "0.3", "--seed", "5")
    c = first["counters"]
    assert c["copies_checked"] == 16
    assert 3 <= c["copies_read"] < 16  # three locations hold copies
    assert c["copies_read"] + c["copies_skipped_by_sampling"] == 16
    assert first["scope"] == {
        "locations": first["scope"]["locations"],
        "scoped": False,
        "sample": 0.3,
        "seed": 5,
    }
    _, again = verify("--sample", "0.3", "--seed", "5")
    assert again["counters"] == c
    c = verify("--sample", "0.000001")[1]["counters"]
    assert c["copies_read"] == 3
    assert c["copies_checked"] == 16

    # a flipped byte is found where the scope reads, not elsewhere; a short object always
    key = next(iter(sizes))
    flip_byte(root / "us" / "lta" / key)
    assert_clean("--location", "cologne/lta")
    assert verify("--location", "us/lta")[0] == 1
    (root / "us" / "lta" / key).write_bytes(b"short")
    report = verify("--location", "us/lta", "--sample", "0.000001")[1]
    assert {v["kind"] for v in report["violations"]} == {"size_mismatch"}


def test_bad_options_are_one_line_errors_with_exit_2(pipeline):
    runner = CliRunner()
    for args, message in [
        (["--site", "nowhere"], "unknown site 'nowhere'; known sites: ccat, cologne, us"),
        (["--location", "us/nope"], "unknown location 'us/nope'"),
        (["--sample", "0"], "--sample must be a fraction in (0, 1]"),
        (["--sample", "1.5"], "--sample must be a fraction in (0, 1]"),
    ]:
        result = runner.invoke(app, ["verify", *args])
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert result.stderr.startswith(f"Error: {message}")
        assert len(result.stderr.strip().splitlines()) == 1


def test_dead_runs_and_stale_temporaries_are_reported_when_given(pipeline):
    url, root = pipeline.url, pipeline.root
    pipeline.drive(sites=["ccat"], include_schedules=False)
    leftover = root / "ccat" / "buffer" / "raw_data_packages" / ".x.tar.part-0123"
    leftover.write_bytes(b"partial")

    def temporaries(location, storage):
        if location.name == "telescope_buffer":
            yield "raw_data_packages/.x.tar.part-0123", "7 bytes, older than any run"

    with session_scope(url) as session, StorageRegistry() as storages:
        report = verify_catalogue(
            session,
            storages.get,
            stale_temporaries=temporaries,
            dead_runs=[("abc123", "STARTED 2 h ago, process 4242 gone")],
        )
    assert {(v.kind, v.check, v.location) for v in report.violations} == {
        ("stale_temporary", "f", "ccat/telescope_buffer"),
        ("dead_run", "g", None),
    }
    assert report.not_checked == []


# --------------------------------------------------------------------------- S3 and SSH


@pytest.mark.slow
def test_s3_and_ssh_copies_are_read_not_trusted(
    tmp_path, sshd_server, s3_endpoint, s3_bucket, s3_client, monkeypatch, fresh_postgres_url
):
    """The cologne archive is the moto S3 server, the telescope buffer is reached over SSH."""
    url = fresh_postgres_url
    monkeypatch.setenv("CCAT_SSH_KEY_FILE", sshd_server.key_file)
    monkeypatch.setenv("CCAT_OPS_DB_URL", url)
    topology = real_topology(tmp_path, sshd=sshd_server, s3_endpoint=s3_endpoint, bucket=s3_bucket)
    setup_pipeline(url, topology, tmp_path, n_obs_units=1, files_per_unit=2, max_size=100_000)
    with instance_for_test() as instance:
        assert not drive(url, instance, include_schedules=False).failed_runs
    c = assert_clean()["counters"]
    # 4 files; 2 tars in 3 buffers and 2 archives; the bundle in 3 buffers
    assert c["copies_read"] == c["copies_checked"] == 4 + 2 * 5 + 3
    (_p1, name1, key1), (_p2, name2, key2) = packages(url)

    # an S3 object overwritten with other bytes of the same size, its metadata kept: the
    # stored checksum still says it is fine, the bytes do not
    obj = s3_client.get_object(Bucket=s3_bucket, Key=f"raw/{key1}")
    data, metadata = bytearray(obj["Body"].read()), obj["Metadata"]
    assert metadata.get("checksum")
    data[900] ^= 0xFF
    s3_client.put_object(Bucket=s3_bucket, Key=f"raw/{key1}", Body=bytes(data), Metadata=metadata)
    # a byte flipped in the telescope buffer, checked over SSH
    flip_byte(tmp_path / "ccat" / "buffer" / key2)
    # another S3 object deleted
    s3_client.delete_object(Bucket=s3_bucket, Key=f"raw/{key2}")
    assert_found(
        {
            ("checksum_mismatch", pkg(name1), "cologne/lta"),
            ("checksum_mismatch", pkg(name2), "ccat/telescope_buffer"),
            ("object_missing", pkg(name2), "cologne/lta"),
        }
    )
    # as the telescope's code server sees it: its buffer on local disk, the same result
    assert_found(
        {
            ("checksum_mismatch", pkg(name1), "cologne/lta"),
            ("checksum_mismatch", pkg(name2), "ccat/telescope_buffer"),
            ("object_missing", pkg(name2), "cologne/lta"),
        },
        "--from-site",
        "ccat",
    )


def test_cli_reads_dead_runs_and_stale_temporaries_from_the_dagster_instance(
    pipeline, tmp_path, monkeypatch
):
    """Clauses (f) and (g) from the run machinery: a run-until-idle killed while its run was in
    flight, and a partial file it left behind."""
    import os
    import signal

    from dagster import DagsterRunStatus, RunsFilter

    from ccat_dagster.instance import write_instance_config
    from ccat_dagster.runner import open_instance
    from ccat_dagster_tests.deployment_support import wait_until
    from ccat_dagster_tests.runner_support import start_sleeper

    home = tmp_path / "verify_dagster_home"
    write_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("CCAT_TEMP_SWEEP_MARGIN_SECONDS", "0")
    runner = start_sleeper(home)
    with open_instance(home) as instance:
        try:
            wait_until(
                lambda: instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED])),
                timeout=120,
                what="the sleeper run to start",
            )
        finally:
            os.kill(runner.pid, signal.SIGKILL)
            runner.wait()
    leftover = pipeline.root / "us" / "buffer" / ".ccat-partial" / "0123-killed.tar"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"partial")
    os.utime(leftover, (1_000_000_000, 1_000_000_000))
    code, report = verify()
    assert code == 1
    assert report["not_checked"] == []
    kinds = {(v["kind"], v["location"], v["key"]) for v in report["violations"]}
    assert kinds == {
        ("stale_temporary", "us/buffer", ".ccat-partial/0123-killed.tar"),
        ("dead_run", None, None),
    }
