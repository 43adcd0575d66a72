"""Shared set-up of pipeline tests: a three-site topology on real components, filing, driving.

ccat: SOURCE primecam_raw_data (local) and BUFFER telescope_buffer, which the other sites reach
over a real sshd; cologne: BUFFER + LONG_TERM_ARCHIVE on the moto S3 server; us: BUFFER +
LONG_TERM_ARCHIVE on disk.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from dagster import DagsterInstance
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ccat_dagster.demo import DEMO_INGEST, DEMO_MARKER
from ccat_dagster.lifecycle.ingest.filing import register_raw_data_files
from ccat_dagster.runner import RunnerReport, load_site_definitions, run_until_idle
from ccat_dagster.simulate import SimulatedFile, simulate_instrument
from ccat_dagster_tests.fixtures.ci import unavailable
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    LocationAvailability,
    LocationType,
    LongTermArchiveTransfer,
    PackageState,
    PhysicalCopy,
    PhysicalCopyStatus,
    RawDataPackage,
    Site,
    Status,
)
from ccat_ops_db.session import session_scope
from ccat_ops_db.topology import apply_topology


def real_topology(
    root: Path,
    *,
    sshd=None,
    s3_endpoint: str | None = None,
    bucket: str | None = None,
    policy: dict[str, Any] | None = None,
    telescope_buffer: Path | None = None,
    ingest: dict[str, Any] | None = None,
    source_host=None,
    routes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The e2e topology; without sshd/S3 every storage is a local disk under ``root``
    (the telescope buffer at ``telescope_buffer`` when given, e.g. on a small disk). With
    ``ingest``, the SOURCE ``ccat/primecam_raw_data`` (``root/ccat/src``) has that ingest key;
    with ``source_host`` (an sshd) the SOURCE lies on that host (an instrument computer).
    With ``routes`` (the topology's route overrides) two more places exist for them: a relay
    site ``hub`` with only a BUFFER, and a second BUFFER ``us/intake`` (priority 2)."""

    def disk(
        *parts: str, remote: bool = False, path: Path | None = None, host=None
    ) -> dict[str, Any]:
        path = path or root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        spec: dict[str, Any] = {"kind": "disk", "path": str(path)}
        server = host or (sshd if remote else None)
        if server is not None:
            spec.update(
                host=server.host,
                port=server.port,
                user=server.user,
                known_hosts=server.known_hosts,
            )
        return spec

    cologne_lta = (
        {
            "kind": "s3",
            "bucket": bucket,
            "endpoint_url": s3_endpoint,
            "prefix": "raw",
            "region": "us-east-1",
        }
        if s3_endpoint
        else disk("cologne", "lta")
    )
    topology: dict[str, Any] = {
        "sites": [
            {
                "short_name": "ccat",
                "name": "CCAT Observatory",
                "locations": [
                    {
                        "name": "primecam_raw_data",
                        "type": "SOURCE",
                        "storage": disk("ccat", "src", host=source_host),
                        **({"ingest": ingest} if ingest else {}),
                    },
                    {
                        "name": "telescope_buffer",
                        "type": "BUFFER",
                        "priority": 1,
                        "storage": disk("ccat", "buffer", remote=True, path=telescope_buffer),
                    },
                ],
            },
            {
                "short_name": "cologne",
                "name": "University of Cologne",
                "locations": [
                    {"name": "buffer", "type": "BUFFER", "storage": disk("cologne", "buffer")},
                    {"name": "lta", "type": "LONG_TERM_ARCHIVE", "storage": cologne_lta},
                ],
            },
            {
                "short_name": "us",
                "name": "US archive",
                "locations": [
                    {"name": "buffer", "type": "BUFFER", "storage": disk("us", "buffer")},
                    {"name": "lta", "type": "LONG_TERM_ARCHIVE", "storage": disk("us", "lta")},
                ],
            },
        ],
        "policy": {
            "data_transfer_package_max_bytes": 3_000_000,
            "data_transfer_package_max_wait_minutes": 0,
            **(policy or {}),
        },
    }
    if routes is not None:
        topology["sites"][2]["locations"].append(
            {"name": "intake", "type": "BUFFER", "priority": 2, "storage": disk("us", "intake")}
        )
        topology["sites"].append(
            {
                "short_name": "hub",
                "name": "Relay hub",
                "locations": [
                    {"name": "buffer", "type": "BUFFER", "storage": disk("hub", "buffer")}
                ],
            }
        )
        topology["routes"] = routes
    return topology


#: the ingest key of a SOURCE whose instrument marks each finished directory (the demo's)
MARKER_INGEST = DEMO_INGEST


