"""`manifest.json` of an engine directory: schema, versions, cache keys and validation.

The runtime reads only this file (plus the files it names); it never guesses from file names. Every build stage
records a *cache key* (a hash of everything that changes its output); a rebuild whose keys and files match does
nothing. Top-level fields:

- `format`, `format_version`, `lumina_rt_version`, `created`;
- `model`: `config` (constructor keyword arguments), `name`, `weights_hash` (SHA-256 of the checkpoint's weights);
- `target` (the build target: "torch", "onnx" or "tensorrt"), `precision`, `runtime` {name, version},
  `gpu` {name, arch} or null;
- `export`: key, opset (null for target torch), exporter and library versions;
- `weights`: the shared weight store (engines/weights.py): file entry, `tensors`, `params`;
- `shapes`: the served shapes the profiles were computed from;
- `scales`: per patch combo ("1x2"): `patch`, `token_features`, `onnx` file entry (or null), `ops`, `check` (the
  ONNX Runtime comparison with the reference model, or null), `profile` (batch / token / caption ranges), `engine`
  (TensorRT plan entry or null);
- `timing_cache`, `components`, `default_sample_preset`, `sample_presets`;
- `ranking`: the engine backends measured per scale, fastest first (engines/measure.py), with the `host` it was
  measured on (`host()`: CPU model, threads, GPU, torch version), or null;
- `v2a`: the sound model's engine (engines/v2a_engine.py), or null / absent.

A file entry is {path (relative), bytes, sha256}.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lumina_rt.errors import EngineError
from lumina_rt.files import atomic_write

FORMAT = "lumina-rt-engines"
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
REQUIRED = ("model", "target", "precision", "runtime", "weights", "scales", "shapes")


def lumina_version() -> str:
    from lumina_rt.version import __version__

    return __version__


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None (no import: cheap and side-effect free)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cache_key(kind: str, **parts: Any) -> str:
    """A stable hash of everything that determines a stage's output."""
    text = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def export_key(
    config: dict[str, Any], weights_hash: str, combos: list[str], exporter: dict[str, Any], versions: dict[str, Any]
) -> str:
    """Key of the export stage: the ONNX graphs and weights.bin depend on exactly these."""
    return cache_key("export", config=config, weights=weights_hash, combos=combos, exporter=exporter, versions=versions)


def check_key(export: str, ort_version: str | None, cases: str, tolerance: float) -> str:
    """Key of a scale's ONNX Runtime check."""
    return cache_key("check", export=export, ort=ort_version, cases=cases, tolerance=tolerance)


def engine_key(
    onnx_sha256: str,
    weights_sha256: str,
    profile: dict[str, Any],
    precision: str,
    tensorrt_version: str | None,
    gpu_arch: str | None,
    build_format: int,
) -> str:
    """Key of a scale's TensorRT plan: graph, weights, profile (not the served-shape notes), precision, versions."""
    profile = {k: v for k, v in profile.items() if k != "served"}
    return cache_key(
        "engine",
        onnx=onnx_sha256,
        weights=weights_sha256,
        profile=profile,
        precision=precision,
        tensorrt=tensorrt_version,
        arch=gpu_arch,
        format=build_format,
    )


def host() -> dict[str, Any]:
    """What engine timings depend on: CPU model, threads, GPU, torch version (recorded with the measured ranking)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "threads": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__}


def host_label(h: dict[str, Any] | None) -> str:
    """A host record as words: "AMD EPYC 7B13, 2 threads" (", NVIDIA H100" with a GPU)."""
    if not h:
        return "an unrecorded host"
    return f"{h.get('cpu')}, {h.get('threads')} threads" + (f", {h['gpu']}" if h.get("gpu") else "")


def same_host(measured: dict[str, Any] | None, here: dict[str, Any]) -> bool:
    """Whether a ranking measured on `measured` was measured on this kind of machine: same CPU model and GPU (the
    thread count is the process's setting, not the host's)."""
    return measured is not None and all(measured.get(k) == here.get(k) for k in ("cpu", "gpu"))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(root: str | os.PathLike, rel: str) -> dict[str, Any]:
    """{path, bytes, sha256} of `root/rel`."""
    p = Path(root) / rel
    return {"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def verify_file(root: str | os.PathLike, entry: dict[str, Any] | None, what: str, full: bool = True) -> Path:
    """The file's path; EngineError naming it when it is missing, truncated or (with `full`) altered."""
    if not entry or "path" not in entry:
        raise EngineError(f"the manifest in {str(root)!r} names no file for {what}")
    p = Path(root) / entry["path"]
    if not p.is_file():
        raise EngineError(f"{what} file {str(p)!r} is missing; rebuild the engines with `lumina-rt build`")
    size = p.stat().st_size
    if size != entry.get("bytes"):
        raise EngineError(
            f"{what} file {str(p)!r} is corrupt: {size} bytes, the manifest says {entry.get('bytes')}; rebuild it"
        )
    if full and sha256_file(p) != entry.get("sha256"):
        raise EngineError(f"{what} file {str(p)!r} is corrupt: its SHA-256 differs from the manifest's; rebuild it")
    return p


