"""Training speed end to end: a real `scripts/train` job vs the bare Gluon loop, side by side.

    python bench/train_speed.py [--rounds 3] [--epochs 2] [--cases r20-28,r20-32,r18-112,r18-224]

Both sides are whole processes over the same RecordIO files (JPEG photos cropped from
scikit-learn's sample images), with the same threads, batch, network and crop + mirror
augmentation: imgcls runs its job as a user would (startup scan, decoding, augmentation, step,
metrics, validation, checkpoint and resume save each epoch); the reference is bench/bare_loop.py
in both its forms (hybridized static, and not hybridized) on MXNet's default engine, as a user
writes it, of which the faster counts. imgcls runs single-host CPU jobs on MXNet's NaiveEngine
with one temporary space (training/supervisor.py); a third reference, "bare naive", is the
hybridized bare loop given those same settings, so the bench shows what they alone are worth. A
process ends only when MXNet's engine has finished its work, so both clocks close the same way.
The order alternates round by round; each figure is the median over rounds [min–max], in
training images per second of wall-clock time (epochs × images / process seconds). A second line
per case gives the last epoch's training loop alone, as each side logs it (`Time cost=`: images
/ seconds from the epoch's first batch to waitall() after its last), to tell the loop from the
per-job costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
from sklearn.datasets import load_sample_images

from imgcls.training.supervisor import SINGLE_HOST_CPU_ENV

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10
EPOCH_TIME = re.compile(r"Epoch\[\d+\] Time cost=([0-9.]+)")


@dataclass(frozen=True)
class Case:
    name: str
    num_layers: int
    side: int
    batch: int
    images: int

    @property
    def shape(self) -> str:
        return f"3,{self.side},{self.side}"


CASES = {
    case.name: case
    for case in (
        Case("r20-28", 20, 28, 128, 6144),
        Case("r20-32", 20, 32, 128, 6144),
        Case("r18-112", 18, 112, 64, 768),
        Case("r18-224", 18, 224, 32, 256),
    )
}


def write_records(path: Path, count: int, side: int, seed: int) -> None:
    """`count` JPEG crops of the sample photos, stored 1/8 larger than the network input."""
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    stored = side + side // 8
    writer = mx.recordio.MXIndexedRecordIO(str(path.with_suffix(".idx")), str(path), "w")
    for index in range(count):
        photo = photos[index % len(photos)]
        crop = int(rng.integers(stored, min(photo.shape[:2])))
        y = int(rng.integers(0, photo.shape[0] - crop))
        x = int(rng.integers(0, photo.shape[1] - crop))
        image = cv2.resize(photo[y : y + crop, x : x + crop], (stored, stored))
        header = mx.recordio.IRHeader(0, float(index % CLASSES), index, 0)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        writer.write_idx(index, mx.recordio.pack_img(header, bgr, quality=90, img_fmt=".jpg"))
    writer.close()


def imgcls_job(base: Path, case: Case, epochs: int, train: Path, validation: Path) -> list[str]:
    """A SageMaker-style job folder over the case's files; the command that runs it."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    for channel, source in (("train", train), ("validation", validation)):
        folder = base / "input" / "data" / channel
        folder.mkdir(parents=True, exist_ok=True)
        for suffix in (".rec", ".idx"):
            target = folder / source.with_suffix(suffix).name
            if not target.exists():
                target.symlink_to(source.with_suffix(suffix))
    hyperparameters = {
        "num_classes": str(CLASSES),
        "num_training_samples": str(case.images),
        "num_layers": str(case.num_layers),
        "image_shape": case.shape,
        "mini_batch_size": str(case.batch),
        "epochs": str(epochs),
        "learning_rate": "0.01",
        "augmentation_type": "crop",
    }
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    return [sys.executable, str(ROOT / "scripts" / "train")]


def bare_command(case: Case, epochs: int, train: Path, validation: Path, out: Path, hybrid: bool):
    command = [
        sys.executable,
        str(ROOT / "bench" / "bare_loop.py"),
        f"--train={train}",
        f"--validation={validation}",
        f"--num-layers={case.num_layers}",
        f"--image-shape={case.shape}",
        f"--batch={case.batch}",
        f"--epochs={epochs}",
        f"--out={out}",
    ]
    return command if hybrid else [*command, "--no-hybridize"]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock seconds of a whole process (it must succeed), and of its last epoch's
    training loop as the process logs it (`Epoch[N] Time cost=S`, both sides)."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[1]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, float(EPOCH_TIME.findall(done.stdout + done.stderr)[-1])


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} [{min(values):.1f}–{max(values):.1f}]"


