"""The lifecycle policy in force: the one model of :mod:`ccat_ops_db.policy` (which the topology
loader validates files with) read from the ops database.

Defaults are those of docs/configuration.md (buffer thresholds 70/85/95 %, 5 normal / 1 critical
transfers, 30 days retention, 3 retries); rows in ``policy_setting`` written by ``ccat topology
apply`` override them key by key.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccat_ops_db.models import PolicySetting
from ccat_ops_db.policy import BufferThresholds, Policy

__all__ = ["BufferThresholds", "Policy", "get_policy"]


def get_policy(session: Session) -> Policy:
    """The policy in force: the defaults overridden by the ``policy_setting`` rows."""
    rows = session.execute(select(PolicySetting.key, PolicySetting.value)).all()
    return Policy.from_mapping({key: value for key, value in rows})
