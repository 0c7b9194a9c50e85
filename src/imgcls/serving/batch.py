"""Batch scoring: each image under a folder or S3 prefix -> `<name>.out`, as batch transform does.

The outputs hold what `/invocations` answers (the JSON list of probabilities); the same
predictor scores them, without HTTP. A failing file is logged and counted and the rest go on;
a re-run skips the images whose output exists.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as S3Error
from tqdm import tqdm

from imgcls.errors import ClientError
from imgcls.log import logger
from imgcls.serving.predictor import JSON, Predictor, encode, load_predictor
from imgcls.system import atomic_write_bytes

OUTPUT_SUFFIX = ".out"


class Store(Protocol):
    """Files by relative key (`a/b.jpg`), in a local folder or under an S3 prefix."""

    location: str

    def keys(self) -> Iterator[str]: ...

    def read(self, key: str) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...


class LocalStore:
    """A folder; hidden files and folders are left out, writes are atomic."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.location = str(root)

    def keys(self) -> Iterator[str]:
        if self.root.exists() and not self.root.is_dir():
            raise ClientError(f"{self.root} is not a folder.")
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if path.is_file() and not any(p.startswith(".") for p in relative.parts):
                yield relative.as_posix()

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ClientError(f"{key!r} would be outside {self.root}.")
        return path


class S3Store:
    """The objects under `s3://bucket/prefix/` (the prefix is a folder: a `/` is added)."""

    def __init__(self, client: Any, bucket: str, prefix: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.location = f"s3://{bucket}/{self.prefix}"

    def keys(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key and not key.endswith("/"):
                    yield key

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=JSON
        )


def open_store(location: str, endpoint_url: str | None = None, connections: int = 10) -> Store:
    """A local folder, or `s3://bucket/prefix` (endpoint: `endpoint_url`, else AWS_ENDPOINT_URL)."""
    if not location.startswith("s3://"):
        return LocalStore(Path(location))
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise ClientError(f"{location!r} names no bucket: write s3://bucket/prefix.")
    config = Config(max_pool_connections=max(10, connections))
    client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
    return S3Store(client, bucket, prefix)


@dataclass
class Summary:
    """What a batch scoring run did; `seconds` is the scoring time, listing excluded."""

    scored: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.scored} scored, {self.failed} failed, {self.skipped} skipped (output exists) "
            f"in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s"
        )


def _list(store: Store) -> list[str]:
    try:
        return list(store.keys())
    except (BotoCoreError, S3Error) as exc:
        raise ClientError(f"Cannot list {store.location}: {exc}") from exc


def pending_keys(source: Store, destination: Store, overwrite: bool) -> tuple[list[str], int]:
    """The input keys to score, and how many were skipped because their output exists."""
    keys = _list(source)
    if not keys:
        raise ClientError(f"No files to score in {source.location}.")
    if overwrite:
        return keys, 0
    done = set(_list(destination))
    todo = [key for key in keys if key + OUTPUT_SUFFIX not in done]
    return todo, len(keys) - len(todo)


def score_one(predictor: Predictor, source: Store, destination: Store, key: str) -> None:
    destination.write(key + OUTPUT_SUFFIX, encode(predictor.predict(source.read(key), key)))


def _reason(error: BaseException | None) -> str | None:
    """Why a file failed (None if it did not); the message alone for the user's mistakes."""
    if error is None:
        return None
    if isinstance(error, ClientError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _finished(pending: dict[Future, str]) -> Iterator[tuple[str, str | None]]:
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        yield pending.pop(future), _reason(future.exception())


def score_all(
    predictor: Predictor, source: Store, destination: Store, keys: list[str], concurrency: int
) -> Iterator[tuple[str, str | None]]:
    """Score `keys` on `concurrency` threads, at most twice that many queued; yield each
    (key, failure reason or None) as it finishes."""
    with ThreadPoolExecutor(concurrency, thread_name_prefix="imgcls-batch") as pool:
        pending: dict[Future, str] = {}
        for key in keys:
            if len(pending) >= 2 * concurrency:
                yield from _finished(pending)
            pending[pool.submit(score_one, predictor, source, destination, key)] = key
        while pending:
            yield from _finished(pending)


def score(
    predictor: Predictor,
    source: Store,
    destination: Store,
    concurrency: int = 4,
    overwrite: bool = False,
) -> Summary:
    """Score every file of `source` into `destination`, with a progress bar on a terminal."""
    keys, skipped = pending_keys(source, destination, overwrite)
    logger.info(
        "Scoring %d files of %s into %s (%d skipped: output exists)",
        len(keys),
        source.location,
        destination.location,
        skipped,
    )
    summary = Summary(skipped=skipped)
    started = time.perf_counter()
    with tqdm(total=len(keys), unit="image", disable=None, file=sys.stderr) as progress:
        for key, failure in score_all(predictor, source, destination, keys, concurrency):
            if failure:
                summary.failed += 1
                logger.error("Failed %s: %s", key, failure)
            else:
                summary.scored += 1
            progress.update()
    summary.seconds = time.perf_counter() - started
    logger.info("Batch scoring done: %s", summary)
    return summary


def run_batch(
    source: str,
    destination: str,
    model_dir: Path,
    endpoint_url: str | None = None,
    overwrite: bool = False,
    concurrency: int = 4,
) -> int:
    """`imgcls serve batch`: exit code 0 when every file was scored, 1 when any failed."""
    predictor = load_predictor(model_dir)
    stores = [open_store(where, endpoint_url, concurrency) for where in (source, destination)]
    summary = score(predictor, *stores, concurrency=concurrency, overwrite=overwrite)
    return 1 if summary.failed else 0
