"""Ulysses sequence parallel on the CPU with gloo: one velocity step with sp 1 and sp 2, and the scaling model.

Two spawned processes with one torch thread each (the machine has 2 cores) load the bench model (`small`, latent
4x16x32x32, 32 caption tokens, batch 2: see test_latency.py) and time, per patch size, the whole step in each
process alone (sp 1) and the step split over both (sp 2, two all-to-alls per layer over gloo). Two cores cannot show
a real speed-up: sp 1 here is one process on one core (both processes compute it at once, so the machine is equally
loaded), sp 2 spreads the step over both cores and adds the exchange, so sp2 / sp1 near 0.5 means the exchange is
cheap, not that two processes beat one process with two threads (test_latency.py's torch step uses both cores). The
all-to-all bytes per process come from `flops.ulysses_bytes`; the scaling model's predictions
(`flops.predict_step_seconds`) are for the released shape on 1/2/4/8 GPUs at an assumed matmul rate.
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import parallel_worker
import pytest
import report_rows
import torch
import torch.multiprocessing as mp
from test_latency import LATENT, SIZES, bench_model

from lumina_rt.config import ModelConfig
from lumina_rt.flops import predict_step_seconds, token_count, ulysses_bytes

COMBOS = ("1x2", "2x2", "2x4")
DEADLINE_S = 300.0
# Scaling model inputs (docs/parallel.md): an assumed sustained bf16 matmul rate of an H100 (not measured here) and
# NVLink at 450 GB/s per direction; the released shape 1248x704, 96 frames: caption 128 tokens.
ASSUMED_MATMUL_FLOPS = 700e12
LINK_BYTES_PER_S = 450e9
RELEASED = dict(model="f24R960", latent=(24, 88, 156), cap_len=128)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(world: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="lumina_rt_bench_parallel_"))
    ctx = mp.start_processes(
        parallel_worker.worker,
        args=(world, _free_port(), str(out), COMBOS),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the sp {world} bench did not finish within {DEADLINE_S:.0f} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    return torch.load(out / "rank0.pt")


def test_sequence_parallel_step():
    config = bench_model().config
    result = _run_workers(2)
    ratios = {}
    for combo in COMBOS:
        r = result[combo]
        tokens = token_count(config, combo, *LATENT[1:])
        sent = 2 * ulysses_bytes(config, combo, tokens, 2, bytes_per_elem=4)  # batch 2, fp32
        ratios[combo] = r["sp2_ms"] / r["sp1_ms"]
        report_rows.add(
            "Ulysses sequence parallel, one step (fp32, batch 2, gloo, 2 processes x 1 thread)",
            {"scale": combo, "tokens": tokens, "sp 1 ms": r["sp1_ms"], "sp 2 ms": r["sp2_ms"],
             "sp2 / sp1": ratios[combo], "all-to-all MB sent per process (sp 2)": sent / 1e6,
             "max abs diff": r["max_abs_diff"]},
        )  # fmt: skip
        assert r["max_abs_diff"] <= 1e-4, r
    report_rows.SUMMARY["sp2_over_sp1"] = dict(
        value={c: round(v, 3) for c, v in ratios.items()},
        sizes=f"{SIZES}; fp32, batch 2, gloo; sp 1: 1 process on 1 core, sp 2: 2 processes x 1 thread on the 2 cores",
    )


def test_scaling_model_predictions():
    config = ModelConfig.from_name(RELEASED["model"])
    predictions = {}
    for combo in COMBOS:
        tokens = token_count(config, combo, *RELEASED["latent"])
        row = {"scale": combo, "tokens": tokens}
        for gpus in (1, 2, 4, 8):
            sp_only = predict_step_seconds(config, combo, tokens, RELEASED["cap_len"], gpus, 1,
                                           ASSUMED_MATMUL_FLOPS, LINK_BYTES_PER_S)  # fmt: skip
            row[f"{gpus} GPU sp ms"] = sp_only * 1e3
            if gpus > 1:
                cfg2 = predict_step_seconds(config, combo, tokens, RELEASED["cap_len"], gpus // 2, 2,
                                            ASSUMED_MATMUL_FLOPS, LINK_BYTES_PER_S)  # fmt: skip
                row[f"{gpus} GPU cfg2 ms"] = cfg2 * 1e3
        predictions[combo] = row
        report_rows.add(
            "Scaling model: predicted guided step at the released shape (assumed 700 TFLOP/s, 450 GB/s)", row
        )
    report_rows.SUMMARY["scaling_model_step_ms"] = dict(
        value={c: {k: round(v, 1) for k, v in r.items() if k.endswith("ms")} for c, r in predictions.items()},
        sizes="f24R960, 1248x704, 96 frames, caption 128; assumed 700 TFLOP/s bf16 matmul, 450 GB/s per direction",
    )
    one = predictions["1x2"]["1 GPU sp ms"]
    assert predictions["1x2"]["8 GPU sp ms"] < one / 7  # the all-to-alls are a small share at this size
