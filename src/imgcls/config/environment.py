"""The SageMaker container environment: the only module that knows the `/opt/ml` layout.

`SAGEMAKER_BASE_DIR` moves the base folder, as in SageMaker's own training toolkits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgcls.config.content_types import media_type
from imgcls.errors import ClientError

DEFAULT_BASE_DIR = "/opt/ml"
INPUT_MODES = ("File", "Pipe")
DISTRIBUTION_TYPES = ("FullyReplicated", "ShardedByS3Key")
RECORD_WRAPPERS = ("None", "RecordIO")


@dataclass(frozen=True)
class Paths:
    """Every file and folder of the container contract, under one base folder."""

    base: Path

    @property
    def config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def inputdataconfig_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resourceconfig_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        """Extra outputs (the training report), uploaded as output.tar.gz."""
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def local_model_tar(self) -> Path:
        """Where local runs get `model.tar.gz` (imgcls decision: next to `model/` output)."""
        return self.output_dir / "model.tar.gz"

    @property
    def checkpoints_dir(self) -> Path:
        return self.base / "checkpoints"

    def channel_dir(self, channel: str) -> Path:
        return self.data_dir / channel

    def pipe_path(self, channel: str, epoch: int) -> Path:
        """The FIFO that Pipe mode opens for `channel` in `epoch` (0-based)."""
        return self.data_dir / f"{channel}_{epoch}"


def paths_from_env(environ: Mapping[str, str] = os.environ) -> Paths:
    """The contract's paths under `SAGEMAKER_BASE_DIR` (default `/opt/ml`)."""
    return Paths(Path(environ.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR))


def runs_on_managed_platform(environ: Mapping[str, str] = os.environ) -> bool:
    """SageMaker sets TRAINING_JOB_ARN in its training containers; `docker run` does not."""
    return bool(environ.get("TRAINING_JOB_ARN"))


DEFAULT_PRETRAINED_DIR = "/opt/imgcls/pretrained"


def pretrained_dir_from_env(environ: Mapping[str, str] = os.environ) -> Path:
    """Where use_pretrained_model=1 finds ImageNet weights: `IMGCLS_PRETRAINED_DIR`, else the
    folder the image fills when it is built."""
    return Path(environ.get("IMGCLS_PRETRAINED_DIR") or DEFAULT_PRETRAINED_DIR)


@dataclass(frozen=True)
class ChannelConfig:
    """One entry of `inputdataconfig.json`."""

    name: str
    content_type: str | None = None
    input_mode: str = "File"
    distribution: str = "FullyReplicated"
    record_wrapper: str = "None"

    @property
    def media_type(self) -> str | None:
        """The content type without parameters such as `; label-format=class-id`, lower case."""
        return media_type(self.content_type)

    @property
    def content_type_params(self) -> dict[str, str]:
        """Parameters of the content type, e.g. `{"label-format": "class-id"}`."""
        if self.content_type is None:
            return {}
        params = {}
        for part in self.content_type.split(";")[1:]:
            key, _, value = part.partition("=")
            params[key.strip().lower()] = value.strip()
        return params

    @property
    def is_pipe(self) -> bool:
        return self.input_mode == "Pipe"


@dataclass(frozen=True)
class ResourceConfig:
    """`resourceconfig.json`: this host and all hosts of the job."""

    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)
    network_interface_name: str = "eth0"

    @property
    def is_distributed(self) -> bool:
        return len(self.hosts) > 1

    @property
    def is_leader(self) -> bool:
        """hosts[0] runs the scheduler and is the only host that writes `model/`."""
        return self.current_host == self.hosts[0]


def read_json(path: Path) -> Any:
    """Parse a JSON config file, naming the file and the position of any syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientError(f"{path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"Cannot read {path}: {exc}.") from None
    if not text.strip():
        raise ClientError(f"{path} is empty: it must hold a JSON object.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None


def _read_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ClientError(f"{path} must hold a JSON object, not {type(data).__name__}.")
    return data


def read_hyperparameters(paths: Paths) -> dict[str, Any]:
    """The raw `hyperparameters.json` map; validation is the hyperparameter module's job."""
    if not paths.config_dir.is_dir():
        raise ClientError(
            f"The config folder {paths.config_dir} does not exist. Mount the job's /opt/ml "
            "folder, or set SAGEMAKER_BASE_DIR to a folder holding input/config/."
        )
    if not paths.hyperparameters_file.exists():
        raise ClientError(
            f"{paths.hyperparameters_file} does not exist: write the hyperparameters there "
            '(at least {"num_classes": "N", "num_training_samples": "M"}).'
        )
    return _read_object(paths.hyperparameters_file)


def read_input_data_config(paths: Paths) -> dict[str, ChannelConfig] | None:
    """The channels of `inputdataconfig.json`, or None when the file is absent (local runs)."""
    if not paths.inputdataconfig_file.exists():
        return None
    raw = _read_object(paths.inputdataconfig_file)
    return {name: _channel_config(paths, name, entry) for name, entry in raw.items()}


def _channel_config(paths: Paths, name: str, entry: Any) -> ChannelConfig:
    where = f"{paths.inputdataconfig_file}, channel {name!r}"
    if not isinstance(entry, dict):
        raise ClientError(f"{where}: expected a JSON object, got {entry!r}.")
    config = ChannelConfig(
        name=name,
        content_type=entry.get("ContentType"),
        input_mode=entry.get("TrainingInputMode", "File"),
        distribution=entry.get("S3DistributionType", "FullyReplicated"),
        record_wrapper=entry.get("RecordWrapperType", "None"),
    )
    _check_choice(where, "TrainingInputMode", config.input_mode, INPUT_MODES)
    _check_choice(where, "S3DistributionType", config.distribution, DISTRIBUTION_TYPES)
    _check_choice(where, "RecordWrapperType", config.record_wrapper, RECORD_WRAPPERS)
    return config


def _check_choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ClientError(f"{where}: {key} is {value!r}; valid values: {', '.join(choices)}.")


def read_resource_config(paths: Paths) -> ResourceConfig:
    """`resourceconfig.json`, or a single host when the file is absent."""
    if not paths.resourceconfig_file.exists():
        return ResourceConfig()
    raw = _read_object(paths.resourceconfig_file)
    hosts = raw.get("hosts", ["algo-1"])
    current = raw.get("current_host", hosts[0] if hosts else "algo-1")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise ClientError(
            f"{paths.resourceconfig_file}: 'hosts' must be a non-empty list of host names."
        )
    if current not in hosts:
        raise ClientError(
            f"{paths.resourceconfig_file}: current_host {current!r} is not among hosts {hosts}."
        )
    return ResourceConfig(
        current_host=current,
        hosts=tuple(hosts),
        network_interface_name=raw.get("network_interface_name", "eth0"),
    )
