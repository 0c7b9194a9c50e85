"""Importing MXNet in about half its time: the collector paused, its operator functions cached.

MXNet's import writes the Python source of a function for every operator of libmxnet.so
(2,334 of them, for mx.nd, mx.sym, mx.np, mx.npx and their submodules) and compiles each with
`exec`: about 1 s of a 2.1 s import on this 2-core machine. MXNet has no cache for that, so
imgcls keeps one: each (operator, function name) -> (compiled code, docstring), as MXNet's own
generators (`_generate_ndarray_function_code`, `_generate_symbol_function_code`) return them,
in a marshal file named after the exact libmxnet.so, MXNet sources and Python that made it (as
a .pyc is), under IMGCLS_CACHE_DIR (default ~/.cache/imgcls). MXNet's own code still makes
and registers every function; only the generation and compilation of their code is skipped.
Each function's code holds its operator's handle, an address that differs from process to
process: the cache keeps the code with the handle it was made with, and puts the current one
in its place (a constant of the code object) when it is read.
A missing, stale or unreadable cache is rebuilt; a cache folder that cannot be written is
left alone (the import then costs what it always did).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import marshal
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, ModuleType

from imgcls.system import atomic_write_bytes

CACHE_DIR_ENV = "IMGCLS_CACHE_DIR"
# MXNet's modules whose make_op_func builds the operator functions, and their code generator.
GENERATORS = {
    "mxnet.ndarray.register": "_generate_ndarray_function_code",
    "mxnet.symbol.register": "_generate_symbol_function_code",
}
# The files the generated code depends on, relative to MXNet's package folder.
SOURCES = ("libmxnet.so", "base.py", "ndarray/register.py", "symbol/register.py")
FORMAT = 1  # of the entries below: raise it when they change
Generated = tuple[CodeType, str, int]  # (code object, docstring, the operator handle in it)


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """IMGCLS_CACHE_DIR, else $XDG_CACHE_HOME/imgcls or ~/.cache/imgcls (None: no home)."""
    if environ.get(CACHE_DIR_ENV):
        return Path(environ[CACHE_DIR_ENV])
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "imgcls"
    try:
        return Path.home() / ".cache" / "imgcls"
    except RuntimeError:
        return None


def cache_key(package: Path, library: str | None = None) -> str:
    """A digest of this Python and of each file the operators' code comes from (size and
    modification time, as a .pyc records its source): another MXNet is another file."""
    digest = hashlib.sha256(importlib.util.MAGIC_NUMBER + sys.implementation.cache_tag.encode())
    digest.update(f"format {FORMAT}\0".encode())
    files = [package / name for name in SOURCES]
    if library:  # MXNet loads MXNET_LIBRARY_PATH instead of its own libmxnet.so
        files[0] = Path(library)
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


def cache_file(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where this MXNet's operator cache lives, or None when MXNet or a cache folder is missing."""
    folder = cache_dir(environ)
    spec = importlib.util.find_spec("mxnet")
    if folder is None or spec is None or not spec.submodule_search_locations:
        return None
    try:
        key = cache_key(Path(spec.submodule_search_locations[0]), environ.get("MXNET_LIBRARY_PATH"))
    except OSError:
        return None
    return folder / f"mxnet-operators-{key}.marshal"


def is_int(constant: object, value: int) -> bool:
    return type(constant) is int and constant == value


def count_constant(code: CodeType, value: int) -> int:
    """How often the int `value` is a constant of `code` or of the code nested in it."""
    nested = sum(count_constant(c, value) for c in code.co_consts if isinstance(c, CodeType))
    return nested + sum(is_int(c, value) for c in code.co_consts)


def with_constant(code: CodeType, old: int, new: int) -> CodeType:
    """`code` with its int constant `old` (at any depth) replaced by `new`."""

    def replaced(c: object) -> object:
        if isinstance(c, CodeType):
            return with_constant(c, old, new)
        return new if is_int(c, old) else c

    return code.replace(co_consts=tuple(replaced(c) for c in code.co_consts))


