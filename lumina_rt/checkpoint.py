"""Loading and saving checkpoints, in one call.

Layouts:
- released: `model_args.pth` (a pickled argparse.Namespace: model, qk_norm, patch_sizes, f_patch_sizes,
  rope_theta, t_scale, motion_scale, ...) + `consolidated.00-of-01.safetensors` (or `.pth`).
  Keys may carry a `_orig_mod.` prefix (torch.compile). Pickles are read with `weights_only=True`
  and an allow-list, so a pickle that tries to run code is refused.
- native: `config.json` (the constructor's keyword arguments) + `model.safetensors` (released key names).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lumina_rt.config import MODEL_SIZES, RELEASED_CONSTRUCTORS, ModelConfig
from lumina_rt.errors import CheckpointError, UnsafeCheckpointError
from lumina_rt.files import atomic_write, save_tensors
from lumina_rt.model import MultiScaleNextDiT

logger = logging.getLogger(__name__)

NATIVE_CONFIG = "config.json"
NATIVE_WEIGHTS = "model.safetensors"
RELEASED_ARGS = "model_args.pth"
RELEASED_WEIGHTS = ("consolidated.00-of-01.safetensors", "consolidated.00-of-01.pth")


def checkpoint_layout(path: str | os.PathLike) -> str:
    """'native' or 'released'; raises CheckpointError naming what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint directory {str(p)!r} does not exist")
    if (p / NATIVE_CONFIG).is_file():
        return "native"
    if (p / RELEASED_ARGS).is_file():
        return "released"
    raise CheckpointError(
        f"{str(p)!r} is not a checkpoint: expected {NATIVE_CONFIG} + {NATIVE_WEIGHTS} (native) "
        f"or {RELEASED_ARGS} + {RELEASED_WEIGHTS[0]} (released)"
    )


# ------------------------------------------------------------------------------------------------
# Safe reading of pickles
# ------------------------------------------------------------------------------------------------


