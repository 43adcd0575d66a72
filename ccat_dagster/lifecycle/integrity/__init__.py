"""``ccat verify``: the archive's invariant checked against the storage, not the catalogue.

- :mod:`.verify`: :func:`verify_catalogue`, the entry point;
- :mod:`.scope`: which locations (every one, or some sites and locations);
- :mod:`.reads`: stat every copy that must hold data, read the sampled ones in full;
- :mod:`.catalogue`: the clauses over the catalogue and audit log (archive presence, no archive
  deletion, deletion records);
- :mod:`.files`: every raw data file held by at least one good copy;
- :mod:`.report`: violations (kind, where, what to do) and counters.

No Dagster here; the command is ``ccat_dagster/cli/verify.py``.
"""

from ccat_dagster.lifecycle.integrity.report import KINDS, Counters, VerifyReport, Violation
from ccat_dagster.lifecycle.integrity.scope import VerifyScopeError
from ccat_dagster.lifecycle.integrity.verify import StaleTemporaries, verify_catalogue

__all__ = [
    "KINDS",
    "Counters",
    "StaleTemporaries",
    "VerifyReport",
    "VerifyScopeError",
    "Violation",
    "verify_catalogue",
]
