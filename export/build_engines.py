"""The build stages: `build(checkpoint, out)` brings an engine directory up to date, stage by stage.

The command line over it is `lumina-rt build` (lumina_rt/cli/build.py: flags, printed report); `python
export/build_engines.py ARGS` runs that command.

A *build target* says which files a build writes (`--target`):

- `torch`: the shared weight store `weights.bin` only; torch engines (CPU, C++ fused ops, Triton on CUDA) run it;
- `onnx`: also one ONNX graph per patch size, checked against the reference model in ONNX Runtime;
- `tensorrt`: also one TensorRT plan per patch size;
- `auto` (default): tensorrt where TensorRT and a GPU exist, else onnx where ONNX and ONNX Runtime are installed,
  else torch (saying so in one log line).

Stages, each a `Stage(name, key, outputs, run)`: `key` is a hash of everything that changes the stage's output (the
manifest records it), `outputs` the files it writes, `run()` does the work and returns what the manifest records.
A stage whose key and files match says "cached" and does nothing:

1. export: weights.bin (+ the ONNX graphs, their large initializers moved into weights.bin, deduplicated);
2. check: each graph against the reference model in ONNX Runtime, on shapes other than the export example;
3. engine: a weight-stripped TensorRT plan per scale, one optimization profile per served token range;
4. components: components.json (the checkpoint's, or the released Gemma-2-2B / CogVideoX VAE named with
   `--text-encoder` / `--vae`, referenced by absolute path) and the checkpoint's relative component files;
5. measure: every engine backend that can run here (the compiled ones with `--measure-compiled`), timed per scale
   on the served shape; the ranking that `auto` follows at run time (`lumina_rt.engines.measure`);
6. v2a (with `--v2a DIR`, and for the built-in model its sound model): the V2A checkpoint copied into `v2a/` and,
   unless the target is torch, its velocity exported to `v2a/velocity.onnx` and checked in ONNX Runtime; the graph
   reads its weights from the copied `v2a/model.safetensors` (ONNX external data), so they are stored once
   (`lumina_rt.engines.v2a_engine`, `lumina_rt.export.v2a_export`);
7. manifest.json (`lumina_rt.engines.manifest.assemble_manifest` over the stages' records), written when anything
   changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lumina_rt import components
from lumina_rt.config import ModelConfig
from lumina_rt.engines import manifest as mf
from lumina_rt.engines import onnxruntime_engine, tensorrt_engine
from lumina_rt.engines.measure import measure_backends
from lumina_rt.engines.profiles import (
    ScaleProfile,
    ServeShapes,
    compute_profiles,
    token_features,
)
from lumina_rt.engines.v2a_engine import V2A_DIR, V2A_ONNX
from lumina_rt.engines.weights import WEIGHTS_FILE, write_param_store
from lumina_rt.errors import BackendUnavailableError, ConfigError, EngineError
from lumina_rt.files import atomic_path, atomic_write
from lumina_rt.sampling import SAMPLE_PRESETS, SampleConfig
from lumina_rt.tolerances import PRECISIONS, TOLERANCE

logger = logging.getLogger("lumina_rt.build")

TARGETS = ("auto", "tensorrt", "onnx", "torch")
# torch engines: fp32 / bf16 anywhere they run, fp16 on CUDA only (`torch_engine.placement`).
TARGET_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnx": ("fp32",), "tensorrt": PRECISIONS}
TIMING_CACHE = "timing.cache"


def onnx_name(combo: str) -> str:
    return f"velocity_{combo}.onnx"


def plan_name(combo: str) -> str:
    return f"velocity_{combo}.plan"


@dataclass
class BuildReport:
    """What a build did: `done` (stages that ran), `cached` (stages found current), the measured `ranking`."""

    engine_dir: Path
    target: str
    done: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    ranking: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.done)


@dataclass
class Stage:
    """One cached build stage: its cache key, the files it writes, and the work (returns its manifest record)."""

    name: str
    key: str
    outputs: list[dict[str, Any] | None]  # the previous build's file entries of this stage (checked for caching)
    run: Callable[[], dict[str, Any]]
    cached_note: str = ""


def run_stage(stage: Stage, previous: dict[str, Any] | None, out: Path, report: BuildReport) -> dict[str, Any]:
    """The stage's manifest record: the previous one when its key and files match, else a fresh `run()`."""
    if previous is not None and previous.get("key") == stage.key and all(mf.file_ok(out, e) for e in stage.outputs):
        report.cached.append(f"{stage.name}: {stage.cached_note or 'found cached'}")
        return previous
    record = stage.run()
    record["key"] = stage.key
    report.done.append(f"{stage.name}: {record.pop('note', 'done')}")
    return record


