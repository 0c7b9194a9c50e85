"""The hyperparameters of the image classification algorithm: one table, parsed and checked.

`PARAMS` is the only declaration of the interface; the `Hyperparameters` class, the parser, the
Markdown table and the JSON Schema are all derived from it. SageMaker writes every value as a
string; native JSON numbers and booleans are accepted too, and `null` means "not set".
String values may carry surrounding whitespace, which is ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import pairwise
from typing import Any

from imgcls.errors import HyperparameterError

LOG = logging.getLogger("imgcls")

LARGE_IMAGE_DEPTHS = (18, 34, 50, 101, 152, 200)
SMALL_IMAGE_DEPTHS = (20, 32, 44, 56, 110)
SMALL_IMAGE_MAX_SIDE = 64
PRETRAINED_IMAGE_SHAPE = (3, 224, 224)
IMAGE_CONTENT_TYPES = frozenset({"application/x-image", "image/jpeg", "image/png"})
INJECTED_PREFIX = "sagemaker_"
INJECTED_NAMES = frozenset({"_tuning_objective_metric"})


class Kind(StrEnum):
    """Parameters whose value is not a plain number or word."""

    TRUE_FALSE = "true_false"
    ZERO_ONE = "zero_one"
    IMAGE_SHAPE = "image_shape"
    EPOCH_LIST = "epoch_list"


@dataclass(frozen=True, kw_only=True)
class Param:
    """One hyperparameter: its name, parsed type, default, valid values and meaning."""

    name: str
    type: Any
    default: Any = None
    required: bool = False
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    choices: tuple[Any, ...] = ()
    kind: Kind | None = None


def _unit_float(name: str, default: float, description: str) -> Param:
    """A float in [0, 1]: most of the optimizer's knobs."""
    return Param(
        name=name, type=float, default=default, description=description, minimum=0, maximum=1
    )


def _positive_int(name: str, default: int | None, description: str) -> Param:
    """An integer ≥ 1."""
    return Param(name=name, type=int, default=default, description=description, minimum=1)


def _zero_one(name: str, description: str) -> Param:
    """A flag written as 0 or 1, off by default."""
    return Param(name=name, type=bool, default=False, description=description, kind=Kind.ZERO_ONE)


