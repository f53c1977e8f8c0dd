"""One spawned gloo process of bench/test_parallel.py (a module of its own so spawn can import it by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

REPS = 3  # fixed on every rank: the sp 2 timings are collectives, so all ranks must run the same number


def _median_ms(fn, sync) -> float:
    fn()  # warm-up
    times = []
    for _ in range(REPS):
        sync()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def worker(rank: int, world: int, port: int, out_dir: str, combos: tuple[str, ...]) -> None:
    import torch.distributed as dist
    from test_latency import bench_inputs, bench_model

    from lumina_rt.distributed import ParallelConfig, init_mesh, shutdown
    from lumina_rt.engines.parallel import parallel_velocity

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    model = bench_model()
    mesh = init_mesh(ParallelConfig(sp=world), device="cpu", n_heads=model.config.n_heads, timeout_s=600)
    pv = parallel_velocity(model, mesh)
    x, t, cap, mask, motion = bench_inputs(2, torch.float32)
    result = {}
    try:
        with torch.no_grad():
            for combo in combos:
                # sp 1: every process computes the whole step alone, at the same time (same load on the machine)
                sp1 = _median_ms(lambda c=combo: model.velocity(x, t, cap, mask, motion, c), dist.barrier)
                sp2 = _median_ms(lambda c=combo: pv(x, t, cap, mask, motion, c), dist.barrier)
                diff = float(
                    (pv(x, t, cap, mask, motion, combo) - model.velocity(x, t, cap, mask, motion, combo)).abs().max()
                )
                result[combo] = dict(sp1_ms=sp1, sp2_ms=sp2, max_abs_diff=diff)
    finally:
        shutdown()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
