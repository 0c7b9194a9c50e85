"""The model artifact's files: their names, export, the stored metadata, and weights read back.

A model folder holds `image-classification-symbol.json`, `image-classification-NNNN.params`
(NNNN = 1-based epoch), `model-shapes.json` and imgcls's `imgcls-model.json`; plain MXNet loads
it with `mx.model.load_checkpoint` + `mx.mod.Module`, as SageMaker's notebooks do. This is the
only module that knows those names; archive.py packs them, inference.py serves them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from imgcls.config.hyperparameters.table import DEPTHS
from imgcls.errors import ClientError
from imgcls.model import builtin
from imgcls.model.archive import safe_extract
from imgcls.model.networks import (
    MODEL_ZOO,
    Structure,
    build_network,
    inference_network,
    structures,
)
from imgcls.system import atomic_write

PREFIX = "image-classification"
SYMBOL_FILE = f"{PREFIX}-symbol.json"
SHAPES_FILE = "model-shapes.json"
METADATA_FILE = "imgcls-model.json"
TARBALL = "model.tar.gz"
_PARAMS_RE = re.compile(rf"{re.escape(PREFIX)}-(\d{{4,}})\.params")
_CHECKED = ("num_layers", "image_shape", "num_classes")
_REQUIRED = (*_CHECKED, "multi_label")
CROP_SIDE_KEY = "inference_shorter_side"
STRUCTURE_KEY = "network"


def params_path(model_dir: Path, epoch: int) -> Path:
    """The params file of `epoch` (1-based) in `model_dir`."""
    return Path(model_dir) / f"{PREFIX}-{epoch:04d}.params"


def list_params_epochs(model_dir: Path) -> list[int]:
    """The epochs that have a params file in `model_dir`, ascending."""
    matches = (_PARAMS_RE.fullmatch(p.name) for p in Path(model_dir).iterdir())
    return sorted(int(m.group(1)) for m in matches if m)


def remove_params(model_dir: Path, epoch: int) -> None:
    """Delete the params file of `epoch`, if there is one."""
    params_path(model_dir, epoch).unlink(missing_ok=True)


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def _float32_cpu_network(
    net: gluon.HybridBlock, metadata: dict, image_shape: tuple
) -> gluon.HybridBlock:
    """`net` itself when it holds float32 weights with a copy on the CPU (a ResNet-18 copy
    takes 0.16 s to build); else a float32 CPU network holding `net`'s weights, whatever
    precision and devices `net` trains on. Exporting reads `net` and never changes it.

    Parameter names are deterministic, so the copy's match `net`'s.
    """
    params = net.collect_params()
    if all(np.dtype(p.dtype) == np.float32 and mx.cpu() in p.list_ctx() for p in params.values()):
        return net
    arrays = {
        name: p.data(p.list_ctx()[0]).as_in_context(mx.cpu()).astype("float32")
        for name, p in params.items()
    }
    copy = build_network(
        metadata["num_layers"], metadata["num_classes"], image_shape, net.structure
    )
    copy.collect_params().load_dict(arrays, mx.cpu(), allow_missing=False, ignore_extra=False)
    return copy


def _arrays(params: gluon.ParameterDict, names: set[str], kind: str) -> dict:
    """`{"kind:name": array}` for the parameters named in `names`."""
    return {f"{kind}:{name}": p.data(mx.cpu()) for name, p in params.items() if name in names}


def export_model(
    net: gluon.HybridBlock,
    model_dir: Path,
    epoch: int,
    image_shape: tuple[int, int, int],
    multi_label: bool,
    metadata: dict,
) -> Path:
    """Write the (initialised) training network `net` as a float32 model that outputs
    probabilities.

    `metadata` (num_layers and num_classes at least) goes to imgcls-model.json together with
    image_shape, multi_label and `net`'s structure; the params file's path is returned. A
    float32 CPU copy of `net` is exported, so a network trained in float16 gives the float32
    model serving feeds, and `net`'s precision, devices and hybridization stay untouched.
    """
    if epoch < 1:
        raise ValueError(f"epoch numbers start at 1, got {epoch}")
    if missing := {"num_layers", "num_classes"} - metadata.keys():
        raise ValueError(f"metadata lacks {sorted(missing)}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    # BatchNorm's running statistics are written by the backward pass without the engine
    # blocking the Python thread: wait for them, or the file gets the previous step's values.
    mx.nd.waitall()
    wrapper = inference_network(_float32_cpu_network(net, metadata, image_shape), multi_label)
    params = wrapper.collect_params()
    sym = wrapper(mx.sym.var("data"))
    arrays = _arrays(params, set(sym.list_arguments()), "arg")
    arrays |= _arrays(params, set(sym.list_auxiliary_states()), "aux")
    target = params_path(model_dir, epoch)
    atomic_write(model_dir / SYMBOL_FILE, lambda tmp: sym.save(str(tmp)))
    atomic_write(target, lambda tmp: mx.nd.save(str(tmp), arrays))
    _write_json(model_dir / SHAPES_FILE, [{"name": "data", "shape": [1, *image_shape]}])
    info = {**metadata, **structure_metadata(net.structure)}
    info |= {"image_shape": list(image_shape), "multi_label": bool(multi_label)}
    _write_json(model_dir / METADATA_FILE, info)
    return target


@contextmanager
def model_folder(source: Path) -> Iterator[Path]:
    """A folder with the model's files: `source` itself, or its tarball extracted to a temp folder.

    `source` is a model folder, a folder holding a single `*.tar.gz`, or such a tarball.
    """
    source = Path(source)
    if not source.exists():
        raise ClientError(f"No model at {source}: the path does not exist.")
    if source.is_dir() and (source / SYMBOL_FILE).exists():
        yield source
        return
    tarballs = [source] if source.is_file() else sorted(source.glob("*.tar.gz"))
    if len(tarballs) > 1:
        names = ", ".join(p.name for p in tarballs)
        raise ClientError(f"{source} holds several model archives ({names}); keep only one.")
    if not tarballs:
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="imgcls-model-") as tmp:
        safe_extract(tarballs[0], Path(tmp))
        yield Path(tmp)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClientError(
            f"Cannot read {path.name} of the model in {path.parent}: {e}. Re-export the model, "
            "or restore the file from the original model.tar.gz."
        ) from e


def latest_params(folder: Path) -> tuple[int, Path]:
    """The highest epoch in `folder` and its params file; ClientError if the model is incomplete."""
    if not (folder / SYMBOL_FILE).is_file():
        raise ClientError(
            f"No {SYMBOL_FILE} in {folder}: not an image-classification model folder. Point to "
            f"the folder (or model.tar.gz) that training wrote."
        )
    epochs = list_params_epochs(folder)
    if not epochs:
        raise ClientError(
            f"No {PREFIX}-NNNN.params file in {folder}: the model has no weights. Point to the "
            "folder (or model.tar.gz) that training wrote."
        )
    return epochs[-1], params_path(folder, epochs[-1])


def reason(error: Exception) -> str:
    """The last line of an error message (MXNet's carry a C++ traceback first)."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def load_arrays(path: Path) -> dict[str, mx.nd.NDArray]:
    try:
        return mx.nd.load(str(path))
    except mx.MXNetError as e:
        raise ClientError(f"Cannot read the model weights {path}: {reason(e)}") from e


def _image_shape(folder: Path) -> tuple[int, int, int]:
    """(C, H, W) of the data input, from model-shapes.json."""
    shapes = _read_json(folder / SHAPES_FILE)
    try:
        shape = next(s["shape"] for s in shapes if s["name"] == "data")
        return tuple(int(n) for n in shape[1:4])
    except (TypeError, KeyError, ValueError, StopIteration) as e:
        raise ClientError(
            f"{SHAPES_FILE} in {folder} does not give the shape of 'data' as "
            '[{"name": "data", "shape": [N, C, H, W]}]'
        ) from e


def _architecture(shapes: list[tuple[int, ...]], where: Path) -> tuple[int, int]:
    """(num_layers, num_classes) of a ResNet from its parameters' shapes alone.

    The classifier is the only 2-D weight. Depth = kernels larger than 1×1 (stem + one per
    bottleneck, two per basic block) turned into layers; bottleneck networks are recognised by
    their many 1×1 convolutions (projection shortcuts alone number at most 4).
    """
    dense = [s for s in shapes if len(s) == 2]
    convs = [s for s in shapes if len(s) == 4]
    spatial = sum(1 for s in convs if s[2:] != (1, 1))
    depth = 3 * spatial - 1 if len(convs) - spatial > 4 else spatial + 1
    if len(dense) != 1 or depth not in DEPTHS:
        raise ClientError(
            f"Cannot recognise the network in {where}: it is not a ResNet of a supported depth."
        )
    return depth, dense[0][0]


_CASTS: dict[str, Callable[[Any], Any]] = {
    "num_layers": int,
    "num_classes": int,
    "image_shape": lambda shape: tuple(int(n) for n in shape),
    "multi_label": bool,
    CROP_SIDE_KEY: int,
}


def crop_side(info: dict) -> int | None:
    """The shorter side a model served with inference_preprocessing=crop resizes images to;
    None for the contract's squash (also for models without the setting, e.g. the built-in's)."""
    if info.get("inference_preprocessing", "squash") != "crop":
        return None
    return info[CROP_SIDE_KEY]


def preprocessing_metadata(inference_preprocessing: str, shorter_side: int | None) -> dict:
    """What imgcls-model.json records of the served preprocessing."""
    if inference_preprocessing != "crop":
        return {"inference_preprocessing": inference_preprocessing}
    return {"inference_preprocessing": "crop", CROP_SIDE_KEY: shorter_side}


def structure_metadata(structure: Structure) -> dict:
    """What imgcls-model.json records of the network's structure: nothing for the model zoo's."""
    if structure == MODEL_ZOO:
        return {}
    return {STRUCTURE_KEY: dataclasses.asdict(structure)}


def network_structure(info: dict) -> Structure:
    """The structure stored metadata records (ValueError or TypeError if it is not valid)."""
    structure = Structure(**info.get(STRUCTURE_KEY, {}))
    if not all(isinstance(v, bool) for v in dataclasses.astuple(structure)):
        raise TypeError(f"{STRUCTURE_KEY!r} must hold true or false values")
    if structure not in structures(info["num_layers"]):
        raise ValueError(f"a ResNet-{info['num_layers']} cannot have the structure {structure}")
    return structure


def _coerced(info: dict) -> dict:
    """`info` with the hyperparameters it holds in comparable types (JSON makes tuples lists)."""
    return {key: _CASTS.get(key, lambda v: v)(value) for key, value in info.items()}


def stored_info(folder: Path, params: Path) -> dict:
    """The model's hyperparameters: imgcls-model.json, or inferred (e.g. built-in models)."""
    if not (folder / METADATA_FILE).exists():
        shapes = [a.shape for a in load_arrays(params).values()]
        num_layers, num_classes = _architecture(shapes, params)
        return {
            "num_layers": num_layers,
            "num_classes": num_classes,
            "image_shape": _image_shape(folder),
            "multi_label": False,
        }
    info = _read_json(folder / METADATA_FILE)
    try:
        if missing := set(_REQUIRED) - info.keys():
            raise KeyError(f"lacks {sorted(missing)}")
        if info.get("inference_preprocessing") == "crop" and CROP_SIDE_KEY not in info:
            raise KeyError(f"inference_preprocessing 'crop' without {CROP_SIDE_KEY!r}")
        info = _coerced(info)
        network_structure(info)
        return info
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ClientError(
            f"{METADATA_FILE} in {folder} is not valid ({e}): it must hold {list(_REQUIRED)}."
        ) from e


def _check_matches(stored: dict, expected: dict, where: Path) -> None:
    """ClientError listing every checked hyperparameter where `stored` differs from `expected`."""
    expected = _coerced(expected)
    differences = [
        f"{key}: the model has {stored[key]}, the hyperparameters ask for {expected[key]}"
        for key in _CHECKED
        if stored[key] != expected[key]
    ]
    if differences:
        raise ClientError(
            f"The model for incremental training ({where}) does not match the hyperparameters: "
            + "; ".join(differences)
            + ". Set them to the model's values or train from scratch without the model channel."
        )


def load_exported_weights(net: gluon.HybridBlock, params: Path, ctx: list[mx.Context]) -> None:
    """Set `net`'s parameters, on `ctx` and in their own precision, from a params file that
    `export_model` wrote from a network of the same structure (float32: casting back is exact)."""
    net.collect_params().load_dict(
        load_arrays(params),
        ctx,
        allow_missing=False,
        ignore_extra=False,
        cast_dtype=True,
        dtype_source="current",
    )


def training_network(
    model_dir_or_tar: Path, expected: dict, ctx: list[mx.Context]
) -> gluon.HybridBlock:
    """imgcls's training network holding a stored model's weights, on `ctx` (incremental training).

    `expected` holds the requested num_layers, num_classes (ints) and image_shape (3 ints); each
    must equal the stored model's. The network takes the stored model's structure (its
    imgcls-model.json's, or a built-in model's own), and a built-in model's weights are mapped
    onto it (builtin.py).
    """
    with model_folder(model_dir_or_tar) as folder:
        _, params = latest_params(folder)
        info = stored_info(folder, params)
        _check_matches(info, expected, model_dir_or_tar)
        arrays = load_arrays(params)
    net = build_network(
        info["num_layers"], info["num_classes"], info["image_shape"], _structure(info, arrays)
    )
    net.initialize(ctx=ctx)  # then every parameter is loaded: the initialiser does not matter
    if builtin.is_builtin(arrays):
        arrays = builtin.mapped_weights(net, arrays, str(model_dir_or_tar))
    try:
        net.collect_params().load_dict(arrays, allow_missing=False, ignore_extra=False)
    except AssertionError as e:
        raise ClientError(
            f"The weights in {model_dir_or_tar} do not fit imgcls's network (a model of another "
            f"implementation?): {e}"
        ) from e
    return net


def _structure(info: dict, arrays: dict[str, mx.nd.NDArray]) -> Structure:
    """A stored model's structure: imgcls-model.json's, or the one a built-in model's names need."""
    if not builtin.is_builtin(arrays):
        return network_structure(info)
    names = {name.split(":", 1)[1] for name in arrays}
    return builtin.builtin_structure(
        names, info["num_layers"], info["num_classes"], info["image_shape"]
    )
