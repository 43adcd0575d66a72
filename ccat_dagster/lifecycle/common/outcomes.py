"""What one pipeline stage did to one package: the facts an operator wants in the UI.

Every stage executor returns a :class:`StageOutcome` per package; the Dagster layer turns it into
a materialization (or check evaluation) of that package's partition, and the retry bookkeeping
of :mod:`ccat_dagster.lifecycle.common.retries` decides between "try again" and "FAILED".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageOutcome:
    """The result of one stage for one package (``partition`` is the package name)."""

    partition: str
    ok: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: True when the package went to FAILED (no more retries); False for "will retry".
    permanent: bool = False
    #: True when there was nothing to do (already done by an earlier run).
    skipped: bool = False
    #: True when the work waits for a location (unavailable, or without the free space the
    #: work needs): not a failure of the package, nothing counted against its retries.
    deferred: bool = False


@dataclass
class Stopwatch:
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def rate(self, nbytes: int | None) -> float | None:
        if not nbytes or self.seconds <= 0:
            return None
        return nbytes / self.seconds


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    try:
        yield watch
    finally:
        watch.seconds = time.monotonic() - watch.started


def transfer_metadata(
    *,
    name: str,
    size: int | None,
    checksum: str | None,
    algorithm: str | None,
    source: str,
    destination: str,
    seconds: float,
    file_count: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata every materialization carries (issue: what an operator wants)."""
    meta: dict[str, Any] = {
        "package": name,
        "size_bytes": size,
        "checksum": f"{algorithm}:{checksum}" if checksum else None,
        "source": source,
        "destination": destination,
        "duration_s": round(seconds, 3),
        "bytes_per_s": round(size / seconds, 1) if size and seconds > 0 else None,
    }
    if file_count is not None:
        meta["file_count"] = file_count
    meta.update(extra)
    return {k: v for k, v in meta.items() if v is not None}
