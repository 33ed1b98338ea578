"""The package's structure: imports run one way, each rule has one home.

The import graph is read from the source (``ast``), function-level imports included, so a
cycle cannot hide inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "thaldask"
MAX_LINES = 600
# modules allowed to import thaldask modules inside functions: the command-line layer,
# which keeps `thaldask --help` from importing the stages
LAZY_OK = ("thaldask.commands.",)
# a thaldask module that imports one of these at its top is heavy: importing it inside a
# function is a lazy import of that package, not a hidden dependency
HEAVY = ("torch",)


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str, base: str, level: int, is_pkg: bool) -> str:
    if level:
        pkg = base.split(".") if is_pkg else base.split(".")[:-1]
        pkg = pkg[: len(pkg) - (level - 1)]
        name = ".".join(pkg + ([name] if name else []))
    return name


def _imports(mod: str, path: Path):
    """(target module, lineno, inside a function, imported names) for each thaldask import."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    func_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    func_lines.add(sub.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("thaldask"):
                    yield a.name, node.lineno, node.lineno in func_lines, []
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", mod, node.level, is_pkg)
            if not target.startswith("thaldask"):
                continue
            names = [a.name for a in node.names]
            # `from pkg import submodule` depends on the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for s in subs:
                yield s, node.lineno, node.lineno in func_lines, []
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest or not subs:
                yield target, node.lineno, node.lineno in func_lines, rest


def _graph():
    g = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for target, _, _, _ in _imports(m, p):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != m:
                g[m].add(target)
    return g


def _cycles(g) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _parents(mod: str) -> set[str]:
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_import_graph_has_no_cycle():
    g = _graph()
    # a package's __init__ importing its own submodules is not a cycle of the code
    for m in g:
        g[m] = {t for t in g[m] if not (m in _parents(t) and MODULES[m].name == "__init__.py")}
        g[m] -= _parents(m)
    assert _cycles(g) == []


def test_cycle_detector_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]


def _imports_heavy_at_top(path: Path) -> bool:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in HEAVY for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in HEAVY:
            return True
    return False


def test_no_thaldask_import_inside_functions_outside_the_cli_layer():
    hidden = []
    heavy = {m for m, p in MODULES.items() if _imports_heavy_at_top(p)}
    assert "thaldask.thalnet.inference" in heavy  # the rule sees torch where it is
    for m, p in MODULES.items():
        if m.startswith(LAZY_OK):
            continue
        for target, line, in_func, _ in _imports(m, p):
            if in_func and target not in heavy:
                hidden.append(f"{p.relative_to(ROOT.parent)}:{line} imports {target}")
    assert hidden == []


def test_no_private_name_imported_across_modules():
    private = []
    for m, p in MODULES.items():
        for target, line, _, names in _imports(m, p):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    private.append(f"{p.relative_to(ROOT.parent)}:{line} imports {n} from {target}")
    assert private == []


def test_no_module_over_600_lines_without_a_stated_reason():
    long = []
    for m, p in MODULES.items():
        text = p.read_text()
        n = text.count("\n")
        if n > MAX_LINES and "Longer than 600 lines because" not in text[:3000]:
            long.append(f"{p.relative_to(ROOT.parent)}: {n} lines")
    assert long == []


def test_cli_import_is_light():
    code = (
        "import sys, thaldask.cli; "
        "print(','.join(sorted(m for m in ('torch', 'dask', 'distributed', 'xarray', 'zarr', "
        "'matplotlib') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_testing_helpers_import_neither_torch_nor_pytest():
    code = (
        "import sys, thaldask.testing; "
        "print(','.join(m for m in ('torch', 'pytest') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_registers_every_command_module():
    from thaldask import cli

    names = set(cli.main.commands)
    for module in cli.COMMAND_MODULES:
        for cmd in module.COMMANDS:
            assert cmd.name in names
    on_disk = {p.stem for p in (ROOT / "commands").glob("*.py") if p.stem != "__init__"}
    registered = {m.__name__.rsplit(".", 1)[1] for m in cli.COMMAND_MODULES}
    assert on_disk == registered


def test_config_keys_declared_once_with_type_and_description():
    from thaldask import config

    flat = config.flat_keys(config.defaults())
    described = config.describe()
    assert set(flat) == set(described)
    for key, d in described.items():
        assert d.get("type"), key
        assert d.get("description"), key


def test_every_config_key_read_by_the_code_is_declared():
    from thaldask import config

    described = config.describe()
    used = set()
    for p in MODULES.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("config", "_config")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                used.add(f"thaldask.{node.args[0].value}")
    assert used, "no config reads found: the scan is broken"
    assert sorted(used - set(described)) == []
    # and no declared key is dead
    assert sorted(set(described) - used) == []


@pytest.mark.parametrize("key", ["store.compressor", "metrics.scans-per-task", "progress.interval"])
def test_config_get_returns_the_declared_default(key):
    from thaldask import config

    assert config.get(key) == config.describe()[f"thaldask.{key}"]["default"]


@pytest.mark.parametrize(
    "module",
    [m for m, p in MODULES.items() if not _imports_heavy_at_top(p) and ">>>" in p.read_text()],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{module}: {result.failed} of {result.attempted} examples failed"
