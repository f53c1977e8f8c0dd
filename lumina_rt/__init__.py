"""lumina_rt: an inference runtime with fused kernels for Lumina-Video (Multi-scale Next-DiT)."""

from lumina_rt.config import ModelConfig
from lumina_rt.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DecoderError,
    EngineError,
    InputError,
    LuminaError,
    MediaError,
    ParallelError,
    ScheduleError,
    TextEncoderError,
    UnsafeCheckpointError,
)
from lumina_rt.version import __version__

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DecoderError",
    "EngineError",
    "InputError",
    "LuminaError",
    "MediaError",
    "ModelConfig",
    "ParallelError",
    "Runtime",
    "ScheduleError",
    "TextEncoderError",
    "UnsafeCheckpointError",
    "__version__",
]


def __getattr__(name: str):
    # Runtime pulls in the engine backends; import it lazily so `import lumina_rt` stays light.
    if name == "Runtime":
        from lumina_rt.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'lumina_rt' has no attribute {name!r}")
