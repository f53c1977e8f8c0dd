"""Build the per-patch-size engines of a checkpoint: `python export/build_engines.py --checkpoint DIR --out DIR`.

Also `lumina-rt build`. Stages, each cached under a key of everything that changes its output (the manifest
records the keys; a stage whose key and files match says "cached" and does nothing):

1. export: one ONNX graph per patch size, large initializers moved into one shared, deduplicated `weights.bin`
   (key: model config, weights hash, exporter and library versions);
2. check: each graph against the reference model on random inputs of shapes other than the export example,
   with ONNX Runtime through the same shared-weight loader the runtime uses (key: export key, ORT version);
3. engine (TensorRT only): a weight-stripped plan per scale with one optimization profile per served token range
   and a shared timing cache (key: graph, weights, profile, precision, TensorRT version, GPU architecture);
4. components: the checkpoint's text encoder / decoder declarations and files (key: their contents);
5. manifest.json, written only when something changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__" and __package__ in (None, ""):  # run as a script: make `lumina_rt.export` importable
    _root = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _root / "export"]
    try:
        import lumina_rt.export  # noqa: F401
    except ImportError:
        import importlib

        sys.path.insert(0, str(_root))
        sys.modules["lumina_rt.export"] = importlib.import_module("export")

from lumina_rt import components  # noqa: E402
from lumina_rt.config import ModelConfig  # noqa: E402
from lumina_rt.engines import onnxruntime_engine, tensorrt_engine  # noqa: E402
from lumina_rt.errors import BackendUnavailableError, ConfigError, EngineError  # noqa: E402
from lumina_rt.export import manifest as mf  # noqa: E402
from lumina_rt.export.profiles import (  # noqa: E402
    DEFAULT_FRAMES,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CAPTION,
    DEFAULT_RESOLUTIONS,
    ServeShapes,
    compute_profiles,
    parse_frames,
    parse_resolutions,
)
from lumina_rt.sampling import SAMPLE_PRESETS, SampleConfig  # noqa: E402
from lumina_rt.tolerances import PRECISIONS, TOLERANCE  # noqa: E402

logger = logging.getLogger("lumina_rt.build")

BACKENDS = ("auto", "tensorrt", "onnxruntime")
TIMING_CACHE = "timing.cache"


def onnx_name(combo: str) -> str:
    return f"velocity_{combo}.onnx"


def plan_name(combo: str) -> str:
    return f"velocity_{combo}.plan"


@dataclass
class BuildReport:
    """What a build did: `done` (stages that ran) and `cached` (stages found current)."""

    engine_dir: Path
    backend: str
    done: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.done)


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


def resolve_backend(backend: str) -> str:
    """ "auto" -> "tensorrt" where TensorRT and a GPU exist, else "onnxruntime"."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown build backend {backend!r}; choose one of {BACKENDS}")
    reason = tensorrt_engine.unavailable_reason()
    if backend == "tensorrt":
        if reason:
            raise BackendUnavailableError(f"cannot build TensorRT engines: {reason}")
        return "tensorrt"
    if backend == "auto":
        if reason is None:
            return "tensorrt"
        logger.info("backend auto: %s; keeping ONNX Runtime models", reason)
    if onnxruntime_engine.version() is None:
        raise BackendUnavailableError("ONNX Runtime is not installed (pip install onnxruntime); it checks every graph")
    return "onnxruntime"


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


def _components_key(checkpoint: Path) -> tuple[str | None, list[str]]:
    files = components.component_files(checkpoint)
    if not files:
        return None, []
    h = hashlib.sha256()
    for rel in files:
        p = checkpoint / rel
        paths = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in paths:
            h.update(str(f.relative_to(checkpoint)).encode())
            if f.is_file():
                h.update(mf.sha256_file(f).encode())
    return h.hexdigest()[:32], [str(r) for r in files]