class _Model:
    """The checkpoint's reference model, loaded only when a stage needs it."""

    def __init__(self, checkpoint: Path):
        self.checkpoint = checkpoint
        self._loaded: tuple[Any, dict] | None = None

    def get(self):
        if self._loaded is None:
            from lumina_rt.checkpoint import load_state_dict
            from lumina_rt.model import MultiScaleNextDiT

            config, state_dict = load_state_dict(self.checkpoint)
            model = MultiScaleNextDiT(config).eval()
            model.load_state_dict(state_dict, strict=True)
            model.check_inputs = False
            self._loaded = (model, {k: v.detach().float() for k, v in model.state_dict().items()})
        return self._loaded


def onnx_unavailable_reason() -> str | None:
    """None when ONNX graphs can be exported and checked here (onnx, onnxscript and ONNX Runtime installed)."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if mf.package_version(name) is None]
    if onnxruntime_engine.version() is None and "onnxruntime" not in missing:
        missing.append("onnxruntime")
    if missing:
        return (
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (pip install 'lumina-rt[onnx]')"
        )
    return None


def resolve_target(target: str) -> str:
    """ "auto" -> "tensorrt" where TensorRT and a GPU exist, else "onnx" where its tools are installed, else "torch"."""
    if target not in TARGETS:
        raise ConfigError(f"unknown build target {target!r}; choose one of {TARGETS}")
    trt_reason = tensorrt_engine.unavailable_reason()
    if target == "tensorrt":
        if trt_reason:
            raise BackendUnavailableError(f"cannot build TensorRT engines: {trt_reason}")
        return target
    onnx_reason = onnx_unavailable_reason()
    if target == "auto":
        if trt_reason is None and onnx_reason is None:
            return "tensorrt"
        if onnx_reason is None:
            logger.info("build target auto: %s; ONNX Runtime engines", trt_reason)
            return "onnx"
        logger.warning("build target auto: %s; torch engines only", onnx_reason)
        return "torch"
    if target == "onnx" and onnx_reason:
        raise BackendUnavailableError(f"cannot build ONNX engines: {onnx_reason}")
    return target


def _default_preset(config: ModelConfig, presets: dict[str, dict[str, Any]], requested: str | None) -> str:
    known = {**SAMPLE_PRESETS, **presets}
    if requested is not None:
        if requested not in known:
            raise ConfigError(f"unknown sample preset {requested!r}; known presets: {sorted(known)}")
        SampleConfig.from_dict({**known[requested], "name": requested}).validate(config.patch_combos)
        return requested
    order = [*presets, "f24F96R960-MultiScale", "f16F64R512-MultiScale", "f24F96R960", "f16F64R512"]
    for name in order:
        try:
            SampleConfig.from_dict({**known[name], "name": name}).validate(config.patch_combos)
            return name
        except Exception:  # a preset naming patch sizes this model lacks
            continue
    return ""


def build_components(
    checkpoint: Path,
    text_encoder: str | Path | None = None,
    vae: str | Path | None = None,
    **released: Any,
) -> dict[str, Any]:
    """The engine directory's components: the checkpoint's components.json, with the released Gemma-2-2B encoder
    and CogVideoX VAE (`--text-encoder`, `--vae`: referenced by absolute path) put in place of its own."""
    comps = components.read_components(checkpoint)
    if text_encoder is None and vae is None:
        return comps
    extra = components.released_components(text_encoder, vae, **released)
    if vae is None and "latent" in comps:
        extra.pop("latent")
    return {**comps, **extra}


def _hash_path(path: Path, label: str, h: Any, memo: dict[str, list], seen: dict[str, list]) -> None:
    """Add every file under `path` (name + SHA-256) to `h`. A file whose size and mtime match the previous build's
    record (`memo`) is not read again: the referenced Gemma / VAE folders are several GB."""
    files = sorted(x for x in path.rglob("*") if x.is_file()) if path.is_dir() else [path]
    for f in files:
        st = f.stat()
        name = str(f.resolve())
        old = memo.get(name)
        digest = old[2] if old and old[:2] == [st.st_size, st.st_mtime_ns] else mf.sha256_file(f)
        seen[name] = [st.st_size, st.st_mtime_ns, digest]
        h.update(f"{label}/{f.relative_to(path) if path.is_dir() else f.name}".encode())
        h.update(digest.encode())


def _components_key(
    checkpoint: Path, comps: dict[str, Any], memo: dict[str, list] | None = None
) -> tuple[str | None, list[str], dict[str, list]]:
    """(cache key, relative files copied into the engine directory, {file: [size, mtime_ns, sha256]}) of the
    components: the spec itself and the SHA-256 of every file it names, copied (relative) or referenced (absolute)."""
    if not comps:
        return None, [], {}
    h = hashlib.sha256(json.dumps(comps, sort_keys=True).encode())
    seen: dict[str, list] = {}
    copied = []
    for named in components.named_paths(comps):
        path = named if named.is_absolute() else checkpoint / named
        if not path.exists():
            raise ConfigError(f"the components name {str(named)!r}, which does not exist ({str(path)!r})")
        _hash_path(path, str(named), h, memo or {}, seen)
        if not named.is_absolute():
            copied.append(str(named))
    return h.hexdigest()[:32], copied, seen


@dataclass
class _Build:
    """What every stage of one build reads."""

    checkpoint: Path
    out: Path
    target: str
    precision: str
    config: ModelConfig
    weights_hash: str
    shapes: ServeShapes
    latent: components.LatentSpec  # of the served latents
    profiles: dict[str, ScaleProfile]
    comps: dict[str, Any]  # the components the engine directory gets
    presets: dict[str, Any]  # their sample presets
    default_preset: str
    old: dict[str, Any]  # the previous build's manifest ({} for a fresh build)
    model: _Model
    tolerance: float = TOLERANCE
    workspace_bytes: int | None = None

    @property
    def combos(self) -> tuple[str, ...]:
        return self.config.patch_combos

    def old_scale(self, combo: str, part: str) -> dict[str, Any] | None:
        return (self.old.get("scales", {}).get(combo) or {}).get(part)


# -------------------------------------------------------------------------------------------- 1. export
def attention_form(target: str) -> str:
    """Attention in the exported graphs: ONNX Runtime's fused MultiHeadAttention for ONNX Runtime engines (faster on
    its CPU provider, docs/engines.md), MatMul / Softmax for TensorRT (the form its parser fuses)."""
    return "ort-mha" if target == "onnx" else "decomposed"


def export_stage(b: _Build) -> tuple[Stage, dict[str, Any] | None]:
    """The export stage and the previous build's record of it (weights entry and per-scale graphs included)."""
    versions = {name: mf.package_version(name) for name in ("torch", "onnx", "onnxscript")}
    if b.target == "torch":
        exporter: dict[str, Any] = {"opset": None}
    else:
        from lumina_rt.export import onnx_export as ox

        exporter = {"opset": ox.OPSET, "format": ox.EXPORT_FORMAT, "threshold": ox.EXTERNAL_THRESHOLD,
                    "code": ox.graph_code_hash(), "attention": attention_form(b.target)}  # fmt: skip
    key = mf.export_key(b.config.to_kwargs(), b.weights_hash, list(b.combos), exporter, versions)
    old_export = b.old.get("export") or {}
    outputs = [b.old.get("weights")] + ([b.old_scale(c, "onnx") for c in b.combos] if exporter.get("opset") else [])

    def run() -> dict[str, Any]:
        _, state_dict = b.model.get()
        if b.target == "torch":
            writer = write_param_store(state_dict, b.out / WEIGHTS_FILE)
            graphs: dict[str, Any] = {c: {"onnx": None, "opset": None, "ops": []} for c in b.combos}
            note = f"weights.bin {writer.nbytes / 2**20:.1f} MiB ({len(writer.tensors)} tensors; no ONNX graphs)"
        else:
            writer, graphs = _export_graphs(b, state_dict)
            note = (f"{len(graphs)} ONNX graphs, shared weights.bin {writer.nbytes / 2**20:.1f} MiB "
                    f"({len(writer.tensors)} tensors)")  # fmt: skip
        weights = {**mf.file_entry(b.out, WEIGHTS_FILE), **writer.index()}
        return {"note": note, "weights": weights, "graphs": graphs, "versions": versions, **exporter}

    stage = Stage("export", key, outputs, run, "found cached ONNX graphs and weights.bin")
    if not exporter.get("opset"):
        stage.cached_note = "found cached weights.bin"
    previous = None
    if old_export.get("key") == key and b.old.get("weights"):
        graphs = {c: {k: b.old_scale(c, k) for k in ("onnx", "opset", "ops")} for c in b.combos}
        for g in graphs.values():
            g["ops"] = g["ops"] or []
        previous = {**old_export, "weights": b.old["weights"], "graphs": graphs}
    return stage, previous


