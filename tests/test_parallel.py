"""Sequence parallel (Ulysses) and CFG parallel against the single-process velocity, in spawned gloo processes.

Each run starts `world` CPU processes (torch.multiprocessing, gloo) that load the public fixture's tiny model
(4 query heads, 2 KV heads: sp 4 exceeds the KV heads), compute every case both ways in the same process and write
the differences; the parent checks them. Every run has a deadline: processes still alive then are killed.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lumina_rt.errors import LuminaError
from tests._paths import PUBLIC_FIXTURE, require

TOLERANCE = 1e-5
DEADLINE_S = 240.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest reference magnitude (at least 1)."""
    return float((out.float() - ref.float()).abs().max() / max(1.0, float(ref.abs().max())))


def _job_parity(fixture_path: str, config) -> dict:
    from lumina_rt.engines.parallel import parallel_velocity
    from lumina_rt.model import MultiScaleNextDiT
    from lumina_rt.parallel import init_mesh
    from lumina_rt.parity import load_fixture, run_parity
    from lumina_rt.sampling import Conditioning, SampleConfig, guided_velocity, sample_euler

    fx = load_fixture(fixture_path)
    model = MultiScaleNextDiT(fx.config)
    model.load_state_dict(fx.state_dict)
    model.eval()
    mesh = init_mesh(config, device="cpu", n_heads=fx.config.n_heads, timeout_s=120)
    pv = parallel_velocity(model, mesh)
    t, cf, cm, motion = (fx.get(f"in.{k}") for k in ("t", "cap_feats", "cap_mask", "motion"))
    gen = torch.Generator().manual_seed(7)
    odd_video = torch.randn(2, 4, 3, 6, 10, generator=gen)  # 1x2: 3*3*5 = 45 tokens
    odd_image = torch.randn(2, 4, 1, 10, 6, generator=gen)  # 1x2, 2x2: 5*3 = 15 tokens
    odd_image_4 = torch.randn(2, 4, 1, 12, 20, generator=gen)  # 2x4: 3*5 = 15 tokens
    cases = {}
    with torch.no_grad():
        for combo in fx.config.patch_combos:
            for name, x in (("video", fx.get("in.x")), ("image", fx.get("in.image")), ("odd-video", odd_video)):
                if name == "odd-video" and combo != "1x2":
                    continue
                ref = model.velocity(x, t, cf, cm, motion, combo)
                cases[f"{name}.{combo}"] = _diff(pv(x, t, cf, cm, motion, combo), ref)
            image = odd_image_4 if combo == "2x4" else odd_image
            ref = model.velocity(image, t, cf, cm, motion, combo)
            cases[f"odd-image.{combo}"] = _diff(pv(image, t, cf, cm, motion, combo), ref)
        heavy = cm.clone()
        heavy[:, 1:] = 0  # one caption token each
        cases["masked-caption.2x2"] = _diff(
            pv(fx.get("in.x"), t, cf, heavy, motion, "2x2"), model.velocity(fx.get("in.x"), t, cf, heavy, motion, "2x2")
        )
        sc = SampleConfig(P=["2x4", [0.3, "2x2"], [0.6, "1x2"]], step=6, ts=4.0, **_guidance())
        z = fx.get("in.z")[:1]
        pos, neg = Conditioning(cf[:1], cm[:1]), Conditioning(cf[1:], cm[1:])
        for tt in (0.1, 0.45, 0.8):
            ref = guided_velocity(model.velocity, z, tt, pos, neg, sc)
            cases[f"guided.t{tt}"] = _diff(guided_velocity(pv, z, tt, pos, neg, sc), ref)
        ref = sample_euler(model.velocity, z, pos, neg, sc, progress=False, return_trajectory=True)
        out = sample_euler(pv, z, pos, neg, sc, progress=False, return_trajectory=True)
        cases["euler-multiscale"] = _diff(out, ref)
        parity = run_parity(fx, pv)
    return {"cases": cases, "parity": [(r.case, r.rel_err, r.passed) for r in parity]}


