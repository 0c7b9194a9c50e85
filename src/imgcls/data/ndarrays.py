"""Batches handed to MXNet without waiting for its engine.

`mx.nd.array(x)` copies synchronously: it first waits for every operation already queued on
the CPU (the previous training step), so the engine sits idle while Python builds the next
batch and queues its step. `mx.nd.from_numpy` wraps the numpy memory instead (no copy, no
wait); the NDArray keeps the numpy array alive and read-only.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np


def engine_free(array: np.ndarray, dtype: type | str | None = None) -> mx.nd.NDArray:
    """An NDArray over (a C-contiguous copy, when needed, of) `array` as `dtype`, made
    without a host synchronisation."""
    return mx.nd.from_numpy(np.ascontiguousarray(array, dtype=dtype))
