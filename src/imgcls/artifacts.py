"""The model artifact: export, pack, extract and load. The only module that knows its file names.

A model folder holds `image-classification-symbol.json`, `image-classification-NNNN.params`
(NNNN = 1-based epoch), `model-shapes.json` and imgcls's `imgcls-model.json`; plain MXNet loads
it with `mx.model.load_checkpoint` + `mx.mod.Module`, as SageMaker's notebooks do.
"""

import gzip
import json
import os
import re
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from imgcls.errors import ClientError
from imgcls.networks import LARGE_DEPTHS, SMALL_DEPTHS, inference_network

PREFIX = "image-classification"
SYMBOL_FILE = f"{PREFIX}-symbol.json"
SHAPES_FILE = "model-shapes.json"
METADATA_FILE = "imgcls-model.json"
TARBALL = "model.tar.gz"
_PARAMS_RE = re.compile(rf"{re.escape(PREFIX)}-(\d{{4,}})\.params")
_CHECKED = ("num_layers", "image_shape", "num_classes")
_REQUIRED = (*_CHECKED, "multi_label")
_REBUILD_HINT = "put the model folder's files at the archive root: tar -czf model.tar.gz -C model ."


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


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a temporary file beside `path`, then rename it to `path`."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, value: Any) -> None:
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n"))


def _cpu_arrays(params: gluon.ParameterDict, names: set[str], kind: str) -> dict:
    """`{"kind:name": array on CPU}` for the parameters named in `names`."""
    return {
        f"{kind}:{name}": p.data(p.list_ctx()[0]).as_in_context(mx.cpu())
        for name, p in params.items()
        if name in names
    }


def export_model(
    net: gluon.HybridBlock,
    model_dir: Path,
    epoch: int,
    image_shape: tuple[int, int, int],
    multi_label: bool,
    metadata: dict,
) -> Path:
    """Write the training network `net` as a model that outputs probabilities; return its params.

    `metadata` (num_layers and num_classes at least) goes to imgcls-model.json together with
    image_shape and multi_label. The symbol is traced without hybridizing, so `net`'s own
    hybridization settings stay untouched.
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
    wrapper = inference_network(net, multi_label)
    params = wrapper.collect_params()
    ctx = next(iter(params.values())).list_ctx()[0]
    wrapper(mx.nd.zeros((1, *image_shape), ctx=ctx))  # completes any deferred initialisation
    sym = wrapper(mx.sym.var("data"))
    arrays = _cpu_arrays(params, set(sym.list_arguments()), "arg")
    arrays |= _cpu_arrays(params, set(sym.list_auxiliary_states()), "aux")
    target = params_path(model_dir, epoch)
    _write_atomically(model_dir / SYMBOL_FILE, lambda tmp: sym.save(str(tmp)))
    _write_atomically(target, lambda tmp: mx.nd.save(str(tmp), arrays))
    _write_json(model_dir / SHAPES_FILE, [{"name": "data", "shape": [1, *image_shape]}])
    info = {**metadata, "image_shape": list(image_shape), "multi_label": bool(multi_label)}
    _write_json(model_dir / METADATA_FILE, info)
    return target


def pack_model(model_dir: Path, tar_path: Path) -> None:
    """Write `tar_path` (gzip) with `model_dir`'s files at its root, leaving hidden files out."""
    model_dir, tar_path = Path(model_dir), Path(tar_path)
    files = sorted(
        p
        for p in model_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.resolve() != tar_path.resolve()
    )
    tar_path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz", compresslevel=6, dereference=True) as tar:
            for path in files:
                tar.add(path, arcname=path.name, recursive=False)

    _write_atomically(tar_path, write)


def _unsafe_kind(member: tarfile.TarInfo) -> str | None:
    """What makes `member` unsafe to extract, or None for regular files and folders."""
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    if not (member.isfile() or member.isdir()):
        return "special file"
    return None


