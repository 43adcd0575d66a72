"""The lifecycle policy (the topology's ``policy`` section): one validated model.

The topology loader validates a file's ``policy`` mapping with it and the lifecycle decides
with it (``ccat_dagster.lifecycle.common.policy.get_policy``: these defaults overridden key by key
by the ``policy_setting`` rows that ``ccat topology apply`` writes). What each key means is in
docs/configuration.md and docs/lifecycle.md.
"""

from __future__ import annotations

from dataclasses import asdict, field, fields
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from ccat_ops_db.validators import fail, is_number, messages, whole_number

_CONFIG = ConfigDict(extra="forbid")


def _percent(value: Any) -> Any:
    if not is_number(value):
        fail(f"must be a number (percent), got {value!r}")
    return value


Percent = Annotated[float, BeforeValidator(_percent)]


def _fraction(value: Any) -> Any:
    if not is_number(value) or not 0 <= value <= 1:
        fail(f"must be a fraction between 0 and 1 (0.01 is 1%), got {value!r}")
    return value


Fraction = Annotated[float, BeforeValidator(_fraction)]


def _count(minimum: int) -> Any:
    return BeforeValidator(
        whole_number(minimum, "must be a whole number >= {minimum}, got {value}")
    )


@dataclass(frozen=True, config=_CONFIG)
class BufferThresholds:
    """Disk-usage levels of a BUFFER in percent: 0 < warning < critical < emergency <= 100."""

    warning: Percent = 70
    critical: Percent = 85
    emergency: Percent = 95

    @model_validator(mode="after")
    def _in_order(self) -> BufferThresholds:
        w, c, e = self.warning, self.critical, self.emergency
        if not 0 < w < c < e <= 100:
            fail(
                "need 0 < warning < critical < emergency <= 100, got "
                f"warning={_shown(w)}, critical={_shown(c)}, emergency={_shown(e)}"
            )
        return self


def _rates_by_location(value: Any) -> Any:
    """``{"site/location": bytes per second}``: whole numbers >= 0 (0 = unlimited)."""
    if not isinstance(value, dict):
        fail('must be a mapping of "site/location" to bytes per second, e.g. {"cologne/lta": 0}')
    for key, rate in value.items():
        if not isinstance(key, str) or key.count("/") != 1 or not all(key.split("/")):
            fail(f'keys must name a location as "site/location", got {key!r}')
        whole_number(0, f"{key}: must be a whole number >= 0 (bytes per second), got {{value}}")(
            rate
        )
    return value


def _thresholds(value: Any) -> Any:
    if not isinstance(value, dict | BufferThresholds):
        fail("must be a mapping, e.g. {warning: 70, critical: 85, emergency: 95}")
    return value


