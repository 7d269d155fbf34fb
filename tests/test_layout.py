"""The layout shows the architecture: no import cycles, a model that never touches a store, a
library that never imports the operator surface or the lab, and a light ``import tracer_wrap``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tracer_wrap

PACKAGE = Path(tracer_wrap.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports when it is imported (module level, outside
    ``if TYPE_CHECKING:``), resolved to their dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                if base.startswith("tracer_wrap"):
                    for alias in node.names:
                        candidate = f"{base}.{alias.name}"
                        found.add(candidate if _is_module(candidate) else base)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("tracer_wrap"))

    visit(tree.body)
    return {m for m in found if m != name}


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): runtime_imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles() -> None:
    edges = graph()
    # A package imports its parent packages' __init__ implicitly; only explicit edges count.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                strongconnect(w)
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert cycles == []


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_model_never_touches_a_store_and_the_library_never_imports_ops_or_lab() -> None:
    for module, imports in graph().items():
        if within(module, "tracer_wrap.model"):
            forbidden = [m for m in imports if within(
                m, "tracer_wrap.store", "tracer_wrap.engine", "tracer_wrap.ops", "tracer_wrap.lab")]
            assert not forbidden, module
        if not within(module, "tracer_wrap.ops", "tracer_wrap.lab"):
            surface = [m for m in imports if within(m, "tracer_wrap.ops", "tracer_wrap.lab")]
            assert not surface, module


def test_import_tracer_wrap_loads_neither_the_cli_nor_the_sdks() -> None:
    code = ("import sys, tracer_wrap; heavy = ['typer', 'rich', 'openai', 'anthropic', "
            "'starlette', 'sklearn', 'scipy', 'torch', 'sentence_transformers']; "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_top_level_exports_what_the_readme_uses() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    for name in ("traced_classifier", "wrap_openai", "wrap_anthropic", "autolog", "savings",
                 "refit_after_traces", "refit_after_delay", "rollback", "pin", "unpin",
                 "redact_pii", "Store", "open_store", "TracerWrapError", "ConfigError",
                 "TaskOptions", "Price"):
        assert name in tracer_wrap.__all__, name
        assert getattr(tracer_wrap, name) is not None
    assert not [n for n in tracer_wrap.__all__ if n.startswith("_")]
    for used in ("traced_classifier", "wrap_openai", "autolog"):
        assert used in readme
