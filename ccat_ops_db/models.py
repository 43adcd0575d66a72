"""The operations database: the system of record for sites, locations, data and every copy.

Entities and statuses are described in docs/lifecycle.md. PhysicalCopy rows
are never deleted, only marked; every status change is written to ``audit_log`` (see
:mod:`ccat_ops_db.audit`). Checksums are always stored together with their algorithm.
"""

from __future__ import annotations

import enum
import functools
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.selectable import NamedFromClause


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class, typed as a Table (``__table__`` is typed FromClause)."""
    return cast(Table, model.__table__)


@functools.cache
def named_alias(table: Table, name: str) -> NamedFromClause:
    """``table.alias(name)``, built once per process and shared by every statement.

    An alias renders as its name, so sharing one changes no SQL; building one is not free:
    SQLAlchemy makes a proxy of every column the first time ``.c`` is read (~1 ms for
    ``physical_copy``), and the deletion rules and repair queries read a dozen aliases per
    statement, statement after statement (a tenth of an end-to-end run's CPU). Anonymous
    aliases (``table.alias()``) are per statement by design: each gets a name of its own."""
    alias = table.alias(name)
    alias.c  # noqa: B018 - the column proxies are made here, before threads share the alias
    return alias


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns; they were written as UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Store enum *values* as strings (no native PG enum types: easier migrations, same on SQLite).
    return Enum(
        cls,
        native_enum=False,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
        name=cls.__name__.lower(),
    )


# --------------------------------------------------------------------------- enums


class LocationType(enum.Enum):
    SOURCE = "SOURCE"
    BUFFER = "BUFFER"
    LONG_TERM_ARCHIVE = "LONG_TERM_ARCHIVE"
    PROCESSING = "PROCESSING"


class StorageType(enum.Enum):
    DISK = "disk"
    S3 = "s3"
    TAPE = "tape"


class Status(enum.Enum):
    """Operation status (packaging, transfers, unpacking, archiving, staging)."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class PackageState(enum.Enum):
    """High-level state of a RawDataPackage in the pipeline."""

    WAITING = "WAITING"
    TRANSFERRING = "TRANSFERRING"
    ARCHIVED = "ARCHIVED"
    FAILED = "FAILED"


class PhysicalCopyStatus(enum.Enum):
    PRESENT = "PRESENT"
    STAGED = "STAGED"
    DELETION_SCHEDULED = "DELETION_SCHEDULED"
    DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"
    DELETION_POSSIBLE = "DELETION_POSSIBLE"
    DELETED = "DELETED"
    DELETION_FAILED = "DELETION_FAILED"
    #: a live check found the object with other bytes (size or checksum) than the catalogue
    #: records; never deleted automatically, repaired from a good copy
    BAD = "BAD"
    #: the object is gone although no rule deleted it (found missing by a live check, or declared
    #: lost by an operator); repaired from a good copy where one exists
    LOST = "LOST"


#: Copies that no longer hold their data and wait for a repair: never evidence of anything.
UNUSABLE_COPY_STATUSES = (PhysicalCopyStatus.BAD, PhysicalCopyStatus.LOST)


class RouteType(enum.Enum):
    DIRECT = "DIRECT"
    RELAY = "RELAY"
    CUSTOM = "CUSTOM"


class CopyType(enum.Enum):
    RAW_DATA_FILE = "raw_data_file"
    RAW_DATA_PACKAGE = "raw_data_package"
    DATA_TRANSFER_PACKAGE = "data_transfer_package"


# --------------------------------------------------------------------------- sites, locations


class Site(Base):
    __tablename__ = "site"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    short_name: Mapped[str] = mapped_column(String(64), unique=True)
    location: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    locations: Mapped[list[DataLocation]] = relationship(
        back_populates="site", order_by="DataLocation.priority"
    )

    def __repr__(self) -> str:
        return f"Site({self.short_name!r})"


def qualified_location_name(site: str, location: str) -> str:
    """``{site}/{location}``: the one way a location is named to people (``DataLocation``
    and the Dagster topology snapshot both use it)."""
    return f"{site}/{location}"


def location_pool_prefix(site: str, location: str) -> str:
    """``{site}_{location}``: the prefix of the location's concurrency pool names."""
    return f"{site}_{location}"


class DataLocation(Base):
    __tablename__ = "data_location"
    __table_args__ = (UniqueConstraint("site_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    location_type: Mapped[LocationType] = mapped_column(_enum(LocationType))
    storage_type: Mapped[StorageType] = mapped_column(_enum(StorageType))
    priority: Mapped[int] = mapped_column(Integer, default=1)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Location-specific override of the policy's retention period (docs/lifecycle.md:
    # retention); None means the policy default.
    retention_period_minutes: Mapped[int | None] = mapped_column(Integer)
    # The topology's ``ingest`` mapping of a SOURCE (``ccat_ops_db.ingest_spec.IngestSpec``):
    # how its new files are detected; None means manual filing only.
    ingest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    site: Mapped[Site] = relationship(back_populates="locations")

    __mapper_args__ = {"polymorphic_on": "storage_type", "polymorphic_abstract": True}

    @property
    def qualified_name(self) -> str:
        """``{site}/{location}``, e.g. ``cologne/lta``: how every message, metadata value and
        CLI option names this location (``ccat ... --location cologne/lta``)."""
        return qualified_location_name(self.site.short_name, self.name)

    @property
    def pool_prefix(self) -> str:
        """``{site}_{location}``: the prefix of every concurrency pool name of this location
        (``{site}_{location}_{operation}``, see ``ccat_dagster.lifecycle.common.names``)."""
        return location_pool_prefix(self.site.short_name, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.qualified_name})"


class DiskDataLocation(DataLocation):
    __tablename__ = "disk_data_location"

    id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    user: Mapped[str | None] = mapped_column(String(64))
    # Optional path of a known_hosts file for this host (not a secret; keys come from the env).
    known_hosts: Mapped[str | None] = mapped_column(String(1024))

    __mapper_args__ = {"polymorphic_identity": StorageType.DISK}


class S3DataLocation(DataLocation):
    __tablename__ = "s3_data_location"

    id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(255))
    endpoint_url: Mapped[str | None] = mapped_column(String(1024))
    prefix: Mapped[str | None] = mapped_column(String(1024))
    region: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = {"polymorphic_identity": StorageType.S3}


class TapeDataLocation(DataLocation):
    """Declared for completeness (a future capability); using it raises NotImplementedError."""

    __tablename__ = "tape_data_location"

    id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), primary_key=True)
    library: Mapped[str | None] = mapped_column(String(255))

    __mapper_args__ = {"polymorphic_identity": StorageType.TAPE}


