"""`Hyperparameters`: the typed, frozen result of parsing, one field per row of the table.

The fields are written out so that a reader and a type checker see them; `check_fields` (run by
the tests) holds them against `PARAMS`, so the table stays the one declaration of names, types
and defaults (defaults live only in the table: the parser fills every field).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from imgcls.config.hyperparameters.table import PARAMS, Param
from imgcls.config.hyperparameters.values import json_value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """The validated hyperparameters of a run: one typed attribute per PARAMS entry."""

    num_classes: int
    num_training_samples: int
    augmentation_type: str | None
    beta_1: float
    beta_2: float
    checkpoint_frequency: int | None
    early_stopping: bool
    early_stopping_min_epochs: int
    early_stopping_patience: int
    early_stopping_tolerance: float
    epochs: int
    eps: float
    gamma: float
    image_shape: tuple[int, int, int]
    kv_store: str | None
    learning_rate: float
    lr_scheduler_factor: float
    lr_scheduler_step: tuple[int, ...]
    mini_batch_size: int
    momentum: float
    multi_label: bool
    num_layers: int
    optimizer: str
    precision_dtype: str
    resize: int | None
    top_k: int | None
    use_pretrained_model: bool
    use_weighted_loss: bool
    weight_decay: float
    inference_preprocessing: str
    label_smoothing: float
    lr_scheduler: str
    mixup_alpha: float
    no_bias_decay: bool
    warmup_epochs: int

    @property
    def channels(self) -> int:
        """Image channels: 1 (grey) or 3 (RGB)."""
        return self.image_shape[0]

    @property
    def height(self) -> int:
        """Network input height in pixels."""
        return self.image_shape[1]

    @property
    def width(self) -> int:
        """Network input width in pixels."""
        return self.image_shape[2]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values; shapes and epoch lists in their string form, which parses back."""
        return {p.name: json_value(p, getattr(self, p.name)) for p in PARAMS}


def annotation(p: Param) -> Any:
    """The field type a parameter must have on `Hyperparameters`."""
    return p.type | None if p.default is None and not p.required else p.type


def check_fields() -> None:
    """Raise TypeError unless `Hyperparameters` has exactly PARAMS' names, in order, and types."""
    hints = typing.get_type_hints(Hyperparameters)
    names = [f.name for f in dataclasses.fields(Hyperparameters)]
    if names != [p.name for p in PARAMS]:
        raise TypeError(f"Hyperparameters fields {names} differ from PARAMS")
    wrong = [p.name for p in PARAMS if hints[p.name] != annotation(p)]
    if wrong:
        raise TypeError(f"Hyperparameters fields of the wrong type: {wrong}")