def build(
    checkpoint: str | Path,
    out: str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    shapes: ServeShapes | None = None,
    default_preset: str | None = None,
    tolerance: float = TOLERANCE,
    workspace_bytes: int | None = None,
    force: bool = False,
) -> BuildReport:
    """Build (or bring up to date) the engine directory `out` from `checkpoint`; see the module docstring."""
    from lumina_rt.checkpoint import load_config, weights_hash

    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    backend = resolve_backend(backend)
    if backend == "onnxruntime" and precision != "fp32":
        raise ConfigError(
            f"precision {precision!r} needs TensorRT; ONNX Runtime engines are built in fp32 (use --precision fp32)"
        )
    config = load_config(checkpoint)
    whash = weights_hash(checkpoint)
    shapes = shapes or ServeShapes()
    latent = components.latent_spec(checkpoint, config.in_channels)
    profiles = compute_profiles(config, latent, shapes)
    out.mkdir(parents=True, exist_ok=True)
    report = BuildReport(out, backend)

    old: dict[str, Any] | None = None
    if not force:
        try:
            old = mf.read_manifest(out)
        except EngineError as exc:
            if (out / mf.MANIFEST_FILE).exists():
                logger.info("starting a fresh build: %s", exc)
    old_scales = (old or {}).get("scales", {})
    model = _Model(checkpoint)
    versions = {
        "torch": mf.package_version("torch"),
        "onnx": mf.package_version("onnx"),
        "onnxscript": mf.package_version("onnxscript"),
    }
    from lumina_rt.export import onnx_export as ox

    # ---------------------------------------------------------------------------------------- 1. export
    exporter = {
        "opset": ox.OPSET,
        "format": ox.EXPORT_FORMAT,
        "threshold": ox.EXTERNAL_THRESHOLD,
        "code": ox.graph_code_hash(),
    }
    export_key = mf.export_key(config.to_kwargs(), whash, list(config.patch_combos), exporter, versions)
    export_cached = (
        old is not None
        and old.get("export", {}).get("key") == export_key
        and mf.file_ok(out, old["weights"])
        and all(mf.file_ok(out, old_scales.get(c, {}).get("onnx")) for c in config.patch_combos)
    )
    graph_info: dict[str, dict[str, Any]] = {}
    if export_cached:
        assert old is not None
        weights_entry = old["weights"]
        onnx_entries = {c: old_scales[c]["onnx"] for c in config.patch_combos}
        graph_info = {
            c: {"opset": old_scales[c].get("opset"), "ops": old_scales[c].get("ops", [])} for c in onnx_entries
        }
        report.cached.append("export: found cached ONNX graphs and weights.bin")
        if backend == "tensorrt":
            for c, info in graph_info.items():
                foreign = [op for op in info["ops"] if op not in ox.TENSORRT_OPS]
                if foreign:
                    raise EngineError(
                        f"graph of scale {c} uses operators TensorRT's ONNX parser does not take: {foreign}"
                    )
    else:
        import shutil
        import tempfile

        import onnx

        ref, state_dict = model.get()
        shared = ox.SharedWeights(state_dict, out / "weights.bin")
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as work:
            for combo in config.patch_combos:
                t0 = time.perf_counter()
                proto, raw_dir = ox.export_scale(ref, combo, Path(work) / combo)
                shared.externalize(combo, proto, raw_dir)
                onnx.save(proto, str(out / f".{onnx_name(combo)}.tmp"))
                shutil.rmtree(raw_dir)  # the exporter's copy of the weights
                logger.info(
                    "exported scale %s in %.1f s (%d nodes)", combo, time.perf_counter() - t0, len(proto.graph.node)
                )
        writer = shared.finish()
        writer.write()
        onnx_entries = {}
        for combo in config.patch_combos:
            (out / f".{onnx_name(combo)}.tmp").replace(out / onnx_name(combo))
            graph_info[combo] = ox.check_graph(out / onnx_name(combo), combo, for_tensorrt=backend == "tensorrt")
            onnx_entries[combo] = mf.file_entry(out, onnx_name(combo))
        weights_entry = {**mf.file_entry(out, "weights.bin"), **writer.index()}
        report.done.append(
            f"export: {len(onnx_entries)} ONNX graphs, shared weights.bin {writer.nbytes / 2**20:.1f} MiB "
            f"({len(writer.tensors)} tensors)"
        )

    # ---------------------------------------------------------------------------------------- 2. check
    ort_version = onnxruntime_engine.version()
    checks: dict[str, dict[str, Any]] = {}
    to_check = []
    for combo in config.patch_combos:
        key = mf.check_key(export_key, ort_version, repr(ox.CHECK_CASES), tolerance)
        prev = old_scales.get(combo, {}).get("check", {})
        if export_cached and prev.get("key") == key and prev.get("passed"):
            checks[combo] = prev
        else:
            to_check.append(combo)
            checks[combo] = {"key": key}
    if to_check:
        from lumina_rt.engines.weights import WeightStore

        ref, _ = model.get()
        store = WeightStore(out / weights_entry["path"], weights_entry, weights_entry["bytes"])
        engines = onnxruntime_engine.load(out, {c: onnx_entries[c]["path"] for c in to_check}, store)
        for combo in to_check:
            engine = engines[combo]
            results = ox.compare_with_reference(
                lambda inp, e=engine: e.run(*(inp[n] for n in ox.INPUT_NAMES)), ref, combo
            )
            worst = max(r["rel_err"] for r in results)
            checks[combo].update(
                passed=worst <= tolerance, max_rel_err=worst, cases=results, runtime=f"onnxruntime {ort_version}"
            )
            if worst > tolerance:
                raise EngineError(
                    f"the ONNX graph of scale {combo} differs from the reference model: relative error {worst:.3e} "
                    f"> {tolerance:g} on {results}"
                )
            logger.info("checked scale %s with ONNX Runtime: max rel err %.2e", combo, worst)
        del engines, store
        errs = ", ".join(f"{c} {checks[c]['max_rel_err']:.1e}" for c in to_check)
        report.done.append(f"check: ONNX Runtime vs reference, max rel err {errs}")
    else:
        report.cached.append("check: found cached ONNX Runtime checks")

    # ---------------------------------------------------------------------------------------- 3. engines
    engines_entry: dict[str, dict[str, Any] | None] = {c: None for c in config.patch_combos}
    runtime = {"name": "onnxruntime", "version": ort_version}
    gpu = None
    timing_entry = None
    if backend == "tensorrt":
        from lumina_rt.export.tensorrt_build import BUILD_FORMAT, build_plan

        trt_version = tensorrt_engine.version()
        gpu = tensorrt_engine.gpu_info()
        runtime = {"name": "tensorrt", "version": trt_version}
        built = []
        for combo in config.patch_combos:
            prof = profiles[combo]
            key = mf.engine_key(
                onnx_entries[combo]["sha256"],
                weights_entry["sha256"],
                prof.to_dict(),
                precision,
                trt_version,
                (gpu or {}).get("arch"),
                BUILD_FORMAT,
            )
            prev = old_scales.get(combo, {}).get("engine") or {}
            if prev.get("key") == key and mf.file_ok(out, prev):
                engines_entry[combo] = prev
                continue
            ranges = [
                prof.input_shapes(i, ox.token_features(config, combo), config.head_dim, config.cap_feat_dim)
                for i in range(len(prof.tokens))
            ]
            t0 = time.perf_counter()
            info = build_plan(
                out / onnx_entries[combo]["path"],
                out / plan_name(combo),
                ranges,
                precision,
                out / TIMING_CACHE,
                workspace_bytes,
            )
            engines_entry[combo] = {**mf.file_entry(out, plan_name(combo)), "key": key, **info}
            built.append(f"{combo} ({time.perf_counter() - t0:.0f} s)")
        if (out / TIMING_CACHE).is_file():
            timing_entry = {"path": TIMING_CACHE}
        if built:
            report.done.append(f"engine: TensorRT plans {', '.join(built)}")
        else:
            report.cached.append("engine: found cached TensorRT plans")

    # ---------------------------------------------------------------------------------------- 4. components
    comp_key, comp_files = _components_key(checkpoint)
    comp_entry = None
    if comp_key is not None:
        prev = (old or {}).get("components") or {}
        comp_entry = {"key": comp_key, "files": comp_files}
        if prev.get("key") == comp_key and all((out / f).exists() for f in comp_files):
            report.cached.append("components: found cached text encoder / decoder files")
        else:
            components.copy_components(checkpoint, out)
            report.done.append(f"components: copied {', '.join(comp_files)}")
    elif (old or {}).get("components"):
        report.done.append("components: the checkpoint has none any more")

    # ---------------------------------------------------------------------------------------- 5. manifest
    presets = components.read_components(checkpoint).get("sampling") or {}
    manifest = mf.new_manifest()
    manifest.update(
        created=mf.now(),
        model={"name": checkpoint.name, "config": config.to_kwargs(), "weights_hash": whash},
        backend=backend,
        precision=precision,
        runtime=runtime,
        gpu=gpu,
        export={
            "key": export_key,
            "opset": ox.OPSET,
            "exporter": "torch.onnx.export(dynamo=True)",
            "versions": versions,
        },
        weights=weights_entry,
        shapes={**shapes.to_dict(), "latent": vars(latent)},
        scales={
            combo: {
                "patch": list(config.check_combo(combo)),
                "token_features": ox.token_features(config, combo),
                "onnx": onnx_entries[combo],
                "opset": graph_info[combo].get("opset"),
                "ops": graph_info[combo].get("ops", []),
                "check": checks[combo],
                "profile": profiles[combo].to_dict(),
                "engine": engines_entry[combo],
            }
            for combo in config.patch_combos
        },
        timing_cache=timing_entry,
        components=comp_entry,
        default_sample_preset=_default_preset(config, presets, default_preset),
        sample_presets=presets,
    )
    manifest = json.loads(json.dumps(manifest))  # plain JSON types, comparable with the one read back
    if old is not None:
        unchanged = {k: v for k, v in old.items() if k != "created"} == {
            k: v for k, v in manifest.items() if k != "created"
        }
        if not unchanged and not report.done:
            report.done.append("manifest: profiles / presets / versions updated (no file needed rebuilding)")
    if old is None or report.done:
        mf.write_manifest(out, manifest)
        _remove_stale(out, old, manifest)
    report.seconds = time.perf_counter() - start
    return report


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


