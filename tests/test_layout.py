"""The package's shape, checked so it stays true: data flows one way through the stage subpackages,
no module imports its way into a cycle, and no function grows past one screen.

Static (``ast``), so it costs milliseconds and needs none of the optional extras."""
from __future__ import annotations

import ast
from pathlib import Path


PKG = Path(__file__).resolve().parents[1] / "zhgpt"

# Upstream to downstream. A module may import its own layer and the layers before it, never a later one.
LAYERS = [
    {"zhgpt", "zhgpt.errors", "zhgpt.config", "zhgpt.core"},
    {"zhgpt.data"},
    {"zhgpt.model"},
    {"zhgpt.training"},
    {"zhgpt.inference"},
    {"zhgpt.report"},
    {"zhgpt.apps"},
    {"zhgpt.pipeline", "zhgpt.cli", "zhgpt.__main__"},
]
STAGES = ("data", "model", "training", "inference", "report", "apps")
MAX_FUNCTION_LINES = 150


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(mod: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(mod == top or mod.startswith(top + ".") for top in layer if top != "zhgpt"):
            return i
    if mod == "zhgpt":
        return 0
    raise AssertionError(f"{mod} is in no layer: add its subpackage to LAYERS in {__file__}")


def imports_of(mod: str) -> dict[str, int]:
    """zhgpt modules imported by ``mod`` (at module level or inside functions) -> first line number."""
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
    is_pkg = MODULES[mod].name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:       # relative import: resolve against this module's package
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            # `from zhgpt.x import y` imports zhgpt.x.y when y is a submodule, else a name in zhgpt.x
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            if name.split(".")[0] == "zhgpt" and name != mod:
                while name not in MODULES and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.setdefault(name, node.lineno)
    return found


GRAPH = {mod: imports_of(mod) for mod in MODULES}


def test_stage_subpackages_exist():
    for stage in STAGES:
        assert (PKG / stage / "__init__.py").is_file(), f"zhgpt/{stage}/ should be a subpackage"


def upstream_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    return [f"{a}:{line} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
            for a, deps in graph.items() for b, line in deps.items() if layer_of(b) > layer_of(a)]


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """Depth-first search over every import edge, lazy ones included: a cycle hidden inside a function
    is still a cycle in the design. Returns the first cycle found, or None."""
    state: dict[str, int] = {}      # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in graph.get(m, {}):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (found := visit(m)):
            return found
    return None


def test_imports_only_point_upstream():
    bad = upstream_violations(GRAPH)
    assert not bad, "upstream modules import downstream ones:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_look_for():
    """The checkers themselves, on made-up graphs: a downstream import and a two-module cycle."""
    assert upstream_violations({"zhgpt.training.train": {"zhgpt.report.report": 7}}) == [
        "zhgpt.training.train:7 (layer 3) imports zhgpt.report.report (layer 5)"]
    assert upstream_violations({"zhgpt.report.report": {"zhgpt.training.runs": 3}}) == []
    assert find_cycle({"zhgpt.a": {"zhgpt.b": 1}, "zhgpt.b": {"zhgpt.a": 2}}) == ["zhgpt.a", "zhgpt.b", "zhgpt.a"]
    assert find_cycle({"zhgpt.a": {"zhgpt.b": 1}, "zhgpt.b": {}}) is None
    # imports inside functions count: checkpoint loading HF folders lazily was a real cycle once
    assert "zhgpt.model.hf" in GRAPH["zhgpt.training.runs"]


def test_functions_fit_on_a_screen():
    long = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.name} has {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