PARAMS: tuple[Param, ...] = (
    Param(
        name="num_classes",
        type=int,
        required=True,
        minimum=1,
        description="number of output classes (output width of the network)",
    ),
    Param(
        name="num_training_samples",
        type=int,
        required=True,
        minimum=1,
        description=(
            "number of training examples; drives the LR step schedule (iterations per epoch). "
            "When it differs from the real count, a warning gives both numbers"
        ),
    ),
    Param(
        name="augmentation_type",
        type=str,
        choices=("crop", "crop_color", "crop_color_transform"),
        description=(
            "unset: no augmentation. `crop`: random crop + horizontal flip. `crop_color`: crop "
            "plus random offsets in [-36,36], [-50,50], [-50,50] added to hue, saturation, "
            "lightness. `crop_color_transform`: crop_color plus random rotation (max 10°), shear "
            "(max ratio 0.1) and aspect-ratio change (max 0.25)"
        ),
    ),
    _unit_float("beta_1", 0.9, "Adam beta1"),
    _unit_float("beta_2", 0.999, "Adam beta2"),
    _positive_int(
        "checkpoint_frequency",
        None,
        "save parameters every N epochs (N ≤ epochs). Unset: save only the epoch with the best "
        "validation accuracy. All checkpoints end up in the model artifact (`model.tar.gz`), "
        "which grows with their number",
    ),
    Param(
        name="early_stopping",
        type=bool,
        default=False,
        kind=Kind.TRUE_FALSE,
        description="enable early stopping; needs a validation channel",
    ),
    _positive_int(
        "early_stopping_min_epochs",
        10,
        "epochs always run before early stopping may trigger (only with early_stopping)",
    ),
    _positive_int(
        "early_stopping_patience",
        5,
        "epochs to wait without improvement before stopping (only with early_stopping)",
    ),
    _unit_float(
        "early_stopping_tolerance",
        0.0,
        "relative tolerance: if (improvement of validation accuracy) / (best accuracy so far) "
        "< tolerance, the epoch counts as no improvement (only with early_stopping)",
    ),
    _positive_int("epochs", 30, "training epochs"),
    _unit_float("eps", 1e-8, "epsilon for adam and rmsprop"),
    _unit_float("gamma", 0.9, "rmsprop decay factor of the moving average of squared gradients"),
    Param(
        name="image_shape",
        type=tuple[int, int, int],
        default=(3, 224, 224),
        kind=Kind.IMAGE_SHAPE,
        description=(
            "network input size. Training: an image smaller than this in any dimension is an "
            "error; a larger one is cropped to it (random crop when augmentation_type is set, "
            "centre crop otherwise). Inference: images are resized to (height,width) without "
            "keeping the aspect ratio and without cropping. Pretrained models only accept "
            "3,224,224"
        ),
    ),
    Param(
        name="kv_store",
        type=str,
        choices=("dist_sync", "dist_async"),
        description=(
            "weight synchronisation across machines. `dist_sync`: gradients synchronised after "
            "every batch with all workers; batch size is per machine, so n machines behave like "
            "one with batch n·b. `dist_async`: asynchronous updates, atomic per update, no "
            "ordering guarantee. On a single machine the job runs as a one-worker job (warning)"
        ),
    ),
    _unit_float("learning_rate", 0.1, "initial learning rate"),
    _unit_float("lr_scheduler_factor", 0.1, "lr_new = lr_old · factor at each step epoch"),
    Param(
        name="lr_scheduler_step",
        type=tuple[int, ...],
        default=(),
        kind=Kind.EPOCH_LIST,
        description=(
            "epochs after which the learning rate is multiplied by lr_scheduler_factor; "
            "unset: constant learning rate"
        ),
    ),
    _positive_int(
        "mini_batch_size",
        32,
        "batch size. On one machine with several GPUs each GPU gets mini_batch_size / num_gpu "
        "samples; with dist_sync on n machines the effective batch is mini_batch_size · n",
    ),
    _unit_float("momentum", 0.9, "momentum for sgd and nag; ignored by other optimizers"),
    _zero_one(
        "multi_label",
        "multi-label classification: each example may carry several labels; the average "
        "accuracy over all classes is logged",
    ),
    Param(
        name="num_layers",
        type=int,
        default=152,
        choices=LARGE_IMAGE_DEPTHS + SMALL_IMAGE_DEPTHS,
        description=(
            "network depth, per the ResNet paper: 18, 34, 50, 101, 152, 200 for large images "
            "(e.g. 224×224), 20, 32, 44, 56, 110 for small images (e.g. 28×28 or 32×32, "
            "CIFAR-style). With use_pretrained_model only the large-image depths. A warning is "
            f"logged when a small-image depth meets images with a side over {SMALL_IMAGE_MAX_SIDE} "
            f"px, or a large-image depth meets images of at most {SMALL_IMAGE_MAX_SIDE}×"
            f"{SMALL_IMAGE_MAX_SIDE}"
        ),
    ),
    Param(
        name="optimizer",
        type=str,
        default="sgd",
        choices=("sgd", "adam", "rmsprop", "nag"),
        description="optimizer",
    ),
    Param(
        name="precision_dtype",
        type=str,
        default="float32",
        choices=("float32", "float16"),
        description=(
            "precision of the weights during training; float16 halves memory and needs a GPU"
        ),
    ),
    _positive_int(
        "resize",
        None,
        "pixels of the shorter side after resizing, for training. Unset: images are used as "
        "they are. Must be larger than image_shape's height and width. Required with image "
        "content types (`application/x-image`, `image/jpeg`, `image/png`); optional with RecordIO",
    ),
    Param(
        name="top_k",
        type=int,
        exclusive_minimum=1,
        description=(
            "also report top-k accuracy during training (top-1 is the normal accuracy); "
            "at most num_classes"
        ),
    ),
    _zero_one(
        "use_pretrained_model",
        "1: start from the pretrained network of the same depth; only the final fully connected "
        "layer is re-initialised with random weights. 0: train the whole network from scratch",
    ),
    _zero_one(
        "use_weighted_loss",
        "weighted cross-entropy for multi-label classification (only with multi_label = 1); "
        "weights computed from the class distribution",
    ),
    _unit_float(
        "weight_decay", 0.0001, "weight decay for sgd and nag; ignored by other optimizers"
    ),
)

PARAMS_BY_NAME: Mapping[str, Param] = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class RunContext:
    """What the run's environment adds to the checks; without it those checks are skipped."""

    content_types: Mapping[str, str] = field(default_factory=dict)
    num_gpus: int = 0
    num_hosts: int = 1
    has_validation: bool = True


class _HyperparametersMethods:
    """Behaviour shared by every `Hyperparameters` instance."""

    image_shape: tuple[int, int, int]

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
        return {p.name: _json_value(p, getattr(self, p.name)) for p in PARAMS}