def drop_simulated_data(
    root: Path,
    *,
    n_obs_units: int = 2,
    files_per_unit: int = 3,
    max_size: int = 900_000,
    seed: int = 1,
    marker: str | None = DEMO_MARKER,
) -> list[SimulatedFile]:
    """The instrument writes files (and their markers) at ``root/ccat/src``; nobody files them
    (the ingest sensor of a SOURCE with :data:`MARKER_INGEST` does)."""
    return simulate_instrument(
        root / "ccat" / "src",
        n_obs_units=n_obs_units,
        modules=("pcam_280ghz", "pcam_350ghz"),
        files_per_unit=files_per_unit,
        min_size=1_000,
        max_size=max_size,
        seed=seed,
        marker=marker,
    )


def file_simulated_data(
    session: Session,
    root: Path,
    *,
    n_obs_units: int = 2,
    files_per_unit: int = 3,
    max_size: int = 900_000,
    seed: int = 1,
) -> list[SimulatedFile]:
    """The instrument writes files at ``root/ccat/src`` and they are filed by hand."""
    files = drop_simulated_data(
        root,
        n_obs_units=n_obs_units,
        files_per_unit=files_per_unit,
        max_size=max_size,
        seed=seed,
        marker=None,
    )
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for f in files:
        groups[(f.obs_unit, f.instrument_module)].append(f.path)
    for (obs_unit, module), paths in sorted(groups.items()):
        register_raw_data_files(session, "ccat/primecam_raw_data", obs_unit, module, paths)
    session.commit()
    return files


def setup_pipeline(url: str, topology: dict[str, Any], root: Path, **filing) -> list[SimulatedFile]:
    with session_scope(url) as session:
        apply_topology(session, topology)
    with session_scope(url) as session:
        return file_simulated_data(session, root, **filing)


def drive(
    url: str,
    instance: DagsterInstance,
    *,
    sites=None,
    max_passes: int = 100,
    include_schedules: bool = True,
) -> RunnerReport:
    return run_until_idle(
        load_site_definitions(sites, ops_db_url=url),
        instance=instance,
        max_passes=max_passes,
        include_schedules=include_schedules,
        log=lambda m: None,
    )


def tar_members(data: bytes) -> dict[str, bytes]:
    """name -> bytes of every regular member of a tar held in memory (small test packages)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if member.isfile():
                out[member.name] = tar.extractfile(member).read()
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "30m") mounted at the existing directory ``mount_point`` and
    unmounted afterwards. Needs root: fails under CI=true when it cannot mount, skips elsewhere."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        message = f"cannot mount a {size} tmpfs at {mount_point}: {done.stderr.strip()}"
        unavailable(message + " (tests run as root under CI)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


def resize_tmpfs(mount_point: Path, size: str) -> None:
    """Give a tmpfs mounted by :func:`tmpfs` a new size (free space appears at once)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


def copy_statuses(url: str, site: str, location_type: LocationType) -> list[PhysicalCopyStatus]:
    """The status of every copy at the locations of ``location_type`` of ``site``."""
    with session_scope(url) as session:
        return list(
            session.scalars(
                select(PhysicalCopy.status)
                .join(DataLocation, DataLocation.id == PhysicalCopy.data_location_id)
                .join(Site, Site.id == DataLocation.site_id)
                .where(Site.short_name == site, DataLocation.location_type == location_type)
            )
        )


def assert_nothing_failed_or_counted(url: str) -> None:
    """No operation FAILED and no retry counted anywhere: an outage is not the packages' fault."""
    with session_scope(url) as session:
        for model in (RawDataPackage, DataTransferPackage, DataTransfer, LongTermArchiveTransfer):
            rows = session.scalars(select(model)).all()
            assert all(r.status != Status.FAILED for r in rows), model.__name__
            assert all((r.retry_count or 0) == 0 for r in rows), [
                (model.__name__, r.id, r.retry_count, r.failure_reason) for r in rows
            ]
        assert all(
            t.unpack_status != Status.FAILED and (t.unpack_retry_count or 0) == 0
            for t in session.scalars(select(DataTransfer))
        )
        assert all(p.state != PackageState.FAILED for p in session.scalars(select(RawDataPackage)))


def availability(url: str) -> dict[tuple[str, str], bool]:
    """(location ``site/name``, observer) -> available, for every recorded row."""
    with session_scope(url) as session:
        rows = session.execute(
            select(Site.short_name, DataLocation.name, LocationAvailability)
            .join(DataLocation, DataLocation.id == LocationAvailability.data_location_id)
            .join(Site, Site.id == DataLocation.site_id)
        ).all()
        return {(f"{s}/{n}", row.observer): row.available for s, n, row in rows}


def let_retention_elapse(url: str, minutes: int = 10) -> None:
    """The retention clock of stage 2 starts at ``updated_at`` of a DELETION_POSSIBLE copy: set
    it ``minutes`` back."""
    with session_scope(url) as session:
        session.execute(
            update(PhysicalCopy)
            .where(PhysicalCopy.status == PhysicalCopyStatus.DELETION_POSSIBLE)
            .values(updated_at=PhysicalCopy.updated_at - timedelta(minutes=minutes))
            .execution_options(synchronize_session=False)
        )
