"""Training speed: imgcls's fit loop vs a bare hybridized Gluon loop, and the input pipeline.

Same network, batch and in-memory data, measured side by side in one run:
    python bench/train_speed.py [--batches N]
Each loop runs `--rounds` times, alternating, and its best run counts (the machine is noisy).
Prints images/s of each and the ratio (target: imgcls >= 0.9x the bare loop), and the images/s
that MXNet's ImageRecordIter delivers from a RecordIO file with the training augmentation (it
must exceed what training consumes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.data.recordio import record_iter
from imgcls.model.networks import build_network
from imgcls.training.loop import StopRequest, train_one_epoch
from imgcls.training.metrics import classification_metrics
from imgcls.training.session import build_learner

CASES = [(20, (3, 32, 32), 128), (18, (3, 112, 112), 64)]
WARMUP = 3


def in_memory_batches(shape, batch, count, classes=10) -> mx.io.DataIter:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 255, (batch * count, *shape)).astype("float32")
    labels = rng.integers(0, classes, batch * count).astype("float32")
    return mx.io.NDArrayIter(data, labels, batch_size=batch)


def bare_loop(num_layers, shape, batch, iterator) -> float:
    """The reference: hybridized network, SGD, softmax cross-entropy, nothing else."""
    net = build_network(num_layers, 10, shape)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    iterator.reset()
    samples, started = 0, None
    for index, data_batch in enumerate(iterator):
        if index == WARMUP:
            mx.nd.waitall()
            started = time.perf_counter()
        with autograd.record():
            loss = loss_fn(net(data_batch.data[0]), data_batch.label[0])
        loss.backward()
        trainer.step(batch)
        if index >= WARMUP:
            samples += batch
    mx.nd.waitall()
    return samples / (time.perf_counter() - started)


def imgcls_loop(num_layers, shape, batch, iterator) -> float:
    """imgcls's own learner and train_one_epoch, metrics included."""
    hp = parse_hyperparameters(
        {
            "num_classes": "10",
            "num_training_samples": str(iterator.num_data),
            "num_layers": str(num_layers),
            "image_shape": ",".join(map(str, shape)),
            "mini_batch_size": str(batch),
            "learning_rate": "0.01",
        }
    )
    learner = build_learner(hp, [mx.cpu()], None)
    metrics = classification_metrics(None)
    warm = in_memory_batches(shape, batch, WARMUP)
    train_one_epoch(0, learner, warm, metrics, StopRequest())
    stats = train_one_epoch(1, learner, iterator, metrics, StopRequest())
    return stats.speed


def pipeline_speed(shape, batch, count) -> float:
    """ImageRecordIter with crop augmentation over JPEGs 1/8 larger than the crop."""
    side = shape[1] + shape[1] // 8
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.rec"
        writer = mx.recordio.MXIndexedRecordIO(str(path.with_suffix(".idx")), str(path), "w")
        for index in range(count):
            image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            header = mx.recordio.IRHeader(0, float(index % 10), index, 0)
            writer.write_idx(index, mx.recordio.pack_img(header, image, quality=90, img_fmt=".jpg"))
        writer.close()
        iterator = record_iter(
            [path],
            index=path.with_suffix(".idx"),
            image_shape=shape,
            batch_size=batch,
            shuffle=True,
            augment={"rand_crop": True, "rand_mirror": True},
        )
        next(iter(iterator))
        iterator.reset()
        started, samples = time.perf_counter(), 0
        for data_batch in iterator:
            data_batch.data[0].wait_to_read()
            samples += batch - data_batch.pad
        return samples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loop")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating runs of each loop; the best counts"
    )
    args = parser.parse_args()
    print(f"cores={len(os.sched_getaffinity(0))} OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    header = f"{'case':<28}{'bare img/s':>12}{'imgcls img/s':>14}{'ratio':>8}{'input img/s':>13}"
    print(header)
    for num_layers, shape, batch in CASES:
        bare, ours = 0.0, 0.0
        for _ in range(args.rounds):
            iterator = in_memory_batches(shape, batch, args.batches + WARMUP)
            bare = max(bare, bare_loop(num_layers, shape, batch, iterator))
            timed = in_memory_batches(shape, batch, args.batches)
            ours = max(ours, imgcls_loop(num_layers, shape, batch, timed))
        feed = pipeline_speed(shape, batch, batch * args.batches)
        case = f"ResNet-{num_layers} {'x'.join(map(str, shape))} b{batch}"
        print(f"{case:<28}{bare:>12.1f}{ours:>14.1f}{ours / bare:>8.2f}{feed:>13.0f}")


if __name__ == "__main__":
    main()
