"""Hyperparameter values: converting what the user wrote, and writing values back as text."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import partial
from itertools import pairwise
from typing import Any

from imgcls.config.hyperparameters.table import Kind, Param

INT_RE = r"[+-]?[0-9]+(\.0*)?"
FLOAT_RE = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
TRUE_FALSE_WORDS = {
    "True": True,
    "true": True,
    "1": True,
    "False": False,
    "false": False,
    "0": False,
}
ZERO_ONE_WORDS = {"1": True, "0": False}


def anchored(pattern: str) -> str:
    """`pattern` as a whole value, surrounding whitespace allowed."""
    return rf"^\s*{pattern}\s*$"


def _to_int(value: Any) -> int:
    """An integer from an int, an integral float or a string such as "30" or "30.0"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(anchored(INT_RE), value):
        return int(value.strip().split(".")[0])
    raise ValueError(value)


def _to_float(value: Any) -> float:
    """A finite float from an int, a float or a decimal string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(value)
    if isinstance(value, str) and not re.fullmatch(anchored(FLOAT_RE), value):
        raise ValueError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _to_word(value: Any) -> str:
    """A string without its surrounding whitespace."""
    if not isinstance(value, str):
        raise ValueError(value)
    return value.strip()


def _to_bool(value: Any, words: Mapping[str, bool]) -> bool:
    """A flag from a bool, 0 / 1, or one of `words`."""
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip() in words:
        return words[value.strip()]
    raise ValueError(value)


def _to_int_list(value: Any) -> tuple[int, ...]:
    """Integers from a comma-separated string such as "10,20"; "" is the empty tuple."""
    if not isinstance(value, str):
        raise ValueError(value)
    if not value.strip():
        return ()
    return tuple(_to_int(item) for item in value.split(","))


def _to_image_shape(value: Any) -> tuple[int, ...]:
    """(channels, height, width) from "C,H,W", with channels 1 or 3 and sides ≥ 8."""
    shape = _to_int_list(value)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 8:
        raise ValueError(value)
    return shape


def _to_epoch_list(value: Any) -> tuple[int, ...]:
    """Strictly increasing positive epochs from "10,20" (or a single native integer)."""
    epochs = (_to_int(value),) if isinstance(value, int) else _to_int_list(value)
    if any(e < 1 for e in epochs) or any(a >= b for a, b in pairwise(epochs)):
        raise ValueError(value)
    return epochs


_KIND_PARSERS: Mapping[Kind, Callable[[Any], Any]] = {
    Kind.TRUE_FALSE: partial(_to_bool, words=TRUE_FALSE_WORDS),
    Kind.ZERO_ONE: partial(_to_bool, words=ZERO_ONE_WORDS),
    Kind.IMAGE_SHAPE: _to_image_shape,
    Kind.EPOCH_LIST: _to_epoch_list,
}
_TYPE_PARSERS: Mapping[type, Callable[[Any], Any]] = {int: _to_int, float: _to_float, str: _to_word}


def _in_range(p: Param, value: Any) -> bool:
    """Whether a converted value satisfies the parameter's choices and bounds."""
    return (
        (not p.choices or value in p.choices)
        and (p.minimum is None or value >= p.minimum)
        and (p.maximum is None or value <= p.maximum)
        and (p.exclusive_minimum is None or value > p.exclusive_minimum)
    )


def convert(p: Param, value: Any) -> Any:
    """The typed value of `p`; ValueError when `value` is not valid for it."""
    if p.kind is not None:
        return _KIND_PARSERS[p.kind](value)
    converted = _TYPE_PARSERS[p.type](value)
    if not _in_range(p, converted):
        raise ValueError(value)
    return converted


def _number(x: float) -> str:
    """A bound as written in the documentation: 1 rather than 1.0."""
    return f"{x:g}"


def _number_text(p: Param) -> str:
    """Valid values of a number without choices."""
    word = "integer" if p.type is int else "float"
    if p.minimum is not None and p.maximum is not None:
        return f"{word} in [{_number(p.minimum)}, {_number(p.maximum)}]"
    if p.exclusive_minimum is not None:
        return f"{word} > {_number(p.exclusive_minimum)}"
    if p.minimum == 1 and p.type is int:
        return "positive integer"
    return f"{word} ≥ {_number(p.minimum)}"


_KIND_TEXT = {
    Kind.TRUE_FALSE: "True or False (also true, false, 1, 0)",
    Kind.ZERO_ONE: "0 or 1",
    Kind.IMAGE_SHAPE: (
        "string 'channels,height,width' with channels 1 or 3 and height, width ≥ 8, "
        "e.g. '3,224,224'"
    ),
    Kind.EPOCH_LIST: (
        "string of comma-separated epochs, positive, strictly increasing and < epochs, "
        "e.g. '10,20'"
    ),
}


def valid_values(p: Param) -> str:
    """What `p` accepts, in words (error messages and the Markdown table)."""
    if p.kind is not None:
        return _KIND_TEXT[p.kind]
    if p.choices:
        return "one of " + ", ".join(str(c) for c in p.choices)
    return _number_text(p)


def wire_form(p: Param, value: Any) -> str | None:
    """A typed value as SageMaker writes it in hyperparameters.json; None for unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        words = TRUE_FALSE_WORDS if p.kind is Kind.TRUE_FALSE else ZERO_ONE_WORDS
        return next(word for word, flag in words.items() if flag is value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def json_value(p: Param, value: Any) -> Any:
    """A typed value for `as_dict`: tuples as strings (None when empty), the rest as is."""
    if isinstance(value, tuple):
        return wire_form(p, value) or None
    return value