def _annotation(p: Param) -> Any:
    """The attribute type of a parameter on `Hyperparameters`."""
    return p.type | None if p.default is None and not p.required else p.type


Hyperparameters = dataclasses.make_dataclass(
    "Hyperparameters",
    [(p.name, _annotation(p)) for p in PARAMS],
    bases=(_HyperparametersMethods,),
    frozen=True,
    kw_only=True,
    namespace={
        "__module__": __name__,
        "__doc__": "The validated hyperparameters of a run: one typed attribute per PARAMS entry.",
    },
)

_INT_RE = r"[+-]?[0-9]+(\.0*)?"
_FLOAT_RE = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
_TRUE_FALSE_WORDS = {
    "True": True,
    "true": True,
    "1": True,
    "False": False,
    "false": False,
    "0": False,
}
_ZERO_ONE_WORDS = {"1": True, "0": False}


def _anchored(pattern: str) -> str:
    """`pattern` as a whole value, surrounding whitespace allowed."""
    return rf"^\s*{pattern}\s*$"


def _to_int(value: Any) -> int:
    """An integer from an int, an integral float or a string such as "30" or "30.0"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(_anchored(_INT_RE), value):
        return int(value.strip().split(".")[0])
    raise ValueError(value)


def _to_float(value: Any) -> float:
    """A finite float from an int, a float or a decimal string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(value)
    if isinstance(value, str) and not re.fullmatch(_anchored(_FLOAT_RE), value):
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
    Kind.TRUE_FALSE: partial(_to_bool, words=_TRUE_FALSE_WORDS),
    Kind.ZERO_ONE: partial(_to_bool, words=_ZERO_ONE_WORDS),
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


