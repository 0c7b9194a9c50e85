"""imgcls's ResNet-20 against the fastest PyTorch a user would write for it, side by side.

    python bench/torch_speed.py [--rounds 3] [--epochs 2] [--cases r20-28,r20-32] [--scale 1]

Both sides train on the same RecordIO files, written by bench/train_speed.py's builder (JPEG
crops of scikit-learn's sample photos, stored 1/8 larger than the input), with the same network
(imgcls's CIFAR-style ResNet v2, rebuilt here in PyTorch: its trainable parameter count is
printed for both), batch, SGD (momentum 0.9, weight decay 1e-4), softmax cross-entropy, training
accuracy, a validation pass and a parameters file each epoch, and cores as threads.

- imgcls: a real `scripts/train` job with crop augmentation (random crop + mirror), as
  bench/train_speed.py runs it. End to end = epochs × images / process seconds; steady state =
  the last epoch's `Epoch[N] Speed:` line (its training pass, decoding included).
- PyTorch 2.13 (CPU), in a virtual environment of its own made on demand in bench/.torch-venv
  (never a dependency of imgcls), in three forms: eager, eager channels_last, torch.compile. The
  records are decoded once into a uint8 tensor; each epoch is a full shuffled pass with a random
  crop + mirror per sample done on whole batches of tensors. End to end = epochs × images /
  seconds from opening the .rec file to the last epoch done (PyTorch's CPU ops are synchronous,
  so the clock closes when the last step has finished); "process" is the same from the
  process's start, interpreter and imports included. Steady state = the last epoch's training
  pass; "in memory" = the pure step rate on one batch already in memory, after warm-up.

The order of the four runs alternates round by round; each figure is the median over rounds
[min–max] in training images per second. Run it with imgcls's own environment (MXNet); it runs
itself under bench/.torch-venv's Python for the PyTorch side (`--worker`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".torch-venv"
TORCH_PACKAGES = ["torch==2.13.0", "numpy", "opencv-python-headless"]
FORMS = ("eager", "channels_last", "compile")
CLASSES = 10
RGB_MEAN = (123.68, 116.779, 103.939)  # imgcls.model.networks' input normalisation
RGB_STD = (58.393, 57.12, 57.375)
SPEED_LINE = re.compile(r"Epoch\[(\d+)\] Speed: ([\d.]+) samples/sec")


# ---------------------------------------------------------------- PyTorch side (--worker)


def read_records(path: Path):
    """(label, RGB uint8 HWC image) of every record: MXNet's RecordIO format, read by hand."""
    import cv2
    import numpy as np

    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        magic, length = struct.unpack_from("<II", data, offset)
        if magic != 0xCED7230A or length >> 29:
            raise ValueError(f"{path}: not a single-part MXNet record at byte {offset}")
        length &= (1 << 29) - 1
        record = data[offset + 8 : offset + 8 + length]
        offset += 8 + (length + 3) // 4 * 4
        flag, label, _, _ = struct.unpack_from("<IfQQ", record)
        image = np.frombuffer(record, np.uint8, offset=24 + 4 * flag)
        yield label, cv2.cvtColor(cv2.imdecode(image, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def load_tensors(path: Path):
    """The whole file decoded once: NCHW uint8 images and int64 labels."""
    import numpy as np
    import torch

    labels, images = zip(*read_records(path), strict=True)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.tensor(labels, dtype=torch.int64)


def resnet20(classes: int):
    """imgcls's CIFAR-style ResNet v2 (networks.CIFARResNetV2 inside ImageClassifier)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        """Gluon's BasicBlockV2: BN-ReLU-conv3×3, BN-ReLU-conv3×3, + shortcut (projected)."""

        def __init__(self, inputs: int, channels: int, stride: int, project: bool):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(inputs), nn.BatchNorm2d(channels)
            self.conv1 = nn.Conv2d(inputs, channels, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.project = nn.Conv2d(inputs, channels, 1, stride, bias=False) if project else None

        def forward(self, x):
            residual = x
            x = self.bn1(x).relu()
            if self.project is not None:
                residual = self.project(x)
            x = self.conv2(self.bn2(self.conv1(x)).relu())
            return x + residual

    class Net(nn.Module):
        """0–255 pixels → (x − mean) / std → BN (shift only) → stem → 3 stages → BN-ReLU-pool."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1))
            self.register_buffer("inv_std", 1 / torch.tensor(RGB_STD).view(1, 3, 1, 1))
            self.data_bn = nn.BatchNorm2d(3, affine=False)
            self.data_shift = nn.Parameter(torch.zeros(1, 3, 1, 1))
            self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            blocks, inputs = [], 16
            for stage, channels in enumerate((16, 32, 64)):
                for unit in range(3):  # (20 - 2) // 6 units; every stage opens with a projection
                    stride = 2 if stage and not unit else 1
                    blocks.append(Block(inputs, channels, stride, project=not unit))
                    inputs = channels
            self.blocks = nn.Sequential(*blocks)
            self.bn, self.output = nn.BatchNorm2d(64), nn.Linear(64, classes)

        def forward(self, x):
            x = self.data_bn((x - self.mean) * self.inv_std) + self.data_shift
            x = self.blocks(self.stem(x))
            return self.output(self.bn(x).relu().mean((2, 3)))

    return Net()


def augmented(pixels, index, side: int, crop: bool):
    """Batch `index` of `pixels`: a random crop + mirror per sample (else the centre), as float."""
    import torch

    height, width = pixels.shape[2:]
    count = index.numel()
    steps = torch.arange(side)
    if crop:
        top = torch.randint(0, height - side + 1, (count, 1))
        left = torch.randint(0, width - side + 1, (count, 1))
        flip = torch.rand(count, 1) < 0.5
        cols = torch.where(flip, left + side - 1 - steps, left + steps)
    else:
        top = torch.full((count, 1), (height - side) // 2)
        cols = torch.full((count, 1), (width - side) // 2) + steps
    rows = top + steps
    channels = torch.arange(pixels.shape[1])
    batch = pixels[
        index[:, None, None, None],
        channels[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return batch.float()


def validate(model, pixels, labels, side: int, batch: int, memory) -> float:
    """Accuracy over centre crops of every validation image, in eval mode without gradients."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for begin in range(0, len(pixels), batch):
            index = torch.arange(begin, min(begin + batch, len(pixels)))
            data = augmented(pixels, index, side, crop=False).contiguous(memory_format=memory)
            correct += int((model(data).argmax(1) == labels[index]).sum())
    model.train()
    return correct / len(pixels)


def torch_worker(args: argparse.Namespace) -> None:
    """Train one form; print its figures as one JSON line."""
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory = torch.channels_last if args.form == "channels_last" else torch.contiguous_format
    model = resnet20(CLASSES).to(memory_format=memory)
    step_model = torch.compile(model) if args.form == "compile" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step(data, label):
        optimizer.zero_grad(set_to_none=True)
        output = step_model(data.contiguous(memory_format=memory))
        loss_fn(output, label).backward()
        optimizer.step()
        return output

    started = time.perf_counter()
    train, train_labels = load_tensors(args.train)
    validation, validation_labels = load_tensors(args.validation)
    decoded = time.perf_counter()
    passes = []
    for epoch in range(args.epochs):
        epoch_started = time.perf_counter()
        order = torch.randperm(len(train))
        order = torch.cat([order, order[: -len(order) % args.batch]])  # round_batch, as MXNet
        hits = torch.zeros(())
        for begin in range(0, len(order), args.batch):
            index = order[begin : begin + args.batch]
            label = train_labels[index]
            output = step(augmented(train, index, args.side, crop=True), label)
            hits += (output.detach().argmax(1) == label).sum()
        passes.append(time.perf_counter() - epoch_started)
        accuracy = validate(model, validation, validation_labels, args.side, args.batch, memory)
        print(
            f"Epoch[{epoch}] Train-accuracy={float(hits) / len(order):f} "
            f"Validation-accuracy={accuracy:f}",
            file=sys.stderr,
        )
        torch.save(model.state_dict(), args.out / f"torch-{epoch + 1:04d}.pt")
    finished, finished_at = time.perf_counter(), time.time()
    data = augmented(train, torch.arange(args.batch), args.side, crop=True)
    label = train_labels[: args.batch]
    for _ in range(2):
        step(data, label)
    steps_started = time.perf_counter()
    for _ in range(args.steps):
        step(data, label)
    step_seconds = time.perf_counter() - steps_started
    print(
        json.dumps(
            {
                "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "decode_seconds": decoded - started,
                "end_to_end": args.epochs * len(train) / (finished - started),
                "steady": len(order) / passes[-1],
                "in_memory": args.steps * args.batch / step_seconds,
                "validation_accuracy": accuracy,
                "threads": torch.get_num_threads(),
                "finished_at": finished_at,
            }
        )
    )


# ---------------------------------------------------------------- driver (imgcls's Python)


def torch_python() -> Path:
    """bench/.torch-venv's Python, creating the environment first if it does not exist."""
    python, stamp = VENV / "bin" / "python", VENV / ".installed"
    wanted = " ".join(TORCH_PACKAGES)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"creating {VENV} ({', '.join(TORCH_PACKAGES)}) ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *TORCH_PACKAGES], check=True)
        stamp.write_text(wanted)
    return python


def imgcls_parameters(side: int) -> int:
    """Trainable parameters of imgcls's own ResNet-20 for 3×side×side images."""
    import mxnet as mx

    from imgcls.model.networks import build_network

    net = build_network(20, CLASSES, (3, side, side))
    net.initialize()
    net(mx.nd.zeros((1, 3, side, side)))
    return sum(p.data().size for p in net.collect_params().values() if p.grad_req != "null")


def run(command: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """Wall-clock seconds of a whole process, its stdout and stderr; it must succeed."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[1:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout, done.stderr


def imgcls_run(case, epochs: int, files: tuple[Path, Path], base: Path, env) -> dict[str, float]:
    """A `scripts/train` job as bench/train_speed.py runs it; its figures."""
    from train_speed import imgcls_job

    command = imgcls_job(base, case, epochs, *files)
    seconds, out, err = run(command, {**env, "SAGEMAKER_BASE_DIR": str(base)})
    log = out + err
    speeds = [float(speed) for _, speed in SPEED_LINE.findall(log)]
    if not speeds:
        raise RuntimeError(f"no 'Epoch[N] Speed:' line in the job's log:\n{log[-3000:]}")
    return {"end_to_end": epochs * case.images / seconds, "steady": speeds[-1]}


def torch_run(form: str, case, args, files: tuple[Path, Path], base: Path, env) -> dict:
    command = [
        str(torch_python()),
        __file__,
        "--worker",
        form,
        f"--train={files[0]}",
        f"--validation={files[1]}",
        f"--side={case.side}",
        f"--batch={case.batch}",
        f"--epochs={args.epochs}",
        f"--out={base}",
        f"--threads={args.threads}",
    ]
    started_at = time.time()
    _, out, _ = run(command, env)
    figures = json.loads(out.strip().splitlines()[-1])
    # The process until its last epoch was done: the in-memory step rate is measured after it.
    seconds = figures.pop("finished_at") - started_at
    return {**figures, "process": args.epochs * case.images / seconds}


def summary(values: list[float]) -> str:
    if not values:
        return f"{'—':>22}"
    return f"{statistics.median(values):7.1f} [{min(values):.1f}–{max(values):.1f}]".rjust(22)


def run_case(case, args, folder: Path, env) -> None:
    from train_speed import write_records

    files = folder / f"{case.name}-train.rec", folder / f"{case.name}-val.rec"
    write_records(files[0], case.images, case.side, seed=0)
    write_records(files[1], max(case.batch, case.images // 8), case.side, seed=1)
    results: dict[str, list[dict]] = {name: [] for name in ("imgcls", *FORMS)}
    failures: dict[str, str] = {}
    for round_index in range(args.rounds):
        order = list(results) if round_index % 2 == 0 else list(reversed(results))
        for name in order:
            if name in failures:
                continue
            with tempfile.TemporaryDirectory(dir=folder) as base:
                try:
                    if name == "imgcls":
                        figures = imgcls_run(case, args.epochs, files, Path(base), env)
                    else:
                        figures = torch_run(name, case, args, files, Path(base), env)
                except RuntimeError as error:
                    failures[name] = str(error)[-1500:]
                    continue
            results[name].append(figures)
            print(f"  round {round_index + 1} {name}: {figures}", file=sys.stderr, flush=True)
    report(case, results, failures, args)


def report(case, results: dict[str, list[dict]], failures: dict[str, str], args) -> None:
    def column(name: str, key: str) -> list[float]:
        return [figures[key] for figures in results[name]]

    torch_counts = {r["parameters"] for form in FORMS for r in results[form]}
    print(
        f"\n{case.name}: ResNet-20 3×{case.side}×{case.side}, batch {case.batch}, "
        f"{case.images} images × {args.epochs} epochs, {len(results['imgcls'])} rounds; "
        f"trainable parameters imgcls {imgcls_parameters(case.side)}, PyTorch "
        f"{', '.join(map(str, sorted(torch_counts)))}"
    )
    print(f"{'form':<15}{'end to end':>22}{'process':>22}{'steady state':>22}{'in memory':>22}")
    print(
        f"{'imgcls':<15}{summary(column('imgcls', 'end_to_end'))}{'(same)':>22}"
        f"{summary(column('imgcls', 'steady'))}{'—':>22}"
    )
    for form in FORMS:
        if form in failures:
            print(f"{form:<15} failed: {failures[form].strip().splitlines()[-1]}")
            continue
        print(
            f"{form:<15}"
            + "".join(
                summary(column(form, key))
                for key in ("end_to_end", "process", "steady", "in_memory")
            )
        )
    measured = [form for form in FORMS if results[form]]
    for key, label in (("end_to_end", "end to end"), ("steady", "steady state")):
        best = max(measured, key=lambda form: statistics.median(column(form, key)))
        ratio = statistics.median(column("imgcls", key)) / statistics.median(column(best, key))
        print(f"imgcls ÷ PyTorch best ({best}), {label}: {ratio:.2f}×")
    best = max(measured, key=lambda form: statistics.median(column(form, "in_memory")))
    ratio = statistics.median(column("imgcls", "steady")) / statistics.median(
        column(best, "in_memory")
    )
    print(f"imgcls steady state ÷ PyTorch in-memory step rate ({best}): {ratio:.2f}×", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", default="r20-28,r20-32")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the images")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--worker", choices=FORMS, help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--validation", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.form = args.worker
        torch_worker(args)
        return
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(ROOT / "src"))
    from train_speed import CASES, Case

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    torch_python()
    print(
        f"cores={len(os.sched_getaffinity(0))} threads={args.threads} rounds={args.rounds} "
        f"epochs={args.epochs}; training images/s, median [min–max]; load {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="imgcls-torch-bench-") as folder:
        for name in args.cases.split(","):
            case = CASES[name]
            images = max(case.batch * 2, int(case.images * args.scale))
            scaled = Case(case.name, case.num_layers, case.side, case.batch, images)
            run_case(scaled, args, Path(folder), env)


if __name__ == "__main__":
    main()
