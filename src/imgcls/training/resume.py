"""A resumable training state in `checkpoints/`: weights, optimizer state, progress.

SageMaker syncs `checkpoints/` to S3 and back after a spot interruption; `model/` is not
restored, so the files kept there so far are snapshotted beside the state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mxnet as mx
from mxnet import gluon

from imgcls.errors import ClientError
from imgcls.log import logger
from imgcls.system import atomic_write

STATE_JSON = "imgcls-resume.json"
STATE_PARAMS = "imgcls-resume.params"
STATE_OPTIMIZER = "imgcls-resume.states"
MODEL_SNAPSHOT = "model"


class ResumeState:
    """Save and restore one job's progress; `fingerprint` guards against another job's state.

    With `optimizer_states` False (multi-host jobs: the optimizer lives on the ps-lite servers,
    which cannot save it) a resumed job restarts the optimizer's momentum.
    """

    def __init__(
        self,
        folder: Path,
        model_dir: Path,
        fingerprint: dict[str, Any],
        optimizer_states: bool = True,
    ):
        self.folder = folder
        self.model_dir = model_dir
        self.fingerprint = fingerprint
        self.optimizer_states = optimizer_states

    @property
    def json_file(self) -> Path:
        return self.folder / STATE_JSON

    def save(self, net: gluon.Block, trainer: gluon.Trainer, progress: dict[str, Any]) -> None:
        """Write params and optimizer state first, the JSON last: it is the commit point."""
        mx.nd.waitall()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / STATE_PARAMS, lambda tmp: net.save_parameters(str(tmp)))
        if self.optimizer_states:
            atomic_write(self.folder / STATE_OPTIMIZER, lambda tmp: trainer.save_states(str(tmp)))
        self._snapshot_model_dir()
        state = {"fingerprint": self.fingerprint, "progress": progress}
        atomic_write(self.json_file, lambda tmp: tmp.write_text(json.dumps(state, indent=2)))

    def load(
        self, net: gluon.Block, trainer: gluon.Trainer, contexts: list
    ) -> dict[str, Any] | None:
        """Restore weights, optimizer state and model/ files; the progress dict, or None."""
        if not self.json_file.exists():
            return None
        state = json.loads(self.json_file.read_text())
        self._check_fingerprint(state["fingerprint"])
        net.load_parameters(str(self.folder / STATE_PARAMS), ctx=contexts)
        if self.optimizer_states:
            trainer.load_states(str(self.folder / STATE_OPTIMIZER))
        self._restore_model_dir()
        logger.info("Resuming from %s: %s", self.folder, json.dumps(state["progress"]))
        return state["progress"]

    def clear(self) -> None:
        """The job finished: its model is in model/, so the resume state goes."""
        for name in (STATE_JSON, STATE_PARAMS, STATE_OPTIMIZER):
            (self.folder / name).unlink(missing_ok=True)
        shutil.rmtree(self.folder / MODEL_SNAPSHOT, ignore_errors=True)

    def _check_fingerprint(self, stored: dict[str, Any]) -> None:
        differences = [
            f"{key}: checkpoint {stored.get(key)!r}, this job {value!r}"
            for key, value in self.fingerprint.items()
            if stored.get(key) != value
        ]
        if differences:
            raise ClientError(
                f"{self.json_file} belongs to a job with other settings ("
                + "; ".join(differences)
                + "). Use the same hyperparameters to resume, or empty the checkpoint folder."
            )

    def _snapshot_model_dir(self) -> None:
        snapshot = self.folder / MODEL_SNAPSHOT
        shutil.rmtree(snapshot, ignore_errors=True)
        if self.model_dir.is_dir():
            shutil.copytree(self.model_dir, snapshot)

    def _restore_model_dir(self) -> None:
        snapshot = self.folder / MODEL_SNAPSHOT
        if not snapshot.is_dir():
            return
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for source in snapshot.iterdir():
            if not (self.model_dir / source.name).exists():
                shutil.copy2(source, self.model_dir / source.name)
