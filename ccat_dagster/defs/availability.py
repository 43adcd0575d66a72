"""Location availability and admission on Dagster: which items of a stage may run now at a site,
the probe sensor per site, and what the UI shows about each location.

``StageGate`` is what the stage sensors and the batched ops ask before running an item: it waits
(is *deferred*, not failed) when a location it needs is unavailable from this site, or when the
buffer it writes into has no room for it (``lifecycle.capacity.admission``). A location error met
while running marks the location unavailable from this site and records a ``location_available``
check evaluation (and an observation) on the location's asset. ``{site}_location_probe_sensor``
probes, with backoff, the locations this site recorded as unavailable and records the result the
same way, ticking every ``PROBE_BACKOFF_BASE_SECONDS``; ``ccat run-until-idle`` probes them all
when it starts (``probe_unavailable_now``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetObservation,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    MetadataValue,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_check,
    sensor,
)
from sqlalchemy.orm import Session

from ccat_dagster.defs.activity import skip_if_inactive
from ccat_dagster.defs.keys import location_asset_key
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import Stage, location_named
from ccat_dagster.defs.topology import LocationView, SiteView
from ccat_dagster.lifecycle.capacity.admission import Admission, plan_admission
from ccat_dagster.lifecycle.capacity.availability import (
    PROBE_BACKOFF_BASE_SECONDS,
    Needs,
    ProbeResult,
    Unavailability,
    UnavailableLocation,
    describe_waits,
    make_probes_due,
    probe_and_record,
    probe_due_locations,
    record_location_error,
    unavailability,
)
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.activity import inactive_among, inactive_location_ids
from ccat_dagster.storage.base import DiskUsage, Storage
from ccat_dagster.storage.errors import LocationUnavailableError, StorageError
from ccat_ops_db.models import DataLocation, Site

#: the probe sensor ticks as often as the shortest backoff delay
PROBE_INTERVAL_SECONDS = PROBE_BACKOFF_BASE_SECONDS
LOCATION_AVAILABLE = "location_available"

StorageFor = Callable[[DataLocation], Storage]


# --------------------------------------------------------------------------- UI events


def location_asset(location: DataLocation) -> AssetKey:
    """The asset that stands for a location in the UI (its data at that location)."""
    return location_asset_key(location.site.short_name, location.name, location.location_type)


def location_events(
    location: DataLocation, *, ok: bool, detail: str, observer: str
) -> list[AssetObservation | AssetCheckEvaluation]:
    """A ``location_available`` check evaluation and an observation of the location's asset."""
    metadata = {
        "available": MetadataValue.bool(ok),
        "observer": MetadataValue.text(observer),
        "detail": MetadataValue.text(detail),
    }
    key = location_asset(location)
    return [
        AssetObservation(asset_key=key, metadata=metadata),
        AssetCheckEvaluation(
            asset_key=key,
            check_name=LOCATION_AVAILABLE,
            passed=ok,
            severity=AssetCheckSeverity.WARN,
            description=f"{'answers' if ok else 'unavailable'} from {observer}: {detail}",
            metadata=metadata,
        ),
    ]


# --------------------------------------------------------------------------- gate


def _usage(storage: Storage) -> DiskUsage | None:
    """Disk usage for admission; None (admit) where a location has no capacity (S3)."""
    try:
        return storage.disk_usage()
    except NotImplementedError:
        return None


@dataclass
class StageGate:
    """Whether each item of a stage may run now at ``observer``'s site, and why not."""

    session: Session
    stage: Stage
    site: Site
    observer: str
    storage_for: StorageFor
    unavailable: Unavailability
    #: locations switched off in the topology since the definitions loaded: never started on
    inactive: dict[int, str] = field(default_factory=dict)
    needs: dict[Hashable, Needs] = field(default_factory=dict)
    admissions: dict[int, Admission] = field(default_factory=dict)
    targets: dict[Hashable, tuple[DataLocation, str]] = field(default_factory=dict)
    #: location errors met while measuring (already recorded), for the UI
    newly_unavailable: list[tuple[DataLocation, UnavailableLocation]] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        session: Session,
        stage: Stage,
        site: Site,
        observer: str,
        storage_for: StorageFor,
        items: Sequence[Hashable],
        *,
        run_id: str | None = None,
    ) -> StageGate:
        gate = cls(
            session,
            stage,
            site,
            observer,
            storage_for,
            unavailability(session, observer),
            inactive_location_ids(session),
        )
        items = list(items)
        if items:
            # else computed only for the items of a batch that meets an unavailable location
            if gate.unavailable or gate.inactive:
                gate.needs = stage.needs(session, site, items)
            if stage.admission_targets is not None:
                gate.targets = stage.admission_targets(session, site, items)
                gate._admit(run_id)
        return gate

    def _admit(self, run_id: str | None) -> None:
        for location, _key in self.targets.values():
            if location.id in self.admissions or self.unavailable.blocks(location.id, write=True):
                continue
            try:
                usage = _usage(self.storage_for(location))
            except LocationUnavailableError as exc:
                self.location_error(exc, run_id=run_id)
                continue
            except StorageError:
                usage = None  # cannot measure now: the write itself meets the error
            self.admissions[location.id] = plan_admission(self.session, location, usage)

    def waits(self, item: Hashable) -> str | None:
        """Why ``item`` cannot run now (None: it may run)."""
        if self.inactive:
            needs = self._needs_of(item)
            stopping = inactive_among(
                self.inactive,
                reads=needs.reads,
                writes=needs.writes,
                any_of_reads=needs.any_of_reads,
            )
            if stopping:
                return f"not started: {', '.join(stopping)} inactive in the ops DB"
        if self.unavailable:
            needs = self._needs_of(item)
            blocking = self.unavailable.waiting_for(needs)
            if blocking:
                return f"waiting for {describe_waits(blocking)}"
        target = self.targets.get(item)
        if target is not None:
            location, key = target
            admission = self.admissions.get(location.id)
            if admission is not None and not admission.admits(key):
                return admission.reason(key)
        return None

    def _needs_of(self, item: Hashable) -> Needs:
        needs = self.needs.get(item)
        if needs is None:
            # a stage that declares no needs for an item uses no location but its own
            found = self.stage.needs(self.session, self.site, [item]).get(item, Needs())
            needs = self.needs[item] = found
        return needs

    def location_error(
        self, exc: LocationUnavailableError, *, run_id: str | None = None
    ) -> UnavailableLocation | None:
        """Record a location error (the location is unavailable from this site from now on, for
        the rest of the batch too); None when the error names no known location."""
        self.session.rollback()
        row = record_location_error(self.session, exc, observer=self.observer, run_id=run_id)
        if row is None:
            return None
        self.unavailable.add(row)
        location = self.session.get_one(DataLocation, row.location_id)
        self.newly_unavailable.append((location, row))
        return row

    def take_events(self) -> list[AssetObservation | AssetCheckEvaluation]:
        """UI events of the locations found unavailable since the last call."""
        events = []
        for location, row in self.newly_unavailable:
            events += location_events(location, ok=False, detail=row.reason, observer=self.observer)
        self.newly_unavailable = []
        return events