def _export_graphs(b: _Build, state_dict: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import onnx

    from lumina_rt.export import onnx_export as ox

    ref, _ = b.model.get()
    shared = ox.SharedWeights(state_dict, b.out / WEIGHTS_FILE)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=b.out) as work:
        for combo in b.combos:
            t0 = time.perf_counter()
            proto, raw_dir = ox.export_scale(ref, combo, Path(work) / combo, attention=attention_form(b.target))
            shared.externalize(combo, proto, raw_dir)
            onnx.save(proto, str(b.out / f".{onnx_name(combo)}.tmp"))
            shutil.rmtree(raw_dir)  # the exporter's copy of the weights
            logger.info(
                "exported scale %s in %.1f s (%d nodes)", combo, time.perf_counter() - t0, len(proto.graph.node)
            )
    writer = shared.finish()
    writer.write()
    graphs = {}
    for combo in b.combos:
        (b.out / f".{onnx_name(combo)}.tmp").replace(b.out / onnx_name(combo))
        info = ox.check_graph(b.out / onnx_name(combo), combo, for_tensorrt=b.target == "tensorrt")
        graphs[combo] = {"onnx": mf.file_entry(b.out, onnx_name(combo)), "opset": info.get("opset"),
                         "ops": info.get("ops", [])}  # fmt: skip
    return writer, graphs


