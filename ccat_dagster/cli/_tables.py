"""Tables and progress of the ``ccat`` command, with rich.

On a terminal rich fits tables to its width and shows progress bars; piped into a file, a log or
a test, tables are plain text as wide as their content (nothing wrapped or cut) and there is no
progress bar, so the output stays greppable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")

#: the width of a table that is not shown on a terminal: wide enough never to wrap a cell
_PLAIN_WIDTH = 10_000


def console(*, stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr), whatever replaced it (e.g. a test runner)."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream,
        width=None if terminal else _PLAIN_WIDTH,
        force_terminal=terminal,
        color_system="auto" if terminal else None,
        highlight=False,
        # Cells and lines carry data (failure reasons, paths like "[/data/x]"): never markup.
        markup=False,
        soft_wrap=False,
    )


def table(*columns: str, title: str | None = None, right: Sequence[str] = ()) -> Table:
    """A table with a header line and no frame; columns named in ``right`` are right-aligned."""
    out = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        title=title,
        title_justify="left",
        title_style="bold",
        header_style="bold",
    )
    for name in columns:
        out.add_column(name, justify="right" if name in right else "left")
    return out


def show(*renderables: Any) -> None:
    """Print tables (or text) to stdout: fitted to a terminal, else as ``render`` gives them."""
    out = console()
    if not out.is_terminal:
        print(render(*renderables), file=sys.stdout)
        return
    for i, renderable in enumerate(renderables):
        if i:
            out.print()
        out.print(renderable)


def render(*renderables: Any) -> str:
    """The plain text of tables (or text), as ``show`` prints them when piped."""
    out = Console(width=_PLAIN_WIDTH, color_system=None, highlight=False, markup=False, record=True)
    with out.capture() as captured:
        for i, renderable in enumerate(renderables):
            if i:
                out.print()
            out.print(renderable)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


#: ``update(stage, done, total)``: the progress callback of long lifecycle operations
Update = Callable[[str, int, int], None]


@contextmanager
def progress() -> Iterator[Update | None]:
    """A progress bar per stage on stderr (stdout stays clean for tables and --json), only on a
    terminal; elsewhere None, which the lifecycle functions take as "no progress"."""
    err = console(stderr=True)
    if not err.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def tracked(items: Sequence[T], stage: str) -> Iterator[T]:
    """``items``, with a progress bar (on a terminal) as they are consumed."""
    with progress() as update:
        for done, item in enumerate(items):
            yield item
            if update:
                update(stage, done + 1, len(items))
