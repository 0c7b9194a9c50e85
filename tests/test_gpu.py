"""The GPU check: which compute capabilities this MXNet runs on, read from its libmxnet.so.

The reference for the installed wheel is MXNet's own build configuration for it
(`config/distribution/linux_cu117.cmake`: MXNET_CUDA_ARCH "5.0;6.0;7.0;8.0;8.6", machine code
only); the rule is CUDA's binary compatibility: a cubin for X.Y runs on X.Z for Z >= Y, PTX for
X.Y on any later capability.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import pytest
from conftest import TINY_HYPERPARAMETERS
from mxnet.libinfo import find_lib_path
from serving_support import export_tiny_model

from imgcls import gpu
from imgcls.cli import main
from imgcls.config.serving import ServingSettings
from imgcls.errors import ClientError
from imgcls.gpu import FATBIN_MAGIC, Gpu, GpuCode, check_gpus, read_gpu_code
from imgcls.serving.app import ServingApp
from imgcls.system import child_env

CU117_BUILD = GpuCode(cubins=frozenset({50, 60, 70, 80, 86}))
INSTALLED = Path(find_lib_path()[0])
ACCEPTED = {"V100": 70, "T4": 75, "A100": 80, "A10G": 86, "L4": 89}
REFUSED = {"NVIDIA H100 80GB HBM3": 90, "NVIDIA B200": 100}


@pytest.mark.parametrize("name", ACCEPTED)
def test_gpus_the_wheel_has_code_for_are_accepted(name: str) -> None:
    check_gpus([Gpu(0, name, ACCEPTED[name])], CU117_BUILD)


@pytest.mark.parametrize("name", REFUSED)
def test_gpus_of_a_later_major_are_refused_with_what_to_do(name: str) -> None:
    capability = REFUSED[name]
    gpus = [Gpu(0, "Tesla V100-SXM2-16GB", 70), Gpu(1, name, capability)]
    with pytest.raises(ClientError) as raised:
        check_gpus(gpus, CU117_BUILD)
    message = str(raised.value)
    version = f"{capability // 10}.{capability % 10}"
    assert message.startswith(f"GPU 1 ({name}) has compute capability {version}, ")
    assert "machine code for 5.0, 6.0, 7.0, 8.0, 8.6; PTX: none" in message
    working = "ml.p3 (V100, 7.0), ml.g4dn (T4, 7.5), ml.p4d (A100, 8.0), ml.g5 (A10G, 8.6), "
    assert working + "ml.g6 (L4, 8.9)" in message and "ml.p5" not in message
    assert "the CPU image (imgcls:cpu) on a CPU instance" in message


def test_ptx_runs_on_every_later_capability_and_cubins_only_within_their_major() -> None:
    with_ptx = GpuCode(cubins=frozenset({70}), ptx=frozenset({80}))
    assert {c for c in (61, 70, 75, 80, 90, 120) if with_ptx.runs_on(c)} == {70, 75, 80, 90, 120}
    runs = {c for c in (35, 52, 61, 72, 87, 89, 90) if CU117_BUILD.runs_on(c)}
    assert runs == {52, 61, 72, 87, 89}


def _elf_with_fatbin(entries: list[tuple[int, int]]) -> bytes:
    """A minimal 64-bit ELF whose .nv_fatbin holds two fat binaries of `entries` (kind, arch),
    laid out as CUDA's fatbinary.h does: 16-byte header, then 64-byte entry headers + payload."""

    def fatbin(part: list[tuple[int, int]]) -> bytes:
        body = b"".join(
            struct.pack("<HHIQ12xI32x", kind, 0x101, 64, 8, arch) + bytes(8) for kind, arch in part
        )
        return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body

    section = fatbin(entries[:1]) + fatbin(entries[1:])
    names = b"\0.shstrtab\0.nv_fatbin\0"
    names_at, section_at = 64, 64 + len(names)
    table_at = section_at + len(section)
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, table_at, 0, 64, 0, 0, 64, 3, 1)
    )
    table = bytes(64) + b"".join(
        struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 1, 0)
        for name, offset, size in ((1, names_at, len(names)), (11, section_at, len(section)))
    )
    return header + names + section + table


