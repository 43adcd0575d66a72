"""Batched stage jobs: one run handles many packages (seeds: bulk operations).

The op throttles through a concurrency pool named ``{site}_{location}_{operation}``, retries
transient storage faults with exponential backoff (Dagster RetryPolicy; every stage is idempotent
per package, so a retried op skips what is done), and fails the run, with the reasons, when a
package failed, so an operator sees it in the UI.
"""

from dagster import (
    Backoff,
    Config,
    Failure,
    Jitter,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    job,
    op,
)

from ccat_dagster.defs.resources import OpsDbResource, SiteStorageResource
from ccat_dagster.defs.stages import Stage
from ccat_dagster.defs.topology import SiteView

TRANSIENT_RETRY = RetryPolicy(
    max_retries=3, delay=2.0, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


class StageConfig(Config):
    """The items (ops-DB ids) this run works on, chosen by the stage's sensor."""

    items: list[str]


def stage_job_name(site: SiteView, stage: Stage) -> str:
    return f"{site.short_name}_{stage.name}"


def stage_op_name(site: SiteView, stage: Stage) -> str:
    return f"{site.short_name}_{stage.name}_batch"


def stage_pool(site: SiteView, stage: Stage) -> str:
    """The concurrency pool of a stage's op: ``{site}_{location}_{operation}``."""
    return f"{site.short_name}_{stage.pool_location(site)}_{stage.operation.value}"


def build_stage_job(site: SiteView, stage: Stage) -> JobDefinition:
    pool = stage_pool(site, stage)

    @op(
        name=stage_op_name(site, stage),
        description=stage.description,
        pool=pool,
        retry_policy=TRANSIENT_RETRY,
        tags={"ccat/stage": stage.name, "ccat/site": site.short_name},
    )
    def stage_batch(
        context: OpExecutionContext,
        config: StageConfig,
        ops_db: OpsDbResource,
        storage: SiteStorageResource,
    ) -> None:
        failed: dict[str, str] = {}
        done = skipped = 0
        with ops_db.session() as session, storage.registry() as storages:
            for item in config.items:
                report = stage.execute(session, item, storages.get, context.run_id)
                for event in report.events:
                    context.log_event(event)
                if not report.outcome.ok:
                    state = "FAILED" if report.outcome.permanent else "will retry"
                    failed[report.outcome.partition] = f"{state}: {report.outcome.error}"
                    context.log.error(
                        f"{report.outcome.partition}: {state}: {report.outcome.error}"
                    )
                elif report.outcome.skipped:
                    skipped += 1
                else:
                    done += 1
        context.log.info(f"{stage.name}: {done} done, {skipped} already done, {len(failed)} failed")
        if failed:
            raise Failure(
                description=f"{len(failed)} of {len(config.items)} packages failed in {stage.name}",
                metadata={k: MetadataValue.text(v) for k, v in list(failed.items())[:100]},
                allow_retries=False,
            )

    @job(
        name=stage_job_name(site, stage),
        description=stage.description,
        tags={"ccat/stage": stage.name, "ccat/site": site.short_name},
    )
    def stage_job() -> None:
        stage_batch()

    return stage_job
