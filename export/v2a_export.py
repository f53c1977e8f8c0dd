"""ONNX export of the V2A model's velocity (one scale) and its check against the reference model.

Graph inputs (float32 unless noted; B batch, F video frames, L caption length, all three dynamic):

    z [B, C, F*k, M]            audio latents (k latent frames per video frame, M bands)
    t [B]                       flow time
    frames [B, 3, F, S, S]      the clip in [0, 1], resized to the model's frame size
    cap_feats [B, L, D]         caption features; cap_mask [B, L] int64 (nonzero = token)
    video_keep [B]              1: use the video, 0: the "no video" condition
    cos, sin [N, head_dim/2]    2D RoPE tables of the audio tokens (`lumina_rt.engines.v2a_engine.v2a_tables`)
    weights [F*k/pt, F]         frame-to-token interpolation weights (same)

Output: `velocity` [B, C, F*k, M]. `V2AModel.velocity` computes the two kinds of tables from the frame count (a
Python int); for the graph they are inputs, so one graph serves every clip length: while tracing, the model's
table functions return the graph's inputs (`tables_as_inputs`), everything else is the model's own code.

Weights are stored once in an engine directory: the build's graph (`export_and_check`) holds no copy of the
checkpoint's tensors; its initializers are ONNX external data pointing into the copied checkpoint file beside it
(`model.safetensors`, float32), which the torch backends load too (`point_into_checkpoint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lumina_rt import ops
from lumina_rt.engines.v2a_engine import INPUT_NAMES, OUTPUT_NAME, v2a_tables
from lumina_rt.engines.weights import content_key
from lumina_rt.errors import EngineError
from lumina_rt.tolerances import rel_err

logger = logging.getLogger(__name__)

OPSET = 20
# Bump when the graph's inputs or layout change (part of the build's cache key); 2: weights read from the checkpoint.
EXPORT_FORMAT = 2
EXPORT_EXAMPLE = (2, 3, 7)  # (batch, frames, caption) of the traced example; every check case differs from it


def check_cases(frames: tuple[int, int]) -> tuple[tuple[int, int, int], ...]:
    """(batch, frames, caption) of the ONNX Runtime check: the served frame range's ends and middle."""
    lo, hi = frames
    return ((1, lo, 3), (3, hi, 11), (2, (lo + hi) // 2, 5))


@contextlib.contextmanager
def tables_as_inputs(cos: torch.Tensor, sin: torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
    """While tracing: `lumina_rt.v2a.model`'s frame-count-dependent table functions return these tensors."""
    import lumina_rt.v2a.model as v2a

    saved = (v2a.audio_rope_tables, v2a.frame_to_token_weights)
    v2a.audio_rope_tables = lambda *args, **kwargs: (cos, sin)
    v2a.frame_to_token_weights = lambda *args, **kwargs: weights
    try:
        yield
    finally:
        v2a.audio_rope_tables, v2a.frame_to_token_weights = saved


class V2AVelocityGraph(torch.nn.Module):
    """`V2AModel.velocity` with its tables as inputs, in the graph's input order (see module docstring)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z, t, frames, cap_feats, cap_mask, video_keep, cos, sin, weights) -> torch.Tensor:
        with tables_as_inputs(cos, sin, weights):
            return self.model.velocity(z, t, frames, cap_feats, cap_mask, video_keep)


def graph_code_hash() -> str:
    """Hash of the source that defines the exported graph (the V2A model, the shared layers, this module)."""
    from lumina_rt import model as model_module
    from lumina_rt.v2a import model as v2a

    h = hashlib.sha256()
    for module in (v2a, model_module, ops, sys.modules[__name__]):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:16]


def random_inputs(config: Any, batch: int, frames: int, caption: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Graph inputs for one case: random latents / clip / caption, a partial caption mask, one "no video" row."""
    g = torch.Generator().manual_seed(seed)
    k, size = config.latent_frames_per_video_frame, config.frame_size
    mask = torch.ones(batch, caption, dtype=torch.int64)
    for i in range(1, batch):
        mask[i, max(1, caption - 2 * i) :] = 0
    keep = torch.ones(batch)
    if batch > 1:
        keep[1] = 0.0
    cos, sin, weights = v2a_tables(config, frames)
    return {
        "z": torch.randn(batch, config.latent_channels, frames * k, config.latent_bands, generator=g),
        "t": torch.rand(batch, generator=g),
        "frames": torch.rand(batch, 3, frames, size, size, generator=g),
        "cap_feats": torch.randn(batch, caption, config.cap_feat_dim, generator=g),
        "cap_mask": mask,
        "video_keep": keep,
        "cos": cos,
        "sin": sin,
        "weights": weights,
    }


def export_v2a(model: torch.nn.Module, path: str | os.PathLike, opset: int = OPSET) -> dict[str, Any]:
    """Write the V2A velocity graph to `path` (weights inside: the model is small); returns {opset, nodes, seconds}."""
    import onnx

    from lumina_rt.export.onnx_export import dynamo_export

    config = model.config
    graph = V2AVelocityGraph(model).eval()
    example = random_inputs(config, *EXPORT_EXAMPLE)
    k, (pt, pb) = config.latent_frames_per_video_frame, config.patch
    batch, frames, caption = torch.export.Dim("batch"), torch.export.Dim("frames"), torch.export.Dim("caption")
    rope_rows = (k // pt) * (config.latent_bands // pb)
    dynamic = {
        "z": {0: batch, 2: k * frames},
        "t": {0: batch},
        "frames": {0: batch, 2: frames},
        "cap_feats": {0: batch, 1: caption},
        "cap_mask": {0: batch, 1: caption},
        "video_keep": {0: batch},
        "cos": {0: rope_rows * frames},
        "sin": {0: rope_rows * frames},
        "weights": {0: (k // pt) * frames, 1: frames},
    }
    t0 = time.perf_counter()
    was_checking = getattr(model, "check_inputs", None)
    try:
        model.check_inputs = False
        args = tuple(example[name] for name in INPUT_NAMES)
        program = dynamo_export(graph, args, dynamic, opset, input_names=INPUT_NAMES, output_name=OUTPUT_NAME)
    except Exception as exc:  # the exporter raises many types; say which graph failed
        raise EngineError(f"the V2A model does not export to ONNX: {type(exc).__name__}: {exc}") from None
    finally:
        model.check_inputs = was_checking
    if program is None:
        raise EngineError("the ONNX exporter returned no program for the V2A model")
    program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    names = tuple(i.name for i in proto.graph.input)
    if names != INPUT_NAMES or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise EngineError(f"the exported V2A graph has inputs {names}, expected {INPUT_NAMES}")
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset_used, "nodes": len(proto.graph.node), "seconds": time.perf_counter() - t0}


def compare_with_reference(
    run: Callable[[dict[str, torch.Tensor]], torch.Tensor | np.ndarray],
    model: torch.nn.Module,
    cases: Sequence[tuple[int, int, int]],
    seed: int = 1,
) -> list[dict[str, Any]]:
    """Relative error of `run(inputs)` against `model.velocity` on random inputs, one entry per (batch, frames,
    caption) case."""
    results = []
    for i, (batch, frames, caption) in enumerate(cases):
        inputs = random_inputs(model.config, batch, frames, caption, seed=seed + i)
        with ops.use_backend("torch"), torch.no_grad():
            ref = model.velocity(*(inputs[name] for name in INPUT_NAMES[:6]))
        err = rel_err(torch.as_tensor(np.asarray(run(inputs))), ref)
        results.append({"batch": batch, "frames": frames, "caption": caption, "rel_err": err})
    return results


def check_onnx(path: str | os.PathLike, model: torch.nn.Module, frames: tuple[int, int], tolerance: float) -> dict:
    """The graph at `path` in ONNX Runtime against the reference model; EngineError above `tolerance`."""
    from lumina_rt.engines.v2a_engine import ort_session

    session = ort_session(path)
    feeds = lambda inp: {n: inp[n].numpy() for n in INPUT_NAMES}  # noqa: E731
    results = compare_with_reference(lambda inp: session.run([OUTPUT_NAME], feeds(inp))[0], model, check_cases(frames))
    worst = max(r["rel_err"] for r in results)
    if worst > tolerance:
        raise EngineError(
            f"the V2A ONNX graph differs from the reference model: relative error {worst:.3e} > {tolerance:g} on "
            f"{results}"
        )
    return {"passed": True, "max_rel_err": worst, "cases": results, "tolerance": tolerance}


def checkpoint_tensors(path: str | os.PathLike) -> dict[str, tuple[int, np.ndarray]]:
    """The float32 tensors of a safetensors file: name -> (byte offset of its data in the file, array)."""
    raw = Path(path).read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info.get("dtype") != "F32":
            continue
        begin, end = info["data_offsets"]
        start = 8 + size + begin
        out[name] = (start, np.frombuffer(raw, np.float32, (end - begin) // 4, start).reshape(info["shape"]))
    return out


def point_into_checkpoint(proto: Any, checkpoint: str | os.PathLike) -> dict[str, int]:
    """Make the graph read its weights from `checkpoint` (a safetensors file beside the graph) instead of holding
    a copy, in place: an initializer with the bytes of a float32 tensor of the file becomes ONNX external data at
    that tensor's offset; one holding a 2-D tensor transposed reads the tensor through a Transpose node (folded by
    ONNX Runtime when it loads). Other initializers (constants the exporter made) stay in the graph.

    Returns {"external", "transposed", "inline_bytes"}: the counts and the bytes still held by the graph.
    """
    from onnx import TensorProto, helper, numpy_helper

    location = Path(checkpoint).name
    direct: dict[str, tuple[str, int, np.ndarray]] = {}
    transposed: dict[str, tuple[str, int, np.ndarray]] = {}
    for name, (offset, arr) in checkpoint_tensors(checkpoint).items():
        direct.setdefault(content_key(arr), (name, offset, arr))
        if arr.ndim == 2:
            transposed.setdefault(content_key(np.ascontiguousarray(arr.T)), (name, offset, arr))

    def external(init: Any, offset: int, nbytes: int) -> None:
        for fld in ("raw_data", "float_data"):
            init.ClearField(fld)
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", location), ("offset", offset), ("length", nbytes)):
            item = init.external_data.add()
            item.key, item.value = key, str(value)

    graph = proto.graph
    taken = {i.name for i in graph.initializer} | {n for node in graph.node for n in node.output}
    counts = {"external": 0, "transposed": 0, "inline_bytes": 0}
    added, transposes = [], []
    for init in list(graph.initializer):
        arr = numpy_helper.to_array(init)
        key = content_key(arr)
        if arr.dtype == np.float32 and key in direct:
            _, offset, _ = direct[key]
            external(init, offset, arr.nbytes)
            counts["external"] += 1
        elif arr.dtype == np.float32 and key in transposed:
            name, offset, source = transposed[key]
            source_name = f"{name}@checkpoint"
            if source_name not in taken:
                tensor = numpy_helper.from_array(source, source_name)
                external(tensor, offset, source.nbytes)
                added.append(tensor)
                taken.add(source_name)
            transposes.append(helper.make_node("Transpose", [source_name], [init.name], perm=[1, 0]))
            graph.initializer.remove(init)
            counts["transposed"] += 1
        else:
            counts["inline_bytes"] += arr.nbytes
    graph.initializer.extend(added)
    for node in reversed(transposes):
        graph.node.insert(0, node)
    return counts


def export_and_check(
    model: torch.nn.Module,
    out_dir: Path,
    frames: tuple[int, int],
    tolerance: float,
    checkpoint: str = "model.safetensors",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Export to `out_dir/velocity.onnx` with its weights read from `out_dir/checkpoint` (the copied V2A checkpoint:
    `point_into_checkpoint`), and check it: ({opset, nodes, seconds, external, transposed, inline_bytes}, check)."""
    import onnx

    path = out_dir / "velocity.onnx"
    info = export_v2a(model, path)
    proto = onnx.load(str(path))
    info.update(point_into_checkpoint(proto, out_dir / checkpoint))
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))  # by path: the external data resolved beside the graph
    check = check_onnx(path, model, frames, tolerance)
    logger.info(
        "exported the V2A model in %.1f s (%d nodes, %.1f KiB of constants in the graph, its weights read from %s); "
        "ONNX Runtime vs reference: max rel err %.2e",
        info["seconds"],
        info["nodes"],
        info["inline_bytes"] / 1024,
        checkpoint,
        check["max_rel_err"],
    )
    return info, check
