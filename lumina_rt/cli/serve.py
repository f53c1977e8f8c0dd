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
    return run


def run(args: argparse.Namespace) -> int:
    from lumina_rt.errors import InputError
    from lumina_rt.serve import ServeOptions, Server

    if args.builtin == (args.engine_dir is not None):
        raise InputError("give an engine directory or --builtin (one of the two)")
    default_size = None
    if args.builtin:
        from lumina_rt.builtin import BUILTIN_DEFAULT_SIZE
        from lumina_rt.builtin.engines import builtin_engines

        engine_dir, default_size = builtin_engines(audio=True), BUILTIN_DEFAULT_SIZE  # the page offers sound
    else:
        engine_dir = Path(args.engine_dir)
    from lumina_rt.runtime import Runtime

    runtime = Runtime(engine_dir, backend=args.backend, parallel=parallel_config(args))
    link = None
    if args.sp is not None or args.cfg_parallel:  # under torchrun: rank 0 serves, every rank runs each batch
        from lumina_rt.serve.scheduler import RankLink, follow

        link = RankLink()
        if not runtime.is_main:
            follow(runtime, link)
            return 0
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
