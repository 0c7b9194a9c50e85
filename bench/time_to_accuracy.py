"""Time to accuracy: the classic recipe against the recipe extensions, same epochs, several splits.

    python bench/time_to_accuracy.py [--epochs 12] [--seeds 0 1 2]

Data: scikit-learn's 1,797 handwritten digits (real, shipped with the package), upscaled from 8x8
to 28x28 grey, split per seed into 1,397 training and 400 held-out images. Each recipe trains
with `scripts/train` on the same split for the same epochs (the extensions add no measurable
cost per epoch, so equal epochs are an equal wall-clock budget; the wall time is printed), and
the held-out accuracy comes from the saved artifact loaded with plain `mx.mod.Module`, as
SageMaker's notebooks load it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import cv2
import mxnet as mx
import numpy as np
from sklearn.datasets import load_digits

TRAIN = Path(__file__).resolve().parent.parent / "scripts" / "train"
SIDE = 28
HELD_OUT = 400
COMMON = {
    "num_classes": "10",
    "num_layers": "20",
    "image_shape": f"1,{SIDE},{SIDE}",
    "mini_batch_size": "64",
    "optimizer": "nag",
    "learning_rate": "0.1",
    "weight_decay": "0.0005",
    "augmentation_type": "crop",
    "resize": str(SIDE + 4),
}
RECIPES = {
    "classic (NAG, LR steps)": lambda epochs: {
        "lr_scheduler_step": f"{epochs // 2},{3 * epochs // 4}",
        "lr_scheduler_factor": "0.1",
    },
    "extensions (cosine, warm-up, smoothing, mixup, no bias decay)": lambda epochs: {
        "lr_scheduler": "cosine",
        "warmup_epochs": "1",
        "label_smoothing": "0.1",
        "mixup_alpha": "0.2",
        "no_bias_decay": "1",
    },
}


def digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, held-out images, held-out labels), uint8 28x28."""
    data = load_digits()
    images = np.stack(
        [
            cv2.resize(
                (d * (255 / 16)).astype(np.uint8), (SIDE, SIDE), interpolation=cv2.INTER_CUBIC
            )
            for d in data.images
        ]
    )
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:HELD_OUT], order[HELD_OUT:]
    return images[train], data.target[train], images[test], data.target[test]


def write_rec(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        header = mx.recordio.IRHeader(0, float(label), index, 0)
        writer.write(mx.recordio.pack_img(header, image, img_fmt=".png"))
    writer.close()


def train(base: Path, hyperparameters: dict) -> float:
    """Run scripts/train on `base`; its wall-clock seconds."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    started = time.perf_counter()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    done = subprocess.run([sys.executable, str(TRAIN)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    return time.perf_counter() - started


def held_out_accuracy(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The saved model through plain mx.mod.Module (its last params file)."""
    epoch = max(int(p.stem.rsplit("-", 1)[1]) for p in model_dir.glob("*.params"))
    sym, arg, aux = mx.model.load_checkpoint(str(model_dir / "image-classification"), epoch)
    module = mx.mod.Module(symbol=sym, label_names=None, context=mx.cpu())
    module.bind(for_training=False, data_shapes=[("data", (len(images), 1, SIDE, SIDE))])
    module.set_params(arg, aux)
    batch = mx.io.DataBatch([mx.nd.array(images[:, None].astype(np.float32))])
    module.forward(batch, is_train=False)
    predicted = module.get_outputs()[0].asnumpy().argmax(axis=1)
    return float((predicted == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in RECIPES}
    with tempfile.TemporaryDirectory(prefix="imgcls-tta-") as tmp:
        for seed in args.seeds:
            train_images, train_labels, test_images, test_labels = digits(seed)
            for index, (name, extra) in enumerate(RECIPES.items()):
                base = Path(tmp) / f"seed{seed}-{index}"
                write_rec(
                    base / "input" / "data" / "train" / "train.rec", train_images, train_labels
                )
                hyperparameters = {
                    **COMMON,
                    "num_training_samples": str(len(train_labels)),
                    "epochs": str(args.epochs),
                    **extra(args.epochs),
                }
                seconds = train(base, hyperparameters)
                accuracy = held_out_accuracy(base / "model", test_images, test_labels)
                results[name].append((accuracy, seconds))
                print(f"seed {seed} {name}: held-out accuracy {accuracy:.4f}, {seconds:.1f} s")
    print(f"\n| recipe ({args.epochs} epochs) | held-out accuracy per seed | mean | mean wall s |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        accuracies = ", ".join(f"{a:.3f}" for a, _ in runs)
        mean = np.mean([a for a, _ in runs])
        print(f"| {name} | {accuracies} | {mean:.3f} | {np.mean([s for _, s in runs]):.0f} |")


if __name__ == "__main__":
    main()
