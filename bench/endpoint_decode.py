"""The endpoint-equivalent inputs of a validation set too large to keep: decoded on every core
(`EndpointCheck`, training/endpoint.py) against one image at a time, side by side.

    python bench/endpoint_decode.py [--images 1000] [--side 224] [--rounds 5]

JPEG records stored 1/8 larger than the network input (bench/train_speed.py's), squashed to
side x side as the server does. Both sides yield the same uint8 batches (checked first); the
order alternates round by round; median [min–max] seconds of one pass and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from train_speed import write_records

from imgcls.data.preprocess import network_pixels, to_network_pixels
from imgcls.training.endpoint import EndpointCheck, records

CLASSES, BATCH = 10, 32


def one_at_a_time(rec: Path, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """The pass as a single-threaded loop writes it: each image decoded and resized in turn."""
    images = [network_pixels(image, shape) for _, image in records([rec])]
    return [to_network_pixels(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]


def on_every_core(rec: Path, shape: tuple[int, int, int]) -> list[np.ndarray]:
    return [pixels for pixels, _ in EndpointCheck([rec], shape, CLASSES, False, BATCH)._batches()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    shape = (3, args.side, args.side)
    forms = {"one at a time": one_at_a_time, "on every core": on_every_core}
    with tempfile.TemporaryDirectory() as folder:
        rec = Path(folder) / "validation.rec"
        write_records(rec, args.images, args.side, seed=3)
        first, second = (form(rec, shape) for form in forms.values())
        assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
        seconds: dict[str, list[float]] = {name: [] for name in forms}
        for round_index in range(args.rounds):
            names = list(forms) if round_index % 2 == 0 else list(reversed(forms))
            for name in names:
                started = time.perf_counter()
                forms[name](rec, shape)
                seconds[name].append(time.perf_counter() - started)
    for name, values in seconds.items():
        print(
            f"{name:<14} {statistics.median(values):.3f} s [{min(values):.3f}–{max(values):.3f}]"
            f"  {args.images / statistics.median(values):.0f} images/s"
        )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = medians["one at a time"] / medians["on every core"]
    print(f"on every core: {ratio:.2f}x one at a time")


if __name__ == "__main__":
    main()
