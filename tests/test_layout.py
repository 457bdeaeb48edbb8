"""The layout's rules, checked on the import graph (every module parsed with ``ast``, top-level and function imports).

- no import cycle between modules;
- ``kernels`` imports neither ``audit`` nor ``models``;
- ``models`` imports of ``audit`` only ``audit.errors`` and ``audit.metrics`` (the issue's rule; builds publish a
  staging folder instead of using ``audit.io``'s atomic writes);
- ``audit.report`` imports neither the engines nor the attacks;
- no project import inside a function (only optional extras are imported late);
- ``audit gate`` loads neither the campaign nor the engines.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "kernels", "models")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom | ast.Import, current: str) -> list[str]:
    """Project modules an import statement loads (``from pkg import sub`` names the submodule ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
    base = module
    if node.level:  # relative import
        pkg = current if MODULES[current].name == "__init__.py" else current.rpartition(".")[0]
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{module}" if module else pkg
    if base.split(".")[0] not in PACKAGES:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports() -> list[tuple[str, str, bool, int]]:
    """(importer, imported, inside a function, line) for every project import."""
    out = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(getattr(node, "module", None) or "", node, name):
                    out.append((name, target, id(node) in in_function, node.lineno))
    return out


IMPORTS = _imports()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _, _ in IMPORTS:
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = dst.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in MODULES and target != src and not src.startswith(target + "."):
                graph[src].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_every_package():
    assert {"audit.campaign.run", "audit.config", "kernels.nps", "models.build"} <= set(MODULES)
    assert any(dst == "audit.artifact" for _, dst, _, _ in IMPORTS)


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_kernels_import_neither_audit_nor_models():
    bad = [(s, d, line) for s, d, _, line in IMPORTS if s.startswith("kernels") and d.split(".")[0] in ("audit", "models")]
    assert bad == []


def test_models_use_only_audits_leaf_utilities():
    allowed = ("audit.errors", "audit.metrics")
    bad = [(s, d, line) for s, d, _, line in IMPORTS
           if s.startswith("models") and d.split(".")[0] == "audit" and not d.startswith(allowed)]
    assert bad == []


def test_report_imports_neither_engines_nor_attacks():
    bad = [(s, d, line) for s, d, _, line in IMPORTS
           if s.startswith("audit.report") and d.startswith(("audit.engines", "audit.attacks"))]
    assert bad == []


def test_no_project_import_inside_a_function():
    bad = [f"{s}:{line} imports {d}" for s, d, inside, line in IMPORTS if inside]
    assert bad == []


def test_the_checker_finds_what_it_forbids(tmp_path):
    """The checks above can fail: a planted cycle and a function-level import are seen."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from audit.io import plain\n")
    fn = tree.body[0]
    node = fn.body[0]
    assert _resolve(node.module, node, "audit.gate") == ["audit.io"]


def test_gate_loads_neither_campaign_nor_engines(tmp_path):
    report = ROOT / "tests" / "audit" / "data" / "demo_quick_report.json"
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nmetric = "sar"\nlevel = 10\nmax = 0.5\n')
    probe = (
        "import sys, json\n"
        "from audit.cli import main\n"
        f"code = main(['gate', {str(report)!r}, '--policy', {str(policy)!r}, '--junit', {str(tmp_path / 'j.xml')!r}])\n"
        "print(json.dumps({'code': code, 'modules': sorted(m for m in sys.modules if m.startswith('audit'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    loaded = result["modules"]
    assert "audit.gate" in loaded
    assert not [m for m in loaded if m.startswith(("audit.campaign", "audit.engines"))], loaded


@pytest.mark.parametrize("rule", ["cycle", "function"])
def test_rules_are_not_vacuous(rule):
    """The project has imports of the kinds the rules look at (so an empty result means something)."""
    if rule == "cycle":
        assert sum(len(v) for v in _graph().values()) > 100
    else:
        assert any(not inside for _, _, inside, _ in IMPORTS)
