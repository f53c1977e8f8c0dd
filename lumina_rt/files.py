"""Atomic file writes: write beside the target under a hidden temporary name, then rename it into place.

Files: a reader sees either the old file or the complete new one, never a partial write (one `rename`).

Folders (`atomic_path(..., directory=True)` onto an existing folder): a rename cannot replace a non-empty folder,
so the new folder is swapped in.

- On Linux, where the filesystem supports it (ext4, xfs, btrfs, tmpfs, ...), one `renameat2(RENAME_EXCHANGE)`
  swaps the two names atomically: at every instant the target names a complete folder, the old or the new one.
  The old folder (now under the temporary name) is then deleted; a reader that opened it before the swap sees
  its entries disappear, but a reader that opens the target after the swap gets the new folder.
- Elsewhere (another OS, a glibc before 2.28, a filesystem without the exchange), the old folder is renamed aside to
  ``.NAME.old`` (`aside_path`), the new one renamed in, then the old one deleted. Between the two renames the
  target is missing for an instant; a reader that finds it missing finds the complete old folder at
  `aside_path(target)` (`existing_folder` does this). If the second rename fails, the old folder is renamed back.

A crash leaves at most a hidden ``.NAME.*.tmp`` entry beside the target (``.NAME.*.tmp.mp4`` with
``keep_suffix``) and, with the fallback, ``.NAME.old`` holding the old folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
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


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _load_renameat2():
    """glibc's renameat2 (2.28+) as a ctypes function, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the names `a` and `b` (both must exist) in one atomic step; False where this system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # the kernel or the filesystem has no exchange
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def exchange_supported(directory: str | os.PathLike | None = None) -> bool:
    """Whether `exchange` works here (in `directory`'s filesystem; the temporary folder's by default)."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        a.mkdir()
        b.mkdir()
        return exchange(a, b)


def aside_path(target: str | os.PathLike) -> Path:
    """Where the fallback folder replace keeps the old folder while the new one is renamed in."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def existing_folder(target: str | os.PathLike) -> Path:
    """`target`, or, in the instant a fallback replace has it renamed aside, the complete old folder."""
    target = Path(target)
    if target.is_dir():
        return target
    aside = aside_path(target)
    return aside if aside.is_dir() else target


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the folder `new` at `target`, replacing the folder there without a moment where `target` is missing
    (exchange), or else with the old folder at `aside_path(target)` during that moment; `new`'s name is gone after."""
    new, target = Path(new), Path(target)
    if not target.is_dir():
        os.replace(new, target)
        return
    if exchange(new, target):
        _remove(new)  # the old folder, under the temporary name now
        return
    aside = aside_path(target)
    _remove(aside)  # a crash's leftover
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` (an empty file, or an empty folder with `directory=True`).

    Write it inside the block; on success it is renamed onto `path` (a folder replaces an existing folder of that
    name: `replace_folder`, see the module docstring for what readers see), on an exception it is removed.
    Permissions follow the umask, as for a plain `open`. `keep_suffix`: the temporary name ends in `path`'s suffix
    too (``.v.mp4.x1y2.tmp.mp4``), for writers that choose a format by it.
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
        if directory:
            replace_folder(tmp, target)
        else:
            os.chmod(tmp, 0o666 & ~_umask())  # again: a writer may have replaced the file (safetensors writes 0600)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            _remove(tmp)


def save_tensors(tensors: dict, path: str | os.PathLike) -> Path:
    """Write a dict of torch tensors as safetensors to `path` atomically, with umask permissions; returns the path."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    return Path(path)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)
