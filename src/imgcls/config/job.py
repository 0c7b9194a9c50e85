"""A job's configuration, read and validated: hyperparameters, channels and hosts."""

from __future__ import annotations

import json
from dataclasses import dataclass

from imgcls.config.channels import Channel, discover_channels
from imgcls.config.environment import (
    Paths,
    ResourceConfig,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
)
from imgcls.config.hyperparameters import Hyperparameters, RunContext, parse_hyperparameters
from imgcls.gpu import num_gpus
from imgcls.log import logger


@dataclass
class JobConfig:
    """Everything a job is configured with, validated."""

    hp: Hyperparameters
    channels: dict[str, Channel]
    resources: ResourceConfig


def load_job_config(paths: Paths) -> JobConfig:
    """Read and validate the hyperparameters, channels and hosts; log the final configuration."""
    raw = read_hyperparameters(paths)
    resources = read_resource_config(paths)
    channels = discover_channels(paths, read_input_data_config(paths))
    context = RunContext(
        content_types={name: c.config.content_type or "" for name, c in channels.items()},
        num_gpus=num_gpus(),
        num_hosts=len(resources.hosts),
        has_validation="validation" in channels,
    )
    hp = parse_hyperparameters(raw, context)
    logger.info("Final configuration: %s", json.dumps(hp.as_dict()))
    return JobConfig(hp, channels, resources)
