"""MXNet's import through imgcls's operator cache, against MXNet's own import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgcls.mxnet_import import CACHE_DIR_ENV, SOURCES, OperatorCache, cache_dir, cache_key
from imgcls.system import child_env

# Every function MXNet generated for an operator (compiled from "<string>"), in every module it
# registered it in, digested with its name, module, docstring, defaults and code.
OPERATORS_DIGEST = """
import hashlib, json, sys, types
if sys.argv[1] == "mxnet":
    cache = None
else:
    from imgcls.mxnet_import import import_mxnet
    cache = import_mxnet()
import mxnet

import ctypes
from mxnet.base import _LIB, OpHandle, c_str, check_call, py_str

names, count = ctypes.POINTER(ctypes.c_char_p)(), ctypes.c_uint()
check_call(_LIB.MXListAllOpNames(ctypes.byref(count), ctypes.byref(names)))
operator_of = {}  # this process's operator handles (addresses) -> operator names
for i in range(count.value):
    handle = OpHandle()
    check_call(_LIB.NNGetOpHandle(c_str(py_str(names[i])), ctypes.byref(handle)))
    operator_of[handle.value] = py_str(names[i])

def constant(c):
    if isinstance(c, types.CodeType):
        return code_fields(c)
    return f"operator {operator_of[c]}" if type(c) is int and c in operator_of else repr(c)

def code_fields(code):
    consts = [constant(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, code.co_names, code.co_varnames, code.co_flags,
            code.co_argcount, code.co_kwonlyargcount, code.co_posonlyargcount, code.co_filename,
            code.co_name, code.co_firstlineno, code.co_freevars, code.co_cellvars]

rows = []
for name, module in sorted(sys.modules.items()):
    if not name.startswith("mxnet") or module is None:
        continue
    for attr, f in sorted(vars(module).items()):
        if isinstance(f, types.FunctionType) and f.__code__.co_filename == "<string>":
            rows.append([name, attr, f.__name__, f.__qualname__, f.__module__, f.__doc__,
                         repr(f.__defaults__), repr(f.__kwdefaults__),
                         f.__globals__["__name__"], code_fields(f.__code__)])
x = mxnet.nd.array([[-1.0, 2.0]])
y = mxnet.sym.var("y")
computed = [mxnet.nd.relu(x).asnumpy().tolist(), mxnet.np.add(x.as_np_ndarray(), 1).tolist(),
            mxnet.sym.relu(y).eval(y=x)[0].asnumpy().tolist()]
assert computed == [[[0.0, 2.0]], [[0.0, 3.0]], [[0.0, 2.0]]], computed
digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
counts = [cache.hits, cache.misses] if cache else None
print(json.dumps({"functions": len(rows), "digest": digest, "cache": counts}))
"""


def operators(how: str, cache: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", OPERATORS_DIGEST, how],
        env=child_env({CACHE_DIR_ENV: str(cache)}),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_operator_functions_equal_mxnets_own_import_cold_warm_and_after_a_corrupt_cache(
    tmp_path,
) -> None:
    reference = operators("mxnet", tmp_path)
    assert reference["functions"] > 3000 and not list(tmp_path.iterdir())

    cold = operators("imgcls", tmp_path)
    (written,) = tmp_path.iterdir()
    warm = operators("imgcls", tmp_path)
    assert cold["cache"][1] > 2000  # generated and compiled, then written
    assert warm["cache"] == [sum(cold["cache"]), 0]  # every operator read from the file
    for run in (cold, warm):
        assert (run["functions"], run["digest"]) == (reference["functions"], reference["digest"])

    written.write_bytes(written.read_bytes()[:1000])  # cut short, as by a full disk
    corrupt = operators("imgcls", tmp_path)
    assert corrupt["cache"][1] == cold["cache"][1]
    assert corrupt["digest"] == reference["digest"]
    assert operators("imgcls", tmp_path)["cache"][1] == 0  # rewritten whole


def test_the_cache_is_named_after_the_exact_mxnet_sources_and_library(tmp_path) -> None:
    package = tmp_path / "mxnet"
    for name in SOURCES:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_bytes(b"x")
    key = cache_key(package)
    assert cache_key(package) == key
    for name in SOURCES:
        stat = (package / name).stat()
        os.utime(package / name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
        assert cache_key(package) != key, name
        key = cache_key(package)
    other = tmp_path / "other-libmxnet.so"
    other.write_bytes(b"x")
    assert cache_key(package, str(other)) != key  # MXNET_LIBRARY_PATH is the library loaded


def test_the_cache_folder_follows_the_environment(tmp_path) -> None:
    assert cache_dir({CACHE_DIR_ENV: str(tmp_path)}) == tmp_path
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "imgcls"
    assert cache_dir({}) == Path.home() / ".cache" / "imgcls"


def generated_handle(code) -> int:
    """The handle the generated `def f(): return invoke(<handle>)` passes."""
    local: dict = {}
    exec(code, {"invoke": lambda handle: handle}, local)
    return local["f"]()


@pytest.mark.parametrize("where", ["a file", "no folder"])
def test_cached_code_gets_this_process_handle_and_an_unwritable_cache_is_left_alone(
    tmp_path, where
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    cache = OperatorCache.load(blocker / "cache.marshal" if where == "a file" else None)
    assert cache.entries == {}
    made = []

    def generate(handle, op_name, func_name, signature_only=False):
        made.append(op_name)
        return f"def {func_name}():\n    return invoke({handle.value})", f"{op_name} doc"

    cached = cache.cached("m", generate)
    code, doc = cached(SimpleNamespace(value=94277177047360), "op", "f")
    assert (generated_handle(code), doc, made) == (94277177047360, "op doc", ["op"])
    code, doc = cached(SimpleNamespace(value=94874516253488), "op", "f")  # another process's
    assert (generated_handle(code), doc, made) == (94874516253488, "op doc", ["op"])
    assert (cache.hits, cache.misses) == (1, 1)
    cache.save()  # the folder is a file, or there is none: nothing written, nothing raised
    assert blocker.read_text() == ""


IMPORT_PROBE = """
import gc, sys
from imgcls.mxnet_import import import_mxnet
gc.disable() if sys.argv[1] == "off" else None
before = gc.get_freeze_count()
import_mxnet()
frozen = gc.get_freeze_count()
import_mxnet()
again = gc.get_freeze_count() - frozen
print(f"{'mxnet' in sys.modules} {gc.isenabled()} {frozen - before} {again}")
"""


@pytest.mark.parametrize("collector", ["on", "off"])
def test_mxnet_is_imported_once_its_objects_frozen_and_the_collector_left_as_it_was(
    collector,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, collector],
        env=child_env({}),
        capture_output=True,
        text=True,
        check=True,
    )
    imported, enabled, frozen, frozen_again = done.stdout.split()
    assert imported == "True" and enabled == str(collector == "on")
    # MXNet's operator functions and the rest of its import: far more than a few objects.
    assert int(frozen) > 100_000, frozen
    assert frozen_again == "0"  # a second call imports nothing and freezes nothing