@dataclass(frozen=True, config=_CONFIG)
class Policy:
    data_transfer_package_max_bytes: Annotated[int, _count(1)] = 100_000_000_000
    # A DataTransferPackage smaller than max_bytes is still built once its oldest
    # RawDataPackage has waited this long, so a quiet night does not strand data at the telescope.
    data_transfer_package_max_wait_minutes: Annotated[int, _count(0)] = 60
    retention_period_minutes: Annotated[int, _count(0)] = 43_200
    buffer_thresholds_percent: Annotated[BufferThresholds, BeforeValidator(_thresholds)] = (
        BufferThresholds()
    )
    max_normal_transfers: Annotated[int, _count(1)] = 5
    max_critical_transfers: Annotated[int, _count(1)] = 1
    # At CRITICAL the buffer monitor requests a cleanup of the site this often (one at a time),
    # at EMERGENCY more often still, instead of waiting for the cleanup schedule.
    critical_cleanup_interval_minutes: Annotated[int, _count(1)] = 5
    emergency_cleanup_interval_minutes: Annotated[int, _count(1)] = 1
    max_retries: Annotated[int, _count(0)] = 3
    # Every archive copy is read back in full and checksummed this often (the scrub).
    lta_reverify_interval_minutes: Annotated[int, _count(1)] = 43_200
    # The scrub reads each archive at most this fast (bytes/s, 0 = unlimited), per location
    # overridable by "site/location"; one run of it reads at most rate x lta_reverify_run_minutes.
    lta_reverify_bytes_per_second: Annotated[int, _count(0)] = 0
    lta_reverify_bytes_per_second_by_location: Annotated[
        dict[str, int], BeforeValidator(_rates_by_location)
    ] = field(default_factory=dict)
    lta_reverify_run_minutes: Annotated[int, _count(1)] = 60
    # The restore drill: every restore_drill_interval_minutes a random sample of this many
    # archived packages is staged from each archive of a site to its PROCESSING location and
    # verified file by file.
    restore_drill_interval_minutes: Annotated[int, _count(1)] = 10_080
    restore_drill_sample_size: Annotated[int, _count(1)] = 3
    # Replication between archives (an archive that joined later is backfilled from the
    # others): at most this many packages, and this many bytes (at least one package), per
    # archive run of a site, after its first archiving and repairs.
    lta_backfill_max_per_run: Annotated[int, _count(1)] = 100
    lta_backfill_bytes_per_run: Annotated[int, _count(1)] = 500_000_000_000
    # The disk-pressure forecast fits the fill rate over this many hours of samples, and warns
    # when a location reaches its critical level in fewer than disk_forecast_alert_hours.
    disk_forecast_window_hours: Annotated[int, _count(1)] = 24
    disk_forecast_alert_hours: Annotated[int, _count(1)] = 12
    # Alerts (docs/operations.md: alerts and dashboards): an open incident is announced again at
    # most this often; a location must stay unavailable this long before it is one (probes
    # with backoff cure most outages sooner); a site with pending work and no status change
    # for alert_stall_minutes is a stalled pipeline.
    alert_repeat_minutes: Annotated[int, _count(1)] = 240
    alert_location_unavailable_minutes: Annotated[int, _count(0)] = 30
    alert_stall_minutes: Annotated[int, _count(1)] = 120
    # A condition gone for this long is resolved for good ("resolved" sent); one back sooner
    # continues the same incident, so a level hovering at its threshold is not a message a tick.
    alert_resolved_after_minutes: Annotated[int, _count(0)] = 10
    # The consistency audit (docs/operations.md): each location is listed in slices of at most
    # audit_slice_objects objects, one slice per location every audit_interval_minutes; a
    # finding is acted on only when a scan at least audit_confirm_minutes after the first sees
    # it again; a slice with more than audit_anomaly_fraction of its objects dark or lost acts
    # on nothing and raises an alert instead (a wrong mount or bucket).
    audit_slice_objects: Annotated[int, _count(1)] = 10_000
    audit_interval_minutes: Annotated[int, _count(0)] = 60
    audit_confirm_minutes: Annotated[int, _count(0)] = 1_440
    audit_anomaly_fraction: Fraction = 0.01
    # Partition pruning (docs/scale.md): a package whose lifecycle finished more than this many
    # days ago (no copy outside the archives holds it, none ended within the horizon, its
    # archive copy older than the horizon) leaves the archives' partition sets; 0 keeps all.
    partition_horizon_days: Annotated[int, _count(0)] = 0

    @model_validator(mode="after")
    def _critical_slows_down(self) -> Policy:
        normal, critical = self.max_normal_transfers, self.max_critical_transfers
        if critical > normal:
            fail(
                f"max_critical_transfers ({critical}) must not exceed max_normal_transfers "
                f"({normal}): a full buffer must slow transfers down, not speed them up"
            )
        return self

    @model_validator(mode="after")
    def _emergency_cleans_more_often(self) -> Policy:
        critical = self.critical_cleanup_interval_minutes
        emergency = self.emergency_cleanup_interval_minutes
        if emergency > critical:
            fail(
                f"emergency_cleanup_interval_minutes ({emergency}) must not exceed "
                f"critical_cleanup_interval_minutes ({critical}): a fuller buffer must be "
                "cleaned at least as often"
            )
        return self

    def lta_reverify_rate(self, location: str) -> int:
        """The scrub's read rate at ``location`` ("site/location"), bytes/s; 0 = unlimited."""
        return self.lta_reverify_bytes_per_second_by_location.get(
            location, self.lta_reverify_bytes_per_second
        )

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Policy:
        """A Policy from stored ``policy`` values; keys it does not know are ignored (rows of
        an older version), missing keys keep their defaults."""
        return _ADAPTER.validate_python({k: v for k, v in values.items() if k in POLICY_KEYS})


def _shown(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_ADAPTER = TypeAdapter(Policy)
POLICY_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Policy))
THRESHOLD_KEYS: tuple[str, ...] = tuple(f.name for f in fields(BufferThresholds))
#: Keys and defaults of the ``policy`` section, as a topology file writes them.
POLICY_DEFAULTS: dict[str, Any] = asdict(Policy())


def validate_policy(raw: Any) -> tuple[dict[str, Any], list[str]]:
    """The policy keys of a topology file as given (thresholds completed with their
    defaults), and the operator messages of every problem (``policy.<key>: ...``)."""
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, ["policy: must be a mapping, e.g. policy: {max_normal_transfers: 5}"]
    try:
        _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        return {}, messages(
            exc.errors(),
            where=lambda loc: ".".join(["policy", *map(str, loc)]),
            keys_of=lambda loc: THRESHOLD_KEYS if loc else POLICY_KEYS,
            not_a_mapping=lambda loc: "must be a mapping",
        )
    policy = dict(raw)
    if "buffer_thresholds_percent" in policy:
        policy["buffer_thresholds_percent"] = {
            **POLICY_DEFAULTS["buffer_thresholds_percent"],
            **raw["buffer_thresholds_percent"],
        }
    return policy, []