# --------------------------------------------------------------------------- observations


class ExecutedObsUnit(Base):
    __tablename__ = "executed_obs_unit"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InstrumentModule(Base):
    __tablename__ = "instrument_module"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    instrument: Mapped[str | None] = mapped_column(String(200))


# --------------------------------------------------------------------------- data


class RawDataFile(Base):
    __tablename__ = "raw_data_file"
    __table_args__ = (UniqueConstraint("source_location_id", "relative_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    relative_path: Mapped[str] = mapped_column(String(2048))
    size: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(128))
    checksum_algorithm: Mapped[str] = mapped_column(String(32))
    source_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    executed_obs_unit_id: Mapped[int] = mapped_column(ForeignKey("executed_obs_unit.id"))
    instrument_module_id: Mapped[int] = mapped_column(ForeignKey("instrument_module.id"))
    raw_data_package_id: Mapped[int | None] = mapped_column(
        ForeignKey("raw_data_package.id"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Declared lost by an operator (the file vanished before it was packaged): it is left out of
    # its package so the rest of the obs unit is archived; the reason is audited too.
    lost_at: Mapped[datetime | None] = mapped_column()
    lost_reason: Mapped[str | None] = mapped_column(Text)

    source_location: Mapped[DataLocation] = relationship()
    executed_obs_unit: Mapped[ExecutedObsUnit] = relationship()
    instrument_module: Mapped[InstrumentModule] = relationship()
    raw_data_package: Mapped[RawDataPackage | None] = relationship(back_populates="raw_data_files")


Index(
    "ix_raw_data_file_unpackaged",
    RawDataFile.source_location_id,
    RawDataFile.raw_data_package_id,
)


staging_job_raw_data_package = Table(
    "staging_job_raw_data_package",
    Base.metadata,
    Column("staging_job_id", ForeignKey("staging_job.id"), primary_key=True),
    Column("raw_data_package_id", ForeignKey("raw_data_package.id"), primary_key=True),
)


class RawDataPackage(Base):
    """Tar of the RawDataFiles of one ExecutedObsUnit x InstrumentModule at one SOURCE."""

    __tablename__ = "raw_data_package"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Stable name: the Dagster partition key (no '|', ',', '[', ']').
    name: Mapped[str] = mapped_column(String(255), unique=True)
    relative_path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(128))
    checksum_algorithm: Mapped[str | None] = mapped_column(String(32))
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[Status] = mapped_column(_enum(Status), default=Status.PENDING, index=True)
    state: Mapped[PackageState] = mapped_column(
        _enum(PackageState), default=PackageState.WAITING, index=True
    )
    source_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    executed_obs_unit_id: Mapped[int] = mapped_column(ForeignKey("executed_obs_unit.id"))
    instrument_module_id: Mapped[int] = mapped_column(ForeignKey("instrument_module.id"))
    data_transfer_package_id: Mapped[int | None] = mapped_column(
        ForeignKey("data_transfer_package.id"), index=True
    )
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    source_location: Mapped[DataLocation] = relationship()
    executed_obs_unit: Mapped[ExecutedObsUnit] = relationship()
    instrument_module: Mapped[InstrumentModule] = relationship()
    raw_data_files: Mapped[list[RawDataFile]] = relationship(back_populates="raw_data_package")
    data_transfer_package: Mapped[DataTransferPackage | None] = relationship(
        back_populates="raw_data_packages"
    )
    staging_jobs: Mapped[list[StagingJob]] = relationship(
        secondary=staging_job_raw_data_package, back_populates="raw_data_packages"
    )


class DataTransferPackage(Base):
    """Temporary tar of RawDataPackage tars, built at a BUFFER for one site-to-site transfer."""

    __tablename__ = "data_transfer_package"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    relative_path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(128))
    checksum_algorithm: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[Status] = mapped_column(_enum(Status), default=Status.PENDING, index=True)
    origin_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    origin_location: Mapped[DataLocation] = relationship()
    raw_data_packages: Mapped[list[RawDataPackage]] = relationship(
        back_populates="data_transfer_package"
    )
    data_transfers: Mapped[list[DataTransfer]] = relationship(
        back_populates="data_transfer_package"
    )


#: the index column of a key-order index: under the "C" collation on PostgreSQL (rendered where
#: an operator class would go, which is where CREATE INDEX takes a column's collation)
KEY_ORDER_POSTGRESQL_OPS = {"relative_path": 'COLLATE "C"'}


def _key_order_index(name: str, column: Any) -> Index:
    """An index for range scans over ``column`` in code point order (the order storage lists
    keys in; the consistency audit reads one slice of keys at a time): under the "C" collation
    on PostgreSQL, whose default collation orders otherwise; plain on SQLite, whose default
    (BINARY) is code point order already. Queries compare the column the same way
    (``lifecycle/audit/catalogue.ordered``)."""
    return Index(name, column, postgresql_ops=KEY_ORDER_POSTGRESQL_OPS)


_key_order_index("ix_raw_data_file_key", RawDataFile.relative_path)
_key_order_index("ix_raw_data_package_key", RawDataPackage.relative_path)
_key_order_index("ix_data_transfer_package_key", DataTransferPackage.relative_path)


class DataTransfer(Base):
    """One movement of a DataTransferPackage between two locations, and its unpacking there."""

    __tablename__ = "data_transfer"
    __table_args__ = (UniqueConstraint("data_transfer_package_id", "destination_location_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    data_transfer_package_id: Mapped[int] = mapped_column(
        ForeignKey("data_transfer_package.id"), index=True
    )
    origin_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    destination_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    # "primary" (SOURCE site -> LTA site) or "secondary" (LTA site -> LTA site), or a RouteType.
    route_kind: Mapped[str] = mapped_column(String(32), default="primary")
    status: Mapped[Status] = mapped_column(_enum(Status), default=Status.PENDING, index=True)
    unpack_status: Mapped[Status] = mapped_column(_enum(Status), default=Status.PENDING)
    bytes_transferred: Mapped[int | None] = mapped_column(BigInteger)
    throughput_bytes_per_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    unpack_retry_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    unpack_failure_reason: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    data_transfer_package: Mapped[DataTransferPackage] = relationship(
        back_populates="data_transfers"
    )
    origin_location: Mapped[DataLocation] = relationship(foreign_keys=[origin_location_id])
    destination_location: Mapped[DataLocation] = relationship(
        foreign_keys=[destination_location_id]
    )


class LongTermArchiveTransfer(Base):
    """Copy of one RawDataPackage from an LTA-site buffer into a LONG_TERM_ARCHIVE location."""

    __tablename__ = "long_term_archive_transfer"
    __table_args__ = (UniqueConstraint("raw_data_package_id", "destination_location_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    raw_data_package_id: Mapped[int] = mapped_column(ForeignKey("raw_data_package.id"))
    origin_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    destination_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    status: Mapped[Status] = mapped_column(_enum(Status), default=Status.PENDING, index=True)
    bytes_transferred: Mapped[int | None] = mapped_column(BigInteger)
    throughput_bytes_per_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    raw_data_package: Mapped[RawDataPackage] = relationship()
    origin_location: Mapped[DataLocation] = relationship(foreign_keys=[origin_location_id])
    destination_location: Mapped[DataLocation] = relationship(
        foreign_keys=[destination_location_id]
    )


class StagingJob(Base):
    """A scientist's request to stage archived RawDataPackages to a PROCESSING location."""

    __tablename__ = "staging_job"

    id: Mapped[int] = mapped_column(primary_key=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    status: Mapped[Status] = mapped_column(_enum(Status), default=Status.PENDING)
    destination_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    retention_period_minutes: Mapped[int | None] = mapped_column(Integer)
    requested_by: Mapped[str | None] = mapped_column(String(200))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()

    destination_location: Mapped[DataLocation] = relationship()
    raw_data_packages: Mapped[list[RawDataPackage]] = relationship(
        secondary=staging_job_raw_data_package, back_populates="staging_jobs"
    )


# --------------------------------------------------------------------------- physical copies


class PhysicalCopy(Base):
    """Where one file or package physically exists. Rows are never deleted, only marked."""

    __tablename__ = "physical_copy"

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[CopyType] = mapped_column(_enum(CopyType))
    data_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    status: Mapped[PhysicalCopyStatus] = mapped_column(
        _enum(PhysicalCopyStatus), default=PhysicalCopyStatus.PRESENT
    )
    size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(128))
    checksum_algorithm: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column()
    deleted_at: Mapped[datetime | None] = mapped_column()
    # Deletion bookkeeping: retries (max_retries of the policy) and a claim so that two cleanup
    # runs never work on the same copy at once.
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column()

    raw_data_file_id: Mapped[int | None] = mapped_column(ForeignKey("raw_data_file.id"))
    raw_data_package_id: Mapped[int | None] = mapped_column(ForeignKey("raw_data_package.id"))
    data_transfer_package_id: Mapped[int | None] = mapped_column(
        ForeignKey("data_transfer_package.id")
    )

    data_location: Mapped[DataLocation] = relationship()

    __table_args__ = (
        UniqueConstraint("raw_data_file_id", "data_location_id"),
        UniqueConstraint("raw_data_package_id", "data_location_id"),
        UniqueConstraint("data_transfer_package_id", "data_location_id"),
        Index("ix_physical_copy_location_status", "data_location_id", "type", "status"),
    )
    __mapper_args__ = {"polymorphic_on": "type"}


class RawDataFilePhysicalCopy(PhysicalCopy):
    raw_data_file: Mapped[RawDataFile] = relationship(foreign_keys=[PhysicalCopy.raw_data_file_id])
    __mapper_args__ = {"polymorphic_identity": CopyType.RAW_DATA_FILE}


class RawDataPackagePhysicalCopy(PhysicalCopy):
    raw_data_package: Mapped[RawDataPackage] = relationship(
        foreign_keys=[PhysicalCopy.raw_data_package_id]
    )
    __mapper_args__ = {"polymorphic_identity": CopyType.RAW_DATA_PACKAGE}


class DataTransferPackagePhysicalCopy(PhysicalCopy):
    data_transfer_package: Mapped[DataTransferPackage] = relationship(
        foreign_keys=[PhysicalCopy.data_transfer_package_id]
    )
    __mapper_args__ = {"polymorphic_identity": CopyType.DATA_TRANSFER_PACKAGE}


# --------------------------------------------------------------------------- routing


class DataTransferRoute(Base):
    """A manual route override (docs/lifecycle.md: routes)."""

    __tablename__ = "data_transfer_route"

    id: Mapped[int] = mapped_column(primary_key=True)
    route_type: Mapped[RouteType] = mapped_column(_enum(RouteType))
    origin_site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    destination_site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    # RELAY: the intermediate site; CUSTOM: explicit locations.
    relay_site_id: Mapped[int | None] = mapped_column(ForeignKey("site.id"))
    origin_location_id: Mapped[int | None] = mapped_column(ForeignKey("data_location.id"))
    destination_location_id: Mapped[int | None] = mapped_column(ForeignKey("data_location.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    origin_site: Mapped[Site] = relationship(foreign_keys=[origin_site_id])
    destination_site: Mapped[Site] = relationship(foreign_keys=[destination_site_id])
    relay_site: Mapped[Site | None] = relationship(foreign_keys=[relay_site_id])
    origin_location: Mapped[DataLocation | None] = relationship(foreign_keys=[origin_location_id])
    destination_location: Mapped[DataLocation | None] = relationship(
        foreign_keys=[destination_location_id]
    )


class RoundRobinState(Base):
    """Durable round-robin position: one row per routing key."""

    __tablename__ = "round_robin_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_index: Mapped[int] = mapped_column(Integer, default=-1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --------------------------------------------------------------------------- policy, monitoring


class PolicySetting(Base):
    """The topology's ``policy`` section, one row per key (value as JSON)."""

    __tablename__ = "policy_setting"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class IngestFinding(Base):
    """A file at a SOURCE that its ingest sensor saw and did not file, reported once: a file
    that matches no ``ingest.pattern`` (``unmatched``), a marker with no data files
    (``marker_without_files``), or a file the filing path refused (``rejected``, ``message``
    says why). Removed when the file is filed or is no longer there; ``ccat status`` lists them.
    """

    __tablename__ = "ingest_finding"
    __table_args__ = (UniqueConstraint("data_location_id", "relative_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    data_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), index=True)
    #: as shown to people: bytes that are not UTF-8 are escaped as \xNN
    relative_path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    found_at: Mapped[datetime] = mapped_column(default=utcnow)

    data_location: Mapped[DataLocation] = relationship()


class LocationAvailability(Base):
    """Whether a location answers, as seen from one site (``observer``: the site whose code
    reached it; a link between two sites can be down while the location works locally). Errors
    that belong to a location (root missing, mount gone, disk full, endpoint down, host
    unreachable) make it unavailable instead of failing packages; the observer probes it with
    backoff (``next_probe_at``) and work resumes when a probe succeeds. No row: it never failed
    from there, so it counts as available."""

    __tablename__ = "location_availability"

    data_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), primary_key=True)
    #: short name of the observing site ("" when not known, e.g. a command run by hand)
    observer: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    #: when the current state (available or not) began
    since: Mapped[datetime] = mapped_column(default=utcnow)
    #: the location error that made it unavailable (kept after it recovers, for the record)
    reason: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_probe_at: Mapped[datetime | None] = mapped_column()
    next_probe_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    data_location: Mapped[DataLocation] = relationship()


class PlannerLock(Base):
    """One row per planner scope (e.g. ``packaging:<location id>``). A planner takes it with an
    UPDATE as the first statement of its transaction, which holds a row lock on PostgreSQL and
    the write lock on SQLite until commit: two planners of the same scope (the daemon and a
    manual run, two daemons after a failover) run one after the other, never interleaved."""

    __tablename__ = "planner_lock"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    acquired_at: Mapped[datetime | None] = mapped_column()


class DiskUsageSample(Base):
    """One disk-usage measurement of a disk location (docs/lifecycle.md: buffer levels)."""

    __tablename__ = "disk_usage_sample"

    id: Mapped[int] = mapped_column(primary_key=True)
    data_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    percent: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(16))

    __table_args__ = (
        Index("ix_disk_usage_sample_location_time", "data_location_id", "measured_at"),
    )


class AuditLog(Base):
    """Every status change of a copy or package: when, why, which run, and the evidence."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[int] = mapped_column(BigInteger)
    data_location_id: Mapped[int | None] = mapped_column(ForeignKey("data_location.id"))
    old_status: Mapped[str | None] = mapped_column(String(32))
    new_status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_audit_log_entity", "entity_type", "entity_id"),)


# --------------------------------------------------------------------------- alerts


class AlertIncident(Base):
    """One thing an operator is told about (docs/operations.md: alerts and dashboards): a failed
    run, FAILED packages, a failed ``lta_presence``, a buffer at CRITICAL or EMERGENCY, a location
    unavailable too long, a stalled pipeline, a disk-pressure forecast.

    ``key`` names the incident (``{kind}:{where}``) and is unique, so the evaluation of two
    processes (two daemons, a daemon and ``ccat run-until-idle``) updates one row; sending is
    claimed with ``claimed_by``/``claimed_at`` first, so only one of them sends. The row stays
    after the incident is resolved and is reopened when the same thing happens again: its
    ``notified_at`` is what throttles the reminders across restarts."""

    __tablename__ = "alert_incident"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(512), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    #: short name of the site whose code location evaluates and sends it
    site: Mapped[str] = mapped_column(String(64), index=True)
    #: where, as shown to people (``site/location``, a job name)
    location: Mapped[str] = mapped_column(String(512))
    #: what, as of the latest evaluation
    summary: Mapped[str] = mapped_column(Text)
    first_action: Mapped[str] = mapped_column(Text)
    #: since when the condition holds (kept while it stays open)
    since: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: last open (or reminder) message delivered; None: not announced yet
    notified_at: Mapped[datetime | None] = mapped_column()
    notify_count: Mapped[int] = mapped_column(Integer, default=0)
    resolved_at: Mapped[datetime | None] = mapped_column()
    #: the "resolved" message was delivered
    resolved_notified_at: Mapped[datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column()
    #: the last delivery error (kept for ``ccat status`` and the sensor's log)
    last_error: Mapped[str | None] = mapped_column(Text)


# --------------------------------------------------------------------------- consistency audit


class AuditFindingKind(enum.Enum):
    #: the catalogue says PRESENT, the storage has no object or one of another size
    LOST = "lost"
    #: the storage has an object under the location's managed keys the catalogue does not know
    DARK = "dark"


class AuditFindingState(enum.Enum):
    #: seen, not yet confirmed by a scan at least ``audit_confirm_minutes`` later
    OPEN = "open"
    #: lost, confirmed: the copy was marked LOST and sent to repair
    ACTED = "acted"
    #: dark, confirmed: moved to the location's quarantine prefix
    QUARANTINED = "quarantined"
    #: moved back from the quarantine by an operator (``ccat quarantine release``)
    RELEASED = "released"
    #: deleted from the quarantine by an operator (``ccat quarantine purge``)
    PURGED = "purged"
    #: not seen again (the object came back, the catalogue learned it, the copy changed)
    GONE = "gone"


class AuditFinding(Base):
    """One difference between a location's storage and the catalogue, found by the consistency
    audit (docs/operations.md: the consistency audit). Rows are kept after they are closed:
    the report of what was found, when, and what was done."""

    __tablename__ = "audit_finding"

    id: Mapped[int] = mapped_column(primary_key=True)
    data_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"))
    key: Mapped[str] = mapped_column(String(2048))
    kind: Mapped[AuditFindingKind] = mapped_column(_enum(AuditFindingKind))
    state: Mapped[AuditFindingState] = mapped_column(
        _enum(AuditFindingState), default=AuditFindingState.OPEN
    )
    #: the object's size as listed (None: no object)
    size: Mapped[int | None] = mapped_column(BigInteger)
    #: the catalogue's size of a lost copy
    expected_size: Mapped[int | None] = mapped_column(BigInteger)
    #: the PRESENT copy of a lost finding
    physical_copy_id: Mapped[int | None] = mapped_column(ForeignKey("physical_copy.id"))
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column()
    #: when the state last changed after confirmation (acted, quarantined, released, purged)
    acted_at: Mapped[datetime | None] = mapped_column()
    #: where a quarantined object is now (``.ccat-quarantine/<date>/<key>``)
    quarantine_key: Mapped[str | None] = mapped_column(String(2100))
    detail: Mapped[str | None] = mapped_column(Text)

    data_location: Mapped[DataLocation] = relationship()

    __table_args__ = (
        Index("ix_audit_finding_location_state", "data_location_id", "state"),
        Index("ix_audit_finding_location_key", "data_location_id", "key"),
    )


class AuditCursor(Base):
    """Where the consistency audit of one location stands: the last key of its last slice
    (``""``: the next slice starts a new pass), and the counts of that slice."""

    __tablename__ = "audit_cursor"

    data_location_id: Mapped[int] = mapped_column(ForeignKey("data_location.id"), primary_key=True)
    last_key: Mapped[str] = mapped_column(String(2048), default="")
    pass_number: Mapped[int] = mapped_column(Integer, default=1)
    pass_started_at: Mapped[datetime | None] = mapped_column()
    #: when the last complete pass ended (None: none has yet)
    pass_finished_at: Mapped[datetime | None] = mapped_column()
    slice_at: Mapped[datetime | None] = mapped_column()
    slice_objects: Mapped[int] = mapped_column(Integer, default=0)
    slice_dark: Mapped[int] = mapped_column(Integer, default=0)
    slice_lost: Mapped[int] = mapped_column(Integer, default=0)
    #: the last slice was anomalous (too many dark or lost): what it said; None when not
    anomaly: Mapped[str | None] = mapped_column(Text)
    #: when the present run of anomalous slices began
    anomaly_since: Mapped[datetime | None] = mapped_column()

    data_location: Mapped[DataLocation] = relationship()
