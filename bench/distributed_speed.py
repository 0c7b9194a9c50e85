"""Multi-host scaling on MXNet's parameter server, and what its communication costs per batch.

Simulated hosts on 127.0.0.1 share this machine's cores, in one run:
    python bench/distributed_speed.py [--hosts 1 2 3] [--images-per-host 512] [--epochs 3]
1. Scaling: `scripts/train` on each host (its own SAGEMAKER_BASE_DIR, kv_store=dist_sync),
   ResNet-20 on generated 3x32x32 RecordIO data; images/s per worker and in total from each
   host's `Epoch[N] Speed:` lines, epoch 0 skipped as warm-up; each job runs `--rounds` times,
   alternating, and its best run counts (the machine is noisy). One host trains locally (no
   parameter server): the baseline. OMP_NUM_THREADS = max(1, cores // hosts) on every host.
2. Communication: a bare ps-lite job (scheduler, servers, workers as processes with DMLC_* on
   127.0.0.1) times the per-batch push+pull of ResNet-20's and ResNet-18's trainable arrays the
   way Gluon's Trainer does it (one pushpull per array, the optimizer on the servers), next to
   forward+backward+update of the same network and batch in this process on all cores
   (medians per batch).
Every process started is killed with its descendants on any outcome; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CORES = len(os.sched_getaffinity(0))
os.environ.setdefault("OMP_NUM_THREADS", str(CORES))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from imgcls.model.networks import build_network  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = ROOT / "scripts" / "train"
SPEED = re.compile(r"Epoch\[(\d+)\] Speed: ([0-9.]+) samples/sec")
RESULT = "PUSHPULL_MS "
RUN_MARK = "IMGCLS_DISTRIBUTED_BENCH"
WARMUP = 2
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Network:
    """A network and batch measured for communication and compute."""

    name: str
    layers: int
    classes: int
    shape: tuple[int, int, int]
    batch: int


NETWORKS = (
    Network("ResNet-20", 20, 10, (3, 32, 32), 64),
    Network("ResNet-18", 18, 1000, (3, 224, 224), 32),
)
JOB = NETWORKS[0]


def threads_per_host(hosts: int) -> int:
    """Every host's OMP_NUM_THREADS, so that hosts x threads = cores where possible."""
    return max(1, CORES // hosts)


def free_port_pair() -> int:
    """A port p such that p and p+1 are free on 127.0.0.1 (scheduler and coordinator)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _die_with_parent() -> None:
    """Runs in each child before exec: the kernel kills it if this benchmark dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Processes:
    """Children in their own process groups, tagged, each logging to a file."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                env={**os.environ, **env, RUN_MARK: self.run_id},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        """SIGKILL every started group (its launcher, ps-lite roles and worker)."""
        for process in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.started.clear()

    def survivors(self) -> list[psutil.Process]:
        """Processes still tagged with this run (should be none after kill_all)."""
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(RUN_MARK) == self.run_id:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found


def tails(logs: list[Path], lines: int = 6) -> str:
    """The last lines of each non-empty log, for an error message."""
    parts = []
    for log in logs:
        text = log.read_text().strip().splitlines()[-lines:]
        if text:
            parts.append(f"--- {log}\n" + "\n".join(text))
    return "\n".join(parts)


def wait_all(processes: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    """Until all exit 0; raise at the first failure or at the deadline."""
    deadline = time.monotonic() + timeout
    while any(process.poll() is None for process in processes):
        failed = [p.returncode for p in processes if p.returncode not in (None, 0)]
        if failed:
            raise RuntimeError(f"a process exited with {failed[0]}:\n{tails(logs)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not finished within {timeout:.0f} s:\n{tails(logs)}")
        time.sleep(0.2)
    if any(process.returncode != 0 for process in processes):
        raise RuntimeError(f"a process failed:\n{tails(logs)}")


def write_records(path: Path, count: int, network: Network, seed: int = 0) -> None:
    """`count` random JPEG images of the network's shape, labels cycling over its classes."""
    rng = np.random.default_rng(seed)
    channels, height, width = network.shape
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for index in range(count):
        image = rng.integers(0, 255, (height, width, channels), dtype=np.uint8)
        header = mx.recordio.IRHeader(0, float(index % network.classes), index, 0)
        writer.write(mx.recordio.pack_img(header, image, quality=95, img_fmt=".jpg"))
    writer.close()


def prepare_hosts(root: Path, hosts: int, images_per_host: int, epochs: int) -> list[Path]:
    """One SAGEMAKER_BASE_DIR per host, each with the whole data set (FullyReplicated)."""
    names = [f"algo-{i + 1}" for i in range(hosts)]
    root.mkdir()
    count = images_per_host * hosts
    records = root / "train.rec"
    write_records(records, count, JOB)
    hyperparameters = {
        "num_classes": str(JOB.classes),
        "num_training_samples": str(count),
        "num_layers": str(JOB.layers),
        "image_shape": ",".join(map(str, JOB.shape)),
        "mini_batch_size": str(JOB.batch),
        "epochs": str(epochs),
        **({"kv_store": "dist_sync"} if hosts > 1 else {}),
    }
    bases = []
    for name in names:
        base = root / name
        (base / "input" / "data" / "train").mkdir(parents=True)
        (base / "input" / "config").mkdir(parents=True)
        shutil.copy(records, base / "input" / "data" / "train" / "train.rec")
        config = base / "input" / "config"
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        resources = {"current_host": name, "hosts": names}
        (config / "resourceconfig.json").write_text(json.dumps(resources))
        bases.append(base)
    return bases


class OtherCpu:
    """Context manager: the share of all cores that processes outside this run used meanwhile.

    This run's CPU is its own plus its reaped descendants' (every child is reaped on exit).
    """

    share = 0.0

    def __enter__(self) -> OtherCpu:
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, ours = (
            end - start for end, start in zip(self._sample(), self.start, strict=True)
        )
        self.share = max(0.0, busy - ours) / (wall * CORES)

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        times = psutil.cpu_times()
        busy = times.user + times.nice + times.system + times.irq + times.softirq
        usage = [
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ]
        return time.monotonic(), busy, sum(u.ru_utime + u.ru_stime for u in usage)


def epoch_speeds(log: Path) -> list[float]:
    """A host's `Epoch[N] Speed:` figures, epoch 0 (warm-up) left out."""
    return [float(speed) for epoch, speed in SPEED.findall(log.read_text()) if int(epoch) > 0]


@dataclass
class ScalingRow:
    """One job's result: each host's mean images/s after the warm-up epoch."""

    hosts: int
    threads: int
    per_host: list[float]
    wall: float
    others: float

    @property
    def total(self) -> float:
        return sum(self.per_host)

    @property
    def per_worker(self) -> float:
        return statistics.mean(self.per_host)


def run_job(
    processes: Processes, root: Path, hosts: int, images: int, epochs: int, timeout: float
) -> ScalingRow:
    """`scripts/train` on every simulated host at once; each host's mean images/s."""
    bases = prepare_hosts(root, hosts, images, epochs)
    threads = threads_per_host(hosts)
    env = {
        "IMGCLS_HOST_ADDRESSES": ",".join(f"algo-{i + 1}=127.0.0.1" for i in range(hosts)),
        "IMGCLS_PS_PORT": str(free_port_pair()),
        "IMGCLS_HEARTBEAT_TIMEOUT": "30",
        "OMP_NUM_THREADS": str(threads),
    }
    logs = [base / "train.log" for base in bases]
    started = time.perf_counter()
    with OtherCpu() as others:
        children = [
            processes.start(
                [sys.executable, str(TRAIN_SCRIPT)], {**env, "SAGEMAKER_BASE_DIR": str(base)}, log
            )
            for base, log in zip(bases, logs, strict=True)
        ]
        try:
            wait_all(children, logs, timeout)
        finally:
            processes.kill_all()
    speeds = [epoch_speeds(log) for log in logs]
    if not all(speeds):
        raise RuntimeError(f"no Speed line after epoch 0 in {logs}; raise --epochs")
    means = [statistics.mean(s) for s in speeds]
    return ScalingRow(hosts, threads, means, time.perf_counter() - started, others.share)


def trainable_arrays(network: Network) -> list[mx.nd.NDArray]:
    """Copies of the network's trainable parameter arrays, in Gluon's order.

    Copies: pulling into a Parameter's own arrays outside a Trainer aborted the ps-lite worker
    here (kv_app.h:624 "msg.data.size() >= 2"); only the shapes matter for the timing.
    """
    net = build_network(network.layers, network.classes, network.shape)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, *network.shape)))
    return [p.data().copy() for p in net.collect_params().values() if p.grad_req != "null"]


