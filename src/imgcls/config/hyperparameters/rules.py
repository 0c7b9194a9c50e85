"""Rules that span several hyperparameters, or the run's environment: errors and warnings."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from imgcls.config.content_types import is_image
from imgcls.config.hyperparameters.table import (
    LARGE_IMAGE_DEPTHS,
    PARAMS,
    PARAMS_BY_NAME,
    PRETRAINED_IMAGE_SHAPE,
    SMALL_IMAGE_DEPTHS,
    SMALL_IMAGE_MAX_SIDE,
)
from imgcls.config.hyperparameters.values import valid_values, wire_form


@dataclass(frozen=True)
class RunContext:
    """What the run's environment adds to the checks; without it those checks are skipped."""

    content_types: Mapping[str, str] = field(default_factory=dict)
    num_gpus: int = 0
    num_hosts: int = 1
    has_validation: bool = True


@dataclass(frozen=True)
class Check:
    """What a rule that spans several parameters may look at."""

    raw: Mapping[str, Any]
    values: Mapping[str, Any]
    context: RunContext | None

    def shown(self, name: str) -> str:
        """`name=<what the user wrote>`, or the default when the user wrote nothing."""
        if name in self.raw and self.raw[name] is not None:
            return f"{name}={self.raw[name]!r}"
        return f"{name}={wire_form(PARAMS_BY_NAME[name], self.values[name])} (default)"


def _checkpoint_within_epochs(c: Check) -> Iterator[str]:
    """checkpoint_frequency ≤ epochs."""
    frequency, epochs = c.values.get("checkpoint_frequency"), c.values.get("epochs")
    if frequency is not None and epochs is not None and frequency > epochs:
        yield f"{c.shown('checkpoint_frequency')} must be ≤ epochs, got {c.shown('epochs')}"


def _steps_within_epochs(c: Check) -> Iterator[str]:
    """Every lr_scheduler_step epoch < epochs."""
    steps, epochs = c.values.get("lr_scheduler_step"), c.values.get("epochs")
    if steps and epochs is not None and steps[-1] >= epochs:
        yield (
            f"{c.shown('lr_scheduler_step')}: every step epoch must be < epochs, "
            f"got {c.shown('epochs')}"
        )


def _warmup_within_schedule(c: Check) -> Iterator[str]:
    """warmup_epochs < epochs, and with lr_scheduler=step ≤ the first step epoch."""
    warmup, epochs = c.values.get("warmup_epochs"), c.values.get("epochs")
    if not warmup or epochs is None:
        return
    if warmup >= epochs:
        yield f"{c.shown('warmup_epochs')} must be < epochs, got {c.shown('epochs')}"
    steps = c.values.get("lr_scheduler_step")
    if c.values.get("lr_scheduler") == "step" and steps and warmup > steps[0]:
        yield (
            f"{c.shown('warmup_epochs')} must end by the first step epoch, got "
            f"{c.shown('lr_scheduler_step')}: shorten the warm-up or move the first step"
        )


def _resize_exceeds_shape(c: Check) -> Iterator[str]:
    """resize > image_shape's height and width."""
    resize, shape = c.values.get("resize"), c.values.get("image_shape")
    if resize is not None and shape is not None and resize <= max(shape[1:]):
        yield (
            f"{c.shown('resize')} must be larger than image_shape's height and width, "
            f"got {c.shown('image_shape')}"
        )


def _pretrained_fits(c: Check) -> Iterator[str]:
    """A pretrained network exists only for large-image depths and 3,224,224."""
    if not c.values.get("use_pretrained_model"):
        return
    layers, shape = c.values.get("num_layers"), c.values.get("image_shape")
    if layers is not None and layers not in LARGE_IMAGE_DEPTHS:
        yield (
            f"{c.shown('num_layers')} has no pretrained model: with use_pretrained_model=1 "
            f"use one of {', '.join(map(str, LARGE_IMAGE_DEPTHS))}"
        )
    if shape is not None and shape != PRETRAINED_IMAGE_SHAPE:
        yield (
            f"{c.shown('image_shape')}: use_pretrained_model=1 needs image_shape "
            f"'{wire_form(PARAMS_BY_NAME['image_shape'], PRETRAINED_IMAGE_SHAPE)}'"
        )


def _weighted_loss_needs_multi_label(c: Check) -> Iterator[str]:
    """use_weighted_loss=1 only with multi_label=1."""
    if c.values.get("use_weighted_loss") and c.values.get("multi_label") is False:
        yield f"{c.shown('use_weighted_loss')} needs multi_label=1, got {c.shown('multi_label')}"


def _top_k_within_classes(c: Check) -> Iterator[str]:
    """top_k ≤ num_classes."""
    top_k, classes = c.values.get("top_k"), c.values.get("num_classes")
    if top_k is not None and classes is not None and top_k > classes:
        yield f"{c.shown('top_k')} must be ≤ num_classes, got {c.shown('num_classes')}"