# -------------------------------------------------------------------------------------------- 2. check
def check_scale(b: _Build, export: dict[str, Any], combo: str) -> Stage:
    from lumina_rt.export import onnx_export as ox

    ort_version = onnxruntime_engine.version()
    key = mf.check_key(export["key"], ort_version, repr(ox.CHECK_CASES), b.tolerance)

    def run() -> dict[str, Any]:
        from lumina_rt.engines.weights import WeightStore

        ref, _ = b.model.get()
        w = export["weights"]
        store = WeightStore(b.out / w["path"], w, w["bytes"])
        engine = onnxruntime_engine.load_files(b.out, {combo: export["graphs"][combo]["onnx"]["path"]}, store)[combo]
        results = ox.compare_with_reference(lambda inp: engine.run(*(inp[n] for n in ox.INPUT_NAMES)), ref, combo)
        worst = max(r["rel_err"] for r in results)
        if worst > b.tolerance:
            raise EngineError(
                f"the ONNX graph of scale {combo} differs from the reference model: relative error {worst:.3e} "
                f"> {b.tolerance:g} on {results}"
            )
        logger.info("checked scale %s with ONNX Runtime: max rel err %.2e", combo, worst)
        return {"note": f"ONNX Runtime vs reference, {combo} max rel err {worst:.1e}", "passed": True,
                "max_rel_err": worst, "cases": results, "runtime": f"onnxruntime {ort_version}"}  # fmt: skip

    return Stage("check", key, [], run, "found cached ONNX Runtime checks")


# -------------------------------------------------------------------------------------------- 3. engine
def engine_scale(b: _Build, export: dict[str, Any], combo: str) -> Stage:
    from lumina_rt.export.tensorrt_build import BUILD_FORMAT, build_plan

    prof = b.profiles[combo]
    gpu = tensorrt_engine.gpu_info()
    key = mf.engine_key(export["graphs"][combo]["onnx"]["sha256"], export["weights"]["sha256"], prof.to_dict(),
                        b.precision, tensorrt_engine.version(), (gpu or {}).get("arch"), BUILD_FORMAT)  # fmt: skip

    def run() -> dict[str, Any]:
        feats = token_features(b.config, combo)
        ranges = [
            prof.input_shapes(i, feats, b.config.head_dim, b.config.cap_feat_dim) for i in range(len(prof.tokens))
        ]
        t0 = time.perf_counter()
        info = build_plan(b.out / export["graphs"][combo]["onnx"]["path"], b.out / plan_name(combo), ranges,
                          b.precision, b.out / TIMING_CACHE, b.workspace_bytes)  # fmt: skip
        return {"note": f"TensorRT plan {combo} ({time.perf_counter() - t0:.0f} s)",
                **mf.file_entry(b.out, plan_name(combo)), **info}  # fmt: skip

    return Stage("engine", key, [b.old_scale(combo, "engine")], run, "found cached TensorRT plans")


