"""Lumina-Video as a service: `lumina-rt serve` (docs/serving.md).

- `lumina_rt.serve.app`: the HTTP API (OpenAI Videos shape, SSE, metrics, the web page at `/`);
- `lumina_rt.serve.store`: the durable job store (SQLite, WAL) and the output files;
- `lumina_rt.serve.scheduler`: the worker (batching, per-step progress, cancellation) and the expiry sweeper.

In-process (tests, embedding):

    server = lumina_rt.serve.serve(engine_dir, port=8000, store="jobs/")   # returns once ready
    print(server.url); ...; server.stop()
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_store() -> Path:
    """The job store's default folder: `serve` under the cache folder (LUMINA_RT_CACHE, ~/.cache/lumina_rt)."""
    return Path(os.environ.get("LUMINA_RT_CACHE", Path.home() / ".cache" / "lumina_rt")) / "serve"


@dataclass
class ServeOptions:
    """Everything `lumina-rt serve` takes besides the engines (its flags, one for one)."""

    host: str = "127.0.0.1"
    port: int = 8000
    store: str | os.PathLike[str] | None = None  # default: default_store()
    api_key: str | None = None  # default: $LUMINA_RT_API_KEY
    max_queue: int = 64
    max_batch: int = 4
    batch_wait_ms: float = 10.0
    ttl_hours: float = 24.0
    max_attempts: int = 3
    max_body_bytes: int = 1 << 20
    sweep_seconds: float | None = None  # default: a quarter of the TTL, within 0.5 .. 60 s
    model: str = "lumina-video"
    default_size: tuple[int, int, int] | None = None  # (frames, height, width); None: the engines' largest


class Server:
    """A running server: the runtime, the store, the scheduler, the app and uvicorn."""

    def __init__(self, runtime: Any, options: ServeOptions, link: Any = None):
        """`link`: under torchrun, rank 0's `scheduler.RankLink` (the other ranks run `scheduler.follow`)."""
        import uvicorn

        from lumina_rt.serve.app import ServeSettings, create_app
        from lumina_rt.serve.scheduler import Scheduler
        from lumina_rt.serve.store import JobStore

        self.options = options
        self.runtime = runtime
        api_key = options.api_key if options.api_key is not None else os.environ.get("LUMINA_RT_API_KEY") or None
        if options.host not in LOOPBACK and not api_key:
            logger.warning(
                "serving on %s without an API key: anyone who can reach this address can submit jobs "
                "(--api-key or LUMINA_RT_API_KEY)",
                options.host,
            )
        self.store = JobStore(options.store if options.store is not None else default_store(), options.max_attempts)
        ttl = None if options.ttl_hours <= 0 else options.ttl_hours * 3600.0
        self.scheduler = Scheduler(
            runtime,
            self.store,
            max_batch=options.max_batch,
            batch_wait_ms=options.batch_wait_ms,
            ttl_seconds=ttl,
            sweep_seconds=options.sweep_seconds or min(60.0, max(0.5, (ttl or 240.0) / 4)),
            link=link,
        )
        settings = ServeSettings(
            model=options.model,
            api_key=api_key,
            max_queue=options.max_queue,
            max_body_bytes=options.max_body_bytes,
            default_size=options.default_size,
        )
        self.app = create_app(runtime, self.store, self.scheduler, settings)
        config = uvicorn.Config(self.app, host=options.host, port=options.port, log_level="warning", lifespan="off")
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"http://{host}:{self.options.port}"

    def run(self) -> None:
        """Serve in this thread until interrupted (SIGINT / SIGTERM), then stop the worker."""
        self.scheduler.start()
        try:
            self.uvicorn.run()
        finally:
            self.scheduler.stop()
            self.store.close()

    def start(self, timeout: float = 60.0) -> Server:
        """Serve in a background thread; returns once the port accepts connections."""
        self.scheduler.start()
        self._thread = threading.Thread(target=self.uvicorn.run, name="lumina-rt-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.scheduler.stop()
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self.scheduler.stop()
        self.store.close()


def serve(
    engine_dir: str | os.PathLike[str] | Any, runtime_options: dict[str, Any] | None = None, **options: Any
) -> Server:
    """Start a server in this process over the engines of `engine_dir` (or a `lumina_rt.Runtime`); returns the
    running `Server` (its `url`; `stop()` ends it). `options`: the fields of `ServeOptions`."""
    from lumina_rt.runtime import Runtime

    runtime = engine_dir if isinstance(engine_dir, Runtime) else Runtime(engine_dir, **(runtime_options or {}))
    return Server(runtime, ServeOptions(**options)).start()


__all__ = ["ServeOptions", "Server", "default_store", "serve"]
