"""The ``ingest`` key of a SOURCE location: which files under its root are raw data, which
observation (obs unit) and instrument module each belongs to, and when a file is complete.

A path template names the observation in the path: ``{obs_unit}`` and ``{instrument_module}``
each stand for one path component (or part of one), ``*`` and ``?`` match within a component and
``**`` matches any number of whole directories. ``ready: marker`` says a file is complete when
its marker (a template using the same placeholders, naming one file) exists and the file lies in
the marker's directory or below it; ``ready: settled`` says a file is complete when neither its
content nor its metadata changed for ``settle_seconds``. What the keys mean for operators:
docs/configuration.md.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

from ccat_ops_db.validators import fail, whole_number

#: the placeholders a template may use, each at most once
PLACEHOLDERS = ("obs_unit", "instrument_module")
_TOKEN = re.compile(r"\{([^{}]*)\}|\*\*|\*|\?")


def _template(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        fail(f"ingest.{what} must be a path template, e.g. '{{obs_unit}}/{{instrument_module}}/*'")
    if value.startswith("/"):
        fail(f"ingest.{what} {value!r} must be relative to the location root (no leading /)")
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        fail(f"ingest.{what} {value!r} has an empty, '.' or '..' path component; remove it")
    for part in parts:
        if "**" in part and part != "**":
            fail(f"ingest.{what} {value!r}: '**' must be a whole path component, as in 'a/**/b'")
    names = [m.group(1) for m in _TOKEN.finditer(value) if m.group(0).startswith("{")]
    for name in names:
        if name not in PLACEHOLDERS:
            fail(
                f"ingest.{what} {value!r}: unknown placeholder {{{name}}}; use "
                + " and ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        fail(f"ingest.{what} {value!r}: {{{repeated[0]}}} may appear only once")
    return value


def _ready(value: Any) -> Any:
    if value not in ("marker", "settled"):
        fail(
            f"ingest.ready must be marker (a marker file says a directory is complete) or "
            f"settled (files unchanged for settle_seconds), got {value!r}"
        )
    return value


def template_regex(template: str) -> re.Pattern[str]:
    """The regular expression of a (validated) template, with one named group per placeholder."""
    parts = template.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(r"[^/]+(?:/[^/]+)*" if last else r"(?:[^/]+/)*")
            continue
        piece, position = [], 0
        for m in _TOKEN.finditer(part):
            piece.append(re.escape(part[position : m.start()]))
            token = m.group(0)
            if token.startswith("{"):
                piece.append(f"(?P<{m.group(1)}>[^/]+)")
            elif token == "*":
                piece.append(r"[^/]*")
            else:
                piece.append(r"[^/]")
            position = m.end()
        piece.append(re.escape(part[position:]))
        out.append("".join(piece) + ("" if last else "/"))
    return re.compile("".join(out))


def placeholders_of(template: str) -> set[str]:
    return {m.group(1) for m in _TOKEN.finditer(template) if m.group(0).startswith("{")}


class IngestSpec(BaseModel):
    """The validated ``ingest`` mapping of a SOURCE location (stored with the location)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: Annotated[str, BeforeValidator(lambda v: _template("pattern", v))]
    ready: Annotated[Literal["marker", "settled"], BeforeValidator(_ready)] = "settled"
    marker: Annotated[str | None, BeforeValidator(lambda v: v and _template("marker", v))] = None
    settle_seconds: Annotated[
        int,
        BeforeValidator(
            whole_number(0, "ingest.settle_seconds must be whole seconds >= 0, got {value}")
        ),
    ] = 60

    @model_validator(mode="after")
    def _consistent(self) -> IngestSpec:
        missing = [p for p in PLACEHOLDERS if p not in placeholders_of(self.pattern)]
        if missing:
            fail(
                f"ingest.pattern {self.pattern!r} must name {{{missing[0]}}}: every raw data "
                "file belongs to one obs unit and one instrument module"
            )
        if self.ready == "marker":
            if not self.marker:
                fail(
                    "ingest.ready is marker but ingest.marker is missing; e.g. "
                    "marker: '{obs_unit}/{instrument_module}/.complete'"
                )
            extra = placeholders_of(self.marker) - placeholders_of(self.pattern)
            if "*" in self.marker or "?" in self.marker or extra:
                fail(
                    f"ingest.marker {self.marker!r} must name one file per obs unit and "
                    "instrument module: no wildcards, and only placeholders of the pattern"
                )
        elif self.marker is not None:
            fail("ingest.marker is set but ingest.ready is settled; set ready: marker or drop it")
        return self

    @cached_property
    def pattern_regex(self) -> re.Pattern[str]:
        return template_regex(self.pattern)

    @cached_property
    def marker_regex(self) -> re.Pattern[str] | None:
        return template_regex(self.marker) if self.marker else None

    def marker_for(self, values: dict[str, str]) -> str | None:
        """The marker's relative path for a file's placeholder values (None: settled mode)."""
        if self.marker is None:
            return None
        return self.marker.format(**{p: values[p] for p in placeholders_of(self.marker)})
