"""Batched stage jobs: one run handles many packages (docs/design.md: why batched op jobs).

The op throttles through the concurrency pool of its stage (``lifecycle.common.names``), retries
transient storage faults with exponential backoff (Dagster RetryPolicy; every stage is idempotent
per package, so a retried op skips what is done), and fails the run, with the reasons, when a
package failed, so an operator sees it in the UI. Work that waits for a location (unavailable
from this site, or a buffer without room for it) is *deferred*: it stays PENDING, nothing is
counted against it, the rest of the batch that needs that location is skipped, the run does not
fail and does not burn the retry policy; the deferred items and why are in the log and the op's
output metadata.
"""

from dagster import (
    Backoff,
    Failure,
    Jitter,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    job,
    op,
)

from ccat_dagster.defs.availability import StageGate
from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import Stage, log_event, site_row
from ccat_dagster.defs.topology import SiteView
from ccat_dagster.lifecycle.common import names
from ccat_dagster.lifecycle.common.activity import why_inactive
from ccat_dagster.storage.errors import LocationUnavailableError

TRANSIENT_RETRY = RetryPolicy(
    max_retries=3, delay=2.0, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


def build_stage_job(site: SiteView, stage: Stage) -> JobDefinition:
    stage_config = stage.config  # the op's typed run config (its ``items``)
    at = stage.location(site)  # where the stage ran when the definitions loaded

    @op(
        name=names.stage_op(site.short_name, stage.name),
        description=stage.description,
        pool=stage.pool(site),
        retry_policy=TRANSIENT_RETRY,
        out=Out(dict),
        tags={"ccat/stage": stage.name, "ccat/site": site.short_name},
    )
    def stage_batch(
        context: OpExecutionContext,
        config: stage_config,  # pyright: ignore[reportInvalidTypeForm]
        ops_db: OpsDbResource,
        storage: SiteStorageResource,
    ):
        failed: dict[str, str] = {}
        deferred: dict[str, str] = {}  # str(item) -> why
        done = skipped = 0
        with ops_db.session() as session, storage.registry() as storages:
            # A run queued before `ccat topology apply` switched its site or location off
            # starts nothing: its items stay PENDING, as deferred work does.
            stopped = why_inactive(session, site.short_name, at and at.name)
            items = [] if stopped else list(config.items)
            if stopped:
                deferred.update({str(item): f"not started: {stopped}" for item in config.items})
            gate = StageGate.open(
                session,
                stage,
                site_row(session, site.short_name),
                storage.site,
                storages.get,
                items,
                run_id=context.run_id,
            )
            for item in items:
                for event in gate.take_events():
                    log_event(context, event)
                why = gate.waits(item)
                if why is not None:
                    deferred[str(item)] = why
                    continue
                try:
                    report = stage.execute(session, item, storages.get, context.run_id)
                except LocationUnavailableError as exc:
                    # The location's fault, not the item's: recorded once, the item and the
                    # rest of the batch that needs the location wait; no retry is burnt.
                    if gate.location_error(exc, run_id=context.run_id) is None:
                        raise
                    deferred[str(item)] = f"waiting: {exc}"
                    continue
                for event in report.events:
                    log_event(context, event)
                if report.outcome.deferred:
                    deferred[report.outcome.partition] = report.outcome.error or "waiting"
                elif not report.outcome.ok:
                    state = "FAILED" if report.outcome.permanent else "will retry"
                    failed[report.outcome.partition] = f"{state}: {report.outcome.error}"
                    context.log.error(
                        f"{report.outcome.partition}: {state}: {report.outcome.error}"
                    )
                elif report.outcome.skipped:
                    skipped += 1
                else:
                    done += 1
            for event in gate.take_events():
                log_event(context, event)
        for item, why in deferred.items():
            context.log.warning(f"{item}: deferred, {why}")
        context.log.info(
            f"{stage.name}: {done} done, {skipped} already done, {len(deferred)} deferred "
            f"(waiting for a location), {len(failed)} failed"
        )
        counts = {
            "done": done,
            "skipped": skipped,
            "deferred": len(deferred),
            "failed": len(failed),
        }
        if failed:
            raise Failure(
                description=f"{len(failed)} of {len(config.items)} packages failed in {stage.name}",
                metadata={
                    **{k: MetadataValue.text(v) for k, v in list(failed.items())[:100]},
                    "deferred": MetadataValue.int(len(deferred)),
                },
                allow_retries=False,
            )
        metadata: dict[str, MetadataValue] = {k: MetadataValue.int(v) for k, v in counts.items()}
        metadata.update(
            {f"deferred {k}": MetadataValue.text(v) for k, v in list(deferred.items())[:50]}
        )
        return Output(counts, metadata=metadata)

    @job(
        name=names.stage_job(site.short_name, stage.name),
        description=stage.description,
        tags={"ccat/stage": stage.name, "ccat/site": site.short_name},
    )
    def stage_job() -> None:
        stage_batch()

    return stage_job
