"""Which data channels a job has, what each holds, and whether that makes a valid job."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from imgcls.config.content_types import IMAGE_CONTENT_TYPES, MODEL, RECORDIO
from imgcls.config.environment import ChannelConfig, Paths
from imgcls.errors import ClientError

DATA_CHANNELS = ("train", "validation")
KNOWN_CHANNELS = ("train", "validation", "train_lst", "validation_lst", "model")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Channel:
    """A channel's configuration and the folder (File mode) that holds its files."""

    config: ChannelConfig
    path: Path

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def is_recordio(self) -> bool:
        return self.config.media_type == RECORDIO

    @property
    def is_image(self) -> bool:
        return self.config.media_type in IMAGE_CONTENT_TYPES

    def files(self, suffixes: tuple[str, ...]) -> list[Path]:
        """Files under the channel folder (subfolders too) with one of `suffixes`, sorted."""
        return sorted(
            p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
        )


def discover_channels(paths: Paths, configs: dict[str, ChannelConfig] | None) -> dict[str, Channel]:
    """The job's channels, from `inputdataconfig.json` or, when absent, from the data folder."""
    if configs is None:
        configs = _guess_configs(paths)
    channels = {name: Channel(cfg, paths.channel_dir(name)) for name, cfg in configs.items()}
    _check_channels(paths, channels)
    return channels


def _guess_configs(paths: Paths) -> dict[str, ChannelConfig]:
    """Local runs without inputdataconfig.json: File mode, content type from the files present."""
    if not paths.data_dir.is_dir():
        raise ClientError(
            f"The data folder {paths.data_dir} does not exist: put each channel in "
            f"{paths.data_dir}/<channel>/ (at least 'train')."
        )
    folders = sorted(p.name for p in paths.data_dir.iterdir() if p.is_dir())
    image_job = any(name.endswith("_lst") for name in folders)
    return {name: ChannelConfig(name, _guessed_type(name, image_job)) for name in folders}


def _guessed_type(name: str, image_job: bool) -> str:
    if name == "model":
        return MODEL
    return IMAGE_CONTENT_TYPES[0] if image_job else RECORDIO


def _check_channels(paths: Paths, channels: dict[str, Channel]) -> None:
    problems = [_unknown_channel_message(name) for name in channels if name not in KNOWN_CHANNELS]
    if "train" not in channels:
        problems.append("The 'train' channel is required and missing.")
    for channel in channels.values():
        if channel.name in KNOWN_CHANNELS:
            problems.extend(_channel_problems(channel, channels))
    if problems:
        raise ClientError("Invalid data channels:\n" + "\n".join(f"  - {p}" for p in problems))


def _unknown_channel_message(name: str) -> str:
    close = difflib.get_close_matches(name, KNOWN_CHANNELS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown channel {name!r}; valid channels: {', '.join(KNOWN_CHANNELS)}.{hint}"


def _channel_problems(channel: Channel, channels: dict[str, Channel]) -> list[str]:
    problems = _content_type_problems(channel)
    if channel.name in DATA_CHANNELS and channel.is_image:
        lst = f"{channel.name}_lst"
        if lst not in channels and not channel.config.is_pipe:
            problems.append(
                f"Channel {channel.name!r} holds images ({channel.config.content_type}) and needs "
                f"a {lst!r} channel with its .lst file."
            )
    if not channel.config.is_pipe:
        problems.extend(_folder_problems(channel))
    return problems


def _content_type_problems(channel: Channel) -> list[str]:
    media = channel.config.media_type
    if channel.name == "model":
        valid: tuple[str | None, ...] = (MODEL, None)
    elif channel.name.endswith("_lst"):
        valid = (*IMAGE_CONTENT_TYPES, None)
    else:
        valid = (RECORDIO, *IMAGE_CONTENT_TYPES)
    if media in valid:
        return []
    names = ", ".join(v for v in valid if v)
    return [
        f"Channel {channel.name!r} has content type {channel.config.content_type!r}; "
        f"valid: {names}."
    ]


def _folder_problems(channel: Channel) -> list[str]:
    if not channel.path.is_dir():
        return [f"Channel {channel.name!r}: folder {channel.path} does not exist."]
    if not any(p.is_file() for p in channel.path.rglob("*")):
        return [f"Channel {channel.name!r}: folder {channel.path} holds no files."]
    return []