def _convert(p: Param, value: Any) -> Any:
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
        words = _TRUE_FALSE_WORDS if p.kind is Kind.TRUE_FALSE else _ZERO_ONE_WORDS
        return next(word for word, flag in words.items() if flag is value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _json_value(p: Param, value: Any) -> Any:
    """A typed value for `as_dict`: tuples as strings (None when empty), the rest as is."""
    if isinstance(value, tuple):
        return wire_form(p, value) or None
    return value


@dataclass(frozen=True)
class _Check:
    """What a rule that spans several parameters may look at."""

    raw: Mapping[str, Any]
    values: Mapping[str, Any]
    context: RunContext | None

    def shown(self, name: str) -> str:
        """`name=<what the user wrote>`, or the default when the user wrote nothing."""
        if name in self.raw and self.raw[name] is not None:
            return f"{name}={self.raw[name]!r}"
        return f"{name}={wire_form(PARAMS_BY_NAME[name], self.values[name])} (default)"


def _checkpoint_within_epochs(c: _Check) -> Iterator[str]:
    """checkpoint_frequency ≤ epochs."""
    frequency, epochs = c.values.get("checkpoint_frequency"), c.values.get("epochs")
    if frequency is not None and epochs is not None and frequency > epochs:
        yield f"{c.shown('checkpoint_frequency')} must be ≤ epochs, got {c.shown('epochs')}"


def _steps_within_epochs(c: _Check) -> Iterator[str]:
    """Every lr_scheduler_step epoch < epochs."""
    steps, epochs = c.values.get("lr_scheduler_step"), c.values.get("epochs")
    if steps and epochs is not None and steps[-1] >= epochs:
        yield (
            f"{c.shown('lr_scheduler_step')}: every step epoch must be < epochs, "
            f"got {c.shown('epochs')}"
        )


def _resize_exceeds_shape(c: _Check) -> Iterator[str]:
    """resize > image_shape's height and width."""
    resize, shape = c.values.get("resize"), c.values.get("image_shape")
    if resize is not None and shape is not None and resize <= max(shape[1:]):
        yield (
            f"{c.shown('resize')} must be larger than image_shape's height and width, "
            f"got {c.shown('image_shape')}"
        )


def _pretrained_fits(c: _Check) -> Iterator[str]:
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


def _weighted_loss_needs_multi_label(c: _Check) -> Iterator[str]:
    """use_weighted_loss=1 only with multi_label=1."""
    if c.values.get("use_weighted_loss") and c.values.get("multi_label") is False:
        yield f"{c.shown('use_weighted_loss')} needs multi_label=1, got {c.shown('multi_label')}"


def _top_k_within_classes(c: _Check) -> Iterator[str]:
    """top_k ≤ num_classes."""
    top_k, classes = c.values.get("top_k"), c.values.get("num_classes")
    if top_k is not None and classes is not None and top_k > classes:
        yield f"{c.shown('top_k')} must be ≤ num_classes, got {c.shown('num_classes')}"


def _image_channels(context: RunContext) -> list[str]:
    """Channels whose content type holds images rather than RecordIO."""
    return [
        channel
        for channel, content_type in context.content_types.items()
        if content_type.split(";", 1)[0].strip().lower() in IMAGE_CONTENT_TYPES
    ]


def _resize_for_images(c: _Check) -> Iterator[str]:
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


def _float16_needs_gpu(c: _Check) -> Iterator[str]:
    """precision_dtype=float16 needs a GPU (with a context)."""
    gpus = c.context.num_gpus if c.context is not None else None
    if gpus == 0 and c.values.get("precision_dtype") == "float16":
        yield (
            f"{c.shown('precision_dtype')} needs a GPU and this run has none: "
            "use precision_dtype=float32 on CPU, or run on a GPU instance"
        )


def _early_stopping_needs_validation(c: _Check) -> Iterator[str]:
    """Early stopping needs a validation channel (with a context)."""
    if c.context is not None and not c.context.has_validation and c.values.get("early_stopping"):
        yield (
            f"{c.shown('early_stopping')} needs a validation channel and this run has none: "
            "add a 'validation' channel or set early_stopping=False"
        )


def _depth_fits_image_size(c: _Check) -> Iterator[str]:
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


def _early_stopping_options_unused(c: _Check) -> Iterator[str]:
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


def _kv_store_single_host(c: _Check) -> Iterator[str]:
    """Warn when kv_store is set on a single host (with a context)."""
    if c.context is not None and c.context.num_hosts == 1 and c.values["kv_store"] is not None:
        yield f"{c.shown('kv_store')} on a single host: training runs as a one-worker job"


_ERROR_RULES: tuple[Callable[[_Check], Iterator[str]], ...] = (
    _checkpoint_within_epochs,
    _steps_within_epochs,
    _resize_exceeds_shape,
    _pretrained_fits,
    _weighted_loss_needs_multi_label,
    _top_k_within_classes,
    _resize_for_images,
    _float16_needs_gpu,
    _early_stopping_needs_validation,
)
_WARNING_RULES: tuple[Callable[[_Check], Iterator[str]], ...] = (
    _depth_fits_image_size,
    _early_stopping_options_unused,
    _kv_store_single_host,
)


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
            values[p.name] = _convert(p, value)
        except (ValueError, OverflowError):
            violations.append(f"{p.name}: got {value!r}, expected {valid_values(p)}")
    return values, violations


def parse_hyperparameters(
    raw: Mapping[str, Any], context: RunContext | None = None
) -> Hyperparameters:
    """Typed, checked hyperparameters; HyperparameterError lists every violation at once."""
    values, violations = _parse_each(raw)
    check = _Check(raw=raw, values=values, context=context)
    violations = [
        *_unknown_names(raw),
        *violations,
        *(message for rule in _ERROR_RULES for message in rule(check)),
    ]
    if violations:
        raise HyperparameterError(violations)
    for rule in _WARNING_RULES:
        for message in rule(check):
            LOG.warning(message)
    return Hyperparameters(**values)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The hyperparameter table in Markdown, one row per parameter."""
    rows = [
        "| name | required | type / valid values | default | description |",
        "|---|---|---|---|---|",
    ]
    for p in PARAMS:
        default = wire_form(p, p.default) or "—"
        cells = (p.name, "yes" if p.required else "no", valid_values(p), default, p.description)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _string_pattern(p: Param) -> str:
    """A regular expression for the string form of `p` (format only, not the ranges)."""
    item = rf"\s*{_INT_RE}\s*"
    if p.kind in (Kind.TRUE_FALSE, Kind.ZERO_ONE):
        words = _TRUE_FALSE_WORDS if p.kind is Kind.TRUE_FALSE else _ZERO_ONE_WORDS
        return _anchored(f"({'|'.join(words)})")
    if p.kind is Kind.IMAGE_SHAPE:
        return f"^{item},{item},{item}$"
    if p.kind is Kind.EPOCH_LIST:
        return rf"^(\s*|{item}(,{item})*)$"
    if p.type is str:
        return _anchored(f"({'|'.join(re.escape(c) for c in p.choices)})")
    return _anchored(_INT_RE if p.type is int else _FLOAT_RE)


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
    schema: dict[str, Any] = {"description": f"{valid_values(p)}. {p.description}"}
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