def _guidance() -> dict:
    return dict(cfg=[4.0, [0.5, 0.0]], motion=6.0, negMotion=[2.0, [0.25, 6.0]], renorm=2.0)


def _job_bad_heads(fixture_path: str, config) -> dict:
    """A 3-head model under sp 2: the layout check after the process group is up."""
    from lumina_rt.engines.parallel import parallel_velocity
    from lumina_rt.model import MultiScaleNextDiT
    from lumina_rt.parallel import init_mesh

    model = MultiScaleNextDiT(dim=96, n_layers=1, n_heads=3, n_kv_heads=1, in_channels=4, cap_feat_dim=16)
    mesh = init_mesh(config, device="cpu", timeout_s=60)
    parallel_velocity(model, mesh)
    return {}


def _job_bad_world(fixture_path: str, config) -> dict:
    from lumina_rt.parallel import init_mesh

    init_mesh(config, device="cpu", n_heads=4, timeout_s=60)
    return {}


JOBS = {"parity": _job_parity, "bad-heads": _job_bad_heads, "bad-world": _job_bad_world}


def _worker(rank: int, world: int, port: int, out_dir: str, job: str, sp: int, cfg_parallel: bool, fixture: str):
    from lumina_rt.parallel import ParallelConfig, shutdown

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        result = JOBS[job](fixture, ParallelConfig(sp=sp, cfg_parallel=cfg_parallel))
    except LuminaError as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    finally:
        shutdown()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def _run(tmp_path: Path, world: int, job: str, sp: int, cfg_parallel: bool = False) -> list[dict]:
    fixture = str(require(PUBLIC_FIXTURE))
    ctx = mp.start_processes(
        _worker,
        args=(world, _free_port(), str(tmp_path), job, sp, cfg_parallel, fixture),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"{job} with {world} processes did not finish within {DEADLINE_S:.0f} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


@pytest.mark.parametrize(
    "world, sp, cfg_parallel", [(2, 2, False), (4, 4, False), (4, 2, True)], ids=["sp2", "sp4", "cfg2xsp2"]
)
def test_parallel_equals_single_process(tmp_path, world, sp, cfg_parallel):
    results = _run(tmp_path, world, "parity", sp, cfg_parallel)
    for rank, res in enumerate(results):
        assert "error" not in res, f"rank {rank}: {res}"
        bad = {k: v for k, v in res["cases"].items() if not v <= TOLERANCE}
        assert not bad, f"rank {rank}: cases off the single-process velocity by more than {TOLERANCE}: {bad}"
        assert len(res["cases"]) == 15
        failed = [c for c in res["parity"] if not c[2]]
        assert not failed, f"rank {rank}: fixture parity failed: {failed}"
    assert results[0]["cases"] == results[-1]["cases"]  # every process holds the same output


def test_sp_not_dividing_heads_is_a_typed_error_on_every_rank(tmp_path):
    results = _run(tmp_path, 2, "bad-heads", sp=2)
    for res in results:
        assert res.get("error") == "ParallelError", res
        assert "sp=2" in res["message"] and "3 query heads" in res["message"]


def test_world_size_not_cfg_times_sp_is_a_typed_error_on_every_rank(tmp_path):
    results = _run(tmp_path, 2, "bad-world", sp=2, cfg_parallel=True)
    for res in results:
        assert res.get("error") == "ParallelError", res
        assert "world size 2" in res["message"] and "2 x 2" in res["message"]


def test_parallel_config_checks_values():
    from lumina_rt.errors import ParallelError
    from lumina_rt.parallel import ParallelConfig

    with pytest.raises(ParallelError, match="sp"):
        ParallelConfig(sp=0)
    ParallelConfig(sp=4).validate(world_size=4, n_heads=4)
    with pytest.raises(ParallelError, match="sp=3 does not divide the model's 4 query heads"):
        ParallelConfig(sp=3).validate(world_size=3, n_heads=4)
