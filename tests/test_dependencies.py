"""Every package the project imports is declared, pinned and installed in its own environment.

A fresh machine once failed the README's test command because scikit-learn was imported by the
digits script and declared nowhere: the developers' machine had it installed by hand, so CI
(which runs on that machine) passed. These tests fail on exactly that:

- an import anywhere in the project (lazy imports inside functions included) whose distribution
  pyproject.toml does not declare, in its dependencies or in the extras the setup installs;
- a declared distribution that constraints.txt does not pin;
- a module of the package or a script that does not import in this environment;
- a test run outside an isolated environment, where the machine's own site-packages could stand
  in for a missing install step.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import pkgutil
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Source trees whose imports must be declared; models/ and targets/ install inside the package.
SOURCE_DIRS = ["edgecompile", "models", "targets", "scripts", "tests"]
SETUP_EXTRAS = "dev"  # scripts/setup.sh installs `-e .[dev]`


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement_name(req: str) -> str:
    return _normalise(re.match(r"[A-Za-z0-9_.\-]+", req.strip()).group(0))


def declared_distributions() -> set[str]:
    """The distributions `pip install -e .[dev]` asks for: dependencies plus the dev extra,
    following self-references such as ``edgecompile[tune,digits]``."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    names = {_requirement_name(r) for r in project["dependencies"]}
    pending, seen = [SETUP_EXTRAS], set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in extras[extra]:
            self_ref = re.fullmatch(r"\s*edgecompile\[([^\]]+)\]\s*", req)
            if self_ref:
                pending.extend(e.strip() for e in self_ref.group(1).split(","))
            else:
                names.add(_requirement_name(req))
    return names


def pinned_distributions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normalise(name)] = version.strip()
    return pins


def _first_party_names() -> set[str]:
    """Top-level names that resolve inside the repo: the package and the sibling modules that
    scripts and tests import by path or from their own directory."""
    names = {"edgecompile"}
    for d in ("scripts", "tests"):
        names |= {p.stem for p in (REPO / d).glob("*.py")}
    return names


def project_imports() -> dict[str, list[str]]:
    """Top-level module name -> files importing it, over every absolute import in the source
    trees (lazy ones inside functions too)."""
    found: dict[str, list[str]] = {}
    for d in SOURCE_DIRS:
        for path in sorted((REPO / d).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for m in mods:
                    found.setdefault(m.split(".")[0], []).append(str(path.relative_to(REPO)))
    return found


def third_party_imports() -> dict[str, list[str]]:
    first_party = _first_party_names()
    return {m: files for m, files in project_imports().items()
            if m not in sys.stdlib_module_names and m not in first_party}


def test_the_import_scan_sees_lazy_imports():
    # scikit-learn is imported inside a function of scripts/make_digits.py: the scan must see it,
    # or the check below would pass on exactly the mistake it exists for.
    imports = third_party_imports()
    assert "scripts/make_digits.py" in imports["sklearn"]
    assert {"torch", "tvm", "onnx", "numpy"} <= imports.keys()


def test_every_import_is_declared_in_pyproject():
    module_to_dists = md.packages_distributions()
    declared = declared_distributions()
    problems = []
    for module, files in sorted(third_party_imports().items()):
        dists = {_normalise(d) for d in module_to_dists.get(module, [])}
        where = ", ".join(sorted(set(files))[:3])
        if not dists:
            problems.append(f"{module!r} (imported in {where}) is installed by no distribution here")
        elif not dists & declared:
            problems.append(f"{module!r} (imported in {where}) comes from {sorted(dists)}, which "
                            "pyproject.toml declares neither in dependencies nor in the [dev] extras")
    assert not problems, "\n".join(problems)


def test_every_declared_distribution_is_pinned():
    pins = pinned_distributions()
    unpinned = sorted(d for d in declared_distributions() - {"edgecompile"} if not pins.get(d))
    assert not unpinned, f"declared in pyproject.toml but not pinned (==) in constraints.txt: {unpinned}"


def test_installed_versions_are_the_pinned_ones():
    wrong = {}
    for dist, version in pinned_distributions().items():
        try:
            installed = md.version(dist)
        except md.PackageNotFoundError:
            wrong[dist] = (version, "not installed")
            continue
        if installed != version and not installed.startswith(version + "+"):  # torch's +cpu
            wrong[dist] = (version, installed)
    assert not wrong, f"pinned vs installed: {wrong}"


def _package_modules() -> list[str]:
    import edgecompile

    names = ["edgecompile"]
    for info in pkgutil.walk_packages(edgecompile.__path__, prefix="edgecompile."):
        if not info.name.endswith(".__main__"):  # importing it runs the CLI
            names.append(info.name)
    return names


@pytest.mark.parametrize("module", _package_modules())
def test_every_package_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_every_script_imports(script):
    # Scripts keep their work under `if __name__ == "__main__"`, so loading one runs nothing.
    name = f"_script_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]


def test_runs_in_an_isolated_environment():
    """The tests run in the environment scripts/setup.sh made (.venv/), without the machine's
    site-packages: only what the setup installed can satisfy an import."""
    assert sys.prefix != sys.base_prefix, (
        f"the tests run in the machine's own Python ({sys.executable}); run them with the project's "
        "environment: `.venv/bin/python -m pytest` after `bash scripts/setup.sh`")
    cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    assert re.search(r"include-system-site-packages\s*=\s*false", cfg), (
        f"{sys.prefix}/pyvenv.cfg lets the machine's site-packages in")