def _check_member(member: tarfile.TarInfo, root: Path, tar_path: Path) -> None:
    """Raise ClientError unless `member` is a regular file or folder that stays inside `root`."""
    problem = None
    if kind := _unsafe_kind(member):
        problem = f"is a {kind}"
    elif os.path.isabs(member.name):
        problem = "has an absolute path"
    elif not (root / member.name).resolve().is_relative_to(root):
        problem = "would be written outside the destination folder"
    if problem:
        raise ClientError(
            f"Refusing to extract {tar_path}: member '{member.name}' {problem}. A model archive "
            f"may only hold regular files and folders; {_REBUILD_HINT}"
        )


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract the gzip tar `tar_path` into `dest`, after checking that every member is safe."""
    tar_path, dest = Path(tar_path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root, tar_path)
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ClientError(
            f"Cannot read the model archive {tar_path}: {e}. It must be a gzip-compressed tar; "
            f"{_REBUILD_HINT}"
        ) from e


@contextmanager
def _model_folder(source: Path) -> Iterator[Path]:
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


def _latest_params(folder: Path) -> tuple[int, Path]:
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


def _reason(error: Exception) -> str:
    """The last line of an error message (MXNet's carry a C++ traceback first)."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def _load_arrays(path: Path) -> dict[str, mx.nd.NDArray]:
    try:
        return mx.nd.load(str(path))
    except mx.MXNetError as e:
        raise ClientError(f"Cannot read the model weights {path}: {_reason(e)}") from e


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
    if len(dense) != 1 or depth not in LARGE_DEPTHS + SMALL_DEPTHS:
        raise ClientError(
            f"Cannot recognise the network in {where}: it is not a ResNet of a supported depth."
        )
    return depth, dense[0][0]


_CASTS: dict[str, Callable[[Any], Any]] = {
    "num_layers": int,
    "num_classes": int,
    "image_shape": lambda shape: tuple(int(n) for n in shape),
    "multi_label": bool,
}


def _coerced(info: dict) -> dict:
    """`info` with the hyperparameters it holds in comparable types (JSON makes tuples lists)."""
    return {key: _CASTS.get(key, lambda v: v)(value) for key, value in info.items()}


def _stored_info(folder: Path, params: Path) -> dict:
    """The model's hyperparameters: imgcls-model.json, or inferred (e.g. built-in models)."""
    if not (folder / METADATA_FILE).exists():
        shapes = [a.shape for a in _load_arrays(params).values()]
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
        return _coerced(info)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ClientError(
            f"{METADATA_FILE} in {folder} is not valid ({e}): it must hold {list(_REQUIRED)}."
        ) from e


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

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Per-class probabilities, shape (N, num_classes), of a float32 (N, C, H, W) batch."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.image_shape:
            raise ValueError(f"expected a (N, {self.image_shape}) batch, got {batch.shape}")
        data = mx.nd.array(batch, ctx=self.ctx, dtype="float32")
        return self.block(data).asnumpy()


def load_model(model_dir: Path, ctx: mx.Context | None = None) -> LoadedModel:
    """Load the highest-epoch model of `model_dir` (a model folder, or one holding model.tar.gz)."""
    ctx = ctx or mx.cpu()
    with _model_folder(model_dir) as folder:
        epoch, params = _latest_params(folder)
        info = _stored_info(folder, params)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Cannot decide type", UserWarning)
                block = gluon.SymbolBlock.imports(
                    str(folder / SYMBOL_FILE), ["data"], str(params), ctx
                )
        except (mx.MXNetError, AssertionError, ValueError) as e:
            raise ClientError(
                f"Cannot load the model in {model_dir} ({SYMBOL_FILE}, {params.name}): "
                f"{_reason(e)}. Re-export the model or restore its files."
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


def load_training_weights(
    net: gluon.HybridBlock,
    model_dir_or_tar: Path,
    expected: dict,
    ctx: mx.Context | list[mx.Context] | None = None,
) -> None:
    """Load a stored model's weights into the training network `net` (incremental training).

    `expected` holds the requested num_layers, num_classes (ints) and image_shape (3 ints); each
    must equal the stored model's. The weights go to `ctx` when `net` is not initialised yet.
    """
    with _model_folder(model_dir_or_tar) as folder:
        _, params = _latest_params(folder)
        _check_matches(_stored_info(folder, params), expected, model_dir_or_tar)
        arrays = _load_arrays(params)
    try:
        net.collect_params().load_dict(arrays, ctx, allow_missing=False, ignore_extra=False)
    except AssertionError as e:
        raise ClientError(
            f"The weights in {model_dir_or_tar} do not fit imgcls's network (a model of another "
            f"implementation?): {e}"
        ) from e
