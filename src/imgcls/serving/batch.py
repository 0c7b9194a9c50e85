"""Batch scoring: each image under a folder or S3 prefix -> `<name>.out`, as batch transform does.

The outputs hold what `/invocations` answers (the JSON list of probabilities); the same
network scores them, without HTTP, several images per forward pass while a thread pool reads,
decodes and writes. A file that cannot be read or decoded is logged and counted and the rest
go on; an output that cannot be written stops the run. Outputs are written whole (a local file
is renamed into place), so a re-run after a crash skips exactly the images already scored.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as S3Error
from tqdm import tqdm

from imgcls.errors import ClientError
from imgcls.log import logger
from imgcls.serving.predictor import JSON, Predictor, encode, load_predictor
from imgcls.system import atomic_write_bytes

OUTPUT_SUFFIX = ".out"
MAX_BATCH = 64
BATCH_BYTES = 16 * 2**20  # float32 network input of one forward pass


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise ClientError(
                f"Cannot write {path}: {exc.strerror or exc}. Check that the output folder "
                "is writable and has free space."
            ) from exc

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ClientError(f"{key!r} would be outside {self.root}.")
        return path


class S3Store:
    """The objects under `s3://bucket/prefix/` (the prefix is a folder: a `/` is added), listed
    `page_size` keys per request (S3 answers at most 1,000)."""

    def __init__(self, client: Any, bucket: str, prefix: str, page_size: int = 1000):
        self.client = client
        self.page_size = page_size
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self.location = f"s3://{bucket}/{self.prefix}"

    def keys(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2")
        pagination = {"PageSize": self.page_size}
        for page in pages.paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig=pagination
        ):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key and not key.endswith("/"):
                    yield key

    def read(self, key: str) -> bytes:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return reply["Body"].read()
        except (BotoCoreError, S3Error) as exc:
            raise s3_failure("read", self.url(key), exc, "s3:GetObject") from exc

    def write(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=JSON
            )
        except (BotoCoreError, S3Error) as exc:
            raise s3_failure("write", self.url(key), exc, "s3:PutObject") from exc

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"


def s3_failure(action: str, url: str, exc: Exception, permission: str) -> ClientError:
    """A ClientError naming the object, S3's error code and what to check."""
    code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, S3Error) else ""
    bucket = url.removeprefix("s3://").partition("/")[0]
    return ClientError(
        f"Cannot {action} {url}: {code or type(exc).__name__} ({exc}). Check that bucket "
        f"{bucket!r} exists on this endpoint and that these credentials allow {permission}."
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
        raise s3_failure("list", store.location, exc, "s3:ListBucket") from exc


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


def batch_size(image_shape: tuple[int, int, int], budget: int = BATCH_BYTES) -> int:
    """Images per forward pass: as many float32 network inputs as fit in `budget`, 1 to 64."""
    return max(1, min(MAX_BATCH, budget // (4 * math.prod(image_shape))))


@dataclass
class Loaded:
    """One input file read and prepared (`input`), or why it could not be (`failure`)."""

    key: str
    input: np.ndarray | None = None
    failure: str | None = None


def _reason(error: BaseException) -> str:
    """Why a file failed: the message alone for the user's mistakes."""
    if isinstance(error, ClientError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def load(predictor: Predictor, source: Store, key: str) -> Loaded:
    """Read and prepare one file; any failure is that file's, recorded with its reason."""
    try:
        return Loaded(key, predictor.prepare(source.read(key), key))
    except Exception as exc:
        return Loaded(key, failure=_reason(exc))


def forward(predictor: Predictor, inputs: list[np.ndarray], size: int) -> np.ndarray:
    """Probabilities of `inputs` from one forward pass, padded to `size` images so that the
    network always sees one shape (MXNet's static graph is built once)."""
    padding = [np.zeros_like(inputs[0])] * (size - len(inputs))
    return predictor.predict_batch(np.concatenate(inputs + padding))[: len(inputs)]


def _written(writes: list[tuple[str, Future]]) -> Iterator[tuple[str, None]]:
    for key, future in writes:
        future.result()  # a failed write raises: the destination is wrong, not the image
        yield key, None


def score_all(
    predictor: Predictor,
    source: Store,
    destination: Store,
    keys: list[str],
    concurrency: int,
    size: int,
) -> Iterator[tuple[str, str | None]]:
    """Score `keys` in forward passes of `size` images, yielding each (key, failure reason or
    None) once its output is written. `concurrency` threads load the next batch and write the
    previous one while the network runs: at most three batches are in memory."""
    chunks = (keys[i : i + size] for i in range(0, len(keys), size))
    with ThreadPoolExecutor(concurrency, thread_name_prefix="imgcls-batch") as pool:

        def submit_loads() -> list[Future]:
            return [pool.submit(load, predictor, source, key) for key in next(chunks, [])]

        loading, writing = submit_loads(), []
        while loading:
            loaded = [future.result() for future in loading]
            loading = submit_loads()
            good = [item for item in loaded if item.failure is None]
            scores = forward(predictor, [item.input for item in good], size) if good else []
            yield from _written(writing)
            yield from ((item.key, item.failure) for item in loaded if item.failure)
            writing = [
                (item.key, pool.submit(destination.write, item.key + OUTPUT_SUFFIX, encode(p)))
                for item, p in zip(good, scores, strict=True)
            ]
        yield from _written(writing)


def score(
    predictor: Predictor,
    source: Store,
    destination: Store,
    concurrency: int = 4,
    overwrite: bool = False,
    size: int | None = None,
) -> Summary:
    """Score every file of `source` into `destination`, `size` images per forward pass (default:
    `batch_size` of the model's image shape), with a progress bar on a terminal."""
    keys, skipped = pending_keys(source, destination, overwrite)
    size = min(size or batch_size(predictor.model.image_shape), max(1, len(keys)))
    logger.info(
        "Scoring %d files of %s into %s, %d per forward pass (%d skipped: output exists)",
        len(keys),
        source.location,
        destination.location,
        size,
        skipped,
    )
    summary = Summary(skipped=skipped)
    started = time.perf_counter()
    with tqdm(total=len(keys), unit="image", disable=None, file=sys.stderr) as progress:
        for key, failure in score_all(predictor, source, destination, keys, concurrency, size):
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
    batch_size: int | None = None,
) -> int:
    """`imgcls serve batch`: exit code 0 when every file was scored, 1 when any failed."""
    predictor = load_predictor(model_dir)
    stores = [open_store(where, endpoint_url, concurrency) for where in (source, destination)]
    summary = score(predictor, *stores, concurrency, overwrite, batch_size)
    return 1 if summary.failed else 0
