"""Model configuration: the released constructor's arguments, derived sizes and named model sizes.

Names: a *model size* (`MODEL_SIZES`: "2B", "f24R960", "tiny", ...) is a set of constructor arguments; a *preset*
is always a sampling recipe (`lumina_rt.sampling.SAMPLE_PRESETS`), never a model size.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from lumina_rt.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")


def strict_fields(cls: type[D], raw: Any, where: str, error: type[Exception] = ConfigError, **fixed: Any) -> D:
    """`cls(**raw, **fixed)` for a dataclass `cls`, refusing what it would not take: `error` names `where` and the
    unknown keys (with those accepted), or the missing ones, or says `raw` is not an object. `fixed`: fields the caller
    sets, not accepted from `raw`. The values are deep copies (the result shares no list with `raw`)."""
    if not isinstance(raw, dict):
        raise error(f"{where} must be an object of settings, got {raw!r}")
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in fixed]
    accepted = sorted(f.name for f in fields)
    unknown = sorted(set(raw) - set(accepted))
    if unknown:
        raise error(f"unknown {where} keys {unknown}; accepted: {accepted}")
    no_default = dataclasses.MISSING
    missing = [f.name for f in fields if f.default is no_default and f.default_factory is no_default]
    missing = sorted(set(missing) - set(raw))
    if missing:
        raise error(f"{where} lacks {missing}")
    return cls(**copy.deepcopy(raw), **fixed)


def parse_patch_combo(combo: str) -> tuple[int, int]:
    """Read a released patch string "{frame_patch}x{spatial_patch}" ("1x2" is (1,2,2)) into (pf, p)."""
    if not isinstance(combo, str) or combo.count("x") != 1:
        raise ConfigError(f"patch combo must read '<frame patch>x<spatial patch>', e.g. '1x2'; got {combo!r}")
    left, right = combo.split("x")
    try:
        pf, p = int(left), int(right)
    except ValueError:
        raise ConfigError(f"patch combo {combo!r} is not two integers joined by 'x'") from None
    if pf < 1 or p < 1:
        raise ConfigError(f"patch combo {combo!r} has a patch size below 1")
    return pf, p


def patch_combo_name(pf: int, p: int) -> str:
    return f"{pf}x{p}"


def token_grid(frames: int, height: int, width: int, pf: int, p: int, pw: int | None = None) -> tuple[int, int, int]:
    """Token grid (f, h, w) of a latent [frames, height, width] patched (pf, p, p) (or (pf, p, pw)): the one
    token-count rule of the model, its kernels, engines and FLOP counts.

    An image (frames = 1) counts as pf frames: the model repeats it to the frame patch size (and crops the output
    back to one frame). Sizes that do not divide by their patch are the callers' to refuse; this only counts.
    """
    frames = pf if frames == 1 else frames
    return frames // pf, height // p, width // (p if pw is None else pw)


@dataclass(frozen=True)
class ModelConfig:
    """Keyword arguments of the released `MultiScaleNextDiT` constructor, with the released defaults."""

    all_patch_size: tuple[int, ...] = (2,)
    all_f_patch_size: tuple[int, ...] = (2,)
    in_channels: int = 4
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    qk_norm: bool = False
    cap_feat_dim: int = 5120
    rope_theta: float = 10000.0
    t_scale: float = 1.0
    motion_scale: float = 1.0
    # lumina_rt extension (not a released argument): name of the model size (or checkpoint) this config came from.
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "all_patch_size", tuple(int(p) for p in self.all_patch_size))
        object.__setattr__(self, "all_f_patch_size", tuple(int(p) for p in self.all_f_patch_size))
        if len(self.all_patch_size) != len(self.all_f_patch_size) or not self.all_patch_size:
            raise ConfigError(
                f"all_patch_size {self.all_patch_size} and all_f_patch_size {self.all_f_patch_size} "
                "must be non-empty and of equal length"
            )
        if self.dim % self.n_heads:
            raise ConfigError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.head_dim % 16:
            raise ConfigError(f"head_dim={self.head_dim} (dim / n_heads) must be a multiple of 16")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def adaln_dim(self) -> int:
        """Width of the modulation input (timestep + pooled caption + motion embeddings)."""
        return min(self.dim, 1024)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Rotary dims per axis (f, h, w): 2/8, 3/8, 3/8 of the head dim."""
        eighth = self.head_dim // 8
        return eighth * 2, eighth * 3, eighth * 3

    @property
    def patch_combos(self) -> tuple[str, ...]:
        """Released patch strings, "{frame patch}x{spatial patch}", in constructor order."""
        return tuple(patch_combo_name(pf, p) for p, pf in zip(self.all_patch_size, self.all_f_patch_size))

    @staticmethod
    def module_key(pf: int, p: int) -> str:
        """State-dict key of a patch size's embedder / final layer: "{spatial}-{frame}"."""
        return f"{p}-{pf}"

    def check_combo(self, combo: str) -> tuple[int, int]:
        pf, p = parse_patch_combo(combo)
        if combo not in self.patch_combos:
            raise ConfigError(f"unknown patch combo {combo!r}: this model has {list(self.patch_combos)}")
        return pf, p

    # ------------------------------------------------------------------ (de)serialisation
    def to_kwargs(self) -> dict[str, Any]:
        """The constructor keyword arguments (the fixture metadata's `config`, the native config.json)."""
        out = dataclasses.asdict(self)
        out.pop("name")
        out["all_patch_size"] = list(self.all_patch_size)
        out["all_f_patch_size"] = list(self.all_f_patch_size)
        return out

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], name: str = "custom") -> ModelConfig:
        """A config from constructor keywords (ConfigError naming unknown ones); `name` unless kwargs has one."""
        if isinstance(kwargs, dict) and "name" not in kwargs:
            kwargs = {**kwargs, "name": name}
        return strict_fields(cls, kwargs, "model config")

    def to_json(self) -> str:
        return json.dumps(self.to_kwargs(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_name(cls, name: str) -> ModelConfig:
        """A named model size (see `MODEL_SIZES`)."""
        if name not in MODEL_SIZES:
            raise ConfigError(f"unknown model size {name!r}; known model sizes: {sorted(MODEL_SIZES)}")
        return cls.from_kwargs(MODEL_SIZES[name], name=name)


# Released sizes (constructor functions MultiScaleNextDiT_2B / _2B_GQA / _4B_GQA).
_2B = dict(dim=2304, n_layers=24, n_heads=16)
_2B_GQA = dict(dim=2304, n_layers=24, n_heads=16, n_kv_heads=8)
_4B_GQA = dict(dim=3072, n_layers=32, n_heads=24, n_kv_heads=8)

# Arguments the released f24R960 training script passes (Gemma-2-2B features, CogVideoX latents).
_F24R960_ARGS = dict(
    in_channels=16,
    cap_feat_dim=2304,
    all_patch_size=(2, 2, 4),
    all_f_patch_size=(1, 2, 2),
    qk_norm=True,
    rope_theta=256.0,
    t_scale=1000.0,
    motion_scale=20.0,
)

# Released constructor name -> model size arguments.
RELEASED_CONSTRUCTORS: dict[str, dict[str, Any]] = {
    "MultiScaleNextDiT_2B": _2B,
    "MultiScaleNextDiT_2B_GQA": _2B_GQA,
    "MultiScaleNextDiT_4B_GQA": _4B_GQA,
}

_F24R960 = ModelConfig(**_2B_GQA, **_F24R960_ARGS)
# Small sizes for CPU work: f24R960 (GQA, QK-norm, its three patch sizes, RoPE theta, time and motion scales),
# narrower and shallower, on 4-channel latents and short caption features.
_TINY = dataclasses.replace(
    _F24R960, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, in_channels=4, cap_feat_dim=48
)
_SMALL = dataclasses.replace(
    _F24R960, dim=384, n_layers=6, n_heads=6, n_kv_heads=3, multiple_of=64, in_channels=4, cap_feat_dim=256
)

MODEL_SIZES: dict[str, dict[str, Any]] = {
    "2B": dict(_2B),
    "2B-GQA": dict(_2B_GQA),
    "4B-GQA": dict(_4B_GQA),
    "f24R960": _F24R960.to_kwargs(),
    "tiny": _TINY.to_kwargs(),
    "small": _SMALL.to_kwargs(),
}
