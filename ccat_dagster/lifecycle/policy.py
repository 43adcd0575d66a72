"""The lifecycle policy (the topology's ``policy`` section) as one frozen value.

Defaults are those of docs/configuration.md (buffer thresholds
70/85/95 %, 5 normal / 1 critical transfers, 30 days retention, 3 retries); rows in
``policy_setting`` written by ``ccat topology apply`` override them key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_ops_db.models import PolicySetting


@dataclass(frozen=True)
class BufferThresholds:
    """Disk-usage levels of a BUFFER in percent: 0 < warning < critical < emergency <= 100."""

    warning: float = 70
    critical: float = 85
    emergency: float = 95


@dataclass(frozen=True)
class Policy:
    data_transfer_package_max_bytes: int = 100_000_000_000
    # A DataTransferPackage smaller than max_bytes is still built once its oldest
    # RawDataPackage has waited this long, so a quiet night does not strand data at the telescope.
    data_transfer_package_max_wait_minutes: int = 60
    retention_period_minutes: int = 43_200
    buffer_thresholds_percent: BufferThresholds = field(default_factory=BufferThresholds)
    max_normal_transfers: int = 5
    max_critical_transfers: int = 1
    max_retries: int = 3

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Policy:
        """A Policy from the topology's ``policy`` mapping; missing keys keep their defaults."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if isinstance(kwargs.get("buffer_thresholds_percent"), dict):
            kwargs["buffer_thresholds_percent"] = BufferThresholds(
                **kwargs["buffer_thresholds_percent"]
            )
        return cls(**kwargs)


def get_policy(session: Session) -> Policy:
    """The policy in force: the defaults overridden by the ``policy_setting`` rows."""
    rows = session.execute(select(PolicySetting.key, PolicySetting.value)).all()
    return Policy.from_mapping({key: value for key, value in rows})
