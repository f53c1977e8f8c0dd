"""The sound model's engine: the V2A velocity served from an engine directory (manifest field "v2a").

The V2A model has one scale. `lumina-rt build ... --v2a DIR` (and the built-in model's build) copies the V2A
checkpoint into `v2a/` of the engine directory and, for ONNX targets, exports one graph `v2a/velocity.onnx` with
dynamic batch, frame count and caption length (export/v2a_export.py), checked against the reference model
in ONNX Runtime. The weights are stored once: the graph's initializers are ONNX external data pointing into the
copied checkpoint's `v2a/model.safetensors`, the file the torch backends load. Backends come from the video engines'
table (`BACKENDS`), those that can serve a V2A model: onnxruntime(-cuda) runs the graph, torch(-cuda) the reference
model loaded from the copied checkpoint.

The tables that depend on the clip's frame count (2D RoPE over the audio tokens, the frame-to-token interpolation
weights) are computed here and fed to the graph, as the video engines feed their RoPE tables: one graph serves
every clip length.

Manifest "v2a": {key, name, config, frames [min, max], sample_rate, fps, files [file entries under v2a/],
onnx (file entry or null), opset, check ({passed, max_rel_err, cases} or null)}.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lumina_rt.engines import BACKENDS
from lumina_rt.engines.manifest import verify_file
from lumina_rt.errors import BackendUnavailableError, EngineError

if TYPE_CHECKING:
    from lumina_rt.v2a.model import V2AConfig, V2AModel
    from lumina_rt.v2a.pipeline import V2APipeline

logger = logging.getLogger(__name__)

V2A_DIR = "v2a"
V2A_ONNX = f"{V2A_DIR}/velocity.onnx"
INPUT_NAMES = ("z", "t", "frames", "cap_feats", "cap_mask", "video_keep", "cos", "sin", "weights")
OUTPUT_NAME = "velocity"
# Engine backends that can serve the V2A model, in the order `auto` tries them.
V2A_BACKENDS = ("onnxruntime-cuda", "torch-cuda", "onnxruntime", "torch")


def v2a_tables(config: V2AConfig, frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cos, sin [tokens, head_dim / 2], weights [time tokens, frames]) of a clip of `frames` video frames: the
    frame-count-dependent inputs of the V2A graph, as `V2AModel.velocity` computes them."""
    from lumina_rt.v2a.model import audio_rope_tables, frame_to_token_weights

    pt, pb = config.patch
    time_tokens = frames * config.latent_frames_per_video_frame // pt
    cos, sin = audio_rope_tables(config, time_tokens, config.latent_bands // pb)
    return cos.float(), sin.float(), frame_to_token_weights(config, frames).float()


class V2AEngine:
    """The V2A velocity on one engine backend; stands in for `V2AModel` in `V2APipeline` (config, velocity, eval)."""

    def __init__(self, config: V2AConfig, backend: str, reference: V2AModel | None = None, session: Any = None):
        self.config = config
        self.backend = backend
        self.reference = reference
        self.session = session
        self.device = torch.device(BACKENDS[backend].device)
        if session is None and reference is None:
            raise EngineError(f"V2A engine backend {backend!r} has neither an ONNX session nor a torch model")
        if session is None and reference is not None:
            self.reference = reference.to(self.device).eval()

    def eval(self) -> V2AEngine:
        return self

    def velocity(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        frames: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        video_keep: torch.Tensor,
    ) -> torch.Tensor:
        """`V2AModel.velocity` (same inputs and output) computed by this engine."""
        if self.session is None:
            args = [x.to(self.device) for x in (z, t, frames, cap_feats, cap_mask, video_keep)]
            with torch.no_grad():
                return self.reference.velocity(*args).to(z.device, torch.float32)  # type: ignore[union-attr]
        from lumina_rt.v2a.model import check_velocity_inputs

        check_velocity_inputs(self.config, z, t, frames, cap_feats, cap_mask, video_keep)
        cos, sin, weights = v2a_tables(self.config, int(frames.shape[2]))
        feeds = {
            name: np.ascontiguousarray(x.detach().to("cpu", torch.int64 if name == "cap_mask" else torch.float32))
            for name, x in zip(INPUT_NAMES, (z, t, frames, cap_feats, cap_mask, video_keep, cos, sin, weights))
        }
        (out,) = self.session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(out).to(z.device)


def ort_session(path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> Any:
    """An ONNX Runtime session of the V2A graph (EngineError naming the file when it cannot load)."""
    from lumina_rt.engines.onnxruntime_engine import import_onnxruntime

    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
        raise EngineError(f"ONNX Runtime cannot load the V2A engine {str(path)!r}: {exc}") from None
    names = tuple(i.name for i in session.get_inputs())
    if names != INPUT_NAMES:
        raise EngineError(f"V2A engine {str(path)!r} takes inputs {names}, expected {INPUT_NAMES}")
    return session


def unavailable_reason(entry: dict[str, Any], backend: str) -> str | None:
    """Why engine backend `backend` cannot serve the V2A engine of this manifest entry (None: it can)."""
    from lumina_rt.engines import onnxruntime_engine

    if backend not in V2A_BACKENDS:
        return f"the V2A engine runs on {list(V2A_BACKENDS)}, not {backend!r}"
    if backend.startswith("onnxruntime"):
        if not entry.get("onnx"):
            return "the engine directory has no V2A ONNX graph (built with --target torch)"
        if onnxruntime_engine.version() is None:
            return "ONNX Runtime is not installed (pip install 'lumina-rt[onnx]')"
        return onnxruntime_engine.cuda_unavailable_reason() if backend.endswith("cuda") else None
    if BACKENDS[backend].device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def choose_backend(entry: dict[str, Any], backend: str = "auto") -> str:
    """The V2A backend: `backend` if it can serve (BackendUnavailableError saying why not), or with "auto" (or a
    video-only backend such as tensorrt) the first of `V2A_BACKENDS` that can run here."""
    if backend != "auto" and backend in V2A_BACKENDS:
        reason = unavailable_reason(entry, backend)
        if reason:
            raise BackendUnavailableError(f"V2A engine backend {backend!r} cannot run: {reason}")
        return backend
    reasons = {}
    for name in V2A_BACKENDS:
        reasons[name] = unavailable_reason(entry, name)
        if reasons[name] is None:
            return name
    raise BackendUnavailableError(f"no engine backend can run the V2A engine here: {reasons}")


def load_v2a(
    engine_dir: str | os.PathLike,
    manifest: dict[str, Any],
    backend: str = "auto",
    verify: bool = True,
    threads: int | None = None,
) -> V2APipeline:
    """The V2A pipeline of an engine directory (its codec, text encoder and sampling from the copied checkpoint)
    with its velocity on an engine backend; EngineError when the manifest has no V2A engine or its files are off."""
    from lumina_rt.v2a.pipeline import V2APipeline

    root = Path(engine_dir)
    entry = manifest.get("v2a")
    if not entry:
        raise EngineError(
            f"the engines in {str(root)!r} have no V2A engine; rebuild with `lumina-rt build ... --v2a V2A_DIR`"
        )
    for f in entry.get("files", []):
        verify_file(root, f, "V2A checkpoint", verify)
    name = choose_backend(entry, backend)
    ref = V2APipeline.from_dir(root / V2A_DIR)
    session = None
    if name.startswith("onnxruntime"):
        path = verify_file(root, entry["onnx"], "V2A ONNX graph", verify)
        session = ort_session(path, BACKENDS[name].device, threads)
    engine = V2AEngine(ref.model.config, name, reference=ref.model, session=session)
    logger.info("V2A engine backend: %s", name)
    return V2APipeline(engine, ref.codec, ref.encoder, ref.sampling, (ref.min_frames, ref.max_frames))  # type: ignore[arg-type]
