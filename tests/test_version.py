"""The version is written once, as ``edgecompile.__version__``; pyproject.toml takes it from there."""

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import edgecompile

REPO = Path(__file__).resolve().parents[1]


def test_installed_metadata_is_the_package_version():
    assert importlib.metadata.version("edgecompile") == edgecompile.__version__


def test_the_build_takes_the_version_from_the_package(tmp_path):
    """Metadata built (by the real setuptools backend) from a copy of the tree whose
    ``__version__`` was changed carries the changed version: there is no second copy to forget."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "checkpoints", "tests", "build", "*.egg-info", "__pycache__", ".*_cache"))
    init = src / "edgecompile" / "__init__.py"
    text = init.read_text()
    assert f'__version__ = "{edgecompile.__version__}"' in text
    init.write_text(text.replace(f'__version__ = "{edgecompile.__version__}"', '__version__ = "9.8.7"'))
    out = tmp_path / "meta"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                        "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))", str(out)],
                       cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    metadata = (out / r.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "\nVersion: 9.8.7\n" in metadata
