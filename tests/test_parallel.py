"""Sequence parallel (Ulysses) and CFG parallel against the single-process velocity, in spawned gloo processes.

Each run starts `world` CPU processes (torch.multiprocessing, gloo) that load the public fixture's tiny model
(4 query heads, 2 KV heads: sp 4 exceeds the KV heads), compute every case both ways in the same process and write
the differences; the parent checks them. Every run has a deadline: processes still alive then are killed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
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
    from lumina_rt.distributed import init_mesh
    from lumina_rt.engines.parallel import parallel_velocity
    from lumina_rt.model import MultiScaleNextDiT
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
    from lumina_rt.distributed import init_mesh
    from lumina_rt.engines.parallel import parallel_velocity
    from lumina_rt.model import MultiScaleNextDiT

    model = MultiScaleNextDiT(dim=96, n_layers=1, n_heads=3, n_kv_heads=1, in_channels=4, cap_feat_dim=16)
    mesh = init_mesh(config, device="cpu", timeout_s=60)
    parallel_velocity(model, mesh)
    return {}


def _job_bad_world(fixture_path: str, config) -> dict:
    from lumina_rt.distributed import init_mesh

    init_mesh(config, device="cpu", n_heads=4, timeout_s=60)
    return {}


def _generate_kwargs(fx) -> dict:
    cf, cm = fx.get("in.cap_feats"), fx.get("in.cap_mask")
    return dict(
        cap_feats=cf[:1], cap_mask=cm[:1], neg_cap_feats=cf[1:], neg_cap_mask=cm[1:], frames=2, height=16, width=16,
        steps=4, schedule=["2x4", [0.3, "2x2"], [0.6, "1x2"]], cfg=[4.0, [0.5, 0.0]], seed=3, progress=False,
    )  # fmt: skip


def _job_runtime(engine_dir: str, config) -> dict:
    """`Runtime(engine_dir, parallel=...)`.generate against the single-process torch engines."""
    from lumina_rt.parity import load_fixture
    from lumina_rt.runtime import Runtime

    kwargs = _generate_kwargs(load_fixture(PUBLIC_FIXTURE))
    single = Runtime(engine_dir, backend="torch").generate(**kwargs)
    runtime = Runtime(engine_dir, parallel=config)
    out = runtime.generate(**kwargs)
    return {
        "diff": _diff(out.latents, single.latents),
        "backend": runtime.engines.backend_name,
        "main": runtime.is_main,
    }


JOBS = {"parity": _job_parity, "bad-heads": _job_bad_heads, "bad-world": _job_bad_world, "runtime": _job_runtime}


def _worker(rank: int, world: int, port: int, out_dir: str, job: str, sp: int, cfg_parallel: bool, arg: str):
    from lumina_rt.distributed import ParallelConfig, shutdown

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        result = JOBS[job](arg, ParallelConfig(sp=sp, cfg_parallel=cfg_parallel))
    except LuminaError as exc:
        result = {"error": type(exc).__name__, "message": str(exc)}
    finally:
        shutdown()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def _run(tmp_path: Path, world: int, job: str, sp: int, cfg_parallel: bool = False, arg: str = "") -> list[dict]:
    arg = arg or str(require(PUBLIC_FIXTURE))
    ctx = mp.start_processes(
        _worker,
        args=(world, _free_port(), str(tmp_path), job, sp, cfg_parallel, arg),
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
    from lumina_rt.distributed import ParallelConfig
    from lumina_rt.errors import ParallelError

    with pytest.raises(ParallelError, match="sp"):
        ParallelConfig(sp=0)
    ParallelConfig(sp=4).validate(world_size=4, n_heads=4)
    with pytest.raises(ParallelError, match="sp=3 does not divide the model's 4 query heads"):
        ParallelConfig(sp=3).validate(world_size=3, n_heads=4)


# ------------------------------------------------------------------------------------------------ entry points


@pytest.fixture(scope="module")
def torch_engines(tmp_path_factory):
    """A torch-target engine directory of the public fixture's weights (16x16 pixels, 2 frames, 2 rows)."""
    from lumina_rt.checkpoint import save_native
    from lumina_rt.engines.profiles import ServeShapes
    from lumina_rt.export.build_engines import build
    from lumina_rt.parity import load_fixture

    root = tmp_path_factory.mktemp("parallel_engines")
    fx = load_fixture(require(PUBLIC_FIXTURE))
    ckpt = save_native(root / "ckpt", fx.config, fx.state_dict)
    shapes = ServeShapes(resolutions=((16, 16),), frames=(2,), max_batch=2)
    build(ckpt, root / "eng", target="torch", shapes=shapes, measure=False)
    return root / "eng"


