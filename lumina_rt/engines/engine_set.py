"""`EngineSet(engine_dir)`: the engines of one engine directory behind one velocity function over all scales.

It reads only the engine directory (`manifest.json` and the files it names, never the checkpoint), chooses an
engine backend per scale and serves `velocity(x, t, cap_feats, cap_mask, motion, combo)`: patchify, RoPE tables,
profile selection, then the engine of the patch size the schedule names. It knows nothing of prompts, noise or
schedules (that is the pipeline, lumina_rt/pipeline.py).

Backend choice: `backend="auto"` (or `LUMINA_RT_ENGINE_BACKEND`) takes, per scale, the fastest backend that can run
here according to the ranking `lumina-rt build` measured and recorded in the manifest; without a ranking, the first
that can run in `UNMEASURED_ORDER`. A named backend is used for every scale or refused with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lumina_rt import ops
from lumina_rt.config import ModelConfig, parse_patch_combo
from lumina_rt.engines import BACKENDS, UNMEASURED_ORDER, Backend, ScaleEngine
from lumina_rt.engines.manifest import host, host_label, read_manifest, same_host, validate_manifest, verify_file
from lumina_rt.engines.profiles import ScaleProfile, scale_tokens
from lumina_rt.engines.weights import WeightStore
from lumina_rt.errors import BackendUnavailableError, ConfigError, EngineError, InputError
from lumina_rt.model import check_batch_shapes, latent_rope_tables

logger = logging.getLogger(__name__)

BACKEND_ENV = "LUMINA_RT_ENGINE_BACKEND"
_WARNED_HOSTS: set[str] = set()  # engine directories whose ranking from another host was warned about (once each)


class EngineSet:
    """Engines of one engine directory (see module docstring)."""

    def __init__(
        self,
        engine_dir: str | os.PathLike,
        backend: str = "auto",
        scales: Sequence[str] | None = None,
        verify: bool = True,
        threads: int | None = None,
        manifest: dict[str, Any] | None = None,
    ):
        self.engine_dir = Path(engine_dir)
        where = repr(str(self.engine_dir / "manifest.json"))
        self.manifest = read_manifest(self.engine_dir) if manifest is None else validate_manifest(manifest, where)
        model = self.manifest["model"]
        try:
            self.config = ModelConfig.from_kwargs(model["config"], name=model.get("name", "custom"))
        except (ConfigError, TypeError, KeyError) as exc:
            raise EngineError(f"the manifest in {str(self.engine_dir)!r} has an invalid model config: {exc}") from None
        self.patch_combos = tuple(self.manifest["scales"])
        for combo in self.patch_combos:
            if combo not in self.config.patch_combos:
                raise EngineError(f"the manifest lists scale {combo!r}, which its model config does not have")
        self.profiles = {c: ScaleProfile.from_dict(c, s.get("profile", {})) for c, s in self.manifest["scales"].items()}
        self.precision = str(self.manifest.get("precision", "fp32"))
        self.verify = verify
        self.threads = threads
        self.backend_reasons: dict[str, str] = {}
        self._store: WeightStore | None = None
        self._shared: dict[str, Any] = {}
        self._engines: dict[str, ScaleEngine] = {}
        # per served shape, what depends on it alone: (combo, frames, height, width) -> (pf, p, tokens, cos, sin), and
        # (combo, batch, tokens, caption) -> profile index; `shape_cache` counts hits and misses
        self._shapes: dict[tuple[str, int, int, int], tuple[int, int, int, torch.Tensor, torch.Tensor]] = {}
        self._indices: dict[tuple[str, int, int, int], int] = {}
        self.shape_cache = {"hits": 0, "misses": 0}
        requested = os.environ.get(BACKEND_ENV, backend) if backend == "auto" else backend
        self.backends = self._select(requested)
        self.load(self.patch_combos if scales is None else scales)

    # ------------------------------------------------------------------ identity checks
    @property
    def weights_hash(self) -> str:
        return str(self.manifest["model"].get("weights_hash"))

    @property
    def backend_name(self) -> str:
        """The engine backend ("onnxruntime"), or "1x2: torch-cpu-fused, 2x4: onnxruntime" when scales differ."""
        names = set(self.backends.values())
        if len(names) == 1:
            return names.pop()
        return ", ".join(f"{c}: {b}" for c, b in self.backends.items())

    def check_config(self, config: ModelConfig) -> None:
        """EngineError naming the differing fields when the engines were built from another model config."""
        mine, theirs = self.config.to_kwargs(), config.to_kwargs()
        diff = {
            k: (mine.get(k), theirs.get(k)) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)
        }
        if diff:
            shown = ", ".join(f"{k}: engines {a!r} vs {b!r}" for k, (a, b) in diff.items())
            raise EngineError(f"the engines in {str(self.engine_dir)!r} were built from another model config ({shown})")

    def check_weights(self, weights_hash: str) -> None:
        """EngineError when the engines were built from other weights than those with this hash."""
        if weights_hash != self.weights_hash:
            raise EngineError(
                f"the engines in {str(self.engine_dir)!r} were built from other weights (weights hash "
                f"{self.weights_hash[:12]}..., expected {weights_hash[:12]}...); rebuild with `lumina-rt build`"
            )

    # ------------------------------------------------------------------ what backends share
    def file(self, entry: dict[str, Any] | None, what: str) -> Path:
        """A file the manifest names, checked against its recorded size (and SHA-256 when verifying)."""
        return verify_file(self.engine_dir, entry, what, self.verify)

    def weights(self) -> WeightStore:
        """The shared weight store (`weights.bin`), read once for every backend and scale."""
        if self._store is None:
            entry = self.manifest["weights"]
            path = verify_file(self.engine_dir, entry, "weights", full=False)
            store = WeightStore(path, entry, entry.get("bytes"))
            if self.verify and hashlib.sha256(store.buffer).hexdigest() != entry.get("sha256"):
                raise EngineError(
                    f"weights file {str(path)!r} is corrupt or from another build: its SHA-256 differs from the "
                    "manifest's; rebuild the engines"
                )
            self._store = store
        return self._store

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """State the scales of one backend share (one torch model, one set of ORT initializers), made once."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    # ------------------------------------------------------------------ backend choice and loading
    def unavailable(self, name: str) -> str | None:
        """Why engine backend `name` cannot run here (None: it can)."""
        if name not in BACKENDS:
            raise BackendUnavailableError(f"unknown engine backend {name!r}; choose 'auto' or one of {list(BACKENDS)}")
        return BACKENDS[name].impl().unavailable_reason(self, BACKENDS[name])

    def ranking(self, combo: str) -> list[str]:
        """Backends for `combo`, fastest first, as `lumina-rt build` measured them ([] when it did not)."""
        scales = ((self.manifest.get("ranking") or {}).get("scales") or {}).get(combo) or []
        return [r["backend"] for r in scales if r.get("backend") in BACKENDS]

    def _select(self, requested: str) -> dict[str, str]:
        if requested != "auto":
            reason = self.unavailable(requested)
            if reason:
                raise BackendUnavailableError(f"engine backend {requested!r} cannot run: {reason}")
            return {c: requested for c in self.patch_combos}
        runnable: dict[str, bool] = {}

        def can_run(name: str) -> bool:
            if name not in runnable:
                reason = self.unavailable(name)
                runnable[name] = reason is None
                if reason:
                    self.backend_reasons[name] = reason
                    logger.debug("engine backend %s skipped: %s", name, reason)
            return runnable[name]

        self._check_ranking_host()
        chosen = {}
        for combo in self.patch_combos:
            measured = self.ranking(combo)
            order = [*measured, *(b for b in UNMEASURED_ORDER if b not in measured)]
            name = next((b for b in order if can_run(b)), None)
            if name is None:
                raise BackendUnavailableError(f"no engine backend can run here: {self.backend_reasons}")
            chosen[combo] = name
        for name in UNMEASURED_ORDER:  # every reason, also for backends the ranking made unnecessary to try
            can_run(name)
        logger.info("engine backend: %s", ", ".join(f"{c} {b}" for c, b in chosen.items()))
        return chosen

    def _check_ranking_host(self) -> None:
        """One warning per engine directory and process when its ranking was measured on another host."""
        ranking = self.manifest.get("ranking")
        if not ranking:
            return
        here, measured = host(), ranking.get("host")
        key = str(self.engine_dir.resolve())
        if same_host(measured, here) or key in _WARNED_HOSTS:
            return
        _WARNED_HOSTS.add(key)
        logger.warning(
            "the engine backend ranking in %s was measured on %s, this host is %s: backend 'auto' may not pick the "
            "fastest here; re-measure in place with `lumina-rt build --measure-only %s`",
            self.engine_dir, host_label(measured), host_label(here), self.engine_dir,
        )  # fmt: skip

    def load(self, combos: Sequence[str]) -> None:
        """Load the engines of these patch combos (the rest load on first use)."""
        todo: dict[str, list[str]] = {}
        for combo in combos:
            self._scale(combo)
            if combo not in self._engines:
                todo.setdefault(self.backends[combo], []).append(combo)
        for name, group in todo.items():
            backend: Backend = BACKENDS[name]
            self._engines.update(backend.impl().load(self, backend, group))

    def _scale(self, combo: str) -> None:
        if combo not in self.manifest["scales"]:
            raise EngineError(
                f"no engine for patch combo {combo!r} in {str(self.engine_dir)!r}; it has {list(self.patch_combos)}"
            )

    def engine(self, combo: str) -> ScaleEngine:
        if combo not in self._engines:
            self.load([combo])
        return self._engines[combo]

    @property
    def loaded_scales(self) -> list[str]:
        return list(self._engines)

    # ------------------------------------------------------------------ what a request needs
    def _grid_tokens(self, combo: str, f: int, h: int, w: int, what: str = "") -> tuple[int, int, int]:
        """(pf, p, tokens) of latent grid (f, h, w) at a loaded scale; InputError when the patch does not divide it."""
        self._scale(combo)
        pf, p = parse_patch_combo(combo)
        try:
            return pf, p, scale_tokens((f, h, w), pf, p)
        except InputError as exc:
            raise InputError(f"unsupported resolution {f}x{h}x{w} (latent) for scale {combo}{what}: {exc}") from None

    def check_request(
        self, grid: Sequence[int], combos: Sequence[str], batch: int, caption: int, asked: str = ""
    ) -> None:
        """Before any work: every scale in `combos` serves this latent grid, engine batch and caption length.

        `asked` describes the request in the user's terms ("6 prompts with guidance, 8x32x1000 pixels") for the
        error, which also says what the engines serve.
        """
        f, h, w = (int(g) for g in grid)
        what = f" ({asked})" if asked else ""
        for combo in combos:
            _, _, n = self._grid_tokens(combo, f, h, w, what)
            prof = self.profiles[combo]
            if batch not in prof.batch:
                raise EngineError(
                    f"this request{what} runs batch {batch} (guidance doubles the prompts), outside every built "
                    f"profile of scale {combo} (batch {prof.batch.min}..{prof.batch.max}: at most "
                    f"{prof.batch.max // 2} prompts with guidance); rebuild with a larger --max-batch"
                )
            if caption not in prof.caption:
                raise EngineError(
                    f"the caption is {caption} tokens{what}, outside every built profile of scale {combo} "
                    f"(caption {prof.caption.min}..{prof.caption.max}); rebuild with a larger --max-caption"
                )
            if not any(n in r for r in prof.tokens):
                served = ", ".join(f"{s['frames']}x{s['height']}x{s['width']}" for s in prof.served)
                raise EngineError(
                    f"the requested size{what} is {n} tokens at scale {combo}, outside every built profile of scale "
                    f"{combo} (up to {prof.max_tokens} tokens; built for frames x height x width {served}); rebuild "
                    "with the size you need (--resolutions / --frames)"
                )

    # ------------------------------------------------------------------ velocity (the sampler's view)
    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        combo: str,
    ) -> torch.Tensor:
        """Velocity of x [B, C, F, H, W] with the engine of patch `combo` (F = 1: an image)."""
        tokens, cos, sin, index = self.tokens(x, t, cap_feats, cap_mask, motion, combo)
        _, _, frames, height, width = x.shape
        pf, p = self._shapes[(combo, frames, height, width)][:2]
        out = self.engine(combo).run(tokens, cos, sin, t.float(), cap_feats.float(), cap_mask, motion.float(), index)
        with ops.use_backend("torch"):
            return ops.unpatchify(out.to(x.device), frames, height, width, pf, p, p)

    def tokens(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        combo: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Checked engine inputs for `velocity`: (tokens [B, N, pf*p*p*C] fp32, cos, sin [N, Dh/2], profile index).

        What depends only on the shape (token count, RoPE tables, profile index) is computed once per shape and
        reused (`shape_cache` counts); nothing here reads a tensor's values (no host synchronization)."""
        check_batch_shapes(self.config, x, t, cap_feats, cap_mask, motion)
        b, _, frames, height, width = x.shape
        key = (combo, frames, height, width)
        shape = self._shapes.get(key)
        if shape is None:
            pf, p, n = self._grid_tokens(combo, frames, height, width)
            shape = self._shapes[key] = (pf, p, n, *latent_rope_tables(self.config, frames, height, width, pf, p))
            self.shape_cache["misses"] += 1
        else:
            self.shape_cache["hits"] += 1
        pf, p, n, cos, sin = shape
        index_key = (combo, b, n, int(cap_feats.shape[1]))
        index = self._indices.get(index_key)
        if index is None:
            index = self._indices[index_key] = self.profiles[combo].select(b, n, int(cap_feats.shape[1]))
        with ops.use_backend("torch"):
            tokens = ops.patchify(x.float(), pf, p, p)
        return tokens, cos, sin, index

    def forward_list(
        self,
        items: list[torch.Tensor],
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
        combo: str,
    ) -> list[torch.Tensor]:
        """Items [C, F_i, H_i, W_i] of different sizes, run one by one (each sees only its own caption)."""
        return forward_items(self.velocity, items, t, cap_feats, cap_mask, motion, combo)


def forward_items(
    velocity: Callable[..., torch.Tensor],
    items: list[torch.Tensor],
    t: torch.Tensor,
    cap_feats: torch.Tensor,
    cap_mask: torch.Tensor,
    motion: torch.Tensor,
    combo: str,
) -> list[torch.Tensor]:
    """`forward_list` through a batch velocity function: items [C, F_i, H_i, W_i] one by one, row i's conditions."""
    if len(items) == 0:
        raise InputError("forward_list got an empty list of items")
    out = []
    for i, item in enumerate(items):
        if item.dim() != 4:
            raise InputError(f"list item {i} must be [C, F, H, W], got shape {tuple(item.shape)}")
        sl = slice(i, i + 1)
        out.append(velocity(item[None], t[sl], cap_feats[sl], cap_mask[sl], motion[sl], combo)[0])
    return out
