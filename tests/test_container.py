"""The Dockerfile, without a Docker engine: lint, pins, and the layout the image creates.

The layout test copies what the final stage copies into a temporary root, then runs `train` and
`serve` by name through the image's PATH from an unrelated working directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, TINY_HYPERPARAMETERS, Job, balanced_labels

from imgcls.config.environment import DEFAULT_PRETRAINED_DIR
from imgcls.model import pretrained
from imgcls.mxnet_import import CACHE_DIR_ENV
from imgcls.system import child_env

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VENV_BIN = Path(sys.executable).parent


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped; continuation lines stay lines."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    logical = re.split(r"(?<!\\)\n", "\n".join(lines))
    pairs = (line.replace("\\\n", "\n").split(None, 1) for line in logical if line.strip())
    return [(words[0], words[1]) for words in pairs]


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by stage name (the FROM line's `AS` name)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    for instruction, args in _instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            current = stages.setdefault(args.split()[-1], [])
        elif stages:
            current.append((instruction, args))
    return stages


def _args(stage: str, instruction: str) -> list[str]:
    return [args for name, args in _stages()[stage] if name == instruction]


def _env(stage: str) -> dict[str, str]:
    """The ENV assignments of a stage (`ENV A=1 B=2` form)."""
    pairs = (shlex.split(args) for args in _args(stage, "ENV"))
    return dict(item.split("=", 1) for items in pairs for item in items)


def _plain_copies(stage: str) -> list[list[str]]:
    """A stage's COPY instructions from the build context: [source..., destination]."""
    copies = (shlex.split(args) for args in _args(stage, "COPY"))
    return [words for words in copies if not words[0].startswith("--")]


def _hadolint() -> str:
    return str(VENV_BIN / "hadolint") if (VENV_BIN / "hadolint").exists() else "hadolint"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_carries_the_sagemaker_label_port_and_python() -> None:
    runtime = _stages()["runtime"]
    assert ("LABEL", "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true") in runtime
    assert ("EXPOSE", "8080") in runtime
    version = re.search(r"^ARG PYTHON_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M).group(1)
    assert tuple(map(int, version.split("."))) >= (3, 11, 4), "tarfile filter='data'"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.12"
    assert version.startswith("3.11.")


@pytest.mark.parametrize(("variant", "mxnet"), [("base-gpu", "mxnet-cu117"), ("base-cpu", "mxnet")])
def test_dependencies_are_pyproject_pins_with_only_mxnet_swapped(variant, mxnet, tmp_path):
    assert _env(variant)["IMGCLS_MXNET"] == mxnet
    (run,) = _args("deps", "RUN")
    commands = [command.strip() for command in re.split(r";\s*\n", run)]
    assert commands[0].endswith("> requirements.txt")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(commands[:2])],
        cwd=tmp_path,
        env={**os.environ, "VIRTUAL_ENV": sys.prefix, "IMGCLS_MXNET": mxnet},
        check=True,
    )
    expected = [re.sub(r"^mxnet==", f"{mxnet}==", d) for d in PYPROJECT["project"]["dependencies"]]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == expected
    installs = [command for command in commands if "uv pip install" in command]
    assert installs and all("requirements.txt" in part for part in installs)


def test_weights_stage_fills_the_default_pretrained_folder(tmp_path) -> None:
    assert _args("weights", "WORKDIR") == [DEFAULT_PRETRAINED_DIR]
    assert _env("runtime")["IMGCLS_PRETRAINED_DIR"] == DEFAULT_PRETRAINED_DIR
    copy = f"--from=weights {DEFAULT_PRETRAINED_DIR} {DEFAULT_PRETRAINED_DIR}"
    assert copy in _args("runtime", "COPY")
    (files,) = _plain_copies("weights")
    destination = tmp_path / files[-1].lstrip("/")
    destination.mkdir(parents=True)
    for source in files[:-1]:
        shutil.copytree(ROOT / source, destination, dirs_exist_ok=True)
    manifest = subprocess.run(
        [sys.executable, "-S", "-m", "imgcls.model.pretrained", "18", "152"],
        env={"PYTHONPATH": str(destination.parent), "PATH": os.environ["PATH"]},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert manifest.stdout == pretrained.manifest([18, 152])


def test_dockerignore_lets_through_everything_the_dockerfile_copies() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = [s for stage in _stages() for words in _plain_copies(stage) for s in words[:-1]]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert any(path == a or path.startswith(f"{a}/") for a in allowed), source


def _image_layout(root: Path) -> dict[str, str]:
    """Copy what the final stage copies from the context under `root`; the image's env there."""
    for words in _plain_copies("runtime"):
        destination = root / words[-1].lstrip("/")
        for source in words[:-1]:
            if source.endswith("/"):
                shutil.copytree(ROOT / source, destination, dirs_exist_ok=True)
            else:
                destination.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, destination)
    image_path = _env("runtime")["PATH"].replace("$PATH", "").rstrip(":").split(":")
    rooted = [str(root / p.lstrip("/")) for p in image_path if p != "/opt/venv/bin"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PATH"] = ":".join([*rooted, str(VENV_BIN), os.environ["PATH"]])
    return env


def test_train_and_serve_run_by_name_from_any_directory(tmp_path) -> None:
    env = _image_layout(tmp_path / "image")
    job = Job(tmp_path / "ml")
    job.hyperparameters(TINY_HYPERPARAMETERS)
    job.rec_channel("train", balanced_labels(64, 4))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["SAGEMAKER_BASE_DIR"] = str(job.base)
    train = subprocess.run(
        ["train", "--dry-run"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert train.returncode == 0, train.stdout + train.stderr
    assert "Dry run: the configuration is valid." in train.stdout
    cache = tmp_path / "image" / "opt" / "imgcls" / "src" / "imgcls" / "__pycache__"
    assert list(cache.glob("cli.*.pyc")), "train did not import the copied src/"
    serve = subprocess.run(["serve", "--help"], cwd=elsewhere, env=env, capture_output=True)
    assert serve.returncode == 0, serve.stderr


def test_the_image_carries_bytecode_and_a_warm_operator_cache(tmp_path) -> None:
    """Every process of the image imports from bytecode (uv installs none, and the image does
    not let Python write it) and reads MXNet's operator cache that the build made."""
    env = _env("runtime")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    cache = env["IMGCLS_CACHE_DIR"]
    assert cache.startswith("/opt/imgcls/")
    instructions = _stages()["runtime"]
    last_copy = max(i for i, (name, _) in enumerate(instructions) if name == "COPY")
    (run,) = (
        args for i, (name, args) in enumerate(instructions) if name == "RUN" and i > last_copy
    )
    compile_line, warm_line = re.split(r";\s*\n", run, maxsplit=1)
    assert "python -m compileall" in compile_line
    for folder in ("/opt/venv", "/opt/imgcls/src", 'get_path("stdlib")'):
        assert folder in compile_line
    warm = re.search(r"python -c '([^']+)'", warm_line).group(1)
    subprocess.run(
        [sys.executable, "-c", warm], env=child_env({CACHE_DIR_ENV: str(tmp_path)}), check=True
    )
    assert [p.name.startswith("mxnet-operators-") for p in tmp_path.iterdir()] == [True]
