"""Small builders of ops-DB rows for tests: a topology of sites and disk locations under a tmp
directory, and the pipeline steps exactly as the pipeline records them (filing, packaging,
bundling, primary/secondary transfer + unpack, archive, staging), optionally writing the objects'
bytes to disk so executors work on real files. Keep it small and shared: other test modules may
import it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from ccat_dagster.storage.local import LocalDiskStorage
from ccat_ops_db.checksum import checksum_chunks
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    DataTransferPackagePhysicalCopy,
    DiskDataLocation,
    ExecutedObsUnit,
    InstrumentModule,
    LocationType,
    LongTermArchiveTransfer,
    PackageState,
    PhysicalCopyStatus,
    RawDataFile,
    RawDataFilePhysicalCopy,
    RawDataPackage,
    RawDataPackagePhysicalCopy,
    Site,
    StagingJob,
    Status,
    utcnow,
)

_seq = itertools.count(1)


@dataclass
class Topology:
    """ccat (SOURCE primecam_raw_data + BUFFER telescope_buffer) and one or more LTA sites, each
    with BUFFER ``buffer`` and LONG_TERM_ARCHIVE ``lta``; the first LTA site also has a
    PROCESSING location ``processing``."""

    session: Session
    root: Path
    sites: dict[str, Site] = field(default_factory=dict)
    locations: dict[str, DataLocation] = field(default_factory=dict)  # "site/name"

    @property
    def source(self) -> DataLocation:
        return self.locations["ccat/primecam_raw_data"]

    @property
    def source_buffer(self) -> DataLocation:
        return self.locations["ccat/telescope_buffer"]

    @property
    def lta_sites(self) -> list[str]:
        return [s for s in self.sites if f"{s}/lta" in self.locations]

    def buffer(self, site: str) -> DataLocation:
        return self.locations[f"{site}/buffer"]

    def lta(self, site: str) -> DataLocation:
        return self.locations[f"{site}/lta"]

    @property
    def processing(self) -> DataLocation:
        return self.locations[f"{self.lta_sites[0]}/processing"]


def _add_location(
    topo: Topology, site: Site, name: str, location_type: LocationType, priority: int = 1
) -> DataLocation:
    path = topo.root / site.short_name / name
    path.mkdir(parents=True, exist_ok=True)
    loc = DiskDataLocation(
        site=site, name=name, location_type=location_type, priority=priority, path=str(path)
    )
    topo.session.add(loc)
    topo.locations[f"{site.short_name}/{name}"] = loc
    return loc


def make_topology(
    session: Session,
    root: Path,
    *,
    lta_sites: Sequence[str] = ("cologne",),
    processing: bool = True,
) -> Topology:
    """Create the sites and disk locations (roots under ``root``) and flush."""
    topo = Topology(session=session, root=Path(root))
    ccat = Site(name="CCAT Observatory", short_name="ccat")
    session.add(ccat)
    topo.sites["ccat"] = ccat
    _add_location(topo, ccat, "primecam_raw_data", LocationType.SOURCE)
    _add_location(topo, ccat, "telescope_buffer", LocationType.BUFFER)
    for i, short in enumerate(lta_sites):
        site = Site(name=f"Archive {short}", short_name=short)
        session.add(site)
        topo.sites[short] = site
        _add_location(topo, site, "buffer", LocationType.BUFFER)
        _add_location(topo, site, "lta", LocationType.LONG_TERM_ARCHIVE)
        if processing and i == 0:
            _add_location(topo, site, "processing", LocationType.PROCESSING)
    session.flush()
    return topo


def local_storage_for(location: DataLocation) -> LocalDiskStorage:
    """The Storage of a disk location built by :func:`make_topology`."""
    return LocalDiskStorage(f"{location.site.short_name}/{location.name}", location.path)


def object_path(location: DataLocation, key: str) -> Path:
    return Path(location.path) / key


def write_object(location: DataLocation, key: str, data: bytes) -> Path:
    path = object_path(location, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def package_bytes(package: RawDataPackage) -> bytes:
    """Deterministic stand-in for the package tar (tests need bytes, not a real tar)."""
    return f"tar of {package.name}\n".encode() * 8


def file_raw_data_package(
    topo: Topology,
    name: str | None = None,
    *,
    n_files: int = 2,
    write: bool = True,
) -> RawDataPackage:
    """Filing + packaging: RawDataFiles PRESENT at SOURCE, the RawDataPackage (COMPLETED,
    WAITING) PRESENT at the source-site buffer."""
    s = topo.session
    n = next(_seq)
    name = name or f"pkg_{n:05d}"
    eou = ExecutedObsUnit(name=f"obs_{name}")
    module = InstrumentModule(name=f"module_{name}", instrument="primecam")
    pkg = RawDataPackage(
        name=name,
        relative_path=f"packages/{name}.tar",
        status=Status.COMPLETED,
        state=PackageState.WAITING,
        source_location=topo.source,
        executed_obs_unit=eou,
        instrument_module=module,
        file_count=n_files,
        checksum_algorithm="sha256",
    )
    s.add_all([eou, module, pkg])
    for i in range(n_files):
        data = f"{name} file {i}\n".encode() * 16
        checksum, size = checksum_chunks([data])
        rdf = RawDataFile(
            name=f"{name}_{i}.dat",
            relative_path=f"raw/{name}/{name}_{i}.dat",
            size=size,
            checksum=checksum,
            checksum_algorithm="sha256",
            source_location=topo.source,
            executed_obs_unit=eou,
            instrument_module=module,
            raw_data_package=pkg,
        )
        s.add(rdf)
        s.add(
            RawDataFilePhysicalCopy(
                raw_data_file=rdf, data_location=topo.source, size=size, checksum=checksum
            )
        )
        if write:
            write_object(topo.source, rdf.relative_path, data)
    data = package_bytes(pkg)
    pkg.checksum, pkg.size = checksum_chunks([data])
    add_package_copy(topo, pkg, topo.source_buffer, write=write)
    s.flush()
    return pkg


def add_package_copy(
    topo: Topology,
    pkg: RawDataPackage,
    location: DataLocation,
    *,
    status: PhysicalCopyStatus = PhysicalCopyStatus.PRESENT,
    verified: bool = False,
    write: bool = True,
) -> RawDataPackagePhysicalCopy:
    copy = RawDataPackagePhysicalCopy(
        raw_data_package=pkg,
        data_location=location,
        status=status,
        size=pkg.size,
        checksum=pkg.checksum,
        checksum_algorithm=pkg.checksum_algorithm,
        verified_at=utcnow() if verified else None,
    )
    topo.session.add(copy)
    if write and status == PhysicalCopyStatus.PRESENT:
        write_object(location, pkg.relative_path, package_bytes(pkg))
    topo.session.flush()
    return copy


def bundle(
    topo: Topology, packages: Sequence[RawDataPackage], name: str | None = None, *, write=True
) -> DataTransferPackage:
    """Bundling at the source-site buffer: the DTP (COMPLETED) PRESENT there, packages
    TRANSFERRING."""
    name = name or f"dtp_{next(_seq):05d}"
    data = b"".join(package_bytes(p) for p in packages)
    checksum, size = checksum_chunks([data])
    dtp = DataTransferPackage(
        name=name,
        relative_path=f"transfer/{name}.tar",
        size=size,
        checksum=checksum,
        checksum_algorithm="sha256",
        status=Status.COMPLETED,
        origin_location=topo.source_buffer,
    )
    topo.session.add(dtp)
    for p in packages:
        p.data_transfer_package = dtp
        p.state = PackageState.TRANSFERRING
    _add_dtp_copy(topo, dtp, topo.source_buffer, data if write else None)
    topo.session.flush()
    return dtp


def _add_dtp_copy(
    topo: Topology, dtp: DataTransferPackage, location: DataLocation, data: bytes | None
) -> None:
    topo.session.add(
        DataTransferPackagePhysicalCopy(
            data_transfer_package=dtp, data_location=location, size=dtp.size
        )
    )
    if data is not None:
        write_object(location, dtp.relative_path, data)


def transfer(
    topo: Topology,
    dtp: DataTransferPackage,
    *,
    to_site: str,
    origin: DataLocation | None = None,
    route_kind: str = "primary",
    status: Status = Status.COMPLETED,
    unpack_status: Status = Status.COMPLETED,
    write: bool = True,
) -> DataTransfer:
    """A DataTransfer to ``to_site``'s buffer; when COMPLETED the DTP copy is PRESENT there, and
    when also unpacked the RawDataPackage copies are PRESENT there."""
    dest = topo.buffer(to_site)
    dt = DataTransfer(
        data_transfer_package=dtp,
        origin_location=origin or topo.source_buffer,
        destination_location=dest,
        route_kind=route_kind,
        status=status,
        unpack_status=unpack_status,
    )
    topo.session.add(dt)
    if status == Status.COMPLETED:
        data = b"".join(package_bytes(p) for p in dtp.raw_data_packages)
        _add_dtp_copy(topo, dtp, dest, data if write else None)
        if unpack_status == Status.COMPLETED:
            for p in dtp.raw_data_packages:
                add_package_copy(topo, p, dest, write=write)
    topo.session.flush()
    return dt


def archive(
    topo: Topology, pkg: RawDataPackage, *, site: str, write: bool = True
) -> RawDataPackagePhysicalCopy:
    """LongTermArchiveTransfer COMPLETED and the verified PRESENT copy in ``site``'s LTA; the
    package becomes ARCHIVED."""
    topo.session.add(
        LongTermArchiveTransfer(
            raw_data_package=pkg,
            origin_location=topo.buffer(site),
            destination_location=topo.lta(site),
            status=Status.COMPLETED,
        )
    )
    copy = add_package_copy(topo, pkg, topo.lta(site), verified=True, write=write)
    pkg.state = PackageState.ARCHIVED
    topo.session.flush()
    return copy


def archived_package(
    topo: Topology, name: str | None = None, *, n_files: int = 2, write: bool = True
) -> tuple[RawDataPackage, DataTransferPackage]:
    """A package taken through filing, bundling, primary transfer to the first LTA site and
    archive there (the state in which its source-buffer copy becomes deletable)."""
    pkg = file_raw_data_package(topo, name, n_files=n_files, write=write)
    dtp = bundle(topo, [pkg], write=write)
    site = topo.lta_sites[0]
    transfer(topo, dtp, to_site=site, write=write)
    archive(topo, pkg, site=site, write=write)
    return pkg, dtp


def stage(
    topo: Topology,
    packages: Sequence[RawDataPackage],
    *,
    active: bool = True,
    retention_minutes: int | None = None,
    staged: bool = True,
    created_at: datetime | None = None,
    write: bool = True,
) -> StagingJob:
    """A StagingJob to the processing location: file copies PRESENT there and, when ``staged``,
    the package copy STAGED (its tar removed)."""
    loc = topo.processing
    job = StagingJob(
        active=active,
        status=Status.COMPLETED,
        destination_location=loc,
        retention_period_minutes=retention_minutes,
        created_at=created_at or utcnow(),
        completed_at=created_at or utcnow(),
    )
    job.raw_data_packages.extend(packages)
    topo.session.add(job)
    topo.session.flush()
    existing = {
        (c.raw_data_file_id, c.data_location_id)
        for c in topo.session.query(RawDataFilePhysicalCopy).filter_by(data_location_id=loc.id)
    }
    for pkg in packages:
        for rdf in pkg.raw_data_files:
            if (rdf.id, loc.id) in existing:
                continue
            topo.session.add(
                RawDataFilePhysicalCopy(raw_data_file=rdf, data_location=loc, size=rdf.size)
            )
            if write:
                write_object(loc, rdf.relative_path, b"staged " + rdf.name.encode())
        if staged and not any(
            c.data_location_id == loc.id
            for c in topo.session.query(RawDataPackagePhysicalCopy).filter_by(
                raw_data_package_id=pkg.id
            )
        ):
            add_package_copy(topo, pkg, loc, status=PhysicalCopyStatus.STAGED, write=False)
    topo.session.flush()
    return job


def minutes_ago(minutes: float) -> datetime:
    return utcnow() - timedelta(minutes=minutes)


def cleanup_cycle(session, run_id: str = "run-1", **kwargs):
    """One cleanup cycle over local-disk storages, live LTA checks by default."""
    from ccat_dagster.lifecycle.archive.verification import make_storage_lta_verifier
    from ccat_dagster.lifecycle.deletion.cycle import run_cleanup_cycle

    kwargs.setdefault("verify_lta_copy", make_storage_lta_verifier(local_storage_for))
    return run_cleanup_cycle(session, storage_for=local_storage_for, run_id=run_id, **kwargs)
