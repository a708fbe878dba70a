"""Artifacts are replaced atomically and their manifest hashes are checked."""

import pytest

from edgecompile.errors import EdgeCompileError
from edgecompile.pipeline.artifact import Artifact, atomic_directory, describe_files, write_json


def _make(path, payload: bytes):
    with atomic_directory(path) as tmp:
        (tmp / "model.so").write_bytes(payload)
        write_json(tmp / "manifest.json", {"schema": 1, "files": describe_files(tmp, ["model.so"])})


def test_failed_write_leaves_the_existing_artifact_untouched(tmp_path):
    final = tmp_path / "m-x86"
    _make(final, b"v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "model.so").write_bytes(b"half")
            raise RuntimeError("compiler died")
    assert (final / "model.so").read_bytes() == b"v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-x86"]  # no temp left behind
    assert Artifact.load(final).hash_mismatches() == []


def test_successful_write_replaces_and_cleans_up(tmp_path):
    final = tmp_path / "m-x86"
    _make(final, b"v1")
    _make(final, b"v2")
    assert (final / "model.so").read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-x86"]


def test_tampered_file_is_detected(tmp_path):
    final = tmp_path / "m-x86"
    _make(final, b"v1")
    (final / "model.so").write_bytes(b"evil")
    assert Artifact.load(final).hash_mismatches() == ["model.so"]


def test_not_an_artifact(tmp_path):
    with pytest.raises(EdgeCompileError, match="not an artifact"):
        Artifact.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(EdgeCompileError, match="not valid JSON"):
        Artifact.load(tmp_path)
