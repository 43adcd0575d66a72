"""What several benchmarks share (not a benchmark itself: ``make bench`` runs bench_*.py)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event


class StatementCounter:
    """Counts the SQL statements ``engine`` runs while the ``with`` block is open."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine, self.count = engine, 0

    def _on(self, *_args) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *_exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)