@dataclass
class OperatorCache:
    """The generated code of MXNet's operator functions, read from and written to `path`."""

    path: Path | None
    entries: dict[tuple, Generated] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    active: bool = True

    @classmethod
    def load(cls, path: Path | None) -> OperatorCache:
        """The cache in `path`; empty when there is none or it does not read as one."""
        try:
            entries = marshal.loads(path.read_bytes()) if path else {}
        except (OSError, EOFError, ValueError, TypeError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    def save(self) -> None:
        """Write the cache when this import generated code it lacked; never fails the import."""
        if self.path is None or not self.misses:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, marshal.dumps(self.entries))
        except OSError:
            pass

    def cached(self, module: str, generate: Callable) -> Callable:
        """MXNet's code generator `generate` (of `module`), returning compiled code, cached."""

        def generate_cached(handle, op_name: str, func_name: str, signature_only: bool = False):
            key = (module, op_name, func_name, signature_only)
            entry = self.entries.get(key)
            if isinstance(entry, tuple) and [type(v) for v in entry] == [CodeType, str, int]:
                self.hits += 1
                code, doc, made_with = entry
                return with_constant(code, made_with, handle.value), doc
            self.misses += 1
            source, doc = generate(handle, op_name, func_name, signature_only)
            code = compile(source, "<string>", "exec", dont_inherit=True)
            if count_constant(code, handle.value) == 1:
                self.entries[key] = (code, doc, handle.value)
            return code, doc

        return generate_cached

    @contextmanager
    def generating(self, make_op_func: Callable) -> Iterator[None]:
        """While MXNet registers operators with `make_op_func`, its generator reads the cache."""
        module = sys.modules.get(make_op_func.__module__)
        name = GENERATORS.get(make_op_func.__module__)
        if not self.active or module is None or not hasattr(module, name or ""):
            yield
            return
        generate = getattr(module, name)
        setattr(module, name, self.cached(make_op_func.__module__, generate))
        try:
            yield
        finally:
            setattr(module, name, generate)

    def wrap(self, init_op_module: Callable) -> Callable:
        """MXNet's `_init_op_module` or `_init_np_op_module`, registering through the cache."""
        signature = inspect.signature(init_op_module)

        def init_with_cache(*args, **kwargs):
            make_op_func = signature.bind(*args, **kwargs).arguments["make_op_func"]
            with self.generating(make_op_func):
                return init_op_module(*args, **kwargs)

        return init_with_cache


class _BaseModuleHook(importlib.abc.MetaPathFinder):
    """Wraps mxnet.base's two registration functions as soon as mxnet.base has run, before the
    modules that register operators import them."""

    def __init__(self, cache: OperatorCache) -> None:
        self.cache = cache

    def find_spec(self, fullname: str, path, target: ModuleType | None = None):
        if fullname != "mxnet.base":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module
        cache = self.cache

        def exec_module(module: ModuleType) -> None:
            load(module)
            for name in ("_init_op_module", "_init_np_op_module"):
                if hasattr(module, name):
                    setattr(module, name, cache.wrap(getattr(module, name)))

        spec.loader.exec_module = exec_module  # this spec's own loader object
        return spec


def import_mxnet() -> OperatorCache | None:
    """Import MXNet (once) through the operator cache, with the cyclic garbage collector paused,
    then freeze what it made. Returns the cache used (its hits and misses), None if MXNet was
    already imported.

    MXNet's import builds hundreds of thousands of objects that live as long as the process.
    The collections they set off took 0.35 s of a 3.4 s import on this 2-core machine (medians
    of 5); frozen (gc.freeze), later collections skip them.
    """
    if "mxnet" in sys.modules:
        return None
    cache = OperatorCache.load(cache_file())
    hook = _BaseModuleHook(cache)
    enabled = gc.isenabled()
    gc.disable()
    sys.meta_path.insert(0, hook)
    try:
        import mxnet  # noqa: F401
    finally:
        sys.meta_path.remove(hook)
        cache.active = False  # operators a library registers later are generated as usual
        gc.freeze()
        if enabled:
            gc.enable()
    cache.save()
    return cache