def _served_shapes(args: argparse.Namespace) -> ServeShapes:
    return ServeShapes(
        resolutions=parse_resolutions(args.resolutions),
        frames=parse_frames(args.frames),
        max_batch=args.max_batch,
        max_caption=args.max_caption,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The build command's flags (shared by this script and `lumina-rt build`)."""
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (native or released layout)")
    p.add_argument("--out", required=True, help="engine directory to create or bring up to date")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="auto: TensorRT where it and a GPU exist")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="engine precision (fp16/bf16: TensorRT)")
    default_res = ",".join(f"{h}x{w}" for h, w in DEFAULT_RESOLUTIONS)
    p.add_argument(
        "--resolutions", default=default_res, help=f"served HEIGHTxWIDTH in pixels, comma-separated ({default_res})"
    )
    p.add_argument(
        "--frames",
        default=",".join(map(str, DEFAULT_FRAMES)),
        help="served frame counts, comma-separated (1 = image)",
    )
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="prompts per call (engines take 2x: CFG)")
    p.add_argument("--max-caption", type=int, default=DEFAULT_MAX_CAPTION, help="longest caption in tokens")
    p.add_argument("--default-preset", default=None, help="sample preset Runtime.generate uses by default")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="max relative error of the ONNX check")
    p.add_argument("--workspace-gib", type=float, default=None, help="TensorRT builder workspace limit")
    p.add_argument("--force", action="store_true", help="rebuild every stage even if cached")


def run(args: argparse.Namespace) -> int:
    report = build(
        args.checkpoint,
        args.out,
        backend=args.backend,
        precision=args.precision,
        shapes=_served_shapes(args),
        default_preset=args.default_preset,
        tolerance=args.tolerance,
        workspace_bytes=int(args.workspace_gib * 2**30) if args.workspace_gib else None,
        force=args.force,
    )
    for line in report.cached:
        print(f"cached  {line}")
    for line in report.done:
        print(f"built   {line}")
    if report.changed:
        print(f"engines ({report.backend}) written to {report.engine_dir} in {report.seconds:.1f} s")
    else:
        print(f"nothing to do: the engines in {report.engine_dir} are up to date ({report.backend})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from lumina_rt.errors import LuminaError

    parser = argparse.ArgumentParser(prog="build_engines.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return run(args)
    except LuminaError as exc:
        print(f"build: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
