"""`lumina-rt serve --ray`: the service as a Ray Serve application of two deployments (docs/serving.md, "Ray Serve").

- `Ingress` (one replica, on the head node): the FastAPI app of `lumina-rt serve` (same routes, checks, store, page)
  and its scheduler, whose workers hand each batch to a generator replica instead of running it in-process;
- `Generator` (N replicas, or autoscaled): one engine set each, on its GPU(s) or CPU threads; runs one batch at a
  time (`max_ongoing_requests=1`) and streams a step event after each sampler step, then the result.

Progress moves with the streamed steps; a DELETE cancels the stream (Ray Serve's request cancellation), which sets
the replica's stop flag, so sampling stops at its next step. A replica that dies mid-batch (killed, out of memory)
raises `WorkerLost` at the ingress: its jobs go back to the queue with the attempt counted and fail after the store's
attempt limit; Ray Serve starts a new replica. A replica whose engines cannot load (or were built from other weights
than the ingress's) fails its constructor: the deployment never becomes ready and `serve_on_ray` raises the reason.

Ray is imported only here, and only when `--ray` is used: without the `ray` extra, `require_ray` raises
`BackendUnavailableError` naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumina_rt.errors import BackendUnavailableError, Cancelled, EngineError, InputError
from lumina_rt.serve import ServeOptions, default_store

logger = logging.getLogger(__name__)

APP_NAME = "lumina-rt"
EXTRA = "ray"


def require_ray(local: bool = False) -> tuple[Any, Any]:
    """(ray, ray.serve), or BackendUnavailableError naming the `ray` extra. `local`: this process will start a
    single-node instance of its own: Ray then takes 127.0.0.1 as the node's address, so its own servers listen on
    the loopback interface (read when ray is first imported); Ray Serve replicas' inter-deployment gRPC servers,
    hard-coded to `[::]:0` in Ray Serve 2.60, are rebound to 127.0.0.1 there (`_bind_replica_grpc_to_loopback`)."""
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's single-node mode: loopback only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise BackendUnavailableError(
            f"--ray needs the {EXTRA!r} extra (Ray Serve): pip install 'lumina-rt[{EXTRA}]' ({exc})"
        ) from None
    return ray, serve


def _node_is_loopback() -> bool:
    try:
        import ray

        return ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback
    except Exception:  # not in a Ray worker, or an address Ray cannot tell: leave Ray's bind as it is
        return False


def _bind_replica_grpc_to_loopback() -> None:
    """Inside a Ray Serve replica on a loopback-only node (the local instance `serve_on_ray` starts), have the
    replica's inter-deployment gRPC server listen on 127.0.0.1 instead of on every interface.

    Ray Serve 2.60 binds it to a hard-coded "[::]:0" in `Replica._on_initialized`, through the name
    `add_port_to_grpc_server` in its replica module. A replica imports this module while it unpickles its
    deployment (`Generator`, `Ingress`), before that call, so the address is rewritten there. On a cluster node with
    a routable address the bind stays as Ray Serve makes it: other nodes must reach it
    (tests/test_serve_ray.py checks every listening socket of a local server's process tree)."""
    replica = sys.modules.get("ray.serve._private.replica")  # loaded in a replica process, where it matters
    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None or getattr(add_port, "lumina_rt_loopback", False):
        return

    def loopback_add_port(server: Any, address: str) -> Any:
        if address.startswith("[::]:") and _node_is_loopback():
            address = "127.0.0.1:" + address[len("[::]:") :]
        return add_port(server, address)

    loopback_add_port.lumina_rt_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback_add_port  # type: ignore[union-attr]


_bind_replica_grpc_to_loopback()


@dataclass
class RayOptions:
    """The `--ray` flags of `lumina-rt serve`."""

    address: str | None = None  # an existing cluster (`ray start --head`); None: a local instance of this process
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled on the batches waiting for one
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0

    @property
    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas

    def check(self) -> None:
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not 0 <= lo <= hi or hi < 1:
                raise InputError(f"--autoscale {lo}:{hi}: give MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
        elif self.replicas < 1:
            raise InputError(f"--replicas {self.replicas}: at least 1")
        if self.gpus_per_replica < 0 or self.cpus_per_replica <= 0:
            raise InputError(
                f"--gpus-per-replica {self.gpus_per_replica:g} / --cpus-per-replica {self.cpus_per_replica:g}: "
                "GPUs >= 0 and CPUs > 0"
            )


def weights_hash_of(engine_dir: str | os.PathLike[str]) -> str:
    """The weights hash an engine directory's manifest records (what every replica's engines must match)."""
    path = Path(engine_dir) / "manifest.json"
    try:
        return str(json.loads(path.read_text())["model"]["weights_hash"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{str(path)!r}: no engine manifest with a weights hash ({exc})") from None


# ---------------------------------------------------------------------------------------------- the generator
class Generator:
    """One engine set; `run(items)` streams `{"start": wall time}`, `{"step": (done, total, combo)}` after each
    sampler step, then `{"result": GenerationResult, "served_by": {"replica", "node"}}`."""

    def __init__(self, engine_dir: str, backend: str, weights_hash: str, threads: int | None):
        import ray
        import torch
        from ray import serve

        from lumina_rt.runtime import Runtime

        if threads:
            torch.set_num_threads(threads)
        self.runtime = Runtime(engine_dir, backend=backend, threads=threads)
        self.runtime.engines.check_weights(weights_hash)  # EngineError: this node's engines are other weights
        self.served_by = {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "node": ray.get_runtime_context().get_node_id(),
        }
        logger.info("generator replica %s ready (%s)", self.served_by["replica"], self.runtime.engines.backend_name)

    async def run(self, items: list[dict[str, Any]]):
        from lumina_rt.serve.scheduler import generate_batch

        yield {"start": time.time()}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, int, str] | None] = asyncio.Queue()
        stop = threading.Event()

        def on_step(done: int, total: int, combo: str) -> bool:
            loop.call_soon_threadsafe(events.put_nowait, (done, total, combo))
            return stop.is_set()

        future = loop.run_in_executor(None, generate_batch, self.runtime, items, on_step)
        future.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (step := await events.get()) is not None:
                yield {"step": step}
            yield {"result": future.result(), "served_by": self.served_by}
        finally:
            if not future.done():  # cancelled (the job was deleted): stop at the next step, free the replica after
                stop.set()
                await asyncio.wait([future])
                if not future.cancelled() and isinstance(future.exception(), Cancelled):
                    logger.info("replica %s: batch stopped at a step boundary", self.served_by["replica"])

    def check_health(self) -> None:
        """Ray Serve's health check: alive is healthy (a dead process is replaced)."""


# ---------------------------------------------------------------------------------------------- the ingress side
class RayExecutor:
    """The scheduler's executor under Ray Serve: one batch -> one streaming request to a generator replica."""

    def __init__(self, handle: Any):
        self.handle = handle.options(stream=True)

    def __call__(self, items: list[dict[str, Any]], callback: Any, stop: threading.Event) -> Any:
        import ray.exceptions as rx
        from ray.serve.exceptions import RequestCancelledError

        from lumina_rt.serve.scheduler import WorkerLost

        sent = time.time()
        response = self.handle.run.remote(items)
        finished = threading.Event()

        def watch() -> None:
            while not finished.is_set():
                if stop.wait(0.05) and not finished.is_set():
                    response.cancel()
                    return

        watcher = threading.Thread(target=watch, name="lumina-rt-cancel", daemon=True)
        watcher.start()
        result, wait = None, 0.0
        try:
            for event in response:
                if "step" in event:
                    if callback(*event["step"]) is True:
                        stop.set()
                elif "start" in event:  # how long the batch waited for a free replica
                    wait = round(max(0.0, event["start"] - sent), 4)
                else:
                    result = event["result"]
                    result.served_by = {**event["served_by"], "wait_s": wait}
        except RequestCancelledError:
            raise Cancelled("the batch's jobs were deleted") from None
        except (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.OutOfMemoryError) as exc:
            raise WorkerLost(f"the generator replica running this job was lost ({type(exc).__name__})") from exc
        except rx.RayTaskError as exc:  # the batch's own error (a bad request, out of GPU memory): as in-process
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc) from None
        finally:
            finished.set()
            watcher.join()
        if stop.is_set():
            raise Cancelled("the batch's jobs were deleted")
        if result is None:
            raise WorkerLost("the generator replica ended the batch without a result")
        return result


class Ingress:
    """The FastAPI app of `lumina-rt serve` in a Ray Serve replica: its store, its scheduler (one worker per
    generator replica, each batch run by `RayExecutor`)."""

    def __init__(
        self,
        generator: Any,
        engine_dir: str,
        backend: str,
        weights_hash: str,
        options: ServeOptions,
        workers: int,
    ):
        from lumina_rt.runtime import Runtime
        from lumina_rt.serve.app import ServeSettings, create_app
        from lumina_rt.serve.scheduler import Scheduler
        from lumina_rt.serve.store import JobStore

        # The ingress's own engine set checks submissions (sizes, caption length) as the one-process server does.
        self.runtime = Runtime(engine_dir, backend=backend, threads=1)
        self.runtime.engines.check_weights(weights_hash)
        self.store = JobStore(options.store if options.store is not None else default_store(), options.max_attempts)
        ttl = None if options.ttl_hours <= 0 else options.ttl_hours * 3600.0
        self.scheduler = Scheduler(
            self.runtime,
            self.store,
            max_batch=options.max_batch,
            batch_wait_ms=options.batch_wait_ms,
            ttl_seconds=ttl,
            sweep_seconds=options.sweep_seconds or min(60.0, max(0.5, (ttl or 240.0) / 4)),
            executor=RayExecutor(generator),
            workers=workers,
        )
        settings = ServeSettings(
            model=options.model,
            api_key=options.api_key if options.api_key is not None else os.environ.get("LUMINA_RT_API_KEY") or None,
            max_queue=options.max_queue,
            max_body_bytes=options.max_body_bytes,
            default_size=options.default_size,
        )
        self.fastapi = create_app(self.runtime, self.store, self.scheduler, settings)
        self.scheduler.start()

    def __serve_build_asgi_app__(self) -> Any:
        return self.fastapi

    def __del__(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop(5.0)
            self.store.close()


# ---------------------------------------------------------------------------------------------- launching
class ReplicaStartError(EngineError):
    """A deployment's replicas could not start (engines that cannot load, other weights, no resources)."""


def _why_not_running(serve: Any) -> str:
    """The messages of the app's deployments that are not healthy (their replicas' exceptions)."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:
        return ""
    if app is None:
        return ""
    lines = [  # a replica's message ends with its exception's last line (after the traceback)
        f"{name}: {d.message.strip().splitlines()[-1]}"
        for name, d in app.deployments.items()
        if d.status != "HEALTHY" and d.message.strip()
    ]
    return "; ".join(lines) or app.message


class RayServer:
    """A running Ray Serve application (`url`, the Ray cluster's `address`; `stop()` deletes it and, for a local
    instance, stops Ray)."""

    def __init__(self, url: str, address: str, owns_ray: bool, store: Path):
        self.url, self.address, self.owns_ray, self.store = url, address, owns_ray, store

    def stop(self, timeout: float = 30.0) -> None:
        """Delete the app (waiting at most `timeout` s: Ray's daemons may already be gone, e.g. a SIGTERM sent to
        the whole process group) and stop a local Ray instance."""
        ray, serve = require_ray()
        closing = threading.Thread(target=serve.shutdown, name="lumina-rt-serve-shutdown", daemon=True)
        closing.start()
        closing.join(timeout)
        if closing.is_alive():
            logger.warning("Ray Serve did not shut down in %g s (is the Ray instance gone?)", timeout)
        if self.owns_ray:
            ray.shutdown()


def serve_on_ray(
    engine_dir: str | os.PathLike[str], options: ServeOptions, ray_options: RayOptions, backend: str = "auto"
) -> RayServer:
    """Start the two deployments and the HTTP proxy on `options.host:options.port`; returns once every replica is
    ready, or raises with the reason a replica could not start (its engines cannot load, other weights)."""
    ray_options.check()
    ray, serve = require_ray(local=ray_options.address is None)
    engine_dir = str(Path(engine_dir).resolve())
    weights = weights_hash_of(engine_dir)
    store = Path(options.store if options.store is not None else default_store()).resolve()
    options = dataclasses.replace(options, store=str(store))
    owns_ray = not ray.is_initialized() and ray_options.address is None
    if ray_options.address is not None:
        try:
            ray.init(address=ray_options.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as exc:
            raise InputError(
                f"--address {ray_options.address}: cannot join the Ray cluster ({str(exc).strip().splitlines()[-1]}); "
                "with token authentication (Ray's default), set RAY_AUTH_MODE=token and the cluster's token"
            ) from None
    elif owns_ray:  # a local instance for this process only: loopback, no dashboard; ray.shutdown() ends it
        ray.init(
            address="local",  # a new instance, whatever `ray start` may have left in /tmp/ray
            num_cpus=max(1, round(ray_options.max_replicas * ray_options.cpus_per_replica)),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        serve.start(http_options={"host": options.host, "port": options.port}, proxy_location="HeadOnly")
        generator_options: dict[str, Any] = {
            "max_ongoing_requests": 1,  # one batch at a time: a batch is one request
            "ray_actor_options": {"num_cpus": ray_options.cpus_per_replica, "num_gpus": ray_options.gpus_per_replica},
            "max_constructor_retry_count": 3,
            "health_check_period_s": 2.0,
            "graceful_shutdown_timeout_s": 5.0,
        }
        if ray_options.autoscale is not None:
            lo, hi = ray_options.autoscale
            generator_options["autoscaling_config"] = {
                "min_replicas": lo,
                "max_replicas": hi,
                "target_ongoing_requests": 1,
                "look_back_period_s": 5.0,
                "upscale_delay_s": 2.0,
                "downscale_delay_s": 60.0,
            }
        else:
            generator_options["num_replicas"] = ray_options.replicas
        threads = None if ray_options.gpus_per_replica else max(1, int(ray_options.cpus_per_replica))
        generator = serve.deployment(Generator, name="Generator", **generator_options)
        ingress = serve.deployment(
            serve.ingress()(Ingress),
            name="Ingress",
            num_replicas=1,
            max_ongoing_requests=1000,
            ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
            max_constructor_retry_count=3,
        )
        app = ingress.bind(
            generator.bind(engine_dir, backend, weights, threads),
            engine_dir,
            backend,
            weights,
            options,
            ray_options.max_replicas,
        )
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:  # a replica's constructor failed: say why (its exception), not just "failed"
            raise ReplicaStartError(f"the Ray Serve app did not start: {_why_not_running(serve) or exc}") from None
    except BaseException:
        try:
            serve.shutdown()
        finally:
            if owns_ray:
                ray.shutdown()
        raise
    host = f"[{options.host}]" if ":" in options.host else options.host
    return RayServer(f"http://{host}:{options.port}", ray.get_runtime_context().gcs_address, owns_ray, store)


__all__ = ["EXTRA", "Generator", "Ingress", "RayExecutor", "RayOptions", "RayServer", "require_ray", "serve_on_ray"]
