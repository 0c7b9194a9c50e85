"""`imgcls export onnx`: a stored model as ONNX, by MXNet's own `mx.onnx.export_model`.

The ONNX graph takes what the model takes, float32 0–255 NCHW pixels (input `data`, any batch
size), and outputs its per-class probabilities (softmax, or sigmoids when multi-label).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np

from imgcls.errors import ClientError
from imgcls.model import builtin
from imgcls.model.artifact import (
    SYMBOL_FILE,
    latest_params,
    load_arrays,
    model_folder,
    reason,
    stored_info,
)
from imgcls.system import atomic_write

BATCH = "N"


@dataclass(frozen=True)
class OnnxExport:
    """What was exported: the file, the model's epoch and its input shape (C, H, W)."""

    path: Path
    epoch: int
    image_shape: tuple[int, int, int]


def export_onnx(model: Path, out: Path) -> OnnxExport:
    """Write the highest-epoch model of `model` (folder or model.tar.gz) as the ONNX file `out`."""
    onnx = _onnx()
    with model_folder(model) as folder:
        epoch, params_file = latest_params(folder)
        shape = tuple(stored_info(folder, params_file)["image_shape"])
        sym = builtin.probability_symbol(mx.sym.load(str(folder / SYMBOL_FILE)))
        arrays = load_arrays(params_file)
    params = builtin.fix_gammas(sym, {k.split(":", 1)[1]: v for k, v in arrays.items()})
    with tempfile.TemporaryDirectory(prefix="imgcls-onnx-") as tmp:
        converted = Path(tmp) / "model.onnx"
        try:
            mx.onnx.export_model(
                sym,
                params,
                in_shapes=[(1, *shape)],
                in_types=[np.float32],
                onnx_file_path=str(converted),
                dynamic=True,
                dynamic_input_shapes=[(None, *shape)],
            )
        except (mx.MXNetError, AttributeError, KeyError, NotImplementedError) as e:
            raise ClientError(
                f"MXNet cannot convert the model in {model} to ONNX: {reason(e)}"
            ) from e
        graph = onnx.load(str(converted))
    _only_data_input(graph)
    _name_batch_dimension(graph)
    onnx.checker.check_model(graph)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: onnx.save(graph, str(tmp)))
    return OnnxExport(out, epoch, shape)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ClientError(
            "ONNX export needs the onnx package: pip install 'imgcls[onnx]' (onnx==1.14.1)."
        ) from None
    return onnx


def _only_data_input(graph) -> None:
    """Drop the weights from the graph's inputs (MXNet lists them there as well as initializers),
    so that runtimes see one input, `data`, and do not let callers override the weights."""
    weights = {tensor.name for tensor in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in weights]
    del graph.graph.input[:]
    graph.graph.input.extend(inputs)


def _name_batch_dimension(graph) -> None:
    """Call the input's and the output's first dimension `N` (MXNet leaves it unnamed)."""
    for value in (*graph.graph.input, *graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH
