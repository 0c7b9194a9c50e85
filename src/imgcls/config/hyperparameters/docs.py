"""Documents derived from the table: the Markdown table (README) and a JSON Schema."""

from __future__ import annotations

import re
from typing import Any

from imgcls.config.hyperparameters.table import INJECTED_NAMES, INJECTED_PREFIX, PARAMS, Kind, Param
from imgcls.config.hyperparameters.values import (
    FLOAT_RE,
    INT_RE,
    TRUE_FALSE_WORDS,
    ZERO_ONE_WORDS,
    anchored,
    valid_values,
    wire_form,
)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


EXTENSION_MARK = "*imgcls extension.*"


def description(p: Param) -> str:
    """The parameter's description, marked when it is an imgcls extension of the built-in's."""
    return f"{EXTENSION_MARK} {p.description}" if p.extension else p.description


def markdown_table() -> str:
    """The hyperparameter table in Markdown, one row per parameter."""
    rows = [
        "| name | required | type / valid values | default | description |",
        "|---|---|---|---|---|",
    ]
    for p in PARAMS:
        default = wire_form(p, p.default) or "—"
        cells = (p.name, "yes" if p.required else "no", valid_values(p), default, description(p))
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _string_pattern(p: Param) -> str:
    """A regular expression for the string form of `p` (format only, not the ranges)."""
    item = rf"\s*{INT_RE}\s*"
    if p.kind in (Kind.TRUE_FALSE, Kind.ZERO_ONE):
        words = TRUE_FALSE_WORDS if p.kind is Kind.TRUE_FALSE else ZERO_ONE_WORDS
        return anchored(f"({'|'.join(words)})")
    if p.kind is Kind.IMAGE_SHAPE:
        return f"^{item},{item},{item}$"
    if p.kind is Kind.EPOCH_LIST:
        return rf"^(\s*|{item}(,{item})*)$"
    if p.type is str:
        return anchored(f"({'|'.join(re.escape(c) for c in p.choices)})")
    return anchored(INT_RE if p.type is int else FLOAT_RE)


def _native_forms(p: Param) -> list[dict[str, Any]]:
    """JSON Schemas of the native (non-string) JSON forms of `p`."""
    if p.kind in (Kind.TRUE_FALSE, Kind.ZERO_ONE):
        return [{"type": "boolean"}, {"enum": [0, 1]}]
    if p.kind is Kind.EPOCH_LIST:
        return [{"type": "integer", "minimum": 1}]
    if p.kind is Kind.IMAGE_SHAPE or p.type is str:
        return []
    schema: dict[str, Any] = {"type": "integer" if p.type is int else "number"}
    if p.choices:
        schema["enum"] = list(p.choices)
    bounds = {"minimum": p.minimum, "maximum": p.maximum, "exclusiveMinimum": p.exclusive_minimum}
    schema.update({key: bound for key, bound in bounds.items() if bound is not None})
    return [schema]


def _property_schema(p: Param) -> dict[str, Any]:
    """The JSON Schema of one property of hyperparameters.json."""
    forms = [{"type": "string", "pattern": _string_pattern(p)}, *_native_forms(p)]
    if not p.required:
        forms.append({"type": "null"})
    schema: dict[str, Any] = {"description": f"{valid_values(p)}. {description(p)}"}
    default = wire_form(p, p.default)
    if default:
        schema["default"] = default
    schema["anyOf"] = forms
    return schema


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of hyperparameters.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "imgcls hyperparameters.json",
        "description": "Values are strings as SageMaker writes them, or native JSON values.",
        "type": "object",
        "properties": {p.name: _property_schema(p) for p in PARAMS},
        "required": [p.name for p in PARAMS if p.required],
        "patternProperties": {
            f"^{INJECTED_PREFIX}": {},
            **{f"^{re.escape(name)}$": {} for name in sorted(INJECTED_NAMES)},
        },
        "additionalProperties": False,
    }
