"""`lumina-rt serve --ray` as users meet it: a real server process that starts a local Ray instance of its own
(loopback only, no dashboard; 2 CPUs: two generator replicas of 1 CPU each, the built-in model), the official
`openai` client, a replica killed with `ray.kill` mid-job, a DELETE of a running job; and `--ray` without the extra.

One Ray server serves the whole module (Ray starts in ~15 s on 2 cores); each test is bounded in jobs and time, and
the module ends by stopping the server (which stops its Ray instance) and checking that no Ray process is left.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_serve import REPO, SIZE, ServerProcess, free_port, wait_for

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # the openai client's notice

RAY_PROCESSES = ("raylet", "gcs_server")  # the daemons of a Ray instance (its workers are their children)


def ray_daemons() -> set[int]:
    """Pids of the Ray daemons running on this machine now."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in RAY_PROCESSES:
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def ray_call(address: str, code: str, timeout: float = 60.0) -> object:
    """Run `code` (which sets `out`) in a separate driver connected to the server's Ray instance; returns `out`.
    (The test process itself never imports ray.)"""
    script = (
        "import json, ray\n"
        f"ray.init(address={address!r}, log_to_driver=False, configure_logging=False)\n"
        f"{code}\n"
        "print('OUT=' + json.dumps(out))\n"
    )
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("OUT=")]
    assert done.returncode == 0 and line, done.stderr[-3000:]
    return json.loads(line[-1][4:])


LIST_GENERATORS = (
    "out = sorted(a['name'].rsplit('#', 1)[1] for a in ray.util.list_named_actors(all_namespaces=True)"
    " if '#Generator#' in a['name'])"
)


@pytest.fixture(scope="module")
def engine_dir_ray() -> Path:
    """The built-in model's engines (with sound, as `serve --builtin`), when the ray extra is installed."""
    if importlib.util.find_spec("ray") is None:  # not imported here: the test process stays a Ray-free client
        pytest.skip("the ray extra is not installed (pip install 'lumina-rt[ray]')")
    from lumina_rt.builtin.engines import builtin_engines

    return builtin_engines(audio=True)


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    if importlib.util.find_spec("ray") is None:  # not imported here: the test process stays a Ray-free client
        pytest.skip("the ray extra is not installed (pip install 'lumina-rt[ray]')")
    from lumina_rt.builtin.engines import builtin_engines

    before = ray_daemons()
    folder = tmp_path_factory.mktemp("ray")
    server = None
    try:
        server = ServerProcess(
            builtin_engines(audio=True), folder / "store", "--ray", "--replicas", "2", "--cpus-per-replica", "1"
        )
        deadline = time.monotonic() + 120  # /ready answers once the ingress runs; the line once serve.run returned
        while not (match := re.search(r"ready at .*Ray at (\S+),", server.output())):
            assert time.monotonic() < deadline and server.proc.poll() is None, server.output()
            time.sleep(0.1)
        server.ray_address = match.group(1)  # type: ignore[attr-defined]
        assert server.ray_address.startswith("127.0.0.1:"), server.output()  # type: ignore[attr-defined]
        yield server
    finally:
        if server is not None:
            server.stop()
        left = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = ray_daemons() - before
            if not left:
                break
            time.sleep(0.5)
        for pid in left:  # ours (started by this server): end them so nothing leaks, then fail
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        assert not left, f"Ray processes left after the server stopped: {sorted(left)}"


def process_tree(root: int) -> set[int]:
    """`root` and every process descended from it (Ray's daemons are the server's children, its workers theirs)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def listening_addresses(pids: set[int]) -> dict[str, set[int]]:
    """TCP addresses ("127.0.0.1:8000", "[::]:41234") the processes `pids` listen on -> their pids (/proc/net)."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
        except OSError:
            pass
    found: dict[str, set[int]] = {}
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            host_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(host_hex)
            # /proc/net prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
            host = ipaddress.ip_address(raw)
            if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped:
                host = host.ipv4_mapped
            text = f"[{host}]" if host.version == 6 else str(host)
            found.setdefault(f"{text}:{int(port_hex, 16)}", set()).add(owner[fields[9]])
    return found


