"""Batch scoring of a local folder and of an S3 prefix on a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
from imgcls.model.inference import LoadedModel
from imgcls.serving.batch import LocalStore, S3Store, open_store, score
from imgcls.serving.predictor import load_predictor

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "imgcls-batch"
DENYING = "imgcls-denying"
IMAGES = {
    "a.png": encode_png(random_image(10)),
    "b.jpg": encode_jpeg(random_image(11)),
    "sub/c.png": encode_png(random_image(12, channels=1)),
    "sub/deeper/d.jpeg": encode_jpeg(random_image(13)),
}
BAD = {"notes.txt": b"not an image"}


def batch_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "serve"), "batch", *args]


def run_batch_script(base: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        batch_command(*args),
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(base), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def outputs_in(folder: Path) -> set[str]:
    """Every visible file under `folder`, relative (hidden ones are a write in progress)."""
    files = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return {f.as_posix() for f in files if not any(part.startswith(".") for part in f.parts)}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("batch")
    export_tiny_model(base / "model", seed=2)
    return base


@pytest.fixture(scope="module")
def reference(base: Path) -> Direct:
    return Direct(base / "model")


def _fill(folder: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)


def test_local_folder_scoring_failures_reruns_and_overwrite(
    base: Path, reference: Direct, tmp_path: Path
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
        # PNGs (an RGB one, a grey one) and JPEGs, against plain MXNet.
        assert_same(json.loads((destination / f"{key}.out").read_text()), reference(data))

    predictor = load_predictor(base / "model")
    stamps = {p: p.stat().st_mtime_ns for p in destination.rglob("*.out")}
    rerun = score(predictor, LocalStore(source), LocalStore(destination))
    assert (rerun.scored, rerun.failed, rerun.skipped) == (0, 1, 4)
    assert stamps == {p: p.stat().st_mtime_ns for p in destination.rglob("*.out")}

    (destination / "a.png.out").write_text("stale")
    again = score(predictor, LocalStore(source), LocalStore(destination), 2, overwrite=True)
    assert (again.scored, again.failed, again.skipped) == (4, 1, 0)
    assert_same(json.loads((destination / "a.png.out").read_text()), reference(IMAGES["a.png"]))
    assert not [p for p in destination.rglob("*") if p.name.startswith(".")]


def test_a_decompression_bomb_is_counted_as_failed_with_its_reason_and_never_decoded(
    base: Path, reference: Direct, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
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
        assert_same(json.loads((destination / f"{key}.out").read_text()), reference(data))


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


def test_s3_prefix_scoring_and_rerun(base: Path, reference: Direct, s3, monkeypatch) -> None:
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
        assert_same(json.loads(body), reference(data))

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    source, destination = (open_store(f"s3://{BUCKET}/{p}") for p in ("input", "output"))
    rerun = score(load_predictor(base / "model"), source, destination)
    assert (rerun.scored, rerun.failed, rerun.skipped) == (0, 1, 4)


def test_batches_equal_one_by_one_predictions_and_a_bad_image_fails_alone(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    predictor = load_predictor(base / "model")
    files = {f"img{i}.png": encode_png(random_image(100 + i, 12 + 2 * i, 30 - i)) for i in range(9)}
    files["img5.png"] = b"not an image"  # in the middle of the second forward pass
    expected = {k: predictor.predict(v) for k, v in files.items() if k != "img5.png"}
    source, destination = tmp_path / "in", tmp_path / "out"
    _fill(source, files)
    sizes: list[int] = []
    real = LoadedModel.predict

    def spy(model: LoadedModel, batch):
        sizes.append(batch.shape[0])
        return real(model, batch)

    monkeypatch.setattr(LoadedModel, "predict", spy)
    monkeypatch.setattr(logger, "propagate", True)
    summary = score(predictor, LocalStore(source), LocalStore(destination), 3, size=4)

    assert (summary.scored, summary.failed) == (8, 1)
    assert sizes == [4, 4, 4]  # 4, 3 + the bad one, 1: each padded to one shape
    (failure,) = {r.getMessage() for r in caplog.records if r.getMessage().startswith("Failed")}
    assert failure.startswith("Failed img5.png: img5.png is not an image imgcls can read")
    assert outputs_in(destination) == {f"{key}.out" for key in expected}
    for key, probabilities in expected.items():
        assert_same(json.loads((destination / f"{key}.out").read_text()), probabilities)


def test_killed_mid_run_then_rerun_scores_every_input_exactly_once(
    base: Path, reference: Direct, tmp_path: Path
) -> None:
    files = {f"{i:03d}.png": encode_png(random_image(i, 16, 16)) for i in range(300)}
    source, destination = tmp_path / "in", tmp_path / "out"
    _fill(source, files)
    args = ("--input", str(source), "--output", str(destination), "--batch-size", "2")
    # One OpenMP thread: two spin-waiting threads crawl on a busy 2-core machine.
    threads = {"OMP_NUM_THREADS": "1"}
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), **threads}
    run = subprocess.Popen(
        batch_command(*args, "--concurrency", "1"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while len(outputs_in(destination) if destination.exists() else ()) < 10:
        assert run.poll() is None and time.monotonic() < deadline, "no outputs before the kill"
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    before = outputs_in(destination)
    assert 10 <= len(before) < len(files), "the run ended before it was killed"
    for name in before:  # a killed run leaves whole outputs only
        json.loads((destination / name).read_text())

    rerun = run_batch_script(base, *args, **threads)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    remaining = len(files) - len(before)
    assert f"{remaining} scored, 0 failed, {len(before)} skipped" in rerun.stdout
    assert outputs_in(destination) == {f"{key}.out" for key in files}
    for key, data in files.items():
        assert_same(json.loads((destination / f"{key}.out").read_text()), reference(data))


S3_NAMES = {
    "with space/ä ö 画像 #1.png": IMAGES["a.png"],
    "plus+and%20percent.jpg": IMAGES["b.jpg"],
    "ünïcode.png": IMAGES["sub/c.png"],
    "x/y/z.jpeg": IMAGES["sub/deeper/d.jpeg"],
    "é.png": encode_png(random_image(14)),
}


def test_s3_odd_keys_pages_and_overwrite(base: Path, reference: Direct, s3) -> None:
    endpoint, client = s3
    for key, data in S3_NAMES.items():
        client.put_object(Bucket=BUCKET, Key=f"odd/input/{key}", Body=data)
    lists: list[str] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: lists.append("x"))
    source = S3Store(client, BUCKET, "odd/input", page_size=2)
    destination = S3Store(client, BUCKET, "odd/output", page_size=2)
    predictor = load_predictor(base / "model")

    first = score(predictor, source, destination)
    assert (first.scored, first.failed, first.skipped) == (5, 0, 0)
    assert len(lists) >= 3 + 1  # 5 input keys, 2 per page; then the empty output prefix
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="odd/output/")["Contents"]
    assert sorted(item["Key"] for item in listed) == sorted(f"odd/output/{k}.out" for k in S3_NAMES)

    stale = "odd/output/with space/ä ö 画像 #1.png.out"
    client.put_object(Bucket=BUCKET, Key=stale, Body=b"stale")
    again = score(predictor, source, destination)
    assert (again.scored, again.skipped) == (0, 5)
    assert client.get_object(Bucket=BUCKET, Key=stale)["Body"].read() == b"stale"
    overwrite = run_batch_script(
        base,
        *("--input", f"s3://{BUCKET}/odd/input", "--output", f"s3://{BUCKET}/odd/output"),
        *("--endpoint-url", endpoint, "--overwrite"),
    )
    assert overwrite.returncode == 0, overwrite.stdout + overwrite.stderr
    assert "5 scored, 0 failed, 0 skipped" in overwrite.stdout
    for key, data in S3_NAMES.items():
        body = client.get_object(Bucket=BUCKET, Key=f"odd/output/{key}.out")["Body"].read()
        assert_same(json.loads(body), reference(data))


def test_s3_missing_bucket_and_denied_write_name_the_bucket_and_key(base: Path, s3) -> None:
    endpoint, client = s3
    client.create_bucket(Bucket=DENYING)  # its own: moto keeps buckets for the whole process
    client.put_object(Bucket=DENYING, Key="input/a.png", Body=IMAGES["a.png"])
    predictor = load_predictor(base / "model")
    source = open_store(f"s3://{DENYING}/input", endpoint)
    missing = open_store("s3://no-such-bucket/out", endpoint)
    with pytest.raises(ClientError, match="Cannot list s3://no-such-bucket/in/: NoSuchBucket"):
        score(predictor, open_store("s3://no-such-bucket/in", endpoint), source)
    with pytest.raises(ClientError, match="Cannot list s3://no-such-bucket/out/: NoSuchBucket"):
        score(predictor, source, missing)
    with pytest.raises(ClientError, match="write s3://no-such-bucket/out/a.png.out: NoSuchBucket"):
        score(predictor, source, missing, overwrite=True)

    denied = f"arn:aws:s3:::{DENYING}/denied/*"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": denied}
        ],
    }
    client.put_bucket_policy(Bucket=DENYING, Policy=json.dumps(policy))
    run = run_batch_script(
        base,
        *("--input", f"s3://{DENYING}/input", "--output", f"s3://{DENYING}/denied"),
        *("--endpoint-url", endpoint),
    )
    assert run.returncode == 1
    assert f"ClientError: Cannot write s3://{DENYING}/denied/a.png.out: " in run.stdout
    assert f"Check that bucket '{DENYING}' exists" in run.stdout and "s3:PutObject" in run.stdout
    assert "KeyError" not in run.stdout and "Traceback" not in run.stdout