def test_cubins_and_ptx_are_read_from_the_fatbin_section(tmp_path: Path) -> None:
    library = tmp_path / "libfake.so"
    library.write_bytes(_elf_with_fatbin([(2, 70), (2, 86), (1, 80)]))
    assert read_gpu_code(library) == GpuCode(frozenset({70, 86}), frozenset({80}))


def _gpu_library() -> Path:
    """IMGCLS_TEST_LIBMXNET (a GPU build's libmxnet.so), else the installed one if GPU-built."""
    override = os.environ.get("IMGCLS_TEST_LIBMXNET")
    if override:
        return Path(override)
    if read_gpu_code(INSTALLED) == GpuCode():
        pytest.skip(
            f"the installed MXNet is the CPU build ({INSTALLED} has no .nv_fatbin section); "
            "set IMGCLS_TEST_LIBMXNET to a GPU build's libmxnet.so to check one here"
        )
    return INSTALLED


def test_the_gpu_wheel_holds_the_architectures_of_its_build_configuration() -> None:
    assert read_gpu_code(_gpu_library()) == CU117_BUILD


def test_the_real_capability_query_matches_nvidia_smi() -> None:
    if not mx.context.num_gpus():
        pytest.skip("no GPU visible: mx.context.num_gpus() is 0 (CPU build or no GPU here)")
    found = gpu.visible_gpus()
    assert [g.index for g in found] == list(range(mx.context.num_gpus()))
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not on PATH: nothing independent to compare the query with")
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    expected = [round(float(line) * 10) for line in smi.stdout.split()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        expected = [expected[int(i)] for i in visible.split(",")]
    assert [g.capability for g in found] == expected


def test_without_gpus_nothing_is_read_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def unread() -> GpuCode:
        raise AssertionError("the library must not be read when no GPU is visible")

    monkeypatch.setattr(gpu, "installed_gpu_code", unread)
    monkeypatch.setattr(gpu, "visible_gpus", lambda: [])
    check_gpus()


def test_the_cpu_build_has_no_gpu_code_and_sees_no_gpu() -> None:
    if read_gpu_code(INSTALLED) != GpuCode():
        pytest.skip("the installed MXNet is a GPU build")
    assert mx.context.num_gpus() == 0 and gpu.visible_gpus() == []
    check_gpus()


def test_without_nvidia_device_files_gpus_are_counted_without_loading_mxnet() -> None:
    """What a multi-host launcher and the model server's master ask first: MXNet's own count
    here is 0, and imgcls gives it, in every form, without importing MXNet."""
    if gpu.has_gpu_devices():
        pytest.skip("this host has NVIDIA device files: MXNet is asked")
    code = (
        "import sys; from imgcls.gpu import gpu_count_in_child, num_gpus, visible_gpus; "
        "print(num_gpus(), visible_gpus(), 'mxnet' in sys.modules, gpu_count_in_child())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env({})
    )
    assert done.stdout.split() == [str(mx.context.num_gpus()), "[]", "False", "0"], done.stderr


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins: an H100 is visible and the installed library is mxnet-cu117's."""
    monkeypatch.setattr(gpu, "visible_gpus", lambda: [Gpu(0, "NVIDIA H100 80GB HBM3", 90)])
    monkeypatch.setattr(gpu, "installed_gpu_code", lambda: CU117_BUILD)


def test_the_dry_run_refuses_an_unsupported_gpu_before_reading_data(
    make_job, monkeypatch, h100
) -> None:
    job = make_job()
    job.hyperparameters(TINY_HYPERPARAMETERS)
    job.input_data_config({"train": {"ContentType": "application/x-recordio"}})
    (job.data / "train" / "train.rec").parent.mkdir()
    (job.data / "train" / "train.rec").write_bytes(b"never read: not RecordIO")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(job.base))
    assert main(["train", "--dry-run"]) == 1
    assert job.failure.startswith("ClientError: GPU 0 (NVIDIA H100 80GB HBM3) has compute")


def test_the_server_refuses_to_load_onto_an_unsupported_gpu(tmp_path: Path, h100) -> None:
    export_tiny_model(tmp_path / "model")
    app = ServingApp(tmp_path / "model", ServingSettings())
    with pytest.raises(ClientError, match=r"compute capability 9\.0"):
        app.load_model(mx.cpu())
    assert app.predictor is None
