"""The package's shape: no import cycle, no oversized module, the typed Hyperparameters in step
with the table."""

import ast
from pathlib import Path

import pytest

from imgcls.config.hyperparameters import PARAMS, Hyperparameters
from imgcls.config.hyperparameters.fields import check_fields

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "imgcls"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """imgcls modules `path` imports anywhere in it (inside functions too): a lazy import is
    still a dependency."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(path, set(known)) - {name} for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules that import each other in a ring, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_ring() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_is_read() -> None:
    graph = import_graph()
    assert "imgcls.config.hyperparameters.table" in graph["imgcls.model.networks"]
    assert "imgcls.training.session" in graph["imgcls.training.job"]


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_over_the_size_limit(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_hyperparameters_fields_follow_the_table() -> None:
    check_fields()
    assert Hyperparameters.__dataclass_params__.frozen
    assert list(Hyperparameters.__dataclass_fields__) == [p.name for p in PARAMS]


def test_the_fields_check_catches_a_drift(monkeypatch) -> None:
    from imgcls.config.hyperparameters import fields

    renamed = (*PARAMS[:-1], type(PARAMS[-1])(**{**vars(PARAMS[-1]), "name": "weight_decays"}))
    monkeypatch.setattr(fields, "PARAMS", renamed)
    with pytest.raises(TypeError, match="differ from PARAMS"):
        check_fields()
    retyped = (*PARAMS[:-1], type(PARAMS[-1])(**{**vars(PARAMS[-1]), "type": bytes}))
    monkeypatch.setattr(fields, "PARAMS", retyped)
    with pytest.raises(TypeError, match="wrong type"):
        check_fields()
