"""Field rules shared by the topology and policy models, each with the operator-facing message.

Every rule raises a :class:`pydantic_core.PydanticCustomError` of type ``ccat`` whose message
is the text an operator reads (what is wrong, what was given, what to write instead);
:func:`messages` turns a pydantic ``ValidationError`` into those texts, each prefixed with the
entry it concerns (``sites[1].locations[2] (cologne/lta)``, ``policy.max_retries``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from pydantic_core import ErrorDetails, PydanticCustomError

ERROR_TYPE = "ccat"
#: Site and location names go into asset keys, pool names and package paths.
SAFE_IDENTIFIER = re.compile(r"^[a-z0-9_]+$")


def fail(message: str) -> NoReturn:
    """Reject a value with ``message`` (braces in it are kept as they are)."""
    raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": message})


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def whole_number(minimum: int, message: str) -> Callable[[Any], Any]:
    """A whole number (not a bool, not a float) >= ``minimum``; ``message`` gets ``{value}``."""

    def check(value: Any) -> Any:
        if not (is_int(value) and value >= minimum):
            fail(message.format(value=repr(value), minimum=minimum))
        return value

    return check


def optional_whole_number(minimum: int, message: str) -> Callable[[Any], Any]:
    check = whole_number(minimum, message)
    return lambda value: value if value is None else check(value)


def boolean(what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, bool):
            fail(f"{what} must be true or false, got {value!r}")
        return value

    return check


def optional_text(what: str) -> Callable[[Any], Any]:
    """None, or a non-empty string."""

    def check(value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or not value):
            fail(f"{what} must be a non-empty string, got {value!r}")
        return value

    return check


def identifier(what: str) -> Callable[[Any], Any]:
    """A name of [a-z0-9_]: it goes into asset keys and pool names."""

    def check(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            fail(f"{what} is missing; give a name of [a-z0-9_]")
        if not SAFE_IDENTIFIER.match(value):
            suggestion = re.sub(r"[^a-z0-9_]", "_", value.lower())
            fail(
                f"{what} {value!r} is not a safe identifier (only a-z, 0-9 and _, since it "
                f"goes into asset keys and pool names); e.g. {suggestion!r}"
            )
        return value

    return check


def unknown_key(key: Any, allowed: Iterable[str]) -> str:
    """The message for a key the format does not have, with the closest allowed one."""
    allowed = tuple(allowed)
    guess = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    return f"unknown key {key!r}; {hint}allowed: {', '.join(allowed)}"


EXTRA_KEY_ERRORS = frozenset({"extra_forbidden", "unexpected_keyword_argument"})
MAPPING_ERRORS = frozenset({"model_type", "dataclass_type", "dict_type", "model_attributes_type"})


def messages(
    errors: Iterable[ErrorDetails],
    *,
    where: Callable[[tuple[Any, ...]], str],
    keys_of: Callable[[tuple[Any, ...]], tuple[str, ...]],
    not_a_mapping: Callable[[tuple[Any, ...]], str],
) -> list[str]:
    """Operator messages of pydantic errors: ``where(loc)`` names the entry of an error at
    ``loc``; an unknown key lists ``keys_of(container loc)``; a value that should have been a
    mapping gets ``not_a_mapping(loc)``; any other pydantic error keeps pydantic's wording."""
    out = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] in EXTRA_KEY_ERRORS:
            container = loc[:-1]
            out.append(f"{where(container)}: {unknown_key(loc[-1], keys_of(container))}")
        elif error["type"] == ERROR_TYPE:
            out.append(f"{where(loc)}: {error.get('ctx', {}).get('message', error['msg'])}")
        elif error["type"] in MAPPING_ERRORS:
            out.append(f"{where(loc)}: {not_a_mapping(loc)}")
        else:
            out.append(f"{where(loc)}: {error['msg']}, got {error.get('input')!r}")
    return out