def _safe_torch_load(path: Path, what: str) -> Any:
    """torch.load with weights_only=True; only argparse.Namespace is added to the allow-list."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {what} {str(path)!r}: it needs objects outside the allow-list "
            f"(only tensors, plain containers and argparse.Namespace are accepted). Details: {exc}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {exc}") from None


def read_released_args(path: str | os.PathLike) -> dict[str, Any]:
    """The training arguments stored in a released `model_args.pth`, as a plain dict."""
    args = _safe_torch_load(Path(path), "model arguments")
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    raise CheckpointError(f"{str(path)!r} holds a {type(args).__name__}, expected an argparse.Namespace")


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


_SIZE_ARGS = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "ffn_dim_multiplier", "norm_eps")


def config_from_released_args(args: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> ModelConfig:
    """Build the config the released sampler builds: constructor size + training arguments.

    in_channels and cap_feat_dim are not training arguments (the released sampler hard-codes 16 and reads the
    text encoder's width); they are read from the weights' shapes instead.
    """
    name = args.get("model")
    if name not in RELEASED_CONSTRUCTORS and name != "MultiScaleNextDiT":
        raise CheckpointError(
            f"model_args.pth names constructor {name!r}; known constructors: "
            f"{sorted([*RELEASED_CONSTRUCTORS, 'MultiScaleNextDiT'])}"
        )
    patch_sizes = tuple(args.get("patch_sizes", (2,)))
    f_patch_sizes = tuple(args.get("f_patch_sizes", (2,)))
    try:
        cap_feat_dim = int(state_dict["cap_embedder.0.weight"].shape[0])
        p, pf = patch_sizes[0], f_patch_sizes[0]
        in_features = int(state_dict[f"all_x_embedder.{p}-{pf}.weight"].shape[1])
    except KeyError as exc:
        raise CheckpointError(f"released weights lack key {exc.args[0]!r}") from None
    kwargs = dict(RELEASED_CONSTRUCTORS.get(name, {}))
    # Size arguments are not in released model_args.pth files, but are honoured when present (base constructor).
    kwargs.update({k: args[k] for k in _SIZE_ARGS if k in args})
    kwargs.update(
        in_channels=in_features // (pf * p * p),
        cap_feat_dim=cap_feat_dim,
        qk_norm=bool(args.get("qk_norm", False)),
        all_patch_size=patch_sizes,
        all_f_patch_size=f_patch_sizes,
        rope_theta=float(args.get("rope_theta", 10000.0)),
        t_scale=float(args.get("t_scale", 1.0)),
        motion_scale=float(args.get("motion_scale", 1.0)),
    )
    return ModelConfig.from_kwargs(kwargs, name=name)


# ------------------------------------------------------------------------------------------------
# Load
# ------------------------------------------------------------------------------------------------


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read weights {str(path)!r}: {exc}") from None
    sd = _safe_torch_load(path, "weights")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(sd).__name__}, expected a state dict")
    return sd


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of a checkpoint directory (reads released weights' shapes only when needed)."""
    p = Path(path)
    if checkpoint_layout(p) == "native":
        try:
            kwargs = json.loads((p / NATIVE_CONFIG).read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{str(p / NATIVE_CONFIG)!r} is not valid JSON: {exc}") from None
        return ModelConfig.from_kwargs(kwargs, name=p.name)
    args = read_released_args(p / RELEASED_ARGS)
    return config_from_released_args(args, _released_shapes(p))


def _released_shapes(p: Path) -> dict[str, torch.Tensor]:
    """Released weights as meta tensors (shapes only): safetensors headers are read, no weights are loaded."""
    st = p / RELEASED_WEIGHTS[0]
    if not st.is_file():
        return {k: v.to("meta") for k, v in _released_state_dict(p).items()}  # .pth: no header to read
    try:
        with safe_open(str(st), "pt") as f:
            return {
                k.replace("_orig_mod.", ""): torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()
            }
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read weights {str(st)!r}: {exc}") from None


def _released_state_dict(p: Path) -> dict[str, torch.Tensor]:
    for name in RELEASED_WEIGHTS:
        if (p / name).is_file():
            return _strip_prefix(_read_weights(p / name))
    raise CheckpointError(f"{str(p)!r} has {RELEASED_ARGS} but no weights file ({' or '.join(RELEASED_WEIGHTS)})")


def load_state_dict(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict with released key names) of a checkpoint directory."""
    p = Path(path)
    layout = checkpoint_layout(p)
    if layout == "native":
        config = load_config(p)
        weights = p / NATIVE_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{str(p)!r} has {NATIVE_CONFIG} but no {NATIVE_WEIGHTS}")
        return config, _strip_prefix(_read_weights(weights))
    state_dict = _released_state_dict(p)
    return config_from_released_args(read_released_args(p / RELEASED_ARGS), state_dict), state_dict


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> MultiScaleNextDiT:
    """Build the model of a checkpoint directory (either layout) and load its weights strictly."""
    config, state_dict = load_state_dict(path)
    with torch.device("meta"):
        model = MultiScaleNextDiT(config)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {str(path)!r} do not fit config {config.name!r}: {exc}") from None
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    logger.info("loaded %s (%d parameters) from %s", config.name, model.parameter_count(), path)
    return model.eval()


def build_model(spec: str | os.PathLike, device: str | torch.device = "cpu") -> MultiScaleNextDiT:
    """A checkpoint directory, or a model size name with random weights."""
    if isinstance(spec, str) and spec in MODEL_SIZES and not Path(spec).is_dir():
        with torch.device(device):
            return MultiScaleNextDiT(ModelConfig.from_name(spec)).eval()
    return load_model(spec, device)


# ------------------------------------------------------------------------------------------------
# Save (native layout), atomically
# ------------------------------------------------------------------------------------------------


def save_native(
    path: str | os.PathLike,
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write config.json + model.safetensors (each file replaced atomically)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    save_tensors(_strip_prefix(state_dict), p / NATIVE_WEIGHTS)
    atomic_write(p / NATIVE_CONFIG, config.to_json())
    for name, content in (extra_files or {}).items():
        atomic_write(p / name, content)
    return p


def weights_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint directory's weights file(s), for cache keys."""
    p = Path(path)
    names = [NATIVE_WEIGHTS] if checkpoint_layout(p) == "native" else list(RELEASED_WEIGHTS)
    h = hashlib.sha256()
    for name in names:
        f = p / name
        if f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
