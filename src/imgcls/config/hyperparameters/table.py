"""The hyperparameter table: `PARAMS` is the only declaration of the interface.

Everything else is derived from it: the typed `Hyperparameters` (fields.py), the parser
(parsing.py), the rules across parameters (rules.py), the Markdown table and JSON Schema
(docs.py). SageMaker writes every value as a string; native JSON numbers and booleans are
accepted too, and `null` means "not set". String values may carry surrounding whitespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# The network depths of the ResNet paper: the only table of them (networks and artifacts read it).
LARGE_IMAGE_DEPTHS = (18, 34, 50, 101, 152, 200)
SMALL_IMAGE_DEPTHS = (20, 32, 44, 56, 110)
DEPTHS = LARGE_IMAGE_DEPTHS + SMALL_IMAGE_DEPTHS
SMALL_IMAGE_MAX_SIDE = 64
PRETRAINED_IMAGE_SHAPE = (3, 224, 224)
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
    extension: bool = False


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


BUILT_IN_PARAMS: tuple[Param, ...] = (
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
        choices=DEPTHS,
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

# imgcls extensions: not in the built-in algorithm; each default leaves its behaviour unchanged.
EXTENSION_PARAMS: tuple[Param, ...] = (
    Param(
        name="inference_preprocessing",
        type=str,
        default="squash",
        choices=("squash", "crop"),
        extension=True,
        description=(
            "how the served model (endpoint and batch scoring) turns an image into the network "
            "input. `squash`: the contract's resize to image_shape without keeping the aspect "
            "ratio. `crop`: what validation does: the shorter side resized (to `resize` when "
            "set, else to the smallest shorter side of the training images, at least "
            "image_shape's height and width), then a centre crop to image_shape. Recorded in "
            "the model's imgcls-model.json; a model without it is served with `squash`"
        ),
    ),
    Param(
        name="label_smoothing",
        type=float,
        default=0.0,
        minimum=0,
        maximum=0.5,
        extension=True,
        description=(
            "ε: training targets (1 − ε)·one-hot + ε/num_classes; multi-label: (1 − ε)·y + ε/2 "
            "per class. 0: off. The logged train accuracy still compares the prediction with "
            "the hard label"
        ),
    ),
    Param(
        name="lr_scheduler",
        type=str,
        default="step",
        choices=("step", "cosine"),
        extension=True,
        description=(
            "`step`: the built-in's schedule (lr_scheduler_step, lr_scheduler_factor). "
            "`cosine`: after any warm-up, the learning rate follows a half cosine from "
            "learning_rate down to 0 over the remaining updates of the `epochs` "
            "(lr_scheduler_step and lr_scheduler_factor are ignored)"
        ),
    ),
    Param(
        name="mixup_alpha",
        type=float,
        default=0.0,
        minimum=0,
        extension=True,
        description=(
            "mixup: each training batch becomes λ·x + (1 − λ)·x' of itself and a shuffled copy, "
            "targets mixed alike, λ = max(b, 1 − b) with b ~ Beta(α, α) drawn per batch. 0: "
            "off. Works with multi_label. The logged train accuracy then compares the "
            "prediction on the mixed image with its own (dominant, λ ≥ 0.5) label"
        ),
    ),
    Param(
        name="no_bias_decay",
        type=bool,
        default=False,
        kind=Kind.ZERO_ONE,
        extension=True,
        description=(
            "1: no weight decay on biases and BatchNorm's gamma and beta (weight_decay then "
            "applies to convolution and fully connected weights only)"
        ),
    ),
    Param(
        name="warmup_epochs",
        type=int,
        default=0,
        minimum=0,
        extension=True,
        description=(
            "epochs of linear learning-rate warm-up from 0 to learning_rate, counted in "
            "updates; with `lr_scheduler=step` it must end by the first lr_scheduler_step epoch"
        ),
    ),
)

PARAMS: tuple[Param, ...] = BUILT_IN_PARAMS + EXTENSION_PARAMS
PARAMS_BY_NAME: Mapping[str, Param] = {p.name: p for p in PARAMS}
