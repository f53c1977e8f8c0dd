"""Resident memory of the engine runtime with one scale loaded versus all of them (shared weights).

    python bench/engine_memory.py [--engine-dir DIR] [--backend onnxruntime] [--json]

Without --engine-dir it builds (once, cached) the engines of a model large enough for the weights to dominate:
dim 512, 8 layers, random weights (~140 MB fp32), three patch sizes. Each measurement runs in a fresh subprocess:
it imports the runtime, records VmRSS, loads the engines of the given scales, runs one velocity evaluation per
scale (so activation arenas are counted too), and records VmRSS and VmHWM again. Reported: RSS above the
import baseline and in total, for one scale and for all, their ratio, and the same for "naive" ONNX Runtime
sessions (each session reading its own weights, default options), and the step time of ONNX Runtime vs torch.

`measure(engine_dir, scales, mode)` is the importable function (mode "runtime" or "naive").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH_CONFIG: dict[str, Any] = dict(
    dim=512,
    n_layers=8,
    n_heads=8,
    n_kv_heads=4,
    multiple_of=64,
    in_channels=4,
    cap_feat_dim=256,
    all_patch_size=[2, 2, 4],
    all_f_patch_size=[1, 2, 2],
    qk_norm=True,
    rope_theta=256.0,
    t_scale=1000.0,
    motion_scale=20.0,
)
# One velocity evaluation per scale on this latent grid (frames, height, width), batch 2 (a CFG pair).
GRID = (4, 16, 16)

_CHILD = r"""
import json, sys, time
def rss():
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return out
import numpy as np, torch
import onnxruntime as ort
from lumina_rt.runtime import Runtime
engine_dir, scales, mode, backend = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
grid = json.loads(sys.argv[5])
torch.set_num_threads(2)
base = rss()
t0 = time.perf_counter()
rt = Runtime(engine_dir, backend=backend, scales=scales if mode == "runtime" else [])
cfg = rt.engines.config
loaded = rss()
f, h, w = grid
x = torch.randn(2, cfg.in_channels, f, h, w)
t = torch.tensor([0.3, 0.3]); m = torch.tensor([6.0, 2.0])
cf = torch.randn(2, 16, cfg.cap_feat_dim); cm = torch.ones(2, 16, dtype=torch.int64)
times = {}
if mode == "naive":
    from lumina_rt.engines.profiles import scale_tokens
    path = lambda c: f"{engine_dir}/" + rt.engines.manifest["scales"][c]["onnx"]["path"]
    sessions = {c: ort.InferenceSession(path(c), providers=["CPUExecutionProvider"]) for c in scales}
    loaded = rss()
    from lumina_rt import ops
    from lumina_rt.model import rope_tables
    for c, s in sessions.items():
        pf, p = map(int, c.split("x"))
        tok = ops.patchify(x, pf, p, p).numpy()
        cos, sin = rope_tables(f // pf, h // p, w // p, cfg.head_dim, cfg.rope_theta)
        feeds = dict(tokens=tok, cos=cos.numpy(), sin=sin.numpy(), t=t.numpy(), cap_feats=cf.numpy(),
                     cap_mask=cm.numpy(), motion=m.numpy())
        s.run(None, feeds)
        t1 = time.perf_counter(); s.run(None, feeds); times[c] = time.perf_counter() - t1
else:
    for c in scales:
        rt.engines.velocity(x, t, cf, cm, m, c)
        t1 = time.perf_counter(); rt.engines.velocity(x, t, cf, cm, m, c); times[c] = time.perf_counter() - t1
after = rss()
print(json.dumps({"base": base["VmRSS"], "loaded": loaded["VmRSS"], "after_run": after["VmRSS"], "hwm": after["VmHWM"],
                  "backend": rt.engines.backend_name, "load_s": time.perf_counter() - t0, "step_s": times}))
"""


def measure(
    engine_dir: str | os.PathLike,
    scales: list[str],
    mode: str = "runtime",
    backend: str = "onnxruntime",
    grid: tuple[int, int, int] = GRID,
) -> dict[str, Any]:
    """RSS (MiB) of a fresh process holding the engines of `scales`: base (after imports), loaded, after one run."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(engine_dir), ",".join(scales), mode, backend, json.dumps(list(grid))],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if res.returncode != 0:
        raise RuntimeError(f"memory probe failed: {res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(scales=scales, mode=mode, above_base=out["after_run"] - out["base"])
    return out


def bench_engines(cache: str | os.PathLike | None = None) -> Path:
    """Engines of the BENCH_CONFIG model (built once; a rebuild with nothing changed does nothing)."""
    import torch

    from lumina_rt.checkpoint import save_native
    from lumina_rt.config import ModelConfig
    from lumina_rt.engines.profiles import ServeShapes
    from lumina_rt.export.build_engines import build
    from lumina_rt.model import MultiScaleNextDiT

    root = Path(cache or Path(tempfile.gettempdir()) / "lumina_rt_bench_memory")
    ckpt, eng = root / "ckpt", root / "engines"
    if not (ckpt / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = MultiScaleNextDiT(ModelConfig.from_kwargs(BENCH_CONFIG))
        with torch.no_grad():
            for p in model.parameters():  # distinct random values everywhere: no accidental deduplication
                p.normal_(0.0, 0.05)
        save_native(ckpt, model.config, model.state_dict())
    build(ckpt, eng, target="onnx", shapes=ServeShapes(resolutions=((64, 64),), frames=(1, 16)))
    return eng


def run_all(engine_dir: Path, backend: str = "onnxruntime") -> dict[str, Any]:
    import json as _json

    manifest = _json.loads((engine_dir / "manifest.json").read_text())
    combos = list(manifest["scales"])
    weights_mib = manifest["weights"]["bytes"] / 2**20
    report: dict[str, Any] = {"engine_dir": str(engine_dir), "weights_mib": weights_mib, "grid": list(GRID)}
    for mode in ("runtime", "naive"):
        one = measure(engine_dir, combos[:1], mode, backend)
        every = measure(engine_dir, combos, mode, backend)
        report[mode] = {
            "one": one,
            "all": every,
            "ratio_total": every["after_run"] / one["after_run"],
            "ratio_above_base": every["above_base"] / one["above_base"],
        }
    torch_run = measure(engine_dir, combos, "runtime", "torch")
    report["step_s"] = {"onnxruntime": report["runtime"]["all"]["step_s"], "torch": torch_run["step_s"]}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-dir", default=None, help="engines to measure (default: build the bench model's)")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend for the shared-weights measurement")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = p.parse_args(argv)
    engine_dir = Path(args.engine_dir) if args.engine_dir else bench_engines()
    report = run_all(engine_dir, args.backend)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"engines: {engine_dir} (weights.bin {report['weights_mib']:.0f} MiB), grid {GRID}, batch 2")
    for mode, label in (("runtime", "lumina_rt Runtime (shared)"), ("naive", "naive ORT sessions")):
        r = report[mode]
        print(
            f"{label:28s} one scale {r['one']['after_run']:7.0f} MiB (+{r['one']['above_base']:.0f} above imports)  "
            f"all scales {r['all']['after_run']:7.0f} MiB (+{r['all']['above_base']:.0f})  "
            f"ratio {r['ratio_total']:.3f} (above imports {r['ratio_above_base']:.2f})"
        )
    for name, steps in report["step_s"].items():
        print(f"step time {name:12s} " + "  ".join(f"{c} {s * 1000:.0f} ms" for c, s in steps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
