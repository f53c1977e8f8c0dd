"""The one atomic writer (lumina_rt.files)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lumina_rt import files
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


def _watch(target, stop, seen):
    """Reader: list the folder until told to stop; record every time it is missing."""
    while not stop.is_set():
        try:
            os.listdir(target)
            seen["listed"] += 1
        except FileNotFoundError:
            seen["missing"] += 1


def _replace_50_times_while_reading(target):
    stop, seen = threading.Event(), {"listed": 0, "missing": 0}
    reader = threading.Thread(target=_watch, args=(target, stop, seen))
    reader.start()
    try:
        for i in range(50):
            with atomic_path(target, directory=True) as tmp:
                for name in ("a", "b", "c"):
                    (tmp / name).write_text(str(i))
    finally:
        stop.set()
        reader.join()
    return seen


@pytest.mark.skipif(not files.exchange_supported(), reason="no renameat2(RENAME_EXCHANGE) on this system / filesystem")
def test_folder_replace_never_leaves_the_folder_missing(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a").write_text("first")
    seen = _replace_50_times_while_reading(target)
    assert seen["missing"] == 0 and seen["listed"] > 0
    assert sorted(os.listdir(target)) == ["a", "b", "c"] and (target / "a").read_text() == "49"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_folder_replace_fallback_keeps_the_old_folder_aside(tmp_path, monkeypatch):
    """Without the exchange: readers that find the folder missing find the complete old one at aside_path."""
    monkeypatch.setattr(files, "exchange", lambda a, b: False)
    target = tmp_path / "ckpt"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "f").write_text("old")
    observed = []
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == target:  # the moment the new folder goes in: the target is missing, the old one aside
            observed.append((target.exists(), (files.existing_folder(target) / "f").read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with atomic_path(target, directory=True) as tmp:
        (tmp / "f").write_text("new")
    assert observed == [(False, "old")]
    assert (target / "f").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_folder_replace_fallback_puts_the_old_folder_back_when_the_new_one_cannot_go_in(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "exchange", lambda a, b: False)
    target = tmp_path / "ckpt"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "f").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == target and Path(src) != files.aside_path(target):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"), atomic_path(target, directory=True) as tmp:
        (tmp / "f").write_text("new")
    assert (target / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_path_gives_umask_permissions_even_when_the_writer_replaced_the_file(tmp_path):
    """safetensors' save_file leaves a 0600 file in place of the temporary one: the result still follows the umask
    (the built-in model's exported weights were unreadable to other users)."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp))
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.unlink()
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644


def test_exported_model_files_are_readable_by_others(tmp_path):
    """Every safetensors writer goes through `save_tensors` (umask permissions, atomic): the text encoder, PCA
    autoencoder and native weights of an exported model come out 0644 under umask 022, as its JSON files do."""
    import re

    import torch

    from lumina_rt import checkpoint
    from lumina_rt.components.tiny import PCAAutoencoder, TinyTextEncoder
    from lumina_rt.model import ModelConfig, MultiScaleNextDiT

    old = os.umask(0o022)
    try:
        TinyTextEncoder.create(dim=16).save(tmp_path)
        PCAAutoencoder.fit(torch.rand(2, 3, 2, 8, 8) * 2 - 1, channels=4, factor=4).save(tmp_path)
        cfg = ModelConfig.from_name("tiny")
        checkpoint.save_native(tmp_path / "native", cfg, MultiScaleNextDiT(cfg).state_dict())
    finally:
        os.umask(old)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert {p.suffix for p in written} >= {".safetensors", ".json", ".txt"}
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: 0o644 for p in written}
    package = Path(checkpoint.__file__).parent
    callers = [p.relative_to(package) for p in package.rglob("*.py") if re.search(r"\bsave_file\(", p.read_text())]
    assert callers == [Path("files.py")]
