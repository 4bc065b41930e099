"""The package layout holds: no import cycle between sadcl's modules, `import sadcl` stays light, and the top level is
a short list (the rest lives in subpackages named after their concept; docs/design.md's Layout has the picture)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "sadcl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str], *, inner: bool) -> set[str]:
    """The sadcl modules ``path`` imports at module level, and inside functions too when ``inner``.

    ``from sadcl.x import y`` counts as an import of ``sadcl.x.y`` when y is a module, else of ``sadcl.x``. The parent
    packages Python initialises on the way are not counted: a package importing its own submodules is not a cycle.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree) if inner else tree.body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph(*, inner: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(files), inner=inner) for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    # Imports inside functions count: a cycle through a lazy import still ties the two modules together.
    for inner in (False, True):
        graph = _graph(inner=inner)
        assert graph["sadcl.training.engine"], "the import walk found nothing"
        assert _cycles(graph) == [], f"import cycles ({'every import' if inner else 'module level'})"


def test_import_sadcl_is_light() -> None:
    code = (
        "import json, sys; import sadcl; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('matplotlib', 'onnx', 'onnxruntime', 'onnxscript', 'fastapi', 'uvicorn', 'starlette', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_top_level_is_short() -> None:
    # __init__.py and __main__.py are the package's own entry points, not concepts.
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(modules) <= 10, modules


# docs/design.md's picture of the layers, top (0) to bottom: a module imports from its own layer and those above it.
LAYERS = [
    ["sadcl", "sadcl.config", "sadcl.config_parse", "sadcl.io", "sadcl.escape", "sadcl.progress", "sadcl.metrics"]
    + ["sadcl.sources", "sadcl.distributed", "sadcl.checkpoint"],
    ["sadcl.data"],
    ["sadcl.models", "sadcl.losses"],
    ["sadcl.inference.postprocess", "sadcl.inference.thresholds"],
    ["sadcl.ship"],
    ["sadcl.inference"],
    ["sadcl.training"],
    ["sadcl.report", "sadcl.ablate"],
    ["sadcl.cli", "sadcl.__main__"],
]


def _layer(module: str) -> int:
    """The layer of the longest prefix of ``module`` that LAYERS names."""
    best = max(
        ((len(p), i) for i, names in enumerate(LAYERS) for p in names if module == p or module.startswith(p + ".")),
        default=None,
    )
    assert best is not None, f"{module} is in no layer of LAYERS (and docs/design.md's picture)"
    return best[1]


def test_imports_point_up_the_layers() -> None:
    upward = sorted(
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in _graph(inner=True).items()
        for t in targets
        if _layer(t) > _layer(m)
    )
    assert not upward, "\n".join(upward)
