"""Typed errors. Every message names the offending value and, where it helps, what would be accepted."""

from __future__ import annotations


class LuminaError(Exception):
    """Base class of every error lumina_rt raises on purpose."""


class ConfigError(LuminaError, ValueError):
    """A model or sampling configuration is invalid (unknown model size, inconsistent sizes, ...)."""


class InputError(LuminaError, ValueError):
    """A tensor given to the model or sampler has a bad shape, dtype or value (NaN, ...)."""


class ScheduleError(LuminaError, ValueError):
    """A time-aware value, patch combo or sample preset is malformed or unknown."""


class CheckpointError(LuminaError, RuntimeError):
    """A checkpoint is missing files, has the wrong keys or shapes, or cannot be read."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint file tries to load objects outside the allow-list (possible code execution)."""


class BackendUnavailableError(LuminaError, RuntimeError):
    """A requested kernel or engine backend cannot run here (package, extension or GPU missing)."""


class EngineError(LuminaError, RuntimeError):
    """An engine directory is missing files, corrupt, stale, or cannot serve the requested shape."""


class TextEncoderError(LuminaError, RuntimeError):
    """The text encoder cannot be loaded (package or weights missing) or cannot encode the prompt."""


class DecoderError(CheckpointError):
    """The latent decoder (VAE) cannot be loaded (package or weights missing) or cannot decode the latents."""


class ParallelError(LuminaError, ValueError):
    """A parallel layout cannot run: world size not cfg x sp, sp not dividing the heads, no process group, ..."""


class MediaError(LuminaError, RuntimeError):
    """A video or sound could not be made: ffmpeg failed to encode, mux or decode a file, or the sound model gave
    invalid samples."""


class Cancelled(LuminaError, RuntimeError):
    """Sampling was stopped by its caller: the per-step callback of `generate` returned True (lumina_rt.serve's
    cancellation)."""