def test_every_port_the_ray_server_and_its_ray_instance_open_is_loopback(ray_server):
    """The server, its local Ray instance's daemons and its Serve replicas listen on 127.0.0.1 / ::1 only (Ray
    Serve's replicas would bind their inter-deployment gRPC servers to [::]:0: `ray_app` rebinds them)."""
    pids = process_tree(ray_server.proc.pid)
    found = listening_addresses(pids)
    assert f"127.0.0.1:{ray_server.port}" in found, found  # the HTTP port: the scan sees the server's sockets
    assert len({pid for owners in found.values() for pid in owners}) >= 4, found  # server, gcs, raylet, replicas
    loopback = {"127.0.0.1", "[::1]"}
    assert {a: p for a, p in found.items() if a.rsplit(":", 1)[0] not in loopback} == {}


def openai_client(server: ServerProcess):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def finished_total(client, outcome: str) -> float:
    text = client.get("/metrics").text
    m = re.search(rf'lumina_rt_jobs_finished_total{{outcome="{outcome}"}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def test_eight_jobs_through_the_openai_client_use_both_replicas(ray_server):
    client = openai_client(ray_server)
    generators = ray_call(ray_server.ray_address, LIST_GENERATORS)
    assert len(generators) == 2, generators
    with ray_server.client() as http:
        ready = http.get("/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        done_before = finished_total(http, "completed")
        videos = [
            client.videos.create(prompt=f"a red circle moving right {i}", **SIZE, extra_body={"seed": i, "steps": 40})
            for i in range(8)
        ]
        # progress moves with the replicas' streamed steps, as in one process (polled on the first job)
        seen = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            video = http.get(f"/v1/videos/{videos[0].id}").json()
            seen.add(video["progress"])
            if video["status"] == "completed":
                break
            time.sleep(0.01)
        assert any(0 < p < 100 for p in seen), seen
        results = [wait_for(http, v.id, timeout=120) for v in videos]
        assert [r["status"] for r in results] == ["completed"] * 8, [r["error"] for r in results]
        replicas = {r["replica"]["replica"] for r in results}
        assert replicas == set(generators), (replicas, generators)  # spread over both replicas
        assert all(r["attempts"] == 1 for r in results)
        assert finished_total(http, "completed") - done_before == 8
        mp4 = client.videos.download_content(videos[-1].id).read()
        assert mp4[4:8] == b"ftyp"


def test_sse_events_move_through_the_steps(ray_server):
    with ray_server.client() as http:
        job = http.post("/v1/videos", json={"prompt": "a blue square moving left", **SIZE, "steps": 60}).json()
        progress = []
        with http.stream("GET", f"/v1/videos/{job['id']}/events", timeout=60) as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    progress.append(json.loads(line[6:])["progress"])
        assert progress[-1] == 100 and len({p for p in progress if 0 < p < 100}) >= 3, progress


def test_a_replica_killed_mid_job_costs_no_job(ray_server):
    with ray_server.client() as http:
        done_before = finished_total(http, "completed")
        # The first two jobs (one per replica) are long enough (1000 steps: ~10 s on an idle core) to be still running
        # when the separate driver that kills a replica has started and connected (seconds); the rest are short. The
        # two long ones differ in steps, so that they are two batches on the two replicas (with equal steps they were
        # batched onto one replica, and the replica killed could be the other, idle one: nothing to retry).
        ids = [
            http.post(
                "/v1/videos",
                json={"prompt": f"a green circle moving up {i}", **SIZE, "seed": i, "steps": 1000 - i if i < 2 else 80},
            ).json()["id"]
            for i in range(6)
        ]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both replicas busy, one job well into its steps
            running = [v for v in (http.get(f"/v1/videos/{i}").json() for i in ids) if v["status"] == "in_progress"]
            if len(running) >= 2 and max(v["progress"] for v in running) >= 10:
                break
            time.sleep(0.02)
        killed = ray_call(
            ray_server.ray_address,
            "name = sorted(a['name'] for a in ray.util.list_named_actors(all_namespaces=True)"
            " if '#Generator#' in a['name'])[0]\n"
            "ray.kill(ray.get_actor(name, namespace='serve'), no_restart=True)\n"
            "out = name.rsplit('#', 1)[1]",
        )
        results = [wait_for(http, i, timeout=180) for i in ids]
        assert [r["status"] for r in results] == ["completed"] * 6, [r["error"] for r in results]
        assert finished_total(http, "completed") - done_before == 6  # none completed twice
        retried = [r for r in results if r["attempts"] == 2]
        assert retried and all(r["attempts"] <= 2 for r in results), [r["attempts"] for r in results]
        assert all(r["replica"]["replica"] != killed for r in retried)  # the retry ran elsewhere
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Ray Serve replaced the replica
            generators = ray_call(ray_server.ray_address, LIST_GENERATORS)
            if len(generators) == 2 and killed not in generators:
                break
            time.sleep(1)
        assert len(generators) == 2 and killed not in generators, (killed, generators)


def test_delete_stops_a_running_job_on_its_replica(ray_server):
    """Both replicas run a long job (different steps: two batches); DELETE of one frees its replica, where the next
    job then runs, within about a step, while the other long job would still run for seconds."""
    with ray_server.client() as http:
        long = []
        for steps in (400, 401):
            job = http.post("/v1/videos", json={"prompt": "a yellow square moving down", **SIZE, "steps": steps})
            assert job.status_code == 200, job.text
            long.append(job.json()["id"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            videos = [http.get(f"/v1/videos/{i}").json() for i in long]
            if all(v["status"] == "in_progress" and v["progress"] >= 3 for v in videos):
                break
            time.sleep(0.02)
        assert all(v["status"] == "in_progress" for v in videos), videos
        p0, t0 = http.get(f"/v1/videos/{long[1]}").json()["progress"], time.monotonic()
        assert http.delete(f"/v1/videos/{long[0]}").json()["deleted"] is True
        short = http.post("/v1/videos", json={"prompt": "a red circle", **SIZE}).json()["id"]
        video = wait_for(http, short, timeout=60)
        assert video["status"] == "completed", video["error"]
        other = http.get(f"/v1/videos/{long[1]}").json()
        assert other["status"] == "in_progress"  # the other replica is still busy: the short job ran on the first
        # a step's time here and now, from the other long job: 1 % of its progress is 4 steps
        elapsed = time.monotonic() - t0
        step_s = elapsed / ((other["progress"] - p0) * 4) if other["progress"] > p0 else elapsed
        wait = video["replica"]["wait_s"]  # how long the short job waited for the deleted job's replica
        print(f"\nreplica free {wait * 1000:.0f} ms after the DELETE (a sampler step: {step_s * 1000:.1f} ms)")
        assert wait <= 2 * step_s + 0.5, (wait, step_s)
        assert http.get(f"/v1/videos/{long[0]}").status_code == 404
        http.delete(f"/v1/videos/{long[1]}")


def test_ray_flag_without_the_extra_is_a_typed_error(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if the ray extra were not installed
        "from lumina_rt.cli import main\n"
        f"sys.exit(main(['serve', '--builtin', '--ray', '--store', {str(tmp_path)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "'ray' extra" in lines[0], done.stderr
    assert "pip install 'lumina-rt[ray]'" in done.stderr and "Traceback" not in done.stderr
    from lumina_rt.errors import BackendUnavailableError
    from lumina_rt.serve import ray_app

    if "ray" not in sys.modules:
        sys.modules["ray"] = None  # type: ignore[assignment]
        try:
            with pytest.raises(BackendUnavailableError, match="lumina-rt\\[ray\\]"):
                ray_app.require_ray()
        finally:
            del sys.modules["ray"]


def test_ray_flags_are_checked(tmp_path):
    for args, words in (
        (["--replicas", "2"], "go with --ray"),
        (["--ray", "--autoscale", "3"], "MIN:MAX"),
        (["--ray", "--autoscale", "3:1"], "MIN <= MAX"),
        (["--ray", "--replicas", "0"], "at least 1"),
    ):
        cmd = [sys.executable, "-m", "lumina_rt", "serve", "--builtin", "--store", str(tmp_path), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)


def test_engines_that_cannot_load_stop_the_start_with_the_reason(tmp_path):
    """A generator (and the ingress) over engines whose weights file is corrupt: the app never becomes ready, the
    command exits 2 with the replicas' reason, and its Ray instance is gone."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed (pip install 'lumina-rt[ray]')")
    from lumina_rt.builtin.engines import builtin_engines

    engines = tmp_path / "engines"
    shutil.copytree(builtin_engines(audio=True), engines, ignore=shutil.ignore_patterns(".*"))
    with open(engines / "weights.bin", "r+b") as f:  # same size, other bytes: the SHA-256 check refuses it
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = ray_daemons()
    cmd = [sys.executable, "-m", "lumina_rt", "serve", str(engines), "--ray", "--replicas", "1"]
    cmd += ["--port", str(free_port()), "--store", str(tmp_path / "store")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=180)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "did not start" in last and "Generator" in last and "weights.bin" in last, last
    assert not ray_daemons() - before


def test_a_job_whose_worker_dies_each_time_fails_after_the_attempt_limit(tmp_path):
    """The scheduler's side of a lost replica, without Ray: an executor that loses its process on every try (as a
    job that kills each replica it runs on) -> queued again with each attempt counted, then failed with the reason."""
    from lumina_rt.serve.scheduler import Scheduler, WorkerLost
    from lumina_rt.serve.store import JobStore

    store = JobStore(tmp_path / "store", max_attempts=3)
    tries = []

    def executor(items, callback, stop):
        tries.append(items[0]["prompt"])
        raise WorkerLost("the generator replica running this job was lost (ActorDiedError)")

    scheduler = Scheduler(None, store, max_batch=1, executor=executor, workers=2, sweep_seconds=60)
    params = {"prompt": "a red circle", "seed": 0, "fps": 8, "frames": 8, "height": 32, "width": 32}
    job, _ = store.add(model="lumina-video", prompt="a red circle", seconds="1", size="32x32", params=params)
    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while (current := store.get(job.id)) is not None and current.status != "failed":
            assert time.monotonic() < deadline, current
            time.sleep(0.01)
    finally:
        scheduler.stop()
        store.close()
    assert current is not None and len(tries) == 3 and current.attempts == 3
    assert current.error_code == "worker_lost"
    assert current.error_message == (
        "the generator replica running this job was lost (ActorDiedError) (during each of 3 attempts)"
    )


def test_serve_joins_a_cluster_started_with_ray_start(engine_dir_ray, tmp_path):
    """`ray start --head` (loopback only, as one node of a cluster would be), then `lumina-rt serve --ray --address`:
    a job completes; stopping the server deletes its app and leaves the cluster running; the cluster's own
    `ray start --block` process (ended by its pid) takes its processes with it."""
    before = ray_daemons()
    port = free_port()
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    ray_cli = Path(sys.executable).with_name("ray")
    log = tmp_path / "head.log"
    cmd = [str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "1"]
    cmd += ["--include-dashboard=false", "--disable-usage-stats"]
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    server = None
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            assert time.monotonic() < deadline and head.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        server = ServerProcess(
            engine_dir_ray, tmp_path / "store", "--ray", "--address", f"127.0.0.1:{port}", "--replicas", "1", env=env
        )
        deadline = time.monotonic() + 120
        while "ready at" not in server.output():
            assert time.monotonic() < deadline and server.proc.poll() is None, server.output()
            time.sleep(0.1)
        with server.client() as http:
            job = http.post("/v1/videos", json={"prompt": "a red circle moving right", **SIZE}).json()
            video = wait_for(http, job["id"], timeout=60)
        assert video["status"] == "completed" and video["replica"]["replica"], video
        server.stop()
        assert server.proc.returncode == 0, server.output()
        time.sleep(1)
        assert head.poll() is None, "stopping the server stopped the cluster it had joined"
    finally:
        if server is not None:
            server.stop()
        head.terminate()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(10)
        deadline = time.monotonic() + 30
        while (left := ray_daemons() - before) and time.monotonic() < deadline:
            time.sleep(0.5)
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` names its cluster there; `ray stop` clears it
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink(missing_ok=True)
        for pid in left:  # started by this test's `ray start`: end them so nothing leaks, then fail
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert not left, f"Ray processes left after `ray start --block` ended: {sorted(left)}"
