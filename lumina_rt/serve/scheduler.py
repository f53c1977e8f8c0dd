"""The worker of `lumina-rt serve`: takes queued jobs from the store in arrival order, batches compatible ones into
one `generate` call, reports per-step progress, stops cancelled jobs at their next sampler step, writes the outputs
atomically, and sweeps expired ones.

Batching: the oldest queued job always runs next (no job starves); queued jobs that can share its `generate` call
(same sizes, fps, steps, preset, schedule, guidance, motion, audio; no step caching) join it, up to the engines'
largest batch and `max_batch`, waiting at most `batch_wait_ms` for company. Each job's noise comes from its own seed
(`lumina_rt.pipeline.make_noise`), so its video is the one the same request makes alone. A batch that raises is
retried item by item: a failing job fails alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from lumina_rt.errors import Cancelled, LuminaError
from lumina_rt.files import atomic_path
from lumina_rt.pipeline import make_noise
from lumina_rt.serve.store import Job, JobStore

logger = logging.getLogger(__name__)

# The generation fields that must be equal for jobs to share one `generate` call (prompt, negative prompt and seed
# may differ: each job keeps its own noise).
BATCH_FIELDS = (
    "frames",
    "height",
    "width",
    "fps",
    "steps",
    "preset",
    "schedule",
    "cfg",
    "motion",
    "neg_motion",
    "unconditional",
)
AUDIO_FIELDS = ("audio", "audio_steps", "seed")  # the sound model takes one seed per call

OUTPUT_FILES = {"video": ("video.mp4", "video/mp4"), "thumbnail": ("thumbnail.png", "image/png")}
OUTPUT_FILES["spritesheet"] = ("spritesheet.png", "image/png")


def batch_key(params: dict[str, Any]) -> str | None:
    """What a job must share with others to run in one batch; None: it runs alone (step caching decides per
    batch, not per item)."""
    if params.get("cache") not in (None, "off"):
        return None
    fields = BATCH_FIELDS + (AUDIO_FIELDS if params.get("audio") else ("audio",))
    return json.dumps({k: params.get(k) for k in fields}, sort_keys=True)


class Metrics:
    """Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

    def __init__(self, store: JobStore, scheduler: Scheduler):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        queue = Gauge("lumina_rt_queue_depth", "queued jobs", registry=self.registry)
        queue.set_function(lambda: store.counts()["queued"])
        self.in_flight = Gauge("lumina_rt_jobs_in_flight", "jobs the worker is running", registry=self.registry)
        by_status = Gauge("lumina_rt_jobs", "jobs in the store by status", ["status"], registry=self.registry)
        for status in ("queued", "in_progress", "completed", "failed"):
            by_status.labels(status).set_function(lambda s=status: store.counts()[s])
        self.finished = Counter(
            "lumina_rt_jobs_finished", "jobs finished by outcome", ["outcome"], registry=self.registry
        )
        self.step_seconds = Histogram(
            "lumina_rt_step_seconds",
            "seconds per sampler step (one batch)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lumina_rt_batch_size", "jobs per generate call", buckets=(1, 2, 3, 4, 6, 8, 16), registry=self.registry
        )
        self.rejected = Counter(
            "lumina_rt_requests_rejected", "requests refused, by reason", ["reason"], registry=self.registry
        )
        self.ready = Gauge(
            "lumina_rt_ready", "1 when the engines are loaded and the worker runs", registry=self.registry
        )
        self.ready.set_function(lambda: 1.0 if scheduler.ready else 0.0)


