"""`.lst` image lists in the format of MXNet's tools/im2rec.py: index, label(s), relative path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.config.channels import Channel
from imgcls.data.labels import label_row
from imgcls.errors import ClientError

LST_SUFFIXES = (".lst",)
FORMAT = "index<TAB>label(s)<TAB>relative/path, as im2rec.py --list writes"


@dataclass(frozen=True)
class LstEntry:
    """One image of a .lst file."""

    line: int
    index: int
    labels: np.ndarray
    path: str


def find_lst(channel: Channel) -> Path:
    """The one .lst file of a `*_lst` channel."""
    found = channel.files(LST_SUFFIXES)
    if len(found) != 1:
        listed = ", ".join(str(p) for p in found) or "none"
        raise ClientError(
            f"Channel {channel.name!r} must hold exactly one .lst file ({FORMAT}); "
            f"found {len(found)} in {channel.path}: {listed}."
        )
    return found[0]


def read_lst(path: Path, num_classes: int, multi_label: bool) -> list[LstEntry]:
    """Every entry of `path`, each line checked; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"Cannot read {path}: {exc}. Write UTF-8 text: {FORMAT}.") from None
    entries = [
        _entry(line, number, path, num_classes, multi_label)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not entries:
        raise ClientError(f"{path} is empty: list one image per line ({FORMAT}).")
    return entries


def _entry(line: str, number: int, path: Path, num_classes: int, multi_label: bool) -> LstEntry:
    where = f"{path}, line {number}"
    columns = [c.strip() for c in line.strip().split("\t")]
    if len(columns) < 3 or not columns[-1]:
        raise ClientError(
            f"{where}: {line.strip()!r} has {len(columns)} tab-separated column(s); expected "
            f"at least 3: {FORMAT}."
        )
    try:
        index = float(columns[0])
        labels = [float(c) for c in columns[1:-1]]
    except ValueError:
        raise ClientError(
            f"{where}: {line.strip()!r}: the index and label columns must be numbers ({FORMAT})."
        ) from None
    if not index.is_integer():
        raise ClientError(f"{where}: the index {columns[0]!r} must be an integer ({FORMAT}).")
    row = label_row(labels, where, num_classes, multi_label)
    return LstEntry(number, int(index), row, columns[-1])
