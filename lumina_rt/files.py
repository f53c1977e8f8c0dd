"""Atomic file writes: write beside the target under a hidden temporary name, then rename it into place.

A reader sees either the old file or the complete new one, never a partial write; a crash leaves at most a
hidden ``.NAME.*.tmp`` entry beside the target (``.NAME.*.tmp.mp4`` with ``keep_suffix``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` (an empty file, or an empty folder with `directory=True`).

    Write it inside the block; on success it is renamed onto `path` (a folder replaces an existing folder of that
    name), on an exception it is removed. Permissions follow the umask, as for a plain `open`. `keep_suffix`: the
    temporary name ends in `path`'s suffix too (``.v.mp4.x1y2.tmp.mp4``), for writers that choose a format by it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = f".{target.name}.", ".tmp" + (target.suffix if keep_suffix else "")
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=suffix))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        if directory and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            _remove(tmp)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)