class Scheduler:
    """One worker thread over one engine set (`runtime`: a `lumina_rt.Runtime`) and a sweeper thread."""

    def __init__(
        self,
        runtime: Any,
        store: JobStore,
        *,
        max_batch: int = 4,
        batch_wait_ms: float = 10.0,
        ttl_seconds: float | None = 24 * 3600.0,
        sweep_seconds: float = 60.0,
        link: RankLink | None = None,
        executor: Executor | None = None,
        workers: int = 1,
    ):
        """`link`: under torchrun, rank 0's link to the other ranks (each runs every batch: `follow`). `executor`:
        what runs a batch (default: `generate_batch` on `runtime` in this process; under Ray Serve, a generator
        replica: `lumina_rt.serve.ray_app`); `workers`: batches run at the same time (one per replica)."""
        self.runtime = runtime
        self.link = link
        self.executor: Executor = executor or (lambda items, callback, stop: generate_batch(runtime, items, callback))
        self.workers = max(1, int(workers))
        self._batches: dict[int, tuple[list[str], threading.Event]] = {}  # running batches: their ids, stop flag
        self.store = store
        self.max_batch = max(1, int(max_batch))
        self.batch_wait = max(0.0, float(batch_wait_ms)) / 1000.0
        self.ttl_seconds = ttl_seconds
        self.sweep_seconds = float(sweep_seconds)
        self.metrics = Metrics(store, self)
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._cancelled: set[str] = set()
        self._running: set[str] = set()
        self._threads: list[threading.Thread] = []
        self.ready = False
        self.seconds_per_job = 1.0  # running mean, for Retry-After
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="lumina-rt-writer")

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        recovered = self.store.recover()
        if any(recovered.values()):
            logger.info("store recovered: %s", recovered)
        names = [f"lumina-rt-worker-{i}" if self.workers > 1 else "lumina-rt-worker" for i in range(self.workers)]
        for name, target in [*((n, self._work) for n in names), ("lumina-rt-sweeper", self._sweep)]:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.ready = True

    def stop(self, timeout: float = 30.0) -> None:
        self.ready = False
        self._stop.set()
        self.notify()
        for thread in self._threads:
            thread.join(timeout)
        self._writer.shutdown(wait=True)

    def notify(self) -> None:
        """A job was queued."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Stop the job at its next sampler step if it is running (the store has already marked it deleted)."""
        self._cancelled.add(job_id)
        for ids, stop in list(self._batches.values()):
            if job_id in ids and all(i in self._cancelled for i in ids):
                stop.set()  # an executor in another process stops the batch now, not at the next step's report
        return job_id in self._running

    def retry_after(self) -> int:
        """Seconds a client should wait before submitting again when the queue is full."""
        queued = self.store.counts()["queued"]
        return max(1, int(round(self.seconds_per_job * queued / self.max_batch)))

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self._next_batch()
                if jobs:
                    self._run_batch(jobs)
            except Exception:  # the worker must outlive any error (a broken store, a bug): log, wait, go on
                logger.exception("worker error")
                self._stop.wait(1.0)
        if self.link is not None and not self.link.broken:
            self.link.send(None)  # the other ranks' `follow` returns

    def _max_batch_for(self, params: dict[str, Any]) -> int:
        pipe = self.runtime.pipeline
        rows = min((p.batch.max for p in self.runtime.engines.profiles.values()), default=1)
        config = pipe.sample_config(
            params.get("preset"), params.get("steps"), params.get("schedule"), params.get("cfg"), params.get("motion")
        )
        return max(1, min(self.max_batch, rows // (2 if config.guided else 1)))

    def _next_batch(self) -> list[Job]:
        """The oldest queued job and the compatible ones queued behind it (waiting up to batch_wait for more)."""
        with self._wake:
            queued = self.store.queued()
            while not queued:
                if self._stop.is_set():
                    return []
                self._wake.wait(1.0)
                queued = self.store.queued()
        first = queued[0]
        key = batch_key(first.params)
        if key is None or self.max_batch == 1:
            return [first]
        limit = self._max_batch_for(first.params)
        deadline = time.monotonic() + self.batch_wait
        while True:
            same = [j for j in queued if batch_key(j.params) == key][:limit]
            left = deadline - time.monotonic()
            if len(same) >= limit or left <= 0 or self._stop.is_set():
                return same
            with self._wake:
                self._wake.wait(left)
            queued = self.store.queued()
            if not queued or queued[0].id != first.id:  # the first was deleted meanwhile: start over
                return []

    def _run_batch(self, picked: list[Job]) -> None:
        jobs = self.store.start([j.id for j in picked])
        if not jobs:
            return
        ids = [j.id for j in jobs]
        self._running.update(ids)
        stop = threading.Event()
        self._batches[id(stop)] = (ids, stop)
        self.metrics.in_flight.inc(len(jobs))
        self.metrics.batch_size.observe(len(jobs))
        try:
            try:
                self._generate(jobs, stop)
            except Cancelled:
                logger.info("cancelled %s", ", ".join(ids))
                self.metrics.finished.labels("cancelled").inc(len(jobs))
            except WorkerLost as exc:
                self._retry(jobs, exc)
            except Exception as exc:
                if self.link is not None and not isinstance(exc, LuminaError):
                    self._lost_rank(jobs, exc)
                elif len(jobs) == 1:
                    self._fail(jobs[0], exc)
                else:  # one bad item must not fail the others: run them one by one
                    logger.warning("batch of %d failed (%s): running its jobs one by one", len(jobs), exc)
                    for job in jobs:
                        self.store.requeue(job.id)
                    for job in jobs:
                        if not self._stop.is_set():
                            self._run_batch([job])
        finally:
            self._batches.pop(id(stop), None)
            self._running.difference_update(ids)
            self._cancelled.difference_update(ids)
            self.metrics.in_flight.dec(len(jobs))

    def _retry(self, jobs: list[Job], exc: WorkerLost) -> None:
        """The process running the batch died (a generator replica killed, out of memory): its jobs go back to the
        queue, their attempts counted, and fail (`worker_lost`) once they reach the store's attempt limit."""
        for job in jobs:
            if job.id in self._cancelled:
                continue
            if self.store.retry(job.id, "worker_lost", str(exc), self.ttl_seconds):
                logger.warning("job %s: %s; queued again (attempt %d done)", job.id, exc, job.attempts)
            else:
                logger.error("job %s failed: %s (attempt %d of %d)", job.id, exc, job.attempts, self.store.max_attempts)
                self.metrics.finished.labels("failed").inc()
        self.notify()

    def _lost_rank(self, jobs: list[Job], exc: BaseException) -> None:
        """A process of the torchrun group failed mid-batch: fail its jobs with the message, stop taking jobs
        (/ready turns false; queued jobs wait in the store for a restart)."""
        message = f"a process of the torchrun group failed: {type(exc).__name__}: {exc}"
        logger.error("%s; not ready any more", message)
        for job in jobs:
            self.store.fail(job.id, "rank_failed", message, self.ttl_seconds)
        self.metrics.finished.labels("failed").inc(len(jobs))
        assert self.link is not None
        self.link.broken = True
        self.ready = False
        self._stop.set()

    def _fail(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            code, message = "storage_error", f"could not write the output: {exc}"
        elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
            code, message = "out_of_memory", f"out of memory: {exc}"
        elif isinstance(exc, LuminaError):
            code, message = "invalid_request", f"{type(exc).__name__}: {exc}"
        else:
            code, message = "generation_failed", f"{type(exc).__name__}: {exc}"
        logger.warning("job %s failed: %s", job.id, message)
        self.store.fail(job.id, code, message, self.ttl_seconds)
        self.metrics.finished.labels("failed").inc()

    def _callback(self, jobs: list[Job]) -> Callable[[int, int, str], bool]:
        last = [time.perf_counter()]
        reported = [-1]

        def on_step(done: int, total: int, combo: str) -> bool:
            now = time.perf_counter()
            self.metrics.step_seconds.observe(now - last[0])
            last[0] = now
            progress = min(99, int(100 * done / max(total, 1)))
            if progress != reported[0]:
                reported[0] = progress
                for job in jobs:
                    self.store.set_progress(job.id, progress)
            return all(j.id in self._cancelled for j in jobs)

        return on_step

    def _generate(self, jobs: list[Job], stop: threading.Event) -> None:
        p = jobs[0].params
        start = time.perf_counter()
        items = [j.params for j in jobs]
        callback = self._callback(jobs)
        if self.link is not None:
            self.link.send(items)
            callback = self.link.stepper(callback)
        result = self.executor(items, callback, stop)
        served_by = getattr(result, "served_by", None)  # {"replica", "node"} from an executor in another process
        run_seconds = time.perf_counter() - start
        self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * run_seconds / len(jobs)
        for i, job in enumerate(jobs):
            if job.id in self._cancelled:
                self.metrics.finished.labels("cancelled").inc()
                continue
            written = time.perf_counter()
            try:
                self._write_outputs(job, _item(result, i), p["fps"])
            except Exception as exc:
                self._fail(job, exc)
                continue
            if job.id in self._cancelled:  # deleted while its files were written
                self.store.delete(job.id)
                continue
            queued_seconds = (job.started_at or time.time()) - job.params.get("submitted_at", job.created_at)
            timings = {
                "queued_s": round(max(queued_seconds, 0.0), 4),
                "generate_s": round(run_seconds, 4),
                "write_s": round(time.perf_counter() - written, 4),
            }
            self.store.complete(
                job.id,
                {
                    "evaluations": result.evaluations,
                    "backend": result.backend,
                    "batch_size": len(jobs),
                    "timings": timings,
                    "cache": result.cache,
                    "audio": result.audio is not None,
                    **({"replica": served_by} if served_by else {}),
                },
                self.ttl_seconds,
            )
            self.metrics.finished.labels("completed").inc()

    def _write_outputs(self, job: Job, result: Any, fps: float) -> None:
        """video.mp4 (with its sound), thumbnail.png and spritesheet.png, each renamed into place when complete."""
        import imageio.v3 as iio

        folder = self.store.output_dir(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        frames = result.video[0].clamp(0, 1)  # [3, F, H, W]
        pixels = (frames.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()  # [F, H, W, 3]

        def images() -> None:
            with atomic_path(folder / OUTPUT_FILES["thumbnail"][0], keep_suffix=True) as tmp:
                iio.imwrite(tmp, pixels[len(pixels) // 2], extension=".png")
            with atomic_path(folder / OUTPUT_FILES["spritesheet"][0], keep_suffix=True) as tmp:
                iio.imwrite(tmp, _sprite_sheet(pixels), extension=".png")

        side = self._writer.submit(images)  # beside the MP4 encode (an ffmpeg process)
        with atomic_path(folder / OUTPUT_FILES["video"][0], keep_suffix=True) as tmp:
            result.save(tmp, fps=fps, scale=1)
        side.result()

    # ------------------------------------------------------------------ expiry
    def _sweep(self) -> None:
        while not self._stop.wait(self.sweep_seconds):
            self.sweep()

    def sweep(self) -> int:
        """Delete the jobs (and outputs) whose expires_at has passed; returns how many."""
        try:
            expired = self.store.expired()
            for job_id in expired:
                self.store.delete(job_id)
            if expired:
                logger.info("expired %d job(s)", len(expired))
            return len(expired)
        except Exception:
            logger.exception("sweeper error")
            return 0


class WorkerLost(RuntimeError):
    """An executor lost the process running a batch (not the batch's own error): its jobs are run again."""


# What runs one batch: (items, per-step callback, stop flag set when all its jobs were deleted) -> GenerationResult.
Executor = Callable[[list[dict[str, Any]], Callable[[int, int, str], bool], threading.Event], Any]


class RankLink:
    """Under torchrun: rank 0 sends each batch's items to the other ranks and, after each sampler step, whether to
    stop (so every rank leaves sampling at the same step). A gloo group of its own, made on every rank in the same
    order (`RankLink()` right after the `Runtime`)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.group: Any = dist.new_group(backend="gloo")
        self.rank = dist.get_rank()
        self.broken = False

    def send(self, items: list[dict[str, Any]] | None) -> None:
        self.dist.broadcast_object_list([items], src=0, group=self.group)

    def receive(self) -> list[dict[str, Any]] | None:
        box: list[Any] = [None]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def stop(self, stop: bool) -> bool:
        flag = torch.tensor([1 if stop else 0])
        self.dist.broadcast(flag, src=0, group=self.group)
        return bool(flag.item())

    def stepper(self, callback: Callable[[int, int, str], Any]) -> Callable[[int, int, str], bool]:
        """Rank 0's callback: its own decision, shared with the other ranks."""
        return lambda done, total, combo: self.stop(callback(done, total, combo) is True)


def follow(runtime: Any, link: RankLink) -> None:
    """The loop of ranks other than 0: run every batch rank 0 sends, stop where it stops, until it sends None."""
    while True:
        items = link.receive()
        if items is None:
            return
        try:
            generate_batch(runtime, items, lambda done, total, combo: link.stop(False))
        except Cancelled:
            pass
        except LuminaError as exc:  # rank 0 meets the same error with the same inputs and fails the job
            logger.warning("rank %d: %s", link.rank, exc)


def generate_batch(runtime: Any, items: list[dict[str, Any]], callback: Callable[[int, int, str], Any] | None = None):
    """One `generate` call for jobs of one batch key (`items`: their params); item i's noise is
    `make_noise((1, C, f, h, w), seed_i)`, what the same request alone uses, so its video does not depend on the batch.
    """
    p = items[0]
    pipe = runtime.pipeline
    grid = pipe.latent_shape(p["frames"], p["height"], p["width"])
    noise = torch.cat([make_noise((1, pipe.latent.channels, *grid), item["seed"]) for item in items])
    names = ("steps", "preset", "schedule", "cfg", "motion", "neg_motion", "audio_steps", "cache")
    options = {k: p[k] for k in names if p.get(k) is not None}
    return runtime.generate(
        [item["prompt"] for item in items],
        negative_prompt=[item.get("negative_prompt") or "" for item in items],
        frames=p["frames"],
        height=p["height"],
        width=p["width"],
        fps=p["fps"],
        seed=p["seed"],
        noise=noise,
        audio=bool(p.get("audio")),
        unconditional=bool(p.get("unconditional")),
        progress=False,
        callback=callback,
        **options,
    )


def _item(result: Any, i: int) -> Any:
    """Item i of a batched GenerationResult, as a result of its own."""
    pick = lambda t: None if t is None else t[i : i + 1]  # noqa: E731
    return dataclasses.replace(
        result, latents=pick(result.latents), frames=pick(result.frames), audio=pick(result.audio)
    )


def _sprite_sheet(pixels: np.ndarray, columns: int = 8) -> np.ndarray:
    """Frames [F, H, W, 3] tiled row by row, `columns` per row."""
    f, h, w, c = pixels.shape
    cols = min(columns, f)
    rows = -(-f // cols)
    sheet = np.zeros((rows * h, cols * w, c), dtype=pixels.dtype)
    for k in range(f):
        r, q = divmod(k, cols)
        sheet[r * h : (r + 1) * h, q * w : (q + 1) * w] = pixels[k]
    return sheet
