"""The model server's settings: SageMaker's `SAGEMAKER_*` serving variables, checked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from imgcls.errors import ClientError
from imgcls.gpu import gpu_count_in_child
from imgcls.system import cpu_count

BATCH_STRATEGIES = ("SINGLE_RECORD", "MULTI_RECORD")


@dataclass(frozen=True)
class ServingSettings:
    """The model server's settings: SageMaker's `SAGEMAKER_*` serving variables."""

    port: int = 8080
    workers: int = 1
    timeout: int = 60
    max_payload_mb: int = 6
    batch: bool = False
    max_concurrent_transforms: int = 1
    batch_strategy: str = "SINGLE_RECORD"
    gpus: int = 0

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024


def _int_setting(
    environ: Mapping[str, str], name: str, default: int, high: int | None = None
) -> int:
    """The positive integer in `environ[name]` (default when unset or empty), at most `high`."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1 or (high is not None and int(raw) > high):
        bounds = f"between 1 and {high}" if high is not None else "of at least 1"
        raise ClientError(f"{name} must be an integer {bounds}, got {raw!r}.")
    return int(raw)


def _bool_setting(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw not in ("", "true", "false"):
        raise ClientError(f"{name} must be 'true' or 'false', got {environ[name]!r}.")
    return raw == "true"


def default_workers(gpus: int, cores: int) -> int:
    """One worker per GPU when there are GPUs (each worker holds its own), else one per core
    with one OpenMP thread each: more requests/s than one worker with all the cores' threads
    at 1 to 16 clients, except one client of a large model on an idle host (bench/serve_load.py;
    README, Serving)."""
    return gpus or cores


def threads_per_worker(cores: int, workers: int) -> int:
    """OpenMP threads per worker when OMP_NUM_THREADS is unset: an equal share of the cores."""
    return max(1, cores // workers)


def serving_settings_from_env(
    environ: Mapping[str, str] = os.environ, gpus: int | None = None
) -> ServingSettings:
    """Serving settings from the environment; ClientError naming the first bad variable.

    `gpus` defaults to the GPUs MXNet sees, counted in a child process (the server's master
    must not initialise CUDA). Workers default to default_workers; MaxConcurrentTransforms to
    the workers.
    """
    gpus = gpu_count_in_child() if gpus is None else gpus
    workers = _int_setting(
        environ, "SAGEMAKER_MODEL_SERVER_WORKERS", default_workers(gpus, cpu_count())
    )
    strategy = environ.get("SAGEMAKER_BATCH_STRATEGY", "").strip().upper() or "SINGLE_RECORD"
    if strategy not in BATCH_STRATEGIES:
        raise ClientError(
            f"SAGEMAKER_BATCH_STRATEGY must be one of {', '.join(BATCH_STRATEGIES)}, "
            f"got {environ['SAGEMAKER_BATCH_STRATEGY']!r}."
        )
    return ServingSettings(
        port=_int_setting(environ, "SAGEMAKER_BIND_TO_PORT", 8080, high=65535),
        workers=workers,
        timeout=_int_setting(environ, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60),
        max_payload_mb=_int_setting(environ, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6),
        batch=_bool_setting(environ, "SAGEMAKER_BATCH"),
        max_concurrent_transforms=_int_setting(
            environ, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", workers
        ),
        batch_strategy=strategy,
        gpus=gpus,
    )
