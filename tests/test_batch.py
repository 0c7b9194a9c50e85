"""Batch scoring of a local folder and of an S3 prefix on a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from serving_support import (
    FAKE_AWS,
    Direct,
    assert_same,
    encode_jpeg,
    encode_png,
    export_tiny_model,
    flat_png,
    forbid_decoding,
    free_port,
    random_image,
)

from imgcls.errors import ClientError
from imgcls.log import logger
from imgcls.serving.batch import LocalStore, open_store, score
from imgcls.serving.predictor import load_predictor

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "imgcls-batch"
IMAGES = {
    "a.png": encode_png(random_image(10)),
    "b.jpg": encode_jpeg(random_image(11)),
    "sub/c.png": encode_png(random_image(12, channels=1)),
    "sub/deeper/d.jpeg": encode_jpeg(random_image(13)),
}
BAD = {"notes.txt": b"not an image"}


def run_batch_script(base: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "serve"), "batch", *args],
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("batch")
    export_tiny_model(base / "model", seed=2)
    return base


@pytest.fixture(scope="module")
def direct(base: Path) -> Direct:
    return Direct(base / "model")


def _fill(folder: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)


def test_local_folder_scoring_failures_reruns_and_overwrite(
    base: Path, direct: Direct, tmp_path: Path
) -> None:
    source, destination = tmp_path / "in", tmp_path / "out"
    _fill(source, {**IMAGES, **BAD, ".DS_Store": b"hidden"})

    first = run_batch_script(base, "--input", str(source), "--output", str(destination))
    assert first.returncode == 1, first.stdout + first.stderr
    assert "4 scored, 1 failed, 0 skipped" in first.stdout
    assert "Failed notes.txt" in first.stdout and "images/s" in first.stdout
    outputs = sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*.out"))
    assert outputs == sorted(f"{key}.out" for key in IMAGES)
    for key, data in IMAGES.items():
        assert_same(json.loads((destination / f"{key}.out").read_text()), direct(data))

    predictor = load_predictor(base / "model")
    stamps = {p: p.stat().st_mtime_ns for p in destination.rglob("*.out")}
    rerun = score(predictor, LocalStore(source), LocalStore(destination))
    assert (rerun.scored, rerun.failed, rerun.skipped) == (0, 1, 4)
    assert stamps == {p: p.stat().st_mtime_ns for p in destination.rglob("*.out")}

    (destination / "a.png.out").write_text("stale")
    again = score(predictor, LocalStore(source), LocalStore(destination), 2, overwrite=True)
    assert (again.scored, again.failed, again.skipped) == (4, 1, 0)
    assert_same(json.loads((destination / "a.png.out").read_text()), direct(IMAGES["a.png"]))
    assert not [p for p in destination.rglob("*") if p.name.startswith(".")]


def test_a_decompression_bomb_is_counted_as_failed_with_its_reason_and_never_decoded(
    base: Path, direct: Direct, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    bomb = flat_png(20000, 20000)
    forbid_decoding(monkeypatch, bomb)
    monkeypatch.setattr(logger, "propagate", True)  # the CLI's setup_logging turns it off
    source, destination = tmp_path / "in", tmp_path / "out"
    _fill(source, {**IMAGES, "bomb.png": bomb})
    summary = score(load_predictor(base / "model"), LocalStore(source), LocalStore(destination))
    assert (summary.scored, summary.failed) == (len(IMAGES), 1)
    (failure,) = {r.getMessage() for r in caplog.records if r.getMessage().startswith("Failed")}
    assert failure.startswith("Failed bomb.png: bomb.png is over ")
    assert "more than the 64,000,000 pixels imgcls decodes" in failure
    assert not (destination / "bomb.png.out").exists()
    for key, data in IMAGES.items():
        assert_same(json.loads((destination / f"{key}.out").read_text()), direct(data))


def test_nothing_to_score_and_escaping_keys_are_client_errors(base: Path, tmp_path: Path) -> None:
    predictor = load_predictor(base / "model")
    with pytest.raises(ClientError, match="No files to score"):
        score(predictor, LocalStore(tmp_path / "missing"), LocalStore(tmp_path / "out"))
    with pytest.raises(ClientError, match="outside"):
        LocalStore(tmp_path).write("../escaped.out", b"[]")
    with pytest.raises(ClientError, match="names no bucket"):
        open_store("s3:///prefix")
    missing = run_batch_script(base, "--input", str(tmp_path / "none"), "--output", "out")
    assert missing.returncode == 1 and "ClientError: No files to score" in missing.stdout


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    """A moto S3 server on 127.0.0.1 with one bucket; fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint, client
    finally:
        server.stop()


def test_s3_prefix_scoring_and_rerun(base: Path, direct: Direct, s3, monkeypatch) -> None:
    endpoint, client = s3
    for key, data in {**IMAGES, **BAD}.items():
        client.put_object(Bucket=BUCKET, Key=f"input/{key}", Body=data)
    client.put_object(Bucket=BUCKET, Key="input-other/x.png", Body=IMAGES["a.png"])

    run = run_batch_script(
        base,
        "--input",
        f"s3://{BUCKET}/input",
        "--output",
        f"s3://{BUCKET}/output/",
        "--endpoint-url",
        endpoint,
        "--concurrency",
        "3",
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "4 scored, 1 failed, 0 skipped" in run.stdout
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="output/")["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(f"output/{k}.out" for k in IMAGES)
    for key, data in IMAGES.items():
        body = client.get_object(Bucket=BUCKET, Key=f"output/{key}.out")["Body"].read()
        assert_same(json.loads(body), direct(data))

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    source, destination = (open_store(f"s3://{BUCKET}/{p}") for p in ("input", "output"))
    rerun = score(load_predictor(base / "model"), source, destination)
    assert (rerun.scored, rerun.failed, rerun.skipped) == (0, 1, 4)
