"""Parsing `hyperparameters.json`: every value converted, every rule checked, all at once."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from imgcls.config.hyperparameters.fields import Hyperparameters
from imgcls.config.hyperparameters.rules import ERROR_RULES, WARNING_RULES, Check, RunContext
from imgcls.config.hyperparameters.table import (
    INJECTED_NAMES,
    INJECTED_PREFIX,
    PARAMS,
    PARAMS_BY_NAME,
)
from imgcls.config.hyperparameters.values import convert, valid_values
from imgcls.errors import HyperparameterError

LOG = logging.getLogger("imgcls")


def _is_injected(name: str) -> bool:
    """Names SageMaker adds to hyperparameters.json on its own."""
    return name.startswith(INJECTED_PREFIX) or name in INJECTED_NAMES


def _unknown_names(raw: Mapping[str, Any]) -> Iterator[str]:
    """A violation per name that is neither a parameter nor injected by SageMaker."""
    for name, value in raw.items():
        if name in PARAMS_BY_NAME or _is_injected(name):
            continue
        message = f"{name}: unknown hyperparameter (got {value!r})"
        close = difflib.get_close_matches(name, list(PARAMS_BY_NAME), n=1)
        yield f"{message}; did you mean {close[0]!r}?" if close else message


def _parse_each(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Typed values of the valid parameters (defaults filled in) and the violations."""
    values: dict[str, Any] = {}
    violations: list[str] = []
    for p in PARAMS:
        value = raw.get(p.name)
        if value is None:
            if p.required:
                violations.append(f"{p.name}: missing, it is required ({valid_values(p)})")
            else:
                values[p.name] = p.default
            continue
        try:
            values[p.name] = convert(p, value)
        except (ValueError, OverflowError):
            violations.append(f"{p.name}: got {value!r}, expected {valid_values(p)}")
    return values, violations


def parse_hyperparameters(
    raw: Mapping[str, Any], context: RunContext | None = None
) -> Hyperparameters:
    """Typed, checked hyperparameters; HyperparameterError lists every violation at once."""
    values, violations = _parse_each(raw)
    check = Check(raw=raw, values=values, context=context)
    violations = [
        *_unknown_names(raw),
        *violations,
        *(message for rule in ERROR_RULES for message in rule(check)),
    ]
    if violations:
        raise HyperparameterError(violations)
    for rule in WARNING_RULES:
        for message in rule(check):
            LOG.warning(message)
    return Hyperparameters(**values)
