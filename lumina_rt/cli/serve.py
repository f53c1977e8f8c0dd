"""`lumina-rt serve`: Lumina-Video as a service over HTTP (the OpenAI Videos API shape; docs/serving.md)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from lumina_rt.cli.common import Runner, add_parallel_flags, parallel_config


def add(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("engine_dir", nargs="?", default=None, help="engine directory (manifest.json)")
    p.add_argument("--builtin", action="store_true", help="serve the built-in model (engines built on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--store", default=None, help="job store folder (default: serve/ under the cache folder)")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (default $LUMINA_RT_API_KEY)")
    p.add_argument("--max-queue", type=int, default=64, help="queued jobs before submissions get 429 (default 64)")
    p.add_argument("--max-batch", type=int, default=4, help="jobs per generate call at most (default 4; 1: off)")
    p.add_argument(
        "--batch-wait-ms", type=float, default=10.0, help="how long a job waits for batch company (default 10)"
    )
    p.add_argument("--ttl-hours", type=float, default=24.0, help="outputs expire after this (default 24; 0: never)")
    from lumina_rt.engines import BACKENDS

    p.add_argument(
        "--backend", default="auto", choices=["auto", *BACKENDS], help="engine backend (default auto: the fastest)"
    )
    add_parallel_flags(p)
    ray = p.add_argument_group("Ray Serve (the `ray` extra; docs/serving.md)")
    ray.add_argument("--ray", action="store_true", help="serve as a Ray Serve app: an ingress and generator replicas")
    ray.add_argument("--address", default=None, help="Ray cluster to join (ray start --head); default: a local one")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=None, help="generator replicas (default 1)")
    scale.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale generator replicas")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per generator replica (default 0)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per generator replica (default 1)")
    return run


def ray_options(args: argparse.Namespace):
    """The `--ray` flags as `RayOptions` (InputError naming a bad one; the ray extra is not needed to check them)."""
    from lumina_rt.errors import InputError
    from lumina_rt.serve.ray_app import RayOptions

    autoscale = None
    if args.autoscale is not None:
        lo, sep, hi = str(args.autoscale).partition(":")
        if not (sep and lo.strip().isdigit() and hi.strip().isdigit()):
            raise InputError(f"--autoscale {args.autoscale!r}: give MIN:MAX replicas, e.g. 1:4")
        autoscale = (int(lo), int(hi))
    options = RayOptions(
        address=args.address,
        replicas=1 if args.replicas is None else args.replicas,
        autoscale=autoscale,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
    )
    options.check()
    return options


def run(args: argparse.Namespace) -> int:
    from lumina_rt.errors import InputError
    from lumina_rt.serve import ServeOptions, Server

    if args.builtin == (args.engine_dir is not None):
        raise InputError("give an engine directory or --builtin (one of the two)")
    if not args.ray and (args.address or args.replicas is not None or args.autoscale is not None):
        raise InputError("--address, --replicas and --autoscale go with --ray")
    if args.ray and (args.sp is not None or args.cfg_parallel):
        raise InputError("--ray serves one device per generator replica: --sp / --cfg-parallel are not served with it")
    rayopts = None
    if args.ray:
        from lumina_rt.serve.ray_app import require_ray

        rayopts = ray_options(args)
        require_ray(local=args.address is None)  # the typed error naming the extra, before any engine is built
    default_size = None
    if args.builtin:
        from lumina_rt.builtin import BUILTIN_DEFAULT_SIZE
        from lumina_rt.builtin.engines import builtin_engines

        engine_dir, default_size = builtin_engines(audio=True), BUILTIN_DEFAULT_SIZE  # the page offers sound
    else:
        engine_dir = Path(args.engine_dir)
    options = ServeOptions(
        host=args.host,
        port=args.port,
        store=args.store,
        api_key=args.api_key,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        ttl_hours=args.ttl_hours,
        default_size=default_size,
    )
    if rayopts is not None:
        return run_ray(engine_dir, options, rayopts, args.backend)
    from lumina_rt.runtime import Runtime

    runtime = Runtime(engine_dir, backend=args.backend, parallel=parallel_config(args))
    link = None
    if args.sp is not None or args.cfg_parallel:  # under torchrun: rank 0 serves, every rank runs each batch
        from lumina_rt.serve.scheduler import RankLink, follow

        link = RankLink()
        if not runtime.is_main:
            follow(runtime, link)
            return 0
    server = Server(runtime, options, link)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    print(f"lumina-rt serve: ready at {server.url} (store {server.store.folder})", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


def run_ray(engine_dir: Path, options, rayopts, backend: str) -> int:
    """`--ray`: the Ray Serve app until SIGINT / SIGTERM, then the app deleted (and a local Ray instance stopped)."""
    from lumina_rt.serve.ray_app import serve_on_ray

    server = serve_on_ray(engine_dir, options, rayopts, backend)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which sets handlers of its own
        signal.signal(sig, lambda *_: done.set())
    print(
        f"lumina-rt serve: ready at {server.url} (Ray Serve, Ray at {server.address}, store {server.store})", flush=True
    )
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
    return 0
