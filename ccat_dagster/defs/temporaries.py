"""Removing temporaries of killed runs at one site, as a step of the site's cleanup job.

The cutoff is the start of the oldest run in flight on the Dagster instance (or now) minus
``CCAT_TEMP_SWEEP_MARGIN_SECONDS`` (default 600) for clock skew between this host and the
storages; what was last written before it belongs to no live run. Every active location of the
site is swept through the site's own view of its storage (long-term archives included: a
temporary is never a copy).
"""

from datetime import UTC, datetime

from dagster import DagsterInstance, In, OpDefinition, OpExecutionContext, op

from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.settings import Settings
from ccat_dagster.defs.stages import site_row
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.temporaries import TemporariesReport, sweep_temporaries
from ccat_dagster.run_health import temporaries_cutoff


def sweep_margin_seconds() -> float:
    """``Settings.temp_sweep_margin_seconds`` (``CCAT_TEMP_SWEEP_MARGIN_SECONDS``, read at each
    sweep)."""
    return Settings.from_env().temp_sweep_margin_seconds


def sweep_site_temporaries(
    instance: DagsterInstance,
    ops_db: OpsDbResource,
    storage: SiteStorageResource,
    *,
    location: str | None = None,
    dry_run: bool = False,
) -> TemporariesReport:
    """Remove the temporaries at the site of ``storage`` (or at its ``location``) that no run
    in flight can own; ``dry_run`` only lists them."""
    cutoff = temporaries_cutoff(instance, margin_seconds=sweep_margin_seconds())
    with ops_db.session() as session, storage.registry() as storages:
        locations = [
            loc
            for loc in site_row(session, storage.site).locations
            if loc.active and location in (None, loc.name)
        ]
        return sweep_temporaries(
            locations,
            storages.get,
            older_than=datetime.fromtimestamp(cutoff, UTC),
            dry_run=dry_run,
        )


def build_temporaries_op(site_short_name: str) -> OpDefinition:
    """The cleanup job's third step; it takes the run's ``location`` and ``dry_run`` from the
    first step's output (``{"location": ..., "dry_run": ...}``)."""

    @op(
        name=names.cleanup_temporaries_op(site_short_name),
        ins={"checked": In(dict)},
        description=(
            "Remove partial files and unfinished uploads left by killed runs (older than the "
            "oldest run in flight)."
        ),
        tags={"ccat/site": site_short_name},
    )
    def temporaries_step(
        context: OpExecutionContext,
        checked: dict,
        ops_db: OpsDbResource,
        storage: SiteStorageResource,
    ) -> None:
        report = sweep_site_temporaries(
            context.instance,
            ops_db,
            storage,
            location=checked.get("location"),
            dry_run=bool(checked.get("dry_run")),
        )
        context.log.info(report.summary())
        for error in report.errors:
            # not a failure of the cleanup: the next sweep tries again
            context.log.warning(error)

    return temporaries_step
