"""`torchrun --nproc-per-node 2 -m lumina_rt serve ENGINE_DIR --sp 2` with gloo on the CPU: rank 0 serves HTTP and
owns the store, both ranks run each batch; a deleted job stops on every rank at the same step; a rank that dies
fails the in-flight job with the message and nothing hangs."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time

import pytest

from tests.test_serve import PROMPTS, SIZE, ServerProcess, free_port, httpx, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")


@pytest.fixture(scope="module")
def torch_engines(tmp_path_factory):
    """The built-in model's engines with the torch target (what sequence parallelism runs), no V2A."""
    from lumina_rt.builtin import BUILTIN_SHAPES, builtin_dir
    from lumina_rt.engines.profiles import ServeShapes
    from lumina_rt.export.build_engines import build

    out = tmp_path_factory.mktemp("serve_parallel") / "engines"
    build(builtin_dir(), out, target="torch", shapes=ServeShapes(**BUILTIN_SHAPES), measure=False)
    return out


def start_ranks(engines, store) -> ServerProcess:
    launcher = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()))
    return ServerProcess(
        engines, store, "--sp", "2", "--max-batch", "1", env={"OMP_NUM_THREADS": "1"}, launcher=launcher
    )


def rank_pid(server: ServerProcess, rank: int) -> int:
    """The pid of one worker process torchrun started."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == server.proc.pid and f"RANK={rank}".encode() in env:
            return int(entry)
    raise AssertionError(f"no rank {rank} under torchrun {server.proc.pid}")


def test_two_ranks_serve_cancel_and_stop(torch_engines, tmp_path):
    server = start_ranks(torch_engines, tmp_path / "store")
    try:
        with server.client() as c:
            assert c.get("/ready").json()["backend"] == "torch"
            first = c.post("/v1/videos", json={"prompt": PROMPTS[0], **SIZE, "seed": 3}).json()
            done = wait_for(c, first["id"])
            assert done["status"] == "completed", done
            assert c.get(f"/v1/videos/{first['id']}/content").content[4:8] == b"ftyp"
            long = c.post("/v1/videos", json={"prompt": PROMPTS[1], **SIZE, "steps": 400}).json()
            nxt = c.post("/v1/videos", json={"prompt": PROMPTS[2], **SIZE}).json()
            wait_for(c, long["id"], statuses=("in_progress",))
            while c.get(f"/v1/videos/{long['id']}").json()["progress"] < 2:
                time.sleep(0.01)
            assert c.delete(f"/v1/videos/{long['id']}").status_code == 200
            assert wait_for(c, nxt["id"], timeout=30)["status"] == "completed"  # both ranks left the long job
    finally:
        server.proc.send_signal(signal.SIGTERM)  # torchrun passes it to both ranks (and exits 1 for it)
        server.proc.wait(60)  # nothing hangs


def test_a_rank_that_dies_fails_the_job_and_nothing_hangs(torch_engines, tmp_path):
    store = tmp_path / "store"
    server = start_ranks(torch_engines, store)
    with server.client() as c:
        job = c.post("/v1/videos", json={"prompt": PROMPTS[0], **SIZE, "steps": 400}).json()
        wait_for(c, job["id"], statuses=("in_progress",))
        while c.get(f"/v1/videos/{job['id']}").json()["progress"] < 2:
            time.sleep(0.01)
    os.kill(rank_pid(server, 1), signal.SIGKILL)
    server.proc.wait(90)  # torchrun ends the group: nothing hangs
    with sqlite3.connect(store / "jobs.sqlite3") as db:
        status, code, message = db.execute(
            "SELECT status, error_code, error_message FROM jobs WHERE id = ?", (job["id"],)
        ).fetchone()
    assert (status, code) == ("failed", "rank_failed"), (status, code, message, server.output())
    assert "torchrun group failed" in message
    # a restart on the same store serves again
    single = ServerProcess(torch_engines, store)
    try:
        with single.client() as c:
            assert c.get(f"/v1/videos/{job['id']}").json()["status"] == "failed"
            again = c.post("/v1/videos", json={"prompt": PROMPTS[1], **SIZE}).json()
            assert wait_for(c, again["id"])["status"] == "completed"
    finally:
        single.stop()
    assert httpx is not None
