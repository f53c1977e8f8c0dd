"""The shared weight store of an engine directory: one `weights.bin` that every per-scale graph points into.

The scales of a Multi-scale Next-DiT share one backbone; only the patch embedder and final layer differ. The
export stage moves every large initializer of every per-scale ONNX graph into one file, deduplicated by content,
so the backbone is stored (and, at run time, held in memory) once. Layout:

- `weights.bin`: tensors' raw little-endian bytes, each starting at a multiple of `ALIGN` bytes;
- the manifest's `weights` entry: `tensors` {name: {offset, nbytes, dtype, shape}} (several names may share
  bytes, e.g. a tensor and its reshaped view) and `params` {state-dict key: {tensor, transpose}} so the torch
  backend can rebuild the model from the same bytes.

Every per-scale ONNX graph names its external initializers with these tensor names (ONNX external data:
location `weights.bin`, offset, length), so ONNX Runtime and TensorRT's parser read them directly, and the
runtime can hand one in-memory copy to every session.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lumina_rt.errors import EngineError
from lumina_rt.files import atomic_path

WEIGHTS_FILE = "weights.bin"
ALIGN = 64


def content_key(arr: np.ndarray) -> str:
    """Identity of a tensor's bytes (dtype included, shape not: a reshape shares bytes)."""
    h = hashlib.sha256(np.ascontiguousarray(arr).tobytes())
    h.update(arr.dtype.str.encode())
    return h.hexdigest()


@dataclass
class WeightStoreWriter:
    """Collects tensors, stores each distinct byte string once, and writes `weights.bin`.

    With `stream_to`, bytes go to a temporary file beside that path as they arrive (nothing is kept in memory) and
    `write()` moves the file into place; otherwise they are kept until `write(path)`.
    """

    stream_to: str | os.PathLike | None = None
    _blobs: dict[str, tuple[int, np.ndarray | None]] = field(default_factory=dict)  # content key -> (offset, bytes)
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    _size: int = 0
    _fh: Any = None

    def __post_init__(self) -> None:
        if self.stream_to is not None:
            self._commit = contextlib.ExitStack()  # closed by write(): renames the temporary file into place
            self._tmp = self._commit.enter_context(atomic_path(self.stream_to))
            self._fh = open(self._tmp, "wb")  # closed by write()

    def add(self, name: str, arr: np.ndarray, key: str | None = None) -> dict[str, Any]:
        """Register tensor `name`; returns its entry {offset, nbytes, dtype, shape}."""
        arr = np.ascontiguousarray(arr)
        key = content_key(arr) if key is None else key
        blob = self._blobs.get(key)
        offset = self._size + (-self._size) % ALIGN if blob is None else blob[0]
        entry = {"offset": offset, "nbytes": int(arr.nbytes), "dtype": arr.dtype.name, "shape": list(arr.shape)}
        old = self.tensors.get(name)
        if old is not None and old != entry:
            raise EngineError(f"weight store: tensor name {name!r} registered twice with different contents")
        if blob is None:
            if self._fh is not None:
                self._fh.write(b"\0" * (offset - self._size))
                self._fh.write(arr.tobytes())
            self._blobs[key] = (offset, None if self._fh is not None else arr)
            self._size = offset + arr.nbytes
        self.tensors[name] = entry
        return entry

    def has_content(self, key: str) -> bool:
        return key in self._blobs

    @property
    def nbytes(self) -> int:
        return self._size

    def write(self, path: str | os.PathLike | None = None) -> Path:
        """Write the file (to a temporary name first, then renamed into place); returns its path."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._commit.close()
            target = Path(self.stream_to)
            if path is not None and Path(path) != target:
                target.replace(path)
            return Path(path or target)
        if path is None:
            raise EngineError("WeightStoreWriter.write needs a path when it does not stream")
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            pos = 0
            for offset, arr in sorted(self._blobs.values(), key=lambda item: item[0]):
                assert arr is not None
                fh.write(b"\0" * (offset - pos))
                fh.write(arr.tobytes())
                pos = offset + arr.nbytes
        return path

    def index(self) -> dict[str, Any]:
        return {"tensors": dict(sorted(self.tensors.items())), "params": dict(sorted(self.params.items()))}


def write_param_store(state_dict: dict[str, Any], path: str | os.PathLike) -> WeightStoreWriter:
    """`weights.bin` holding every state-dict parameter once, as is (torch engines; no ONNX graphs point into it)."""
    writer = WeightStoreWriter(stream_to=path)
    for name, tensor in state_dict.items():
        arr = np.ascontiguousarray(tensor.detach().float().cpu().numpy())
        writer.add(name, arr, content_key(arr))
        writer.params[name] = {"tensor": name, "transpose": False, "shape": list(arr.shape)}
    writer.write()
    return writer


class WeightStore:
    """`weights.bin` read once into memory; `array(name)` gives zero-copy numpy views of its tensors."""

    def __init__(self, path: str | os.PathLike, index: dict[str, Any], expected_bytes: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"weight file {str(self.path)!r} is missing; rebuild with `lumina-rt build`")
        size = self.path.stat().st_size
        if expected_bytes is not None and size != expected_bytes:
            raise EngineError(
                f"weight file {str(self.path)!r} has {size} bytes, the manifest says {expected_bytes}: "
                "it is truncated or from another build"
            )
        self.buffer = np.fromfile(self.path, dtype=np.uint8)
        self.tensors: dict[str, dict[str, Any]] = index.get("tensors", {})
        self.params: dict[str, dict[str, Any]] = index.get("params", {})
        self._views: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        view = self._views.get(name)
        if view is None:
            if name not in self.tensors:
                raise EngineError(f"weight store {str(self.path)!r} has no tensor {name!r}")
            e = self.tensors[name]
            end = e["offset"] + e["nbytes"]
            if end > self.buffer.nbytes:
                raise EngineError(f"tensor {name!r} ends at byte {end}, past the end of {str(self.path)!r}")
            raw = self.buffer[e["offset"] : end]
            view = raw.view(np.dtype(e["dtype"])).reshape(e["shape"])
            self._views[name] = view
        return view

    def param(self, key: str) -> np.ndarray:
        """A state-dict parameter (shape as in the model) rebuilt from the store (a view, no copy)."""
        if key not in self.params:
            raise EngineError(f"weight store {str(self.path)!r} has no parameter {key!r}")
        entry = self.params[key]
        arr = self.array(entry["tensor"])
        if entry.get("transpose"):
            arr = arr.T
        return arr.reshape(entry["shape"]) if "shape" in entry else arr

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)
