"""The served model: image bytes in, per-class probabilities out, as JSON or JSON Lines."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import mxnet as mx
import numpy as np

from imgcls.data.preprocess import prepare
from imgcls.gpu import check_gpus
from imgcls.model.inference import LoadedModel, load_model

JSON = "application/json"
JSONLINES = "application/jsonlines"


class Predictor:
    """A loaded model behind a lock: MXNet's cached graphs must not run in two threads at once."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self._lock = threading.Lock()

    def prepare(self, data: bytes, where: str = "the image") -> np.ndarray:
        """The network input (1, C, H, W) of the image in `data`; ClientError if not an image."""
        return prepare(data, self.model.image_shape, where, self.model.crop_side)

    def predict(self, data: bytes, where: str = "the image") -> np.ndarray:
        """The probabilities (num_classes,) of the image in `data`; ClientError if not an image."""
        return self.predict_batch(self.prepare(data, where))[0]

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """The probabilities (N, num_classes) of a prepared (N, C, H, W) batch."""
        with self._lock:
            return self.model.predict(batch)


def load_predictor(model_dir: Path, ctx: mx.Context | None = None) -> Predictor:
    """The predictor of the highest-epoch model in `model_dir` (a folder or one model.tar.gz).

    On `ctx`, by default the first GPU when there is one (GPU image), else the CPU; a GPU this
    MXNet cannot run is a ClientError first. One forward pass on a blank image builds MXNet's
    cached graph, so the first request is fast.
    """
    check_gpus()
    if ctx is None:
        ctx = mx.gpu(0) if mx.context.num_gpus() else mx.cpu()
    model = load_model(model_dir, ctx)
    model.predict(np.zeros((1, *model.image_shape), dtype=np.float32))
    return Predictor(model)


def encode(probabilities: np.ndarray, media_type: str = JSON) -> bytes:
    """`[p0, ...]` for JSON; one `{"prediction": [p0, ...]}` line for JSON Lines."""
    values = [float(p) for p in probabilities]
    if media_type == JSONLINES:
        return (json.dumps({"prediction": values}) + "\n").encode()
    return json.dumps(values).encode()