# --------------------------------------------------------------------------- probe sensor


def build_location_probe_sensor(site: SiteView) -> SensorDefinition:
    s = site.short_name

    @sensor(
        name=names.location_probe_sensor(s),
        minimum_interval_seconds=PROBE_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            f"Probe, with backoff, the locations that site {s} found unavailable; work that "
            "waits for them resumes when they answer again."
        ),
    )
    def location_probe(
        context: SensorEvaluationContext, ops_db: OpsDbResource, storage: SiteStorageResource
    ):
        events = []
        lines = []
        with ops_db.session() as session, storage.registry() as storages:
            stopped = skip_if_inactive(context, session, s)
            if stopped is not None:
                return stopped
            for location, result in probe_due_locations(session, storages.get, observer=s):
                events += location_events(location, ok=result.ok, detail=result.detail, observer=s)
                lines.append(
                    f"{result.location}: {'available again' if result.ok else 'still unavailable'}"
                    f" ({result.detail})"
                )
        for line in lines:
            context.log.info(line)
        if not events:
            return SkipReason("no unavailable location is due for a probe")
        return SensorResult(asset_events=events)

    return location_probe


# --------------------------------------------------------------------------- asset checks


def _location_check(location: LocationView, key: AssetKey):
    site = location.site

    @asset_check(
        asset=key,
        name=LOCATION_AVAILABLE,
        description=(
            f"{location.qualified_name} answers (probed from {site}): reachable, writable, "
            "with room. "
            "Also recorded whenever a run or the probe sensor finds it unavailable or back."
        ),
    )
    def _check(ops_db: OpsDbResource, storage: SiteStorageResource) -> AssetCheckResult:
        with ops_db.session() as session, storage.registry() as storages:
            loc = location_named(session, site, location.name)
            result = probe_and_record(session, loc, storages.get(loc), observer=storage.site)
        return AssetCheckResult(
            passed=result.ok,
            severity=AssetCheckSeverity.WARN,
            description=result.detail,
            metadata={"observer": MetadataValue.text(storage.site)},
        )

    return _check


def build_location_checks(site: SiteView, asset_keys: set[AssetKey]) -> list:
    """``location_available`` on the asset of each location of the site that has one here."""
    checks = []
    for location in site.locations:
        key = location_asset_key(site.short_name, location.name, location.location_type)
        if key in asset_keys:
            checks.append(_location_check(location, key))
    return checks


# --------------------------------------------------------------------------- run-until-idle


def probe_unavailable_now(
    definitions: Sequence[Definitions], instance: DagsterInstance | None = None
) -> list[ProbeResult]:
    """Probe now every location that a site of ``definitions`` recorded as unavailable, as that
    site reaches it (the start of ``ccat run-until-idle``: the first pass then sees what answers
    again, whatever order the sensors tick in). The UI events go to ``instance``."""
    results = []
    for defs in definitions:
        resources = defs.resources or {}  # Definitions without resources probe nothing
        ops_db, storage = resources.get("ops_db"), resources.get("storage")
        if not isinstance(ops_db, OpsDbResource) or not isinstance(storage, SiteStorageResource):
            continue
        with ops_db.session() as session, storage.registry() as storages:
            make_probes_due(session, observer=storage.site)
            for location, result in probe_due_locations(
                session, storages.get, observer=storage.site
            ):
                results.append(result)
                if instance is None:
                    continue
                events = location_events(
                    location, ok=result.ok, detail=result.detail, observer=storage.site
                )
                for event in events:
                    instance.report_runless_asset_event(event)
    return results