def time_pushpull(
    kv: mx.kv.KVStore, keys: list[int], arrays: list[mx.nd.NDArray], batches: int
) -> float:
    """Median milliseconds per batch of one pushpull per array (gradients in, weights out)."""
    grads = [mx.nd.zeros_like(a) for a in arrays]

    def one_batch() -> None:
        for priority, (key, grad, weight) in enumerate(zip(keys, grads, arrays, strict=True)):
            kv.pushpull(key, grad, out=weight, priority=-priority)
        mx.nd.waitall()

    # dist_sync pulls wait for every worker's push: after the warm-up the workers are in step.
    return median_ms(one_batch, batches)


def median_ms(step: Callable[[], None], batches: int) -> float:
    """Median wall time of `step` after WARMUP calls (robust to the odd preempted batch)."""
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(batches):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def kv_worker(batches: int) -> None:
    """A ps-lite worker (DMLC_* set by the parent): print ms/batch of each network."""
    kv = mx.kv.create("dist_sync")
    kv.set_optimizer(mx.optimizer.SGD(learning_rate=0.01, momentum=0.9))
    timings = {}
    for index, network in enumerate(NETWORKS):
        arrays = trainable_arrays(network)
        keys = [index * 1000 + i for i in range(len(arrays))]
        kv.init(keys, arrays)
        timings[network.name] = time_pushpull(kv, keys, arrays, batches)
    print(RESULT + json.dumps(timings), flush=True)


