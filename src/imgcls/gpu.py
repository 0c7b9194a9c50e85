"""The GPUs this MXNet can run on, read from its own library, and the check made before a job
or a model server uses them.

A GPU wheel carries its kernels in `libmxnet.so`'s `.nv_fatbin` section: fat binaries whose
entries are machine code (cubin) for one compute capability or PTX that the driver compiles for
newer ones. CUDA runs a cubin for X.Y on any X.Z with Z >= Y (same major only), and PTX for X.Y
on anything newer. `mxnet-cu117==1.9.1` has cubins for 5.0, 6.0, 7.0, 8.0 and 8.6 and no PTX, so
nothing of major 9 or later (H100, Blackwell) can run its kernels.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import struct
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from imgcls.errors import ClientError
from imgcls.log import logger

FATBIN_SECTION = b".nv_fatbin"
FATBIN_MAGIC = 0xBA55ED50
CUBIN, PTX = 2, 1
# SageMaker's GPU instance families: their GPU and its compute capability (major * 10 + minor).
INSTANCE_FAMILIES = {
    "ml.p3": ("V100", 70),
    "ml.g4dn": ("T4", 75),
    "ml.p4d": ("A100", 80),
    "ml.g5": ("A10G", 86),
    "ml.g6": ("L4", 89),
    "ml.p5": ("H100", 90),
}
CPU_ALTERNATIVE = "the CPU image (imgcls:cpu) on a CPU instance such as ml.c5 or ml.m5"


@dataclass(frozen=True)
class GpuCode:
    """The compute capabilities (major * 10 + minor) a library has cubins and PTX for."""

    cubins: frozenset[int] = frozenset()
    ptx: frozenset[int] = frozenset()

    def runs_on(self, capability: int) -> bool:
        """CUDA's rule: a cubin of the same major and no higher minor, or any older PTX."""
        same_major = (c for c in self.cubins if c // 10 == capability // 10)
        return any(c <= capability for c in same_major) or any(p <= capability for p in self.ptx)

    def describe(self) -> str:
        cubins = ", ".join(_version(c) for c in sorted(self.cubins))
        ptx = ", ".join(_version(p) for p in sorted(self.ptx)) or "none"
        return f"machine code for {cubins}; PTX: {ptx}"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: int


def _version(capability: int) -> str:
    return f"{capability // 10}.{capability % 10}"


def read_gpu_code(library: Path) -> GpuCode:
    """The architectures in an ELF library's `.nv_fatbin` section (none in a CPU build).

    Reads only the headers: fat binaries and their entries are skipped over by their sizes.
    """
    with open(library, "rb") as f:
        section = _elf_section(f, FATBIN_SECTION)
        entries = list(_fatbin_entries(f, *section)) if section is not None else []
    return GpuCode(
        cubins=frozenset(arch for kind, arch in entries if kind == CUBIN),
        ptx=frozenset(arch for kind, arch in entries if kind == PTX),
    )


def _elf_section(f: BinaryIO, wanted: bytes) -> tuple[int, int] | None:
    """(offset, size) of the 64-bit little-endian ELF section named `wanted`, if any."""
    header = f.read(64)
    if header[:6] != b"\x7fELF\x02\x01":
        raise ValueError(f"{f.name} is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", header, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", header, 0x3A)
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    sections = [struct.unpack_from("<I20xQQ", table, i * shentsize) for i in range(shnum)]
    _, names_offset, names_size = sections[shstrndx]
    f.seek(names_offset)
    names = f.read(names_size)
    for name, offset, size in sections:
        if names[name : names.index(b"\0", name)] == wanted:
            return offset, size
    return None


def _fatbin_entries(f: BinaryIO, offset: int, size: int) -> Iterator[tuple[int, int]]:
    """(kind, architecture) of every entry of the fat binaries packed in [offset, offset+size)."""
    end = offset + size
    while offset + 16 <= end:
        f.seek(offset)
        magic, _, header_size, body_size = struct.unpack("<IHHQ", f.read(16))
        if magic != FATBIN_MAGIC:
            raise ValueError(f"no fat binary header at offset {offset} of {f.name}")
        entry, offset = offset + header_size, offset + header_size + body_size
        while entry < offset:
            f.seek(entry)
            head = f.read(32)
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", head)
            yield kind, struct.unpack_from("<I", head, 28)[0]
            entry += entry_header + payload


@functools.cache
def installed_gpu_code() -> GpuCode:
    """The GPU code of the libmxnet.so this process loads, read once."""
    from mxnet.libinfo import find_lib_path

    return read_gpu_code(Path(find_lib_path()[0]))


def has_gpu_devices(dev: Path = Path("/dev")) -> bool:
    """True when an NVIDIA GPU device file (/dev/nvidia0, ...) exists, read without MXNet."""
    return any(dev.glob("nvidia[0-9]*"))


def num_gpus() -> int:
    """GPUs MXNet can use here (0 on the CPU build). A host without an NVIDIA device file has
    none, known without loading MXNet: a multi-host job's launcher then never loads it, nor
    does the model server's count of them."""
    if not has_gpu_devices():
        return 0
    import mxnet as mx

    return mx.context.num_gpus()


def visible_gpus() -> list[Gpu]:
    """The GPUs MXNet sees, with their names and compute capabilities (none on the CPU build)."""
    return [Gpu(i, *_driver_query(i)) for i in range(num_gpus())]


def _driver_query(index: int) -> tuple[str, int]:
    """(name, capability) of GPU `index` from the CUDA driver, which needs no kernel to run."""
    cuda = _load_driver()
    device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    calls = [
        ("cuInit", (0,)),
        ("cuDeviceGet", (ctypes.byref(device), index)),
        ("cuDeviceGetName", (name, len(name), device)),
        ("cuDeviceGetAttribute", (ctypes.byref(major), 75, device)),  # ..._CAPABILITY_MAJOR
        ("cuDeviceGetAttribute", (ctypes.byref(minor), 76, device)),  # ..._CAPABILITY_MINOR
    ]
    for function, arguments in calls:
        status = getattr(cuda, function)(*arguments)
        if status != 0:
            raise RuntimeError(f"{function} failed for GPU {index} with CUDA error {status}")
    return name.value.decode(errors="replace"), major.value * 10 + minor.value


def _load_driver() -> ctypes.CDLL:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise RuntimeError("MXNet sees GPUs but the CUDA driver library libcuda.so.1 cannot be loaded")


def check_gpus(gpus: list[Gpu] | None = None, code: GpuCode | None = None) -> None:
    """ClientError when a visible GPU cannot run this MXNet's kernels; nothing without GPUs.

    `gpus` and `code` default to the GPUs here and the installed library's code.
    """
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        return
    code = installed_gpu_code() if code is None else code
    if not code.cubins and not code.ptx:
        logger.warning("libmxnet.so holds no GPU code that imgcls can read: GPUs not checked.")
        return
    for gpu in gpus:
        if not code.runs_on(gpu.capability):
            raise ClientError(_unsupported(gpu, code))


def _unsupported(gpu: Gpu, code: GpuCode) -> str:
    working = ", ".join(
        f"{family} ({model}, {_version(capability)})"
        for family, (model, capability) in INSTANCE_FAMILIES.items()
        if code.runs_on(capability)
    )
    return (
        f"GPU {gpu.index} ({gpu.name}) has compute capability {_version(gpu.capability)}, "
        f"which this image's MXNet cannot run: its libmxnet.so has {code.describe()}, and a GPU "
        f"needs machine code of its own major version or PTX. Use an instance family whose GPU "
        f"it runs on: {working}; or {CPU_ALTERNATIVE}."
    )


def gpu_count_in_child() -> int:
    """`num_gpus()` asked in a forked child process.

    The model server's master must not initialise CUDA itself: workers forked from a process
    that has cannot use the GPU.
    """
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(num_gpus).result()
