"""The model server: the WSGI app under gunicorn, whose workers load the model after the fork."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mxnet as mx
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from imgcls.config.serving import ServingSettings
from imgcls.errors import ImgclsError
from imgcls.failure import failure_text
from imgcls.log import DATE_FORMAT, LOG_FORMAT, logger
from imgcls.serving.app import ServingApp, WorkerTimeout

_STDOUT = {"class": "logging.StreamHandler", "formatter": "imgcls", "stream": "ext://sys.stdout"}
# gunicorn's own lines in imgcls's format; its access log stays off (the app logs each request).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"imgcls": {"format": LOG_FORMAT, "datefmt": DATE_FORMAT}},
    "handlers": {"stdout": _STDOUT},
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
    },
}


def gpu_for_new_worker(gpus: int, held: Iterable[int]) -> int:
    """The GPU a new worker takes, given those the live workers hold: the lowest-numbered of
    the least used, so worker i gets GPU i and a replaced worker takes the GPU it freed."""
    load = Counter(held)
    return min(range(gpus), key=lambda gpu: (load[gpu], gpu))


def assign_device(server: Arbiter, worker: Worker, gpus: int) -> None:
    """gunicorn's pre_fork hook (in the master): the new worker's device, GPU or CPU."""
    held = [live.imgcls_gpu for live in server.WORKERS.values()]
    worker.imgcls_gpu = gpu_for_new_worker(gpus, held) if gpus else None


def worker_device(worker: Worker) -> mx.Context:
    """The device assign_device gave `worker`."""
    return mx.cpu() if worker.imgcls_gpu is None else mx.gpu(worker.imgcls_gpu)


def load_in_worker(app: ServingApp, ctx: mx.Context) -> None:
    """Load the model in a freshly forked worker; a model error stops the whole server."""
    try:
        app.load_model(ctx)
    except ImgclsError as exc:
        logger.error("Cannot load the model from %s: %s", app.model_dir, failure_text(exc))
        sys.exit(Arbiter.WORKER_BOOT_ERROR)
    model = app.predictor.model
    logger.info(
        "Worker %d ready: epoch %d, image_shape %s, %d classes%s, on %s",
        os.getpid(),
        model.epoch,
        ",".join(map(str, model.image_shape)),
        model.num_classes,
        ", multi-label" if model.multi_label else "",
        model.ctx,
    )


def abort_request(app: ServingApp) -> None:
    """gunicorn's worker_abort hook, run when the master aborts a worker whose request outlived
    the timeout: a request in the app ends with a JSON 408/504 instead of gunicorn's HTML 500,
    then the worker exits and is replaced as before (gunicorn has already marked it done)."""
    if app.phase:
        raise WorkerTimeout


def gunicorn_options(app: ServingApp, settings: ServingSettings, host: str) -> dict[str, Any]:
    """gunicorn settings: sync workers, one request at a time each, as inference is CPU-bound;
    with GPUs, each worker on the GPU the master picks for it before the fork."""
    return {
        "bind": f"{host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "sync",
        "timeout": settings.timeout,
        "pre_fork": lambda server, worker: assign_device(server, worker, settings.gpus),
        "post_fork": lambda server, worker: load_in_worker(app, worker_device(worker)),
        "worker_abort": lambda worker: abort_request(app),
        "logconfig_dict": LOGGING,
        "proc_name": "imgcls-serve",
        "control_socket_disable": True,
        # Heartbeat files in memory: on a container's overlay /tmp they can stall the workers.
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
    }


class _Gunicorn(BaseApplication):
    def __init__(self, app: ServingApp, options: dict[str, Any]):
        self.app = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> ServingApp:
        return self.app


def run_server(model_dir: Path, settings: ServingSettings, host: str) -> None:
    """Serve the model in `model_dir` until stopped.

    gunicorn ends the process: exit code 0 on SIGTERM or SIGINT, 3 when a worker cannot load
    the model.
    """
    app = ServingApp(model_dir, settings)
    logger.info(
        "Serving %s on %s:%d: %d workers, %d GPUs, timeout %d s, max payload %d MB, "
        "batch transform %s",
        model_dir,
        host,
        settings.port,
        settings.workers,
        settings.gpus,
        settings.timeout,
        settings.max_payload_mb,
        "on" if settings.batch else "off",
    )
    _Gunicorn(app, gunicorn_options(app, settings, host)).run()