def measure_communication(
    processes: Processes, root: Path, hosts: int, batches: int, timeout: float
) -> tuple[dict[str, float], float]:
    """A scheduler, `hosts` servers and `hosts` workers: the workers' mean ms/batch per network,
    and the CPU share others used meanwhile."""
    env = {
        "DMLC_PS_ROOT_URI": "127.0.0.1",
        "DMLC_PS_ROOT_PORT": str(free_port_pair()),
        "DMLC_NUM_SERVER": str(hosts),
        "DMLC_NUM_WORKER": str(hosts),
        "DMLC_NODE_HOST": "127.0.0.1",
        "OMP_NUM_THREADS": str(threads_per_host(hosts)),
    }
    folder = root / f"ps-{hosts}"
    folder.mkdir()
    role = [sys.executable, "-c", "import mxnet"]
    worker = [sys.executable, __file__, "--kv-worker", "--batches", str(batches)]
    plan = [("scheduler", role)] + [("server", role)] * hosts + [("worker", worker)] * hosts
    children, logs = [], []
    with OtherCpu() as others:
        for index, (name, command) in enumerate(plan):
            logs.append(folder / f"{index}-{name}.log")
            children.append(processes.start(command, {**env, "DMLC_ROLE": name}, logs[-1]))
        try:
            wait_all(children, logs, timeout)
        finally:
            processes.kill_all()
    results = [
        json.loads(line[len(RESULT) :])
        for log in logs
        for line in log.read_text().splitlines()
        if line.startswith(RESULT)
    ]
    if len(results) != hosts:
        raise RuntimeError(f"{len(results)} of {hosts} workers reported, see {folder}")
    timings = {n.name: statistics.mean(r[n.name] for r in results) for n in NETWORKS}
    return timings, others.share


def compute_ms(network: Network, batches: int) -> float:
    """Median ms of forward+backward+SGD update in this process (hybridized, as imgcls trains)."""
    net = build_network(network.layers, network.classes, network.shape)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(0)
    data = mx.nd.array(rng.uniform(0, 255, (network.batch, *network.shape)))
    label = mx.nd.array(rng.integers(0, network.classes, network.batch))

    def step() -> None:
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step(network.batch)
        mx.nd.waitall()

    return median_ms(step, batches)


