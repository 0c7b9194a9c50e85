"""The optimizer's state on disk: what gluon.Trainer.save_states writes, with its arrays apart.

Trainer.save_states pickles the updater's states with every NDArray copied into bytes on the
way: for a ResNet-18's 45 MB of momentum that took 0.2-0.52 s of the training thread, most of
it paging in fresh buffers. Here the same pickle holds a key per array and `mx.nd.save` writes
the arrays beside it (0.01-0.07 s); loading restores them as Trainer.load_states does. A file
that Trainer.save_states wrote (arrays inside) loads too. A trainer that updates on its kvstore
(several devices) keeps MXNet's own save and load: the kvstore holds that state.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import mxnet as mx
from mxnet import gluon

ARRAYS_SUFFIX = ".arrays"


class _ArraysApart(pickle.Pickler):
    """Pickles every NDArray as a key of `arrays`, which it fills."""

    def __init__(self, file: BinaryIO, arrays: dict[str, mx.nd.NDArray]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.arrays = arrays
        self.keys: dict[int, str] = {}

    def persistent_id(self, obj: Any) -> str | None:
        if not isinstance(obj, mx.nd.NDArray):
            return None
        if id(obj) not in self.keys:
            self.keys[id(obj)] = str(len(self.keys))
            self.arrays[self.keys[id(obj)]] = obj
        return self.keys[id(obj)]


class _ArraysBack(pickle.Unpickler):
    """Unpickles `_ArraysApart`'s keys as the arrays they name."""

    def __init__(self, file: BinaryIO, arrays: dict[str, mx.nd.NDArray]) -> None:
        super().__init__(file)
        self.arrays = arrays

    def persistent_load(self, key: str) -> mx.nd.NDArray:
        return self.arrays[key]


def arrays_path(path: Path) -> Path:
    """Where `save_optimizer` writes the arrays of the states it writes to `path`."""
    return Path(f"{path}{ARRAYS_SUFFIX}")


def _local_updaters(trainer: gluon.Trainer) -> list | None:
    """The trainer's per-device updaters, or None when it updates on its kvstore (set up
    first, as Trainer.save_states and load_states do)."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    return None if trainer._update_on_kvstore else trainer._updaters


def save_optimizer(trainer: gluon.Trainer, path: Path) -> None:
    """Write the trainer's optimizer and its states to `path` and `arrays_path(path)`."""
    updaters = _local_updaters(trainer)
    if updaters is None:
        trainer.save_states(str(path))
        return
    arrays: dict[str, mx.nd.NDArray] = {}
    updater = updaters[0]
    with Path(path).open("wb") as file:
        _ArraysApart(file, arrays).dump((updater.states, updater.optimizer))
    mx.nd.save(str(arrays_path(path)), arrays)


def load_optimizer(trainer: gluon.Trainer, path: Path) -> None:
    """Restore what `save_optimizer` (or Trainer.save_states) wrote to `path`."""
    updaters = _local_updaters(trainer)
    if updaters is None:
        trainer.load_states(str(path))
        return
    for updater in updaters:  # states of its own for each device; the first one's optimizer
        updater.states, updater.optimizer = _read(Path(path))
        updater.states_synced = dict.fromkeys(updater.states.keys(), False)
        updater.optimizer = updaters[0].optimizer
    trainer._optimizer = updaters[0].optimizer
    trainer._optimizer.param_dict = dict(enumerate(trainer._params))


def _read(path: Path) -> tuple[dict, Any]:
    """(states, optimizer) from `path`, their arrays from beside it when they are there."""
    arrays_file = arrays_path(path)
    arrays = mx.nd.load(str(arrays_file)) if arrays_file.exists() else {}
    with path.open("rb") as file:
        return _ArraysBack(file, arrays if isinstance(arrays, dict) else {}).load()