def test_runtime_parallel_generate_equals_single_process(tmp_path, torch_engines):
    results = _run(tmp_path, 4, "runtime", sp=2, cfg_parallel=True, arg=str(torch_engines))
    for rank, res in enumerate(results):
        assert "error" not in res, f"rank {rank}: {res}"
        assert res["diff"] <= TOLERANCE and res["backend"] == "torch" and res["main"] == (rank == 0), res


def _torchrun(nproc: int, *argv: str, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(_free_port()), "-m", "lumina_rt", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_torchrun_generate_writes_one_video(tmp_path, torch_engines):
    from safetensors.torch import save_file

    from lumina_rt.parity import load_fixture

    fx = load_fixture(require(PUBLIC_FIXTURE))
    feats = tmp_path / "caption.safetensors"
    save_file({k: fx.get(f"in.{k}")[:1].contiguous() for k in ("cap_feats", "cap_mask")}, str(feats))
    out = tmp_path / "v.gif"
    res = _torchrun(
        2, "generate", str(torch_engines), "--caption-features", str(feats), "--out", str(out), "--frames", "2",
        "--height", "16", "--width", "16", "--steps", "3", "--schedule", "1x2", "--cfg", "0", "--sp", "2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1 and out.is_file(), res.stdout


def test_torchrun_parity_and_bad_layout():
    fixture = str(require(PUBLIC_FIXTURE))
    res = _torchrun(2, "parity", fixture, "--sp", "2", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["passed"] and len(report["cases"]) == 16 and report["backend"] == "torch (cfg 1 x sp 2)"
    res = _torchrun(2, "parity", fixture, "--sp", "2", "--cfg-parallel", timeout=120)
    assert res.returncode != 0
    assert res.stderr.count("error: ParallelError: world size 2 is not cfg x sp = 2 x 2 = 4") == 2, res.stderr


def test_onnx_or_tensorrt_engines_stay_single_device():
    from types import SimpleNamespace

    from lumina_rt.engines.parallel import SequenceParallelVelocity
    from lumina_rt.errors import ParallelError

    onnx = SimpleNamespace(
        patch_combos=("1x2",), backends={"1x2": "onnxruntime"}, engine=lambda combo: SimpleNamespace(combo=combo)
    )
    with pytest.raises(ParallelError, match="scale 1x2 runs on engine backend 'onnxruntime'"):
        SequenceParallelVelocity.from_engines(onnx, mesh=None)


def test_scaling_model():
    from lumina_rt.config import ModelConfig
    from lumina_rt.flops import forward_flops, predict_step_seconds, ulysses_bytes

    cfg = ModelConfig.from_name("f24R960")
    assert ulysses_bytes(cfg, "1x2", 82368, 1) == 0
    # sp 2: each process sends half of its 41,184 tokens' q, k, v and output (bf16) per layer, plus the final gather.
    assert ulysses_bytes(cfg, "1x2", 82368, 2) == 24 * 4 * 41184 * 2304 * 2 // 2 + 41184 * 16 * 2 * 2 * 4
    assert ulysses_bytes(cfg, "2x4", 10297, 4) == ulysses_bytes(cfg, "2x4", 10300, 4)  # padded to a multiple of sp
    one = predict_step_seconds(cfg, "2x2", 41184, 128, 1, 1, 1e12, 1e9)
    assert one == pytest.approx(forward_flops(cfg, "2x2", 41184, 128, batch=2) / 1e12)
    assert predict_step_seconds(cfg, "2x2", 41184, 128, 1, 2, 1e12, 1e9) == pytest.approx(one / 2)


# ------------------------------------------------------------------------------------------- failures under torchrun

FAILURE_TIMEOUT_S = 120.0


def _failed_ranks(stderr: str) -> dict[int, str]:
    """{rank: exit code} from torchrun's summary of failed workers."""
    pairs = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)", stderr)
    return {int(rank): code for rank, code in pairs}


def _generate_argv(tmp_path: Path, engine_dir: Path, out: Path, *extra: str) -> list[str]:
    from safetensors.torch import save_file

    from lumina_rt.parity import load_fixture

    fx = load_fixture(require(PUBLIC_FIXTURE))
    feats = tmp_path / "caption.safetensors"
    save_file({k: fx.get(f"in.{k}")[:1].contiguous() for k in ("cap_feats", "cap_mask")}, str(feats))
    return ["generate", str(engine_dir), "--caption-features", str(feats), "--out", str(out), "--frames", "2",
            "--height", "16", "--steps", "3", "--schedule", "1x2", "--cfg", "0", "--sp", "2", *extra]  # fmt: skip


def test_torchrun_shape_outside_profile_fails_every_rank_without_a_video(tmp_path, torch_engines):
    out = tmp_path / "v.gif"
    start = time.monotonic()
    res = _torchrun(2, *_generate_argv(tmp_path, torch_engines, out, "--width", "4096"), timeout=FAILURE_TIMEOUT_S)
    assert time.monotonic() - start < FAILURE_TIMEOUT_S
    assert res.returncode != 0, res.stdout
    # raised on every rank before any exchange; the first rank to exit with it (2) makes torchrun end the other,
    # which may have printed the same error first
    failed = _failed_ranks(res.stderr)
    assert set(failed) == {0, 1} and "2" in failed.values() and "0" not in failed.values(), res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "lumina-rt generate: error: EngineError" in line]
    assert len(errors) in (1, 2) and len(set(errors)) == 1 and "--width 4096" in errors[0], res.stderr[-3000:]
    assert not out.exists() and "wrote " not in res.stdout


def test_torchrun_rank_raising_mid_run_fails_every_rank_without_a_video(tmp_path, torch_engines):
    """Rank 1 raises after both ranks entered the collectives (injected by the test's launcher script): torchrun
    ends the run, every worker exits non-zero, rank 0 writes nothing, and nothing hangs."""
    out = tmp_path / "v.gif"
    launcher = Path(__file__).with_name("_parallel_fail_rank.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           str(launcher), "1", *_generate_argv(tmp_path, torch_engines, out, "--width", "16")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LUMINA_RT_DIST_TIMEOUT": "30"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    start = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=FAILURE_TIMEOUT_S, env=env)
    assert time.monotonic() - start < FAILURE_TIMEOUT_S
    assert res.returncode != 0, res.stdout
    failed = _failed_ranks(res.stderr)  # rank 1: its error (2); rank 0: gloo's lost peer (1) or torchrun's SIGTERM
    assert set(failed) == {0, 1} and failed[1] == "2" and failed[0] != "0", res.stderr[-3000:]
    message = "lumina-rt generate: error: InputError: injected failure on rank 1 at velocity call 2"
    assert res.stderr.count(message) == 1, res.stderr[-3000:]
    assert not out.exists() and "wrote " not in res.stdout


def test_dist_timeout_from_the_environment(monkeypatch):
    from lumina_rt.distributed import DEFAULT_TIMEOUT_S, dist_timeout_s
    from lumina_rt.errors import ParallelError

    monkeypatch.delenv("LUMINA_RT_DIST_TIMEOUT", raising=False)
    assert dist_timeout_s() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv("LUMINA_RT_DIST_TIMEOUT", "12.5")
    assert dist_timeout_s() == 12.5
    for bad in ("0", "-3", "soon", "inf"):
        monkeypatch.setenv("LUMINA_RT_DIST_TIMEOUT", bad)
        with pytest.raises(ParallelError, match=f"must be a positive number of seconds, got '{bad}'"):
            dist_timeout_s()


@pytest.mark.parametrize(
    "name, nproc, sp", [("nogqa-noqknorm", 2, 2), ("dim192-3heads-1kv", 3, 3)], ids=["nogqa-sp2", "3heads-1kv-sp3"]
)
def test_torchrun_parity_on_generated_fixtures(name, nproc, sp):
    """Fixtures other than the public one: no GQA / no qk-norm / patch sizes 2, 4 / 3 input channels, and 3 query
    heads on 1 KV head (sp 3 > KV heads)."""
    from tests._engine_fixtures import fixture_path

    res = _torchrun(nproc, "parity", str(fixture_path(name)), "--sp", str(sp), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["passed"] and report["backend"] == f"torch (cfg 1 x sp {sp})", report
    assert all(c["passed"] for c in report["cases"]) and len(report["cases"]) >= 10


def test_torchrun_parity_sp_not_dividing_the_heads_of_a_generated_fixture():
    from tests._engine_fixtures import fixture_path

    res = _torchrun(2, "parity", str(fixture_path("dim192-3heads-1kv")), "--sp", "2", timeout=FAILURE_TIMEOUT_S)
    assert res.returncode != 0
    message = "error: ParallelError: sp=2 does not divide the model's 3 query heads; sp may be one of [1, 3]"
    assert 1 <= res.stderr.count(message) <= 2, res.stderr[-3000:]
