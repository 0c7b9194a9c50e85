"""The reference for bench/train_speed.py: the bare Gluon loop a user would write by hand.

MXNet's ImageRecordIter over the same RecordIO files (same crop + mirror augmentation, same
decoding threads), the same network, SGD with momentum, softmax cross-entropy, an accuracy
metric, a validation pass and a parameters file every epoch; nothing else. It logs each epoch's
training time as imgcls does (`Time cost=`, the clock closed by waitall()). Run as a process, so
that its clock, like imgcls's, closes when every computation has finished:

    python bench/bare_loop.py --train T.rec --validation V.rec --num-layers 20 \
        --image-shape 3,32,32 --batch 128 --epochs 2 --out DIR [--no-hybridize]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import mxnet as mx
from mxnet import autograd, gluon

from imgcls.model.networks import build_network


def record_iter(path: str, shape: tuple[int, ...], batch: int, train: bool) -> mx.io.DataIter:
    """ImageRecordIter as MXNet's own image-classification example builds it."""
    return mx.io.ImageRecordIter(
        path_imgrec=path,
        path_imgidx=str(Path(path).with_suffix(".idx")),
        data_shape=shape,
        batch_size=batch,
        shuffle=train,
        rand_crop=train,
        rand_mirror=train,
        round_batch=train,
    )


def evaluate(net: gluon.HybridBlock, batches: mx.io.DataIter) -> float:
    metric = mx.metric.Accuracy()
    for batch in batches:
        count = batch.data[0].shape[0] - batch.pad
        output = net(batch.data[0].as_in_context(mx.cpu()))
        metric.update([batch.label[0][:count]], [output[:count]])
    return metric.get()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", required=True)
    parser.add_argument("--validation", required=True)
    parser.add_argument("--num-layers", type=int, required=True)
    parser.add_argument("--image-shape", required=True)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-hybridize", action="store_true")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.image_shape.split(","))

    net = build_network(args.num_layers, args.classes, shape)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    if not args.no_hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(
        net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9, "wd": 1e-4}
    )
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    train = record_iter(args.train, shape, args.batch, train=True)
    for epoch in range(args.epochs):
        started = time.perf_counter()
        train.reset()
        metric = mx.metric.Accuracy()
        for batch in train:
            data = batch.data[0].as_in_context(mx.cpu())
            label = batch.label[0].as_in_context(mx.cpu())
            with autograd.record():
                output = net(data)
                loss = loss_fn(output, label)
            loss.backward()
            trainer.step(args.batch)
            metric.update([label], [output])
        mx.nd.waitall()
        seconds = time.perf_counter() - started
        accuracy = evaluate(net, record_iter(args.validation, shape, args.batch, train=False))
        net.save_parameters(str(args.out / f"bare-{epoch + 1:04d}.params"))
        print(f"Epoch[{epoch}] Time cost={seconds:.3f}")
        print(f"Epoch[{epoch}] Train-accuracy={metric.get()[1]:f} Validation-accuracy={accuracy:f}")
    mx.nd.waitall()


if __name__ == "__main__":
    main()