def _image_channels(context: RunContext) -> list[str]:
    """Channels whose content type holds images rather than RecordIO."""
    return [
        channel for channel, content_type in context.content_types.items() if is_image(content_type)
    ]


def _resize_for_images(c: Check) -> Iterator[str]:
    """resize is required when a channel holds images (with a context)."""
    if c.context is None or "resize" not in c.values or c.values["resize"] is not None:
        return
    channels = _image_channels(c.context)
    if channels:
        listed = ", ".join(f"{ch!r} ({c.context.content_types[ch]})" for ch in channels)
        yield (
            f"resize: missing, and it is required with image content types (channels {listed}); "
            f"expected {valid_values(PARAMS_BY_NAME['resize'])} larger than image_shape's "
            "height and width"
        )


def _float16_needs_gpu(c: Check) -> Iterator[str]:
    """precision_dtype=float16 needs a GPU (with a context)."""
    gpus = c.context.num_gpus if c.context is not None else None
    if gpus == 0 and c.values.get("precision_dtype") == "float16":
        yield (
            f"{c.shown('precision_dtype')} needs a GPU and this run has none: "
            "use precision_dtype=float32 on CPU, or run on a GPU instance"
        )


def _early_stopping_needs_validation(c: Check) -> Iterator[str]:
    """Early stopping needs a validation channel (with a context)."""
    if c.context is not None and not c.context.has_validation and c.values.get("early_stopping"):
        yield (
            f"{c.shown('early_stopping')} needs a validation channel and this run has none: "
            "add a 'validation' channel or set early_stopping=False"
        )


def _depth_fits_image_size(c: Check) -> Iterator[str]:
    """Warn when num_layers belongs to the other image-size family."""
    layers, shape = c.values["num_layers"], c.values["image_shape"]
    small = max(shape[1:]) <= SMALL_IMAGE_MAX_SIDE
    if layers in SMALL_IMAGE_DEPTHS and not small:
        yield (
            f"{c.shown('num_layers')} is a small-image (CIFAR-style) depth, but "
            f"{c.shown('image_shape')} has a side over {SMALL_IMAGE_MAX_SIDE} px; "
            f"consider one of {', '.join(map(str, LARGE_IMAGE_DEPTHS))}"
        )
    if layers in LARGE_IMAGE_DEPTHS and small:
        yield (
            f"{c.shown('num_layers')} is a large-image depth, but {c.shown('image_shape')} is at "
            f"most {SMALL_IMAGE_MAX_SIDE}×{SMALL_IMAGE_MAX_SIDE}; consider one of "
            f"{', '.join(map(str, SMALL_IMAGE_DEPTHS))}"
        )


def _early_stopping_options_unused(c: Check) -> Iterator[str]:
    """Warn when early_stopping_* are given but early stopping is off."""
    if c.values["early_stopping"]:
        return
    given = [
        c.shown(p.name)
        for p in PARAMS
        if p.name.startswith("early_stopping_") and c.raw.get(p.name) is not None
    ]
    if given:
        yield f"early_stopping is False, so these have no effect: {', '.join(given)}"


def _step_options_unused(c: Check) -> Iterator[str]:
    """Warn when lr_scheduler_step or lr_scheduler_factor is given with lr_scheduler=cosine."""
    if c.values["lr_scheduler"] != "cosine":
        return
    given = [
        c.shown(name)
        for name in ("lr_scheduler_step", "lr_scheduler_factor")
        if c.raw.get(name) is not None
    ]
    if given:
        yield f"lr_scheduler='cosine', so these have no effect: {', '.join(given)}"


def _no_bias_decay_unused(c: Check) -> Iterator[str]:
    """Warn when no_bias_decay meets an optimizer that has no weight decay."""
    if c.values["no_bias_decay"] and c.values["optimizer"] not in ("sgd", "nag"):
        yield (
            f"{c.shown('no_bias_decay')} has no effect: {c.shown('optimizer')} applies no "
            "weight decay (only sgd and nag do)"
        )


def _kv_store_single_host(c: Check) -> Iterator[str]:
    """Warn when kv_store is set on a single host (with a context)."""
    if c.context is not None and c.context.num_hosts == 1 and c.values["kv_store"] is not None:
        yield f"{c.shown('kv_store')} on a single host: training runs as a one-worker job"


ERROR_RULES: tuple[Callable[[Check], Iterator[str]], ...] = (
    _checkpoint_within_epochs,
    _steps_within_epochs,
    _warmup_within_schedule,
    _resize_exceeds_shape,
    _pretrained_fits,
    _weighted_loss_needs_multi_label,
    _top_k_within_classes,
    _resize_for_images,
    _float16_needs_gpu,
    _early_stopping_needs_validation,
)
WARNING_RULES: tuple[Callable[[Check], Iterator[str]], ...] = (
    _depth_fits_image_size,
    _early_stopping_options_unused,
    _step_options_unused,
    _no_bias_decay_unused,
    _kv_store_single_host,
)
