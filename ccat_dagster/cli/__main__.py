"""``python -m ccat_dagster.cli``: the same as the ``ccat`` command."""

from ccat_dagster.cli import app

app()
