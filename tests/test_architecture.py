"""The package's shape: no import cycle, TVM behind edgecompile.backend, files small enough to
read, every subpackage installed.

Imports are read from the source (lazy imports inside functions included), so a cycle that
only closes at run time, or a stray ``import tvm`` in a function body, fails here too.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "edgecompile"
# Directories that install inside the package (pyproject's package-dir).
MAPPED = {"edgecompile.models": REPO / "models", "edgecompile.targets": REPO / "targets",
          "edgecompile.records": REPO / "tuning"}
BACKEND = "edgecompile.backend"
MAX_LINES = 500
# A longer file says why in its first lines, e.g. "# long file: one rule table, kept together".
LONG_FILE_NOTE = re.compile(r"#\s*long file:\s*\S")


def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for edgecompile and the directories it installs."""
    modules: dict[str, Path] = {}
    roots = {PACKAGE: REPO / "edgecompile", **MAPPED}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [] if rel.name == "__init__" and len(rel.parts) == 1 else list(rel.parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix, *parts])] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_relative(module: str, path: Path, level: int, name: str | None) -> str:
    base = module.split(".")
    base = base if _is_package(path) else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, at any depth of its code."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (_resolve_relative(module, path, node.level, node.module) if node.level
                        else node.module or "")
                # `from pkg import sub` imports the submodule; `from mod import name`, the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                while t and t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != module:
                    edges[module].add(t)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(edges, WHITE)
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = GREY
        stack.append(m)
        for n in sorted(edges[m]):
            if colour[n] == GREY:
                return stack[stack.index(n):] + [n]
            if colour[n] == WHITE:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        colour[m] = BLACK
        return None

    for m in sorted(edges):
        if colour[m] == WHITE:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_walk_sees_lazy_and_relative_imports():
    # The walk must see what it is meant to police, or the tests below pass on nothing.
    edges = import_edges(package_modules())
    assert "edgecompile.tune.records" in edges["edgecompile.pipeline.build"]
    assert "edgecompile.models._registry" in edges["edgecompile.models.fasternet"]  # relative
    assert "edgecompile.pipeline.build" in edges["edgecompile.tune.run"]  # inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_edges(package_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_project_import_names_something_that_exists():
    """`from edgecompile.x import y` where y is gone fails only when that line runs; for a lazy
    import inside a function that can be long after a move. Check every one now."""
    modules = package_modules()
    missing = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = (_resolve_relative(module, path, node.level, node.module) if node.level
                    else node.module or "")
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            if base not in modules:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: no module {base}")
                continue
            target = importlib.import_module(base)
            for alias in node.names:
                if not hasattr(target, alias.name) and f"{base}.{alias.name}" not in modules:
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {base} has no {alias.name}")
    assert not missing, "\n".join(missing)


def test_every_project_module_attribute_used_exists():
    """`emu.tracker_summary(...)` on a module that no longer has it fails only when that line
    runs. For every project module imported under a name (package, scripts, tests), each
    attribute read from that name must exist."""
    files = [p for d in ("edgecompile", "models", "targets", "scripts", "tests")
             for p in sorted((REPO / d).rglob("*.py"))]
    modules = package_modules()
    missing = []
    for path in files:
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom) and not node.level
                    and (node.module or "").startswith(PACKAGE)):
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                aliases |= {a.asname: a.name for a in node.names
                            if a.asname and a.name.startswith(PACKAGE + ".")}
        for node in ast.walk(tree):
            used = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                used = (node.value.id, node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "setattr" and len(node.args) >= 2
                  and isinstance(node.args[0], ast.Name)
                  and isinstance(node.args[1], ast.Constant)):  # monkeypatch.setattr(mod, "name", ...)
                used = (node.args[0].id, node.args[1].value)
            if (used and used[0] in aliases
                    and not hasattr(importlib.import_module(aliases[used[0]]), used[1])):
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}: "
                               f"{aliases[used[0]]} has no {used[1]}")
    assert not missing, "\n".join(missing)


# Lowest first: a group may import its own modules and those of the groups below it. The
# records store sits below the pipeline (a build looks records up); the tuning run above it
# (it tunes the graph a build would compile).
LAYERS = [
    {"edgecompile", "edgecompile.errors", "edgecompile.paths", "edgecompile.progress",
     "edgecompile.models", "edgecompile.targets", "edgecompile.records"},
    {"edgecompile.devices"},
    {"edgecompile.backend"},
    {"edgecompile.tune.records", "edgecompile.tune.environ", "edgecompile.tune.likeness"},
    {"edgecompile.pipeline"},
    {"edgecompile.listing", "edgecompile.tune.run", "edgecompile.tune.in_context"},
    {"edgecompile.measure"},
    {"edgecompile.report"},  # reads results; imports nothing that measures
    {"edgecompile.cli", "edgecompile.__main__"},
]


def _layer(module: str) -> int:
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if module == prefix or (prefix != PACKAGE and module.startswith(prefix + ".")):
                if best is None or len(prefix) > len(best[1]):
                    best = (i, prefix)
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def test_packages_depend_downwards():
    upward = [f"{m} -> {n}" for m, ns in import_edges(package_modules()).items() for n in ns
              if _layer(n) > _layer(m)]
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def _imports_tvm(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        if any(n.split(".")[0] in ("tvm", "tvm_ffi") for n in names):
            lines.append(node.lineno)
    return lines


def test_tvm_is_imported_in_the_backend_only():
    outside = {f"{path.relative_to(REPO)}:{line}"
               for module, path in package_modules().items()
               if not (module == BACKEND or module.startswith(BACKEND + "."))
               for line in _imports_tvm(path)}
    assert not outside, f"import tvm outside {BACKEND}: {sorted(outside)}"
    assert _imports_tvm(REPO / "edgecompile" / "backend" / "core.py"), "the check finds nothing"


def test_no_long_file_without_a_reason():
    too_long = []
    for d in ("edgecompile", "models", "targets", "scripts", "tests"):
        for path in sorted((REPO / d).rglob("*.py")):
            lines = path.read_text().splitlines()
            if len(lines) > MAX_LINES and not any(LONG_FILE_NOTE.search(x) for x in lines[:5]):
                too_long.append(f"{path.relative_to(REPO)} ({len(lines)} lines)")
    assert not too_long, f"over {MAX_LINES} lines without '# long file: <why>' at the top: {too_long}"


def test_every_subpackage_is_installed():
    """pyproject.toml lists packages explicitly (models/ and targets/ install inside the
    package): a subpackage missing there is missing from the wheel while editable installs
    still work."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {m for m, p in package_modules().items() if _is_package(p)}
    assert found - listed == set(), f"not in pyproject.toml's packages: {sorted(found - listed)}"
