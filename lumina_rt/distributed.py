"""Multi-process layout: a 2-D device mesh (cfg x sp) over torch.distributed, launched with `torchrun`.

- `sp` (sequence parallel, Ulysses): the video tokens of one velocity evaluation are split along the sequence over
  `sp` processes; attention exchanges them for a split over heads (engines/parallel.py).
- `cfg` (1 or 2): with `cfg_parallel`, the positive and negative branches of a guided step run on different
  halves of the processes and are combined after an exchange.

Every process runs the same program on the same inputs (same prompt, same seed); all of them hold every output.
Process r sits at mesh coordinate (r // sp, r % sp): the processes of one sp group are consecutive ranks.
Backends: gloo on the CPU, NCCL on CUDA (one GPU per process, `LOCAL_RANK`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from lumina_rt.errors import ParallelError

logger = logging.getLogger(__name__)

MESH_DIMS = ("cfg", "sp")


@dataclass(frozen=True)
class ParallelConfig:
    """How many processes split the sequence (`sp`) and whether the two guidance branches run apart."""

    sp: int = 1
    cfg_parallel: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sp, bool) or not isinstance(self.sp, int) or self.sp < 1:
            raise ParallelError(f"sp (sequence-parallel degree) must be an integer >= 1, got {self.sp!r}")
        if not isinstance(self.cfg_parallel, bool):
            raise ParallelError(f"cfg_parallel must be True or False, got {self.cfg_parallel!r}")

    @property
    def cfg(self) -> int:
        return 2 if self.cfg_parallel else 1

    @property
    def world_size(self) -> int:
        return self.cfg * self.sp

    def validate(self, world_size: int | None = None, n_heads: int | None = None) -> None:
        """ParallelError naming the value when this layout cannot run on `world_size` processes or a model with
        `n_heads` query heads. (KV heads need no check: with GQA they are expanded to the query heads before the
        exchange, so sp may exceed the KV-head count.)"""
        if world_size is not None and world_size != self.world_size:
            raise ParallelError(
                f"world size {world_size} is not cfg x sp = {self.cfg} x {self.sp} = {self.world_size}; launch "
                f"{self.world_size} processes (torchrun --nproc-per-node {self.world_size}) or change --sp / "
                "--cfg-parallel"
            )
        if n_heads is not None and n_heads % self.sp:
            divisors = [d for d in range(1, n_heads + 1) if n_heads % d == 0]
            raise ParallelError(
                f"sp={self.sp} does not divide the model's {n_heads} query heads; sp may be one of {divisors}"
            )


def env_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) from the torchrun environment (1, 0, 0 outside torchrun)."""
    try:
        return tuple(int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise ParallelError(f"malformed torchrun environment (WORLD_SIZE / RANK / LOCAL_RANK): {exc}") from None


DEFAULT_TIMEOUT_S = 300.0


def dist_timeout_s() -> float:
    """The process-group timeout in seconds: `LUMINA_RT_DIST_TIMEOUT` if set, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get("LUMINA_RT_DIST_TIMEOUT")
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ParallelError(f"LUMINA_RT_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def init_mesh(
    config: ParallelConfig,
    device: str | None = None,
    n_heads: int | None = None,
    timeout_s: float | None = None,
) -> DeviceMesh:
    """The (cfg, sp) device mesh of this process, from the torchrun environment; initialises the process group
    (gloo on the CPU, NCCL on CUDA) unless one exists. The layout is checked before any communication, so a bad
    one raises the same ParallelError on every rank. `timeout_s` (default: `LUMINA_RT_DIST_TIMEOUT` seconds, else
    300) bounds how long a collective waits for a process that never joins it."""
    if timeout_s is None:
        timeout_s = dist_timeout_s()
    world, rank, local_rank = env_world()
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    config.validate(world, n_heads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ParallelError(f"parallel runs use device 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if world > 1 and "MASTER_ADDR" not in os.environ:
            raise ParallelError(f"WORLD_SIZE={world} but no MASTER_ADDR: launch with torchrun")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(
            "nccl" if device == "cuda" else "gloo",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
    mesh = init_device_mesh(device, (config.cfg, config.sp), mesh_dim_names=MESH_DIMS)
    logger.info("rank %d of %d: mesh cfg x sp = %d x %d on %s", rank, world, config.cfg, config.sp, device)
    return mesh


def shutdown() -> None:
    """Destroy the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()