def print_scaling(rows: list[ScalingRow]) -> None:
    base = rows[0].total
    print(
        f"{'hosts':>5}{'OMP/host':>10}{'threads':>9}{'img/s/worker':>14}{'img/s total':>13}"
        f"{'ms/batch/worker':>17}{'vs 1st':>8}{'wall s':>8}{'others CPU':>12}   per host img/s"
    )
    for row in rows:
        per_host = " ".join(f"{s:.0f}" for s in row.per_host)
        print(
            f"{row.hosts:>5}{row.threads:>10}{row.hosts * row.threads:>9}{row.per_worker:>14.1f}"
            f"{row.total:>13.1f}{1000 * JOB.batch / row.per_worker:>17.1f}"
            f"{row.total / base:>7.2f}x{row.wall:>8.1f}{row.others:>12.0%}   {per_host}"
        )


def print_communication(
    compute: dict[str, float], comm: dict[int, tuple[dict[str, float], float]]
) -> None:
    print(
        f"{'network':<11}{'params':>8}{'MB':>7}{'batch':>6}{'compute ms':>12}"
        f"{'hosts':>6}{'push+pull ms':>14}{'comm/compute':>14}{'others CPU':>12}"
    )
    for network in NETWORKS:
        size = sum(a.size for a in trainable_arrays(network))
        for hosts, (timings, others) in comm.items():
            ms = timings[network.name]
            print(
                f"{network.name:<11}{size / 1e6:>7.2f}M{size * 4 / 2**20:>7.1f}{network.batch:>6}"
                f"{compute[network.name]:>12.1f}{hosts:>6}{ms:>14.1f}"
                f"{ms / compute[network.name]:>14.2f}{others:>12.0%}"
            )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace, processes: Processes, root: Path) -> None:
    print(
        f"cores={CORES} (shared by all simulated hosts, their ps-lite servers and scheduler); "
        f"load average {load()}; 'others CPU' = share of the cores used meanwhile by processes "
        "outside this benchmark"
    )
    print(
        f"\n1. Scaling: scripts/train, kv_store=dist_sync ({JOB.name} "
        f"{'x'.join(map(str, JOB.shape))}, batch {JOB.batch} per worker, "
        f"{args.images_per_host} images per host, "
        f"{args.epochs} epochs, epoch 0 skipped, best of {args.rounds} alternating runs); "
        "1 host = local training, no parameter server"
    )
    best: dict[int, ScalingRow] = {}
    for round_ in range(args.rounds):
        for n in args.hosts:
            folder = root / f"job-{round_}-{n}"
            row = run_job(processes, folder, n, args.images_per_host, args.epochs, args.timeout)
            if n not in best or row.total > best[n].total:
                best[n] = row
    print_scaling(list(best.values()))
    print(
        f"\n2. Communication per batch (ps-lite on 127.0.0.1; medians of {args.batches} push+pull "
        f"and {args.compute_batches} compute batches)"
    )
    with OtherCpu() as others:
        compute = {n.name: compute_ms(n, args.compute_batches) for n in NETWORKS}
    comm = {
        h: measure_communication(processes, root, h, args.batches, args.timeout) for h in args.hosts
    }
    print_communication(compute, comm)
    print(
        f"compute: 1 process, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, others used "
        f"{others.share:.0%} of the cores meanwhile; push+pull: "
        "n workers and n servers (+ scheduler) sharing the cores, OMP_NUM_THREADS = max(1, "
        "cores // n) each; one pushpull per array, SGD on the servers, as Gluon's Trainer does"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--images-per-host", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating runs of each job; the best counts"
    )
    parser.add_argument("--batches", type=int, default=10, help="timed push+pull batches")
    parser.add_argument("--compute-batches", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=150, help="seconds per job, bounded")
    parser.add_argument("--kv-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kv_worker:
        kv_worker(args.batches)
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.stdout.reconfigure(line_buffering=True)
    processes = Processes()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="imgcls-dist-bench-") as folder:
            run(args, processes, Path(folder))
    finally:
        processes.kill_all()
        left = processes.survivors()
        for process in left:
            process.kill()
        print(
            f"\nprocesses left: {len(left)}; total {time.perf_counter() - started:.0f} s; "
            f"load average {load()}"
        )


if __name__ == "__main__":
    main()
