"""Models of SageMaker's built-in algorithm: their symbol served as is, their weights mapped.

The built-in `model.tar.gz` holds MXNet's `example/image-classification/symbols/resnet.py`
ResNet v2: a `bn_data` BatchNorm (fixed gamma) on raw pixels, `conv0` (and `bn0` + max pooling on
images over 32 px), units `stageS_unitU_{bn1,conv1,bn2,conv2,bn3,conv3,sc}`, `bn1`, `fc1`, and a
`SoftmaxOutput` named `softmax` that takes a `softmax_label` input. Its BatchNorms use eps 2e-5.
"""

from __future__ import annotations

import json

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

from imgcls.errors import ClientError
from imgcls.model.networks import MODEL_ZOO, Structure, build_network, structures

BUILTIN_EPS = 2e-5
CLASSIFIER = "fc1_weight"
_BN_NAMES = {
    "gamma": "gamma",
    "beta": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_var",
}


def probability_symbol(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """`sym` with a label-taking SoftmaxOutput head replaced by the softmax it computes forward.

    SoftmaxOutput's forward pass is a softmax over its data; only its backward uses the label,
    so the served probabilities are the built-in endpoint's. Other symbols are returned as they
    are.
    """
    head = json.loads(sym.tojson())["nodes"][-1]
    if head["op"] != "SoftmaxOutput":
        return sym
    return mx.sym.softmax(sym.get_children()[0], axis=1, name=head["name"])


def fix_gammas(sym: mx.sym.Symbol, params: dict[str, mx.nd.NDArray]) -> dict[str, mx.nd.NDArray]:
    """`params` with the gamma of every `fix_gamma` BatchNorm set to 1, as MXNet computes them.

    MXNet ignores a fixed gamma's stored value; converters that read the value (ONNX) do not.
    """
    nodes = json.loads(sym.tojson())["nodes"]
    fixed = dict(params)
    for node in nodes:
        attrs = node.get("attrs", {})
        if node["op"] == "BatchNorm" and attrs.get("fix_gamma", "True") in ("True", "true", "1"):
            gamma = nodes[node["inputs"][1][0]]["name"]
            if gamma in fixed:
                fixed[gamma] = mx.nd.ones_like(fixed[gamma])
    return fixed


def is_builtin(arrays: dict[str, mx.nd.NDArray]) -> bool:
    """Whether a params file's arrays carry the built-in algorithm's names."""
    return f"arg:{CLASSIFIER}" in arrays


def builtin_structure(
    names: set[str], num_layers: int, num_classes: int, image_shape: tuple[int, int, int]
) -> Structure:
    """The structure under which imgcls's network of that depth has the built-in model's
    parameter `names`; the model zoo's when none has (mapped_weights then says what differs)."""
    for structure in structures(num_layers):
        net = build_network(num_layers, num_classes, image_shape, structure)
        if set(builtin_names(net.backbone).values()) == names:
            return structure
    return MODEL_ZOO


def builtin_names(backbone: gluon.HybridBlock) -> dict[str, str]:
    """{imgcls parameter name: built-in parameter name} for a model-zoo ResNet v2 `backbone`."""
    names: dict[str, str] = {}
    features = list(backbone.features._children.values())
    data_norm, rest = features[0], features[1:]
    _add_batchnorm(names, data_norm, "bn_data")
    stem = [layer for layer in rest if not isinstance(layer, nn.HybridSequential)]
    stages = [layer for layer in rest if isinstance(layer, nn.HybridSequential)]
    convs = [layer for layer in stem if isinstance(layer, nn.Conv2D)]
    norms = [layer for layer in stem if isinstance(layer, nn.BatchNorm)]
    names[convs[0].weight.name] = "conv0_weight"
    _add_batchnorm(names, norms[-1], "bn1")
    if len(norms) == 2:
        _add_batchnorm(names, norms[0], "bn0")
    for s, stage in enumerate(stages, start=1):
        for u, unit in enumerate(stage._children.values(), start=1):
            _add_unit(names, unit, f"stage{s}_unit{u}")
    names[backbone.output.weight.name] = "fc1_weight"
    names[backbone.output.bias.name] = "fc1_bias"
    return names


def _add_batchnorm(names: dict[str, str], norm: nn.BatchNorm, builtin: str) -> None:
    for ours, theirs in _BN_NAMES.items():
        names[norm.params.get(ours).name] = f"{builtin}_{theirs}"


def _add_unit(names: dict[str, str], unit: gluon.HybridBlock, prefix: str) -> None:
    for attribute, child in unit._children.items():
        builtin = f"{prefix}_{'sc' if attribute == 'downsample' else attribute}"
        if isinstance(child, nn.BatchNorm):
            _add_batchnorm(names, child, builtin)
        else:
            names[child.weight.name] = f"{builtin}_weight"


def mapped_weights(
    net: gluon.HybridBlock, arrays: dict[str, mx.nd.NDArray], where: str
) -> dict[str, mx.nd.NDArray]:
    """The built-in model's `arrays` as weights of imgcls's `net`, computing the same function.

    `net` normalises pixels with constants before its data BatchNorm, which the built-in model
    does not: that BatchNorm's statistics absorb the constants. Every BatchNorm's variance absorbs
    the difference in eps. A missing, extra or differently shaped parameter is a ClientError.
    """
    stored = {name.split(":", 1)[1]: value for name, value in arrays.items()}
    names = builtin_names(net.backbone)
    _check_names(set(names.values()), set(stored), where)
    params = net.collect_params()
    weights = {}
    for ours, theirs in names.items():
        value = stored[theirs]
        if not _fits(value.shape, params[ours].shape):
            raise ClientError(
                f"The built-in model's {theirs} in {where} has shape {tuple(value.shape)}; "
                f"imgcls's network needs {tuple(params[ours].shape)} (0: any). The model was "
                "trained for another network or image size."
            )
        weights[ours] = value
    eps = net.backbone.features[0]._kwargs["eps"]
    for ours, theirs in names.items():
        if theirs.endswith("moving_var"):
            weights[ours] = weights[ours] + (BUILTIN_EPS - eps)
    _absorb_normalisation(net, names, weights, eps)
    return weights


def _fits(stored: tuple[int, ...], ours: tuple[int, ...]) -> bool:
    """Whether a stored shape fits a parameter's (0 = not known yet: deferred initialisation)."""
    return len(stored) == len(ours) and all(o in (0, s) for s, o in zip(stored, ours, strict=True))


def _check_names(expected: set[str], stored: set[str], where: str) -> None:
    missing, extra = sorted(expected - stored), sorted(stored - expected)
    if missing or extra:
        raise ClientError(
            f"The built-in model in {where} does not have the structure of imgcls's network: "
            f"missing {missing or 'nothing'}, not in imgcls's network {extra or 'nothing'}. "
            "(The built-in ResNet-50, -152 and -200 for images at most 28 px high have three "
            "CIFAR-style stages, imgcls's have four.) Serve the model as it is, or train from "
            "scratch."
        )


def _absorb_normalisation(
    net: gluon.HybridBlock, names: dict[str, str], weights: dict, eps: float
) -> None:
    """Data BatchNorm statistics for normalised pixels: y = (x − m)·s, so mean → (mean − m)·s and
    variance + eps → (variance + eps)·s²; its gamma is fixed at 1 in both networks."""
    norm = net.backbone.features[0]
    mean = net.mean.list_data()[0].as_in_context(mx.cpu())
    scale = net.inv_std.list_data()[0].as_in_context(mx.cpu())
    running_mean, running_var = norm.running_mean.name, norm.running_var.name
    weights[running_mean] = (weights[running_mean] - mean) * scale
    weights[running_var] = (weights[running_var] + eps) * scale**2 - eps
    weights[norm.gamma.name] = mx.nd.ones_like(weights[norm.gamma.name])
    weights[net.mean.name], weights[net.inv_std.name] = mean, scale
