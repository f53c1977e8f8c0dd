"""The one atomic writer (lumina_rt.files)."""

from __future__ import annotations

import pytest

from lumina_rt.files import atomic_path, atomic_write


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_path_replaces_a_folder(tmp_path):
    target = tmp_path / "ckpt"
    for content in ("first", "second"):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "f").write_text(content)
    assert (target / "f").read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
