"""`imgcls export onnx`: the ONNX file, run by onnx's own ReferenceEvaluator (pure numpy), gives
what MXNet's Module gives on the exported symbol, on real (PNG) images, for any batch size.

The evaluator's convolution is a Python loop over channels and pixels (ResNet-18 on 8×8, two
images: about 20 s on a quiet machine), so ResNet-18 runs with a vectorised convolution written
here, checked against the evaluator's own on every convolution setting of that graph; ResNet-20
runs with the evaluator's own operators only."""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import onnx
import pytest
from builtin_support import (
    module_probabilities,
    pattern_images,
    pillow_pixels,
    png_files,
    tarball,
    trained_builtin_model,
)
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from imgcls.cli import main
from imgcls.errors import ClientError
from imgcls.model.artifact import PREFIX, export_model
from imgcls.model.networks import MODEL_ZOO, Structure, build_network
from imgcls.model.onnx_export import export_onnx

CLASSES = 4


def imgcls_model(
    folder: Path,
    num_layers: int,
    shape: tuple[int, int, int],
    multi_label: bool,
    structure: Structure = MODEL_ZOO,
):
    """An exported imgcls model whose BatchNorm statistics and shifts are not the defaults."""
    mx.random.seed(1)
    net = build_network(num_layers, CLASSES, shape, structure)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, *shape)))
    rng = np.random.default_rng(1)
    for name, p in net.collect_params().items():
        if name.endswith(("running_mean", "running_var", "beta", "gamma")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
    metadata = {"num_layers": num_layers, "num_classes": CLASSES}
    export_model(net, folder, 1, shape, multi_label, metadata)
    return folder


def module_reference(folder: Path, pixels: np.ndarray) -> np.ndarray:
    """Module's forward on the exported symbol, as SageMaker's notebooks load the model."""
    sym, args, auxs = mx.model.load_checkpoint(str(folder / PREFIX), 1)
    module = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", (1, *pixels.shape[1:]))], for_training=False)
    module.set_params(args, auxs)
    return module_probabilities(module, pixels)


class Conv(OpRun):
    """ONNX Conv (2-D, one group, no dilation) as windows · kernels, from the operator's spec."""

    op_domain = ""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, **attributes):
        assert auto_pad in (None, "NOTSET") and group in (None, 1)
        assert all(d == 1 for d in dilations or (1, 1))
        top, left, bottom, right = attributes.get("pads") or (0, 0, 0, 0)
        rows, cols = attributes.get("strides") or (1, 1)
        padded = np.pad(X, ((0, 0), (0, 0), (top, bottom), (left, right)))
        windows = sliding_window_view(padded, W.shape[2:], axis=(2, 3))[:, :, ::rows, ::cols]
        out = np.einsum("nchwij,ocij->nohw", windows, W)
        if B is not None:
            out = out + B[None, :, None, None]
        return (out.astype(X.dtype),)


def conv_settings(graph: onnx.ModelProto) -> set[tuple]:
    """(kernel, strides, pads) of every Conv node of `graph`."""
    settings = set()
    for node in graph.graph.node:
        if node.op_type == "Conv":
            values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            assert values.get("group", 1) == 1
            settings.add((values["kernel_shape"], values.get("strides"), values.get("pads")))
    return settings


def assert_conv_matches_onnx(kernel: tuple, strides: tuple | None, pads: tuple | None) -> None:
    """The vectorised Conv equals the evaluator's own on small random tensors."""
    attributes = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    node = helper.make_node("Conv", ["x", "w"], ["y"], **{k: v for k, v in attributes.items() if v})
    tensor = onnx.TensorProto.FLOAT
    graph = helper.make_model(
        helper.make_graph(
            [node],
            "conv",
            [helper.make_tensor_value_info(n, tensor, None) for n in ("x", "w")],
            [helper.make_tensor_value_info("y", tensor, None)],
        )
    )
    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.normal(size=(2, 3, 9, 9)).astype("float32"),
        "w": rng.normal(size=(4, 3, *kernel)).astype("float32"),
    }
    own = ReferenceEvaluator(graph).run(None, inputs)[0]
    vectorised = ReferenceEvaluator(graph, new_ops=[Conv]).run(None, inputs)[0]
    np.testing.assert_allclose(vectorised, own, rtol=1e-5, atol=1e-5)


def onnx_outputs(path: Path, pixels: np.ndarray) -> np.ndarray:
    """The ONNX file run by onnx's ReferenceEvaluator, with the vectorised Conv once it equals
    the evaluator's own (30x slower) on every Conv setting of the graph."""
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["data"]
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value, "the batch dimension must be dynamic"
    for setting in conv_settings(graph):
        assert_conv_matches_onnx(*setting)
    evaluator = ReferenceEvaluator(graph, new_ops=[Conv])
    return evaluator.run(None, {"data": pixels})[0]


def real_pixels(folder: Path, shape: tuple[int, int, int], count: int) -> np.ndarray:
    """PNG files written by Pillow, read back by Pillow (grey models: the red channel of grey)."""
    images, _ = pattern_images(count, CLASSES, (3, *shape[1:]), seed=3)
    pixels = pillow_pixels(png_files(folder, images))
    return pixels[:, : shape[0]]


BUILTIN_STRUCTURE = Structure(small_stem=True, stage1_projection=True)


@pytest.mark.parametrize(
    ("num_layers", "shape", "multi_label", "structure"),
    [
        (20, (3, 8, 8), False, MODEL_ZOO),
        (20, (1, 8, 8), True, MODEL_ZOO),
        (18, (3, 8, 8), False, MODEL_ZOO),
        (18, (3, 8, 8), False, BUILTIN_STRUCTURE),  # as a continued built-in ResNet-18 has it
    ],
)
def test_onnx_outputs_equal_modules(
    tmp_path: Path,
    num_layers: int,
    shape: tuple[int, int, int],
    multi_label: bool,
    structure: Structure,
) -> None:
    folder = imgcls_model(tmp_path / "model", num_layers, shape, multi_label, structure)
    pixels = real_pixels(tmp_path / "images", shape, 2)
    done = export_onnx(tarball(folder, tmp_path / "model.tar.gz"), tmp_path / "model.onnx")
    assert (done.epoch, done.image_shape) == (1, shape)
    expected = module_reference(folder, pixels)
    # Exported for a batch of 1 (MXNet's shape inference needs one), run with a batch of 2.
    outputs = onnx_outputs(done.path, pixels)
    np.testing.assert_allclose(outputs, expected, atol=1e-4)
    if not multi_label:
        np.testing.assert_allclose(expected.sum(axis=1), 1, atol=1e-5)


def test_a_builtin_model_exports_with_its_fixed_gamma(tmp_path: Path) -> None:
    """Its stored bn_data gamma is 2, which MXNet ignores (fix_gamma): so must the ONNX file."""
    shape = (3, 8, 8)
    module = trained_builtin_model(tmp_path / "model", 20, CLASSES, shape)
    pixels = real_pixels(tmp_path / "images", shape, 2)
    out = tmp_path / "builtin.onnx"
    assert main(["export", "onnx", str(tmp_path / "model"), str(out)]) == 0
    expected = module_probabilities(module, pixels)
    np.testing.assert_allclose(onnx_outputs(out, pixels), expected, atol=1e-4)


def test_not_a_model_is_a_client_error(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="not an image-classification model folder"):
        export_onnx(tmp_path, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
