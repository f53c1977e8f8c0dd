"""`lumina-rt serve` under load: videos per minute and p50 / p95 latency at concurrency 1, 4, 8 on the built-in
model, batching on vs off in one run, and the server's overhead over a direct `Runtime.generate` at concurrency 1.

Not a timed unit test: it reports (bench/report.md, bench/report.json). A real server process on a free loopback
port per setting; each client thread submits a job, polls it until it completes and downloads the MP4.
Request: 8 frames of 32 x 32 (1 s at 8 fps), the built-in model's default preset (15 model evaluations, guidance:
at most 2 jobs per batch with its engines).
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest
import report_rows

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")

from tests.test_serve import PROMPTS, SIZE, ServerProcess  # noqa: E402  (pyproject: pytest puts the root on sys.path)

JOBS = {1: 6, 4: 12, 8: 16}  # jobs per concurrency level
SECTION = "Serving (built-in model, 8 x 32 x 32, real server process)"


@pytest.fixture(scope="module")
def engine_dir() -> Path:
    from lumina_rt.builtin.engines import builtin_engines

    return builtin_engines(audio=True)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_load(server: ServerProcess, concurrency: int, jobs: int) -> dict:
    latencies: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    counter = iter(range(jobs))

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in counter:
                t0 = time.perf_counter()
                job = c.post("/v1/videos", json={"prompt": PROMPTS[i % 4], **SIZE, "seed": i}).json()
                while (video := c.get(f"/v1/videos/{job['id']}").json())["status"] not in ("completed", "failed"):
                    time.sleep(0.005)
                assert video["status"] == "completed", video
                assert c.get(f"/v1/videos/{job['id']}/content").status_code == 200
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    batches.append(video["batch_size"])

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.perf_counter() - start
    assert len(latencies) == jobs
    return {
        "videos_per_min": 60 * jobs / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": percentile(latencies, 0.95),
        "mean_batch": sum(batches) / len(batches),
    }


def served_once(server: ServerProcess, seed: int) -> float:
    """Seconds from submitting one job to having its MP4 (polling every 5 ms)."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        t0 = time.perf_counter()
        job = c.post("/v1/videos", json={"prompt": PROMPTS[0], **SIZE, "seed": seed}).json()
        while c.get(f"/v1/videos/{job['id']}").json()["status"] not in ("completed", "failed"):
            time.sleep(0.005)
        assert c.get(f"/v1/videos/{job['id']}/content").status_code == 200
        return time.perf_counter() - t0


def test_serve_throughput_latency_and_overhead(engine_dir, tmp_path):
    from lumina_rt.runtime import Runtime

    runtime = Runtime(engine_dir)
    kwargs = dict(frames=8, height=32, width=32, progress=False)
    out = tmp_path / "direct.mp4"
    runtime.generate(PROMPTS[0], **kwargs).save(out, scale=1)  # warm-up
    results = {}
    for name, flags in (("on", ("--max-batch", "4")), ("off", ("--max-batch", "1"))):
        server = ServerProcess(engine_dir, tmp_path / f"store-{name}", *flags)
        try:
            run_load(server, 1, 2)  # warm-up
            for concurrency, jobs in JOBS.items():
                r = run_load(server, concurrency, jobs)
                results[(name, concurrency)] = r
                report_rows.add(SECTION, {"batching": name, "concurrency": concurrency, "jobs": jobs, **r})
            if name == "off":  # overhead at concurrency 1: served and direct runs alternate (the machine is noisy)
                direct, saved, served = [], [], []
                for k in range(9):
                    t0 = time.perf_counter()
                    result = runtime.generate(PROMPTS[0], seed=k, **kwargs)
                    direct.append(time.perf_counter() - t0)
                    result.save(out, scale=1)
                    saved.append(time.perf_counter() - t0)
                    served.append(served_once(server, k))
        finally:
            server.stop()

    direct_s, saved_s, served_s = (statistics.median(v) for v in (direct, saved, served))
    report_rows.SUMMARY["serve_overhead_over_generate"] = {
        "value": served_s / direct_s - 1,
        "sizes": f"concurrency 1, 9 alternating runs: server median {served_s:.3f} s (submit -> completed -> MP4 "
        f"downloaded) vs Runtime.generate {direct_s:.3f} s",
    }
    report_rows.SUMMARY["serve_overhead_over_generate_and_save"] = {
        "value": served_s / saved_s - 1,
        "sizes": f"the same, against Runtime.generate + GenerationResult.save(mp4) {saved_s:.3f} s",
    }
    for concurrency in JOBS:
        on, off = results[("on", concurrency)], results[("off", concurrency)]
        report_rows.SUMMARY[f"serve_batching_speedup_c{concurrency}"] = {
            "value": on["videos_per_min"] / off["videos_per_min"],
            "sizes": f"videos/min batching on / off at concurrency {concurrency}",
        }