def file_ok(root: str | os.PathLike, entry: dict[str, Any] | None) -> bool:
    try:
        verify_file(root, entry, "file")
        return True
    except EngineError:
        return False


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def validate_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """The manifest dict if this lumina_rt can serve it; EngineError naming the mismatch otherwise."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EngineError(f"{where} is not a lumina_rt engine manifest (expected format {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineError(
            f"{where} has manifest format version {version!r}; this lumina_rt {lumina_version()} reads version "
            f"{FORMAT_VERSION}: rebuild the engines with `lumina-rt build`"
        )
    built_by = str(manifest.get("lumina_rt_version"))
    if _major_minor(built_by) != _major_minor(lumina_version()):
        raise EngineError(
            f"{where} was built by lumina_rt {built_by}; this is lumina_rt {lumina_version()}: "
            "rebuild the engines with `lumina-rt build`"
        )
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise EngineError(f"{where} lacks the fields {missing}; it is corrupt: rebuild the engines")
    if not isinstance(manifest["scales"], dict) or not manifest["scales"]:
        raise EngineError(f"{where} lists no per-scale engines; rebuild the engines")
    return manifest


def read_manifest(engine_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate `engine_dir/manifest.json`."""
    d = Path(engine_dir)
    if not d.is_dir():
        raise EngineError(f"engine directory {str(d)!r} does not exist; build one with `lumina-rt build`")
    path = d / MANIFEST_FILE
    if not path.is_file():
        raise EngineError(
            f"{str(d)!r} has no {MANIFEST_FILE}: not an engine directory (build one with `lumina-rt build`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{str(path)!r} is corrupt (not valid JSON: {exc}); rebuild the engines") from None
    return validate_manifest(manifest, repr(str(path)))


def write_manifest(engine_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically (temporary file, then rename)."""
    d = Path(engine_dir)
    path = d / MANIFEST_FILE
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def new_manifest() -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "lumina_rt_version": lumina_version()}


def assemble_manifest(
    *,
    model: dict[str, Any],
    target: str,
    precision: str,
    runtime: dict[str, Any],
    gpu: dict[str, Any] | None,
    export: dict[str, Any],
    shapes: dict[str, Any],
    scales: dict[str, dict[str, Any]],
    checks: dict[str, dict[str, Any] | None],
    plans: dict[str, dict[str, Any] | None],
    timing_cache: dict[str, Any] | None,
    components: dict[str, Any] | None,
    default_sample_preset: str,
    sample_presets: dict[str, Any],
    v2a: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest of one build, from what its stages recorded (plain JSON types; see the module docstring).

    `export`: the export stage's record (its `weights` entry and per-scale `graphs` included); `scales`: per patch
    combo its `patch`, `token_features` and `profile`; `checks` / `plans`: per combo the check and engine stages'
    records (or None). `ranking` is null: the measure stage times the engines this manifest names, then fills it in.
    """
    graphs = export["graphs"]
    manifest = new_manifest()
    manifest.update(
        created=now(),
        model=model,
        target=target,
        precision=precision,
        runtime=runtime,
        gpu=gpu,
        export={k: v for k, v in export.items() if k not in ("weights", "graphs")},
        weights=export["weights"],
        shapes=shapes,
        scales={
            combo: {
                "patch": scale["patch"],
                "token_features": scale["token_features"],
                "onnx": graphs[combo]["onnx"],
                "opset": graphs[combo]["opset"],
                "ops": graphs[combo]["ops"],
                "check": checks[combo],
                "profile": scale["profile"],
                "engine": plans[combo],
            }
            for combo, scale in scales.items()
        },
        timing_cache=timing_cache,
        components=components,
        default_sample_preset=default_sample_preset,
        sample_presets=sample_presets,
        ranking=None,
        v2a=v2a,
    )
    return json.loads(json.dumps(manifest))  # plain JSON types, comparable with a manifest read back
