"""The ``ccat`` command: one module per command group, each with a ``register(app)`` function.

To add a group, write ``ccat_dagster/cli/<group>.py`` with ``register(app: typer.Typer)`` and add
its module name to ``COMMAND_MODULES`` (one line). Operator errors (see
:mod:`ccat_dagster.cli._common`) end with exit code 1 and the message on stderr, no traceback.
"""

from __future__ import annotations

import importlib

import typer

from ccat_dagster.cli._common import CcatGroup

app = typer.Typer(
    cls=CcatGroup,
    name="ccat",
    help="CCAT data lifecycle: ops database, topology, locations and raw data filing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = (
    "db",
    "instance",
    "topology",
    "locations",
    "files",
    "pipeline",
    "retry",
    "demo",
    "deletion",
    "disk_monitor",
    "staging",
    "verify",
    "quarantine",
)

for _module in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_module}").register(app)