RAY_SECTION = "Serving on Ray Serve (built-in model, 8 x 32 x 32, local Ray instance, 1 CPU per generator replica)"
RAY_JOBS = 16  # at concurrency 8


def ray_server(engine_dir: Path, store: Path, replicas: int, cpus: int = 1) -> ServerProcess:
    """`lumina-rt serve --ray --replicas N` (its own local Ray instance, loopback only), once serve.run returned."""
    flags = ("--ray", "--replicas", str(replicas), "--cpus-per-replica", str(cpus))
    server = ServerProcess(engine_dir, store, *flags)
    deadline = time.monotonic() + 120
    while "ready at" not in server.output():
        if time.monotonic() > deadline or server.proc.poll() is not None:
            server.stop()
            raise AssertionError(server.output())
        time.sleep(0.1)
    return server


def test_serve_on_ray_replicas_and_ingress_overhead(engine_dir, tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed (pip install 'lumina-rt[ray]')")
    rates = {}
    for replicas in (1, 2):  # each replica on its own core (1 CPU, 1 engine thread)
        server = ray_server(engine_dir, tmp_path / f"ray-store-{replicas}", replicas)
        try:
            run_load(server, 2, 4)  # warm-up: every replica has run a batch
            r = run_load(server, 8, RAY_JOBS)
            rates[replicas] = r["videos_per_min"]
            report_rows.add(RAY_SECTION, {"replicas": replicas, "concurrency": 8, "jobs": RAY_JOBS, **r})
        finally:
            server.stop()
    report_rows.SUMMARY["serve_ray_speedup_2_over_1_replicas"] = {
        "value": rates[2] / rates[1],
        "sizes": f"videos/min at concurrency 8: 2 replicas {rates[2]:.0f}, 1 replica {rates[1]:.0f} (1 CPU each)",
    }
    # The ingress's overhead: one job at a time, one replica of 2 CPUs (the engine threads of the one-process
    # server) against the one-process server, both running, alternating (the machine is noisy).
    server = ray_server(engine_dir, tmp_path / "ray-store-overhead", 1, cpus=2)
    local = ServerProcess(engine_dir, tmp_path / "local-store", "--max-batch", "1")
    try:
        served_once(server, 0), served_once(local, 0)
        on_ray, in_process = [], []
        for k in range(9):
            on_ray.append(served_once(server, k))
            in_process.append(served_once(local, k))
    finally:
        local.stop()
        server.stop()
    ray_s, local_s = statistics.median(on_ray), statistics.median(in_process)
    report_rows.SUMMARY["serve_ray_ingress_overhead_per_job_s"] = {
        "value": ray_s - local_s,
        "sizes": f"concurrency 1, 9 alternating runs: Ray Serve (1 replica, 2 CPUs) median {ray_s:.3f} s vs the "
        f"one-process server {local_s:.3f} s (submit -> completed -> MP4 downloaded)",
    }