FORMS = ("imgcls", "bare hybridized", "bare imperative", "bare naive")
DEFAULT_ENGINE_FORMS = ("bare hybridized", "bare imperative")


def form_run(
    form: str, base: Path, case: Case, epochs: int, train: Path, validation: Path
) -> tuple[list[str], dict[str, str]]:
    """The command of one form and what it adds to the environment. imgcls picks its own MXNet
    engine settings (NaiveEngine and one temporary space on one CPU host); the bare loop as a
    user writes it gets MXNet's defaults; "bare naive" is the hybridized bare loop given
    imgcls's settings."""
    if form == "imgcls":
        return imgcls_job(base, case, epochs, train, validation), {}
    hybrid = form != "bare imperative"
    command = bare_command(case, epochs, train, validation, base, hybrid)
    return command, SINGLE_HOST_CPU_ENV if form == "bare naive" else {}


def run_case(case: Case, rounds: int, epochs: int, folder: Path, env: dict[str, str]) -> str:
    train, validation = folder / f"{case.name}-train.rec", folder / f"{case.name}-val.rec"
    write_records(train, case.images, case.side, seed=0)
    write_records(validation, max(case.batch, case.images // 8), case.side, seed=1)
    samples = case.images * epochs
    speeds: dict[str, list[float]] = {form: [] for form in FORMS}
    loops: dict[str, list[float]] = {form: [] for form in FORMS}
    for round_index in range(rounds):
        order = FORMS if round_index % 2 == 0 else tuple(reversed(FORMS))
        for form in order:
            with tempfile.TemporaryDirectory(dir=folder) as base:
                command, extra = form_run(form, Path(base), case, epochs, train, validation)
                job_env = {**env, **extra, "SAGEMAKER_BASE_DIR": base}
                seconds, last_epoch = timed(command, job_env)
                speeds[form].append(samples / seconds)
                loops[form].append(case.images / last_epoch)
    best_bare = max(DEFAULT_ENGINE_FORMS, key=lambda form: np.median(speeds[form]))
    return "\n".join(
        [
            _row(case.name, speeds, best_bare, ""),
            _row("  loop", loops, best_bare, " (last epoch's training loop)"),
        ]
    )


def _row(title: str, figures: dict[str, list[float]], best_bare: str, note: str) -> str:
    """One line: each form's median [min–max], the ratio to the faster bare loop on MXNet's
    default engine (with the median and range of its per-round pairs, the two jobs run one after
    the other: the figure that a machine whose speed drifts between rounds moves least), and the
    ratio to the naive-engine bare loop."""
    imgcls = figures["imgcls"]
    pairs = [a / b for a, b in zip(imgcls, figures[best_bare], strict=True)]
    ratio = statistics.median(imgcls) / statistics.median(figures[best_bare])
    naive = statistics.median(imgcls) / statistics.median(figures["bare naive"])
    cells = "  ".join(summary(figures[form]) for form in FORMS)
    return (
        f"{title:<9}{cells}  {ratio:5.2f}x (pairs: median {statistics.median(pairs):.2f}, "
        f"{min(pairs):.2f}–{max(pairs):.2f}, vs "
        f"{best_bare}); {naive:4.2f}x vs bare naive{note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the images")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(cores))}
    for name in SINGLE_HOST_CPU_ENV:  # each form sets its own (form_run)
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    print(
        f"cores={cores} OMP_NUM_THREADS={env['OMP_NUM_THREADS']} rounds={args.rounds} "
        f"epochs={args.epochs}; training images/s, median [min–max]"
    )
    print(f"{'case':<9}" + "  ".join(f"{form:>24}" for form in FORMS) + "  ratio")
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as folder:
        for name in args.cases.split(","):
            case = CASES[name]
            scaled = Case(
                case.name,
                case.num_layers,
                case.side,
                case.batch,
                max(case.batch * 2, int(case.images * args.scale)),
            )
            print(run_case(scaled, args.rounds, args.epochs, Path(folder), env), flush=True)


if __name__ == "__main__":
    main()
