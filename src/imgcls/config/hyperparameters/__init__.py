"""The hyperparameters: one table (table.py) and what is derived from it.

`parse_hyperparameters(raw, context)` returns a frozen, typed `Hyperparameters` or raises
HyperparameterError listing every violation; `markdown_table()` and `json_schema()` document it.
"""

from imgcls.config.hyperparameters.docs import json_schema, markdown_table
from imgcls.config.hyperparameters.fields import Hyperparameters
from imgcls.config.hyperparameters.parsing import parse_hyperparameters
from imgcls.config.hyperparameters.rules import RunContext
from imgcls.config.hyperparameters.table import PARAMS, PARAMS_BY_NAME, Kind, Param
from imgcls.config.hyperparameters.values import valid_values, wire_form

__all__ = [
    "PARAMS",
    "PARAMS_BY_NAME",
    "Hyperparameters",
    "Kind",
    "Param",
    "RunContext",
    "json_schema",
    "markdown_table",
    "parse_hyperparameters",
    "valid_values",
    "wire_form",
]
