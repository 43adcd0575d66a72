"""Boolean options are named the usual way: ``--flag`` alone, or ``--name/--no-name``; never
typer's default ``--no-no-name`` for an option whose parameter starts with ``no_``."""

from __future__ import annotations

import typer.main

from ccat_dagster.cli import app


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _flags():
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if getattr(param, "is_flag", False) and not getattr(param, "is_eager", False):
                yield " ".join(path), param


def test_every_boolean_option_is_named_the_usual_way():
    seen = 0
    for where, param in _flags():
        seen += 1
        names = [*param.opts, *param.secondary_opts]
        assert not any(n.startswith("--no-no-") for n in names), (where, names)
        for off in param.secondary_opts:
            assert off in {f"--no-{on[2:]}" for on in param.opts}, (where, names)
        # the parameter says what the flag turns on
        assert not param.name.startswith("no_"), (where, param.name)
    assert seen >= 10


def test_run_until_idle_takes_no_schedules():
    command = typer.main.get_command(app).commands["run-until-idle"]  # type: ignore[attr-defined]
    assert command.make_context("run-until-idle", ["--no-schedules"]).params["schedules"] is False
    assert command.make_context("run-until-idle", []).params["schedules"] is True
