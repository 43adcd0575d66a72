"""Work that keeps failing in one ``ccat run-until-idle``: failures in a row per request (job +
run config), reset by a success of the job; a request over the limit is blocked for the rest of
the invocation and reported with the reason its last run failed (a Failure's description and
metadata, else the innermost error). The limit is above any item's own retry budget (first
attempt + policy ``max_retries``), so an item's retries are never cut short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: failures in a row beyond the ops-DB retry budget (first attempt + max_retries) of an item
FAILURES_BEYOND_RETRY_BUDGET = 1
DEFAULT_MAX_REQUEST_FAILURES = 5  # without an ops DB to read the policy from


@dataclass(frozen=True)
class BlockedRequest:
    """A request not launched again in this invocation: it kept failing."""

    job_name: str
    run_config: dict[str, Any]
    failures: int
    last_run_id: str
    reason: str

    def describe(self) -> str:
        return (
            f"{self.job_name} {config_summary(self.run_config)}: failed {self.failures} times "
            f"in a row (last run {self.last_run_id}): {self.reason}"
        )


def config_summary(run_config: dict[str, Any]) -> str:
    text = json.dumps(run_config, sort_keys=True, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def failure_reason(result) -> str:
    """Why a run failed, from its step failures (a Failure's description and metadata, else the
    innermost error), or from the run failure event."""
    parts: list[str] = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        user = data.user_failure_data
        if user is not None and user.description:
            details = [
                f"{key}: {getattr(value, 'value', value)}"
                for key, value in list((user.metadata or {}).items())[:10]
            ]
            parts.append("; ".join([user.description, *details]))
        elif data.error is not None:
            error = data.error
            while error.cause is not None:
                error = error.cause
            parts.append(error.message.strip())
    if not parts:
        try:
            parts.append(result.get_run_failure_event().message or "run failed")
        except Exception:  # noqa: BLE001 - no failure event: say so
            parts.append("run failed (no failure event; see the run in the UI)")
    return " | ".join(parts)


class FailureStreaks:
    """Failures in a row per (job, run config) in this invocation; a success of the job resets
    every streak of that job."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._streaks: dict[tuple[str, str], list[str]] = {}
        self._blocked: set[tuple[str, str]] = set()

    @staticmethod
    def key(job_name: str, run_config: dict[str, Any]) -> tuple[str, str]:
        return job_name, json.dumps(run_config, sort_keys=True, default=str)

    def is_blocked(self, key: tuple[str, str]) -> bool:
        return key in self._blocked

    def failed(self, key: tuple[str, str], run_id: str) -> int:
        runs = self._streaks.setdefault(key, [])
        runs.append(run_id)
        if len(runs) >= self.limit:
            self._blocked.add(key)
        return len(runs)

    def succeeded(self, job_name: str) -> None:
        for key in [k for k in self._streaks if k[0] == job_name]:
            del self._streaks[key]
