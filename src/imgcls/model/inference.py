"""A stored model loaded for inference: 0–255 NCHW pixels in, per-class probabilities out."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon

from imgcls.errors import ClientError
from imgcls.model import builtin
from imgcls.model.artifact import (
    SYMBOL_FILE,
    crop_side,
    latest_params,
    model_folder,
    reason,
    stored_info,
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference: `predict` maps 0–255 NCHW pixels to probabilities."""

    block: gluon.SymbolBlock
    image_shape: tuple[int, int, int]
    num_classes: int
    multi_label: bool
    epoch: int
    metadata: dict
    ctx: mx.Context = field(default_factory=mx.cpu)

    @property
    def crop_side(self) -> int | None:
        """The shorter side images are resized to before a centre crop; None: squash."""
        return crop_side(self.metadata)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Per-class probabilities, shape (N, num_classes), of a float32 (N, C, H, W) batch."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.image_shape:
            raise ValueError(f"expected a (N, {self.image_shape}) batch, got {batch.shape}")
        data = mx.nd.array(batch, ctx=self.ctx, dtype="float32")
        return self.block(data).asnumpy()


def _symbol_block(symbol_file: Path, params: Path, ctx: mx.Context) -> gluon.SymbolBlock:
    """The stored network with probabilities as output (a built-in model's head without label)."""
    sym = builtin.probability_symbol(mx.sym.load(str(symbol_file)))
    block = gluon.SymbolBlock(sym, mx.sym.var("data"))
    block.collect_params().load(str(params), ctx, cast_dtype=True, dtype_source="saved")
    return block


def load_model(model_dir: Path, ctx: mx.Context | None = None) -> LoadedModel:
    """Load the highest-epoch model of `model_dir` (a model folder, or one holding model.tar.gz)."""
    ctx = ctx or mx.cpu()
    with model_folder(model_dir) as folder:
        epoch, params = latest_params(folder)
        info = stored_info(folder, params)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Cannot decide type", UserWarning)
                block = _symbol_block(folder / SYMBOL_FILE, params, ctx)
        except (mx.MXNetError, AssertionError, ValueError) as e:
            raise ClientError(
                f"Cannot load the model in {model_dir} ({SYMBOL_FILE}, {params.name}): "
                f"{reason(e)}. Re-export the model or restore its files."
            ) from e
    block.hybridize(static_alloc=True)
    return LoadedModel(
        block=block,
        image_shape=info["image_shape"],
        num_classes=info["num_classes"],
        multi_label=info["multi_label"],
        epoch=epoch,
        metadata=info,
        ctx=ctx,
    )