# -------------------------------------------------------------------------------------------- 4. components
def components_stage(b: _Build, comps: dict[str, Any], previous: dict[str, Any] | None) -> Stage | None:
    """components.json written into the engine directory, with the checkpoint's relative component files copied
    next to it; absolute paths (the released Gemma / VAE folders) are referenced, their files hashed into the key."""
    key, files, hashes = _components_key(b.checkpoint, comps, (previous or {}).get("hashes"))
    if key is None:
        return None
    referenced = [str(p) for p in components.named_paths(comps) if p.is_absolute()]

    def run() -> dict[str, Any]:
        components.copy_components(b.checkpoint, b.out)  # the checkpoint's own components.json and relative files
        atomic_write(b.out / components.COMPONENTS_FILE, json.dumps(comps, indent=2) + "\n")
        what = [components.COMPONENTS_FILE, *files] + [f"referenced {r}" for r in referenced]
        return {"note": f"wrote {', '.join(what)}", "files": [components.COMPONENTS_FILE, *files],
                "referenced": referenced, "hashes": hashes}  # fmt: skip

    return Stage("components", key, [], run, "found cached text encoder / decoder files")


# -------------------------------------------------------------------------------------------- 5. measure
def measure_key(manifest: dict[str, Any], precision: str, steps: int, compiled: bool = False) -> str:
    """The measure stage's cache key: the engine files, precision, profiles, this host, backend versions, steps
    (and whether the compiled backends were measured)."""
    files = [manifest["weights"].get("sha256")]
    files += [
        ((s.get("onnx") or {}).get("sha256"), (s.get("engine") or {}).get("sha256"))
        for s in manifest["scales"].values()
    ]
    versions = {n: mf.package_version(n) for n in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt")}
    profiles = {c: s["profile"] for c, s in manifest["scales"].items()}
    return mf.cache_key("measure", files=files, precision=precision, profiles=profiles, host=mf.host(),
                        versions=versions, steps=steps, **({"compiled": True} if compiled else {}))  # fmt: skip


def measure_stage(b: _Build, manifest: dict[str, Any], steps: int, compiled: bool = False) -> Stage:
    key = measure_key(manifest, b.precision, steps, compiled)

    def run() -> dict[str, Any]:
        ranking = measure_backends(b.out, manifest, steps=steps, compiled=compiled)
        best = ", ".join(f"{c} {rows[0]['backend']}" for c, rows in ranking["scales"].items())
        return {"note": f"fastest engine backend per scale: {best}", **ranking}

    return Stage("measure", key, [], run, "found a ranking measured on this machine")


def measure_only(engine_dir: str | Path, steps: int = 3, compiled: bool = False) -> BuildReport:
    """`lumina-rt build --measure-only ENGINE_DIR`: time the engine backends of an existing engine directory on this
    host and record the ranking (with this host) in its manifest, touching nothing else (no checkpoint needed)."""
    start = time.perf_counter()
    out = Path(engine_dir)
    manifest = mf.read_manifest(out)
    report = BuildReport(out, str(manifest.get("target")))
    previous = manifest.get("ranking") or {}
    ranking = measure_backends(out, manifest, steps=steps, compiled=compiled)
    ranking["key"] = measure_key(manifest, str(manifest.get("precision", "fp32")), steps, compiled)
    manifest["ranking"] = report.ranking = ranking
    mf.write_manifest(out, manifest)
    was = mf.host_label(previous.get("host")) if previous else "none"
    best = ", ".join(f"{c} {rows[0]['backend']}" for c, rows in ranking["scales"].items())
    report.done.append(f"measure: fastest engine backend per scale: {best} (previous ranking's host: {was})")
    report.seconds = time.perf_counter() - start
    return report


# -------------------------------------------------------------------------------------------- 6. v2a
def _source_files(directory: Path) -> list[str]:
    """Relative paths of the files of a V2A checkpoint folder (hidden files and caches left out)."""
    if not (directory / "config.json").is_file():
        raise ConfigError(f"--v2a {str(directory)!r} is not a V2A checkpoint folder (no config.json)")
    return sorted(
        f.relative_to(directory).as_posix()
        for f in directory.rglob("*")
        if f.is_file() and not any(part.startswith((".", "__pycache__")) for part in f.relative_to(directory).parts)
    )


def v2a_stage(b: _Build, source: Path, with_onnx: bool) -> Stage:
    """The V2A checkpoint copied into v2a/ (+ its ONNX graph, checked in ONNX Runtime, when `with_onnx`)."""
    files = _source_files(source)
    hashes = {rel: mf.sha256_file(source / rel) for rel in files}
    versions = {name: mf.package_version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime")}
    exporter: dict[str, Any] = {"onnx": False}
    if with_onnx:
        from lumina_rt.export import v2a_export as vx

        exporter = {"onnx": True, "opset": vx.OPSET, "format": vx.EXPORT_FORMAT, "code": vx.graph_code_hash(),
                    "tolerance": b.tolerance}  # fmt: skip
    key = mf.cache_key("v2a", files=hashes, exporter=exporter, versions=versions)
    old = b.old.get("v2a") or {}
    outputs = [*(old.get("files") or [None]), *([old.get("onnx")] if with_onnx else [])]

    def run() -> dict[str, Any]:
        from lumina_rt.v2a.pipeline import V2APipeline

        onnx_info: dict[str, Any] = {}
        check = None
        with atomic_path(b.out / V2A_DIR, directory=True) as tmp:
            for rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / rel, tmp / rel)
            pipe = V2APipeline.from_dir(tmp)  # the copy loads
            frames = (pipe.min_frames, pipe.max_frames)
            if with_onnx:  # its weights: external data in the copied checkpoint file (stored once)
                from lumina_rt.export.v2a_export import export_and_check
                from lumina_rt.v2a.model import V2A_WEIGHTS

                onnx_info, check = export_and_check(pipe.model, tmp, frames, b.tolerance, V2A_WEIGHTS)
        entries = [mf.file_entry(b.out, f"{V2A_DIR}/{rel}") for rel in files]
        note = f"copied {source} ({len(files)} files)"
        if with_onnx:
            note += (f", {V2A_ONNX} ({onnx_info['nodes']} nodes, weights read from the copied checkpoint), "
                     f"ONNX Runtime vs reference {check['max_rel_err']:.1e}")  # fmt: skip
        return {"note": note, "source": str(source.resolve()), "name": source.name,
                "config": pipe.model.config.to_kwargs(), "frames": list(frames),
                "sample_rate": pipe.spec.sample_rate, "fps": pipe.spec.fps, "files": entries,
                "onnx": mf.file_entry(b.out, V2A_ONNX) if with_onnx else None, "opset": onnx_info.get("opset"),
                "check": check}  # fmt: skip

    return Stage("v2a", key, outputs, run, "found cached V2A engine")


def build(
    checkpoint: str | Path,
    out: str | Path,
    target: str = "auto",
    precision: str = "fp32",
    shapes: ServeShapes | None = None,
    default_preset: str | None = None,
    tolerance: float = TOLERANCE,
    workspace_bytes: int | None = None,
    force: bool = False,
    measure: bool = True,
    measure_steps: int = 3,
    measure_compiled: bool = False,
    text_encoder: str | Path | None = None,
    vae: str | Path | None = None,
    text_encoder_dtype: str = "auto",
    vae_dtype: str = "auto",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    v2a: str | Path | None = None,
) -> BuildReport:
    """Build (or bring up to date) the engine directory `out` from `checkpoint`; see the module docstring.

    `text_encoder` / `vae`: the released pipeline's Gemma-2-2B and CogVideoX VAE folders (referenced, not copied),
    written into the engine directory's components.json with the released latent spec and sample presets.
    `v2a`: a V2A checkpoint folder (`lumina_rt.v2a.pipeline`), served as the engine directory's sound model.
    """
    start = time.perf_counter()
    released = dict(text_encoder_dtype=text_encoder_dtype, vae_dtype=vae_dtype, vae_tiling=vae_tiling,
                    vae_slicing=vae_slicing)  # fmt: skip
    b = _prepare(checkpoint, out, target, precision, shapes, tolerance, workspace_bytes, force, default_preset,
                 text_encoder, vae, released)  # fmt: skip
    report = BuildReport(b.out, b.target)
    export = run_export(b, report)
    checks = run_checks(b, export, report)
    plans, gpu, timing_cache = run_engines(b, export, report)
    components_entry = run_components(b, report)
    v2a_entry = run_v2a(b, None if v2a is None else Path(v2a), report)
    manifest = mf.assemble_manifest(
        model={"name": b.checkpoint.name, "config": b.config.to_kwargs(), "weights_hash": b.weights_hash},
        target=b.target,
        precision=b.precision,
        runtime=runtime_entry(b.target),
        gpu=gpu,
        export=export,
        shapes={**b.shapes.to_dict(), "latent": vars(b.latent)},
        scales={
            c: {
                "patch": list(b.config.check_combo(c)),
                "token_features": token_features(b.config, c),
                "profile": b.profiles[c].to_dict(),
            }
            for c in b.combos
        },
        checks=checks,
        plans=plans,
        timing_cache=timing_cache,
        components=components_entry,
        default_sample_preset=b.default_preset,
        sample_presets=b.presets,
        v2a=v2a_entry,
    )
    manifest["ranking"] = report.ranking = run_measure(b, manifest, measure, measure_steps, report, measure_compiled)
    write_if_changed(b, manifest, report)
    report.seconds = time.perf_counter() - start
    return report


def _prepare(
    checkpoint: str | Path,
    out: str | Path,
    target: str,
    precision: str,
    shapes: ServeShapes | None,
    tolerance: float,
    workspace_bytes: int | None,
    force: bool,
    default_preset: str | None,
    text_encoder: str | Path | None,
    vae: str | Path | None,
    released: dict[str, Any],
) -> _Build:
    """Checked arguments, the components, the served profiles and the previous build's manifest (none with
    `force`)."""
    from lumina_rt.checkpoint import load_config, weights_hash

    checkpoint, out = Path(checkpoint), Path(out)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    target = resolve_target(target)
    if precision not in TARGET_PRECISIONS[target]:
        need = "needs TensorRT or torch engines" if precision == "fp16" else f"is not served by {target} engines"
        raise ConfigError(
            f"precision {precision!r} {need}; {target} engines are built in {list(TARGET_PRECISIONS[target])} "
            f"(--precision, --target)"
        )
    config = load_config(checkpoint)
    shapes = shapes or ServeShapes()
    comps = build_components(checkpoint, text_encoder, vae, **released)
    latent = components.LatentSpec(**comps.get("latent", {"channels": config.in_channels}))
    if latent.channels != config.in_channels:
        raise ConfigError(
            f"the latent spec has {latent.channels} channels, the model in {str(checkpoint)!r} takes "
            f"{config.in_channels}"
        )
    presets = comps.get("sampling") or {}
    preset = _default_preset(config, presets, default_preset)
    out.mkdir(parents=True, exist_ok=True)
    old: dict[str, Any] = {}
    if not force:
        try:
            old = mf.read_manifest(out)
        except EngineError as exc:
            if (out / mf.MANIFEST_FILE).exists():
                logger.info("starting a fresh build: %s", exc)
    profiles = compute_profiles(config, latent, shapes)
    return _Build(checkpoint=checkpoint, out=out, target=target, precision=precision, config=config,
                  weights_hash=weights_hash(checkpoint), shapes=shapes, latent=latent, profiles=profiles, comps=comps,
                  presets=presets, default_preset=preset, old=old, model=_Model(checkpoint), tolerance=tolerance,
                  workspace_bytes=workspace_bytes)  # fmt: skip


def run_export(b: _Build, report: BuildReport) -> dict[str, Any]:
    """Stage 1: weights.bin and the ONNX graphs; refuses graphs TensorRT's parser would not take."""
    stage, previous = export_stage(b)
    export = run_stage(stage, previous, b.out, report)
    if b.target == "tensorrt":
        from lumina_rt.export.onnx_export import TENSORRT_OPS

        for c, g in export["graphs"].items():
            foreign = [op for op in g.get("ops", []) if op not in TENSORRT_OPS]
            if foreign:
                raise EngineError(f"graph of scale {c} uses operators TensorRT's ONNX parser does not take: {foreign}")
    return export


def run_checks(b: _Build, export: dict[str, Any], report: BuildReport) -> dict[str, Any]:
    """Stage 2: each scale's graph against the reference model in ONNX Runtime (none for target torch)."""
    checks: dict[str, Any] = {c: None for c in b.combos}
    if b.target != "torch":
        sub = BuildReport(b.out, b.target)
        for combo in b.combos:
            prev = b.old_scale(combo, "check")
            checks[combo] = run_stage(
                check_scale(b, export, combo), prev if prev and prev.get("passed") else None, b.out, sub
            )
        _merge(report, sub, "check")
    return checks


def run_engines(
    b: _Build, export: dict[str, Any], report: BuildReport
) -> tuple[dict[str, Any], dict[str, str] | None, dict[str, Any] | None]:
    """Stage 3 (target tensorrt): a plan per scale; returns (plans per combo, GPU, timing cache entry)."""
    plans: dict[str, Any] = {c: None for c in b.combos}
    if b.target != "tensorrt":
        return plans, None, None
    sub = BuildReport(b.out, b.target)
    for combo in b.combos:
        plans[combo] = run_stage(engine_scale(b, export, combo), b.old_scale(combo, "engine"), b.out, sub)
    _merge(report, sub, "engine")
    timing_cache = {"path": TIMING_CACHE} if (b.out / TIMING_CACHE).is_file() else None
    return plans, tensorrt_engine.gpu_info(), timing_cache


def runtime_entry(target: str) -> dict[str, Any]:
    """The manifest's `runtime`: what runs the engines of a build target, and its version."""
    if target == "onnx":
        return {"name": "onnxruntime", "version": onnxruntime_engine.version()}
    if target == "tensorrt":
        return {"name": "tensorrt", "version": tensorrt_engine.version()}
    return {"name": "torch", "version": mf.package_version("torch")}


def run_components(b: _Build, report: BuildReport) -> dict[str, Any] | None:
    """Stage 4: components.json and the checkpoint's component files (or their removal when it has none now)."""
    previous = b.old.get("components")
    stage = components_stage(b, b.comps, previous)
    if stage is None:
        if previous:
            report.done.append("components: the checkpoint has none any more")
            (b.out / components.COMPONENTS_FILE).unlink(missing_ok=True)
        return None
    files_there = previous is not None and all((b.out / f).exists() for f in previous.get("files", []))
    return run_stage(stage, previous if files_there else None, b.out, report)


def run_v2a(b: _Build, source: Path | None, report: BuildReport) -> dict[str, Any] | None:
    """Stage 6: the V2A engine (with `--v2a`); its ONNX graph where the target has ONNX and its tools are here."""
    if source is None:
        if b.old.get("v2a"):
            report.done.append("v2a: no V2A model any more")
        return None
    with_onnx = b.target != "torch" and onnx_unavailable_reason() is None
    return run_stage(v2a_stage(b, source, with_onnx), b.old.get("v2a"), b.out, report)


def run_measure(
    b: _Build, manifest: dict[str, Any], measure: bool, steps: int, report: BuildReport, compiled: bool = False
) -> dict[str, Any] | None:
    """Stage 5: the engine backends timed on this machine (the ranking `auto` follows); without `measure`, the
    previous ranking while it still holds, else none."""
    stage = measure_stage(b, manifest, steps, compiled)
    previous = b.old.get("ranking")
    if measure:
        return run_stage(stage, previous, b.out, report)
    return previous if previous and previous.get("key") == stage.key else None


def write_if_changed(b: _Build, manifest: dict[str, Any], report: BuildReport) -> None:
    """manifest.json, written when a stage ran or a recorded field changed; files no longer named are removed."""
    if b.old:
        unchanged = {k: v for k, v in b.old.items() if k != "created"} == {
            k: v for k, v in manifest.items() if k != "created"
        }
        if not unchanged and not report.done:
            report.done.append("manifest: profiles / presets / versions updated (no file needed rebuilding)")
    if not b.old or report.done:
        mf.write_manifest(b.out, manifest)
        _remove_stale(b.out, b.old, manifest)


def _merge(report: BuildReport, sub: BuildReport, name: str) -> None:
    """Per-scale runs of one stage reported as one line each way."""
    if sub.done:
        report.done.append(f"{name}: " + "; ".join(d.split(": ", 1)[1] for d in sub.done))
    elif sub.cached:
        report.cached.append(sub.cached[0])


def _named_files(manifest: dict[str, Any] | None) -> set[str]:
    if not manifest:
        return set()
    names = {manifest.get("weights", {}).get("path")}
    for s in manifest.get("scales", {}).values():
        names.add((s.get("onnx") or {}).get("path"))
        names.add((s.get("engine") or {}).get("path"))
    return {n for n in names if n}


def _remove_stale(out: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    for name in _named_files(old) - _named_files(new):
        p = out / name
        if p.is_file():
            p.unlink()
            logger.info("removed stale %s", p)
    if (old or {}).get("v2a") and not new.get("v2a") and (out / V2A_DIR).is_dir():
        shutil.rmtree(out / V2A_DIR)
        logger.info("removed stale %s", out / V2A_DIR)


if __name__ == "__main__":
    # `python export/build_engines.py ARGS` is `lumina-rt build ARGS`: the same flags, output and exit codes, through
    # the command line's one entry (`python -m lumina_rt`, lumina_rt/cli/__init__.py `main`). Run by name, as
    # `python -m` does: this file runs as __main__ here, so nothing imports the command line from the library.
    import runpy

    sys.argv[1:1] = ["build"]
    runpy.run_module("lumina_rt", run_name="__main__", alter_sys=True)
