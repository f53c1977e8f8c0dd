"""Velocity functions over several processes: Ulysses sequence parallel and CFG parallel (torch engines only).

`SequenceParallelVelocity` (the `sp` axis of the mesh, `lumina_rt.distributed`): every process patchifies the same x,
pads the token sequence to a multiple of sp and keeps its own contiguous slice of the tokens and of the RoPE tables.
Embedders, norms, adaLN, MLPs and the caption cross-attention run on that slice (caption tokens are replicated);
the self-attention of every layer exchanges the slice for a split over heads (one `all_to_all_single` of q, k, v
before, one of the output after), runs full-sequence attention on Hq / sp heads with the padding keys masked, and
the final outputs are gathered. With GQA the key / value heads reach the attention already expanded to the query
heads, so sp may exceed the KV-head count (they are replicated, not refused).

`CfgParallelVelocity` (the `cfg` axis): a batch whose rows split evenly over the cfg processes (a guided step's
positive and negative halves) is split, each process computes its rows, and an all-gather gives every process the
whole output; the sampler then combines it (guidance scale, renorm) unchanged. Other batches run whole everywhere.

Both are plain velocity functions: the sampler and the pipeline do not know they run distributed.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from lumina_rt import ops
from lumina_rt.distributed import ParallelConfig
from lumina_rt.engines.engine_set import EngineSet, forward_items
from lumina_rt.engines.torch_engine import TorchScaleEngine
from lumina_rt.errors import ParallelError
from lumina_rt.model import MultiScaleNextDiT, latent_rope_tables, local_attention

logger = logging.getLogger(__name__)


class UlyssesAttention:
    """`Attention.attention_fn` for one sp group: sequence-sharded q, k, v [B, Hq, n, Dh] in, same layout out."""

    def __init__(self, group: dist.ProcessGroup, sp: int, key_mask: torch.Tensor | None):
        self.group = group
        self.sp = sp
        self.key_mask = key_mask  # [1, 1, 1, sp * n] bool (False: padding) or None

    def _exchange(self, chunks: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(chunks)
        dist.all_to_all_single(out, chunks, group=self.group)
        return out

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x_mask: torch.Tensor | None) -> torch.Tensor:
        b, h, n, d = q.shape
        sp, hs = self.sp, h // self.sp
        # [3, B, Hq, n, Dh] -> chunk j (heads j*hs..) to process j -> chunk i is sequence slice i of my heads.
        qkv = torch.stack([q, k, v]).view(3, b, sp, hs, n, d).permute(2, 0, 1, 3, 4, 5).contiguous()
        qkv = self._exchange(qkv).permute(1, 2, 3, 0, 4, 5).reshape(3, b, hs, sp * n, d)
        out = local_attention(qkv[0], qkv[1], qkv[2], self.key_mask)  # [B, hs, sp*n, Dh]
        out = out.view(b, hs, sp, n, d).permute(2, 0, 1, 3, 4).contiguous()
        return self._exchange(out).permute(1, 0, 2, 3, 4).reshape(b, h, n, d)


class SequenceParallelVelocity:
    """Velocity over the sp processes of `mesh` (Ulysses); every process returns the whole output."""

    def __init__(
        self,
        model: MultiScaleNextDiT,
        mesh: DeviceMesh,
        engines: EngineSet | None = None,
        scale_engines: dict[str, TorchScaleEngine] | None = None,
    ):
        self.model = model
        self.config = model.config
        self.group = mesh.get_group("sp")
        self.sp = mesh.size(mesh.mesh_dim_names.index("sp"))
        self.rank = dist.get_rank(self.group)
        ParallelConfig(sp=self.sp).validate(n_heads=self.config.n_heads)
        device = next(model.parameters()).device
        if device.type != mesh.device_type:
            raise ParallelError(
                f"the model is on {device.type} but the device mesh communicates on {mesh.device_type}: run gloo "
                "meshes with CPU engines and NCCL meshes with CUDA engines"
            )
        self.engines = engines
        self._scale_engines = scale_engines or {}

    @classmethod
    def from_engines(cls, engines: EngineSet, mesh: DeviceMesh) -> SequenceParallelVelocity:
        """Over the torch engines of an engine directory (ONNX Runtime / TensorRT engines stay single-device)."""
        scale_engines = {}
        for combo in engines.patch_combos:
            engine = engines.engine(combo)
            if not isinstance(engine, TorchScaleEngine):
                raise ParallelError(
                    f"scale {combo} runs on engine backend {engines.backends[combo]!r}; sequence parallel needs a "
                    "torch engine backend (torch, torch-cpu-fused, torch-cuda, torch-triton): pass backend='torch'"
                )
            scale_engines[combo] = engine
        model = next(iter(scale_engines.values())).model
        return cls(model, mesh, engines=engines, scale_engines=scale_engines)

    def _engine(self, combo: str) -> TorchScaleEngine:
        if combo not in self._scale_engines:
            self._scale_engines[combo] = TorchScaleEngine(combo, self.model, kernels=ops.get_backend())
        return self._scale_engines[combo]

    def _tokens(self, x, t, cap_feats, cap_mask, motion, combo):
        if self.engines is not None:
            return self.engines.tokens(x, t, cap_feats, cap_mask, motion, combo)[:3]
        pf, p = self.config.check_combo(combo)
        if self.model.check_inputs:
            self.model.check_batch(x, t, cap_feats, cap_mask, motion, combo)
        cos, sin = latent_rope_tables(self.config, *x.shape[2:], pf, p)
        with ops.use_backend("torch"):
            return ops.patchify(x.float(), pf, p, p), cos, sin

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        combo: str,
    ) -> torch.Tensor:
        """Velocity of x [B, C, F, H, W] (the same on every process) at patch `combo`."""
        tokens, cos, sin = self._tokens(x, t, cap_feats, cap_mask, motion, combo)
        n_tokens = tokens.shape[1]
        n = math.ceil(n_tokens / self.sp)
        pad = n * self.sp - n_tokens
        if pad:
            tokens = torch.nn.functional.pad(tokens, (0, 0, 0, pad))
            cos, sin = (torch.nn.functional.pad(tab, (0, 0, 0, pad)) for tab in (cos, sin))
        engine = self._engine(combo)
        key_mask = None
        if pad:
            key_mask = (torch.arange(n * self.sp, device=engine.device) < n_tokens).view(1, 1, 1, -1)
        part = slice(self.rank * n, (self.rank + 1) * n)
        attention = UlyssesAttention(self.group, self.sp, key_mask)
        layers = [layer.attention for layer in self.model.layers]
        for module in layers:
            module.attention_fn = attention
        try:
            out = engine.run(
                tokens[:, part], cos[part], sin[part], t.float(), cap_feats.float(), cap_mask, motion.float()
            )
        finally:
            for module in layers:
                module.attention_fn = None
        out = out.to(engine.device).contiguous()
        parts = [torch.empty_like(out) for _ in range(self.sp)]
        dist.all_gather(parts, out, group=self.group)
        out = torch.cat(parts, dim=1)[:, :n_tokens].to(x.device)
        pf, p = self.config.check_combo(combo)
        with ops.use_backend("torch"):
            return ops.unpatchify(out, *x.shape[2:], pf, p, p)

    __call__ = velocity

    def forward_list(self, items, t, cap_feats, cap_mask, motion, combo) -> list[torch.Tensor]:
        """Items [C, F_i, H_i, W_i] of different sizes, one by one (each sees only its own caption)."""
        return forward_items(self.velocity, items, t, cap_feats, cap_mask, motion, combo)


class CfgParallelVelocity:
    """Rows of a batch split over the cfg processes of `mesh`, outputs all-gathered (see module docstring)."""

    def __init__(self, inner, mesh: DeviceMesh):
        self.inner = inner
        self.group = mesh.get_group("cfg")
        self.cfg = mesh.size(mesh.mesh_dim_names.index("cfg"))
        self.rank = dist.get_rank(self.group)
        self.device = torch.device(mesh.device_type)  # where the exchange runs (NCCL: the current GPU)

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        combo: str,
    ) -> torch.Tensor:
        b = x.shape[0]
        if self.cfg == 1 or b % self.cfg:
            return self.inner(x, t, cap_feats, cap_mask, motion, combo)
        rows = slice(self.rank * (b // self.cfg), (self.rank + 1) * (b // self.cfg))
        out = self.inner(x[rows], t[rows], cap_feats[rows], cap_mask[rows], motion[rows], combo)
        out = out.to(self.device, torch.float32).contiguous()
        parts = [torch.empty_like(out) for _ in range(self.cfg)]
        dist.all_gather(parts, out, group=self.group)
        return torch.cat(parts).to(x.device)

    __call__ = velocity

    def forward_list(self, items, t, cap_feats, cap_mask, motion, combo) -> list[torch.Tensor]:
        return forward_items(self.velocity, items, t, cap_feats, cap_mask, motion, combo)


def parallel_velocity(source: MultiScaleNextDiT | EngineSet, mesh: DeviceMesh) -> CfgParallelVelocity:
    """The velocity function of a (cfg, sp) mesh over a reference model or an engine directory's torch engines."""
    if isinstance(source, EngineSet):
        sp = SequenceParallelVelocity.from_engines(source, mesh)
    else:
        sp = SequenceParallelVelocity(source, mesh)
    return CfgParallelVelocity(sp, mesh)
