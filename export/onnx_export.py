"""ONNX export of one velocity evaluation per patch size, graph checks, and the shared weight store.

Graph inputs (float32 unless noted; B batch, N tokens, L caption length, all three dynamic):

    tokens [B, N, pf*p*p*C]    patchified latents, tokens in (f h w) order
    cos, sin [N, head_dim/2]   real RoPE tables, float64 angles rounded to float32 (`model.rope_tables`)
    t [B]                      time in [0, 1]
    cap_feats [B, L, cap_dim]  caption features
    cap_mask [B, L] int64      nonzero = caption token
    motion [B]                 motion score (negative: unconditioned)

Output: `velocity` [B, N, pf*p*p*C]. Patchify / unpatchify and the RoPE tables stay outside the graph, so one
graph serves every resolution and frame count. Export uses the dynamo exporter at opset 20; RMSNorm is hand-written
and RoPE real-valued, so the graph holds no complex or float64 tensor (checked by `check_graph`).

Attention has two forms (`ATTENTION_FORMS`): ``decomposed`` MatMul / Softmax / MatMul (the form TensorRT fuses
into its attention kernels; graphs for TensorRT builds) and ``ort-mha``, ONNX Runtime's fused
``com.microsoft.MultiHeadAttention`` (graphs for ONNX Runtime builds): measured on the bench model's 1x2 step it is
faster on ONNX Runtime's CPU provider (docs/engines.md). GQA keys / values are repeated to the query heads in both.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from lumina_rt import ops
from lumina_rt.config import ModelConfig
from lumina_rt.engines.profiles import token_features
from lumina_rt.engines.weights import WEIGHTS_FILE, WeightStoreWriter, content_key
from lumina_rt.errors import EngineError
from lumina_rt.model import MultiScaleNextDiT, rope_tables
from lumina_rt.tolerances import rel_err

logger = logging.getLogger(__name__)

INPUT_NAMES = ("tokens", "cos", "sin", "t", "cap_feats", "cap_mask", "motion")
OUTPUT_NAME = "velocity"
OPSET = 20
# Bump when the graph layout or weight naming changes: part of the export cache key.
EXPORT_FORMAT = 2
ATTENTION_FORMS = ("decomposed", "ort-mha")
# Initializers at least this large go to the shared weight store; smaller ones stay inside each graph.
EXTERNAL_THRESHOLD = 1024

# Operators of the TensorRT 10 ONNX parser (onnx-tensorrt operator support list) that graphs of this model can
# contain. A graph with an operator outside this set is refused for a TensorRT build.
TENSORRT_OPS = frozenset(
    """Abs Add And ArgMax ArgMin Cast Ceil Clip Concat Constant ConstantOfShape Cos CumSum Div Einsum Equal Erf Exp
    Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm Greater GreaterOrEqual Identity If IsInf IsNaN
    LayerNormalization Less LessOrEqual Log MatMul Max Mean Min Mod Mul Neg Not Or Pow Range Reciprocal ReduceL2
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Resize ScatterElements ScatterND Shape Sigmoid
    Sign Sin Size Slice Softmax Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze Where Xor""".split()
)
FORBIDDEN_TYPES = {
    TensorProto.DOUBLE: "float64",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
}


# ------------------------------------------------------------------------------------------------
# Attention as ONNX Runtime's fused MultiHeadAttention (contrib domain com.microsoft)
# ------------------------------------------------------------------------------------------------


MHA_OP, MHA_DOMAIN = "MultiHeadAttention", "com.microsoft"


@torch.library.custom_op("lumina_rt_export::mha", mutates_args=())
def _mha(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, num_heads: int
) -> torch.Tensor:
    """q [B, N, H*Dh], k / v [B, L, H*Dh], key_mask [B, L] int32 (1 = attend) or None -> [B, N, H*Dh] (SDPA)."""
    b, n, e = q.shape
    dh = e // num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], num_heads, dh).transpose(1, 2)

    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, e)


@_mha.register_fake
def _mha_fake(q, k, v, key_mask, num_heads):  # noqa: ANN001, ANN202
    return torch.empty_like(q)


def _ort_mha_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    x_mask: torch.Tensor | None,
    yk: torch.Tensor,
    yv: torch.Tensor,
    y_mask: torch.Tensor,
    gate: torch.Tensor,
) -> torch.Tensor:
    """`ops.gated_attention` written with the MultiHeadAttention op (same math; K / V repeated for GQA)."""
    b, n, hq, dh = q.shape

    def flat(t: torch.Tensor) -> torch.Tensor:
        if t.shape[2] != hq:
            t = t.repeat_interleave(hq // t.shape[2], dim=2)
        return t.reshape(t.shape[0], t.shape[1], hq * dh)

    mha = torch.ops.lumina_rt_export.mha
    qf = flat(q)
    out = mha(qf, flat(k), flat(v), None if x_mask is None else x_mask.to(torch.int32), hq)
    out_y = mha(qf, flat(yk), flat(yv), y_mask.to(torch.int32), hq)
    return out + out_y * gate.tanh().to(out_y.dtype).repeat_interleave(dh)


def _register_mha_schema() -> None:
    """Declare com.microsoft::MultiHeadAttention (inputs used here) to onnx, so onnxscript can emit it."""
    from onnx.defs import OpSchema

    if onnx.defs.has(MHA_OP, MHA_DOMAIN):
        return
    opt = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        MHA_OP, MHA_DOMAIN, 1,
        inputs=[OpSchema.FormalParameter("query", "T"), OpSchema.FormalParameter("key", "T", param_option=opt),
                OpSchema.FormalParameter("value", "T", param_option=opt),
                OpSchema.FormalParameter("bias", "T", param_option=opt),
                OpSchema.FormalParameter("key_padding_mask", "M", param_option=opt)],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of attention heads")],
    )  # fmt: skip
    onnx.defs.register_schema(schema)


def _mha_translation() -> dict[Any, Callable]:
    """The exporter's translation of `lumina_rt_export::mha` to com.microsoft.MultiHeadAttention."""
    import onnxscript

    _register_mha_schema()
    msft = onnxscript.values.Opset(MHA_DOMAIN, 1)

    def mha_onnx(q, k, v, key_mask, num_heads: int):  # noqa: ANN001, ANN202
        if key_mask is None:
            return msft.MultiHeadAttention(q, k, v, num_heads=num_heads)
        return msft.MultiHeadAttention(q, k, v, None, key_mask, num_heads=num_heads)

    return {torch.ops.lumina_rt_export.mha.default: mha_onnx}


class VelocityGraph(torch.nn.Module):
    """`forward_tokens` of one patch size, with the graph's input order (see module docstring)."""

    def __init__(self, model: MultiScaleNextDiT, combo: str):
        super().__init__()
        model.config.check_combo(combo)
        self.model = model
        self.combo = combo

    def forward(
        self,
        tokens: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        t: torch.Tensor,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor,
        motion: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.forward_tokens(tokens, cos, sin, t, cap_feats, cap_mask, motion, self.combo)


def graph_code_hash() -> str:
    """Hash of the source that defines the exported graph (this module, the model, its ops): an export cache key."""
    import hashlib
    import inspect

    from lumina_rt import model as model_module

    h = hashlib.sha256()
    for module in (model_module, ops, sys.modules[__name__]):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CheckCase:
    """A random input for the graph check: batch, token grid (f, h, w), caption length."""

    batch: int
    grid: tuple[int, int, int]
    caption: int


# The export example (batch 2, grid 2x3x4, caption 7) differs from every check case, so the check proves the
# graph's batch, token and caption axes are really dynamic.
EXPORT_EXAMPLE = CheckCase(2, (2, 3, 4), 7)
CHECK_CASES = (CheckCase(1, (1, 5, 3), 3), CheckCase(3, (3, 2, 3), 11), CheckCase(2, (1, 1, 1), 1))


def random_inputs(config: ModelConfig, combo: str, case: CheckCase, seed: int = 0) -> dict[str, torch.Tensor]:
    """Graph inputs for a check case: random tokens / captions, partial caption masks, one unconditioned motion."""
    g = torch.Generator().manual_seed(seed)
    b, (f, h, w), length = case.batch, case.grid, case.caption
    cos, sin = rope_tables(f, h, w, config.head_dim, config.rope_theta)
    mask = torch.ones(b, length, dtype=torch.int64)
    for i in range(1, b):
        mask[i, max(1, length - 2 * i) :] = 0
    motion = torch.rand(b, generator=g) * 4.0
    if b > 1:
        motion[1] = -1.0
    return {
        "tokens": torch.randn(b, f * h * w, token_features(config, combo), generator=g),
        "cos": cos,
        "sin": sin,
        "t": torch.rand(b, generator=g),
        "cap_feats": torch.randn(b, length, config.cap_feat_dim, generator=g),
        "cap_mask": mask,
        "motion": motion,
    }


def dynamo_export(
    graph: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic: dict[str, dict[int, Any]],
    opset: int,
    translation: dict[Any, Callable] | None = None,
    input_names: Sequence[str] = INPUT_NAMES,
    output_name: str = OUTPUT_NAME,
) -> Any:
    """`torch.onnx.export(dynamo=True)` with the torch kernels, no autograd, and the exporter's chatter silenced."""
    sink = io.StringIO()
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with ops.use_backend("torch"), torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                graph,
                args,
                dynamic_shapes=dynamic,
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=[output_name],
                optimize=True,
                verbose=False,
                custom_translation_table=translation,
            )
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def export_scale(
    model: MultiScaleNextDiT,
    combo: str,
    workdir: str | os.PathLike,
    opset: int = OPSET,
    attention: str = "decomposed",
) -> tuple[onnx.ModelProto, Path]:
    """ONNX graph of one velocity evaluation at patch `combo` (batch / tokens / caption dynamic).

    `attention`: one of ATTENTION_FORMS (module docstring).

    The exporter writes the graph with its weights as external data into `workdir` (so models past protobuf's
    2 GB limit export too); returns the graph without weight data and the folder its external data lives in.
    """
    graph = VelocityGraph(model, combo).eval()
    example = random_inputs(model.config, combo, EXPORT_EXAMPLE)
    args = tuple(example[name] for name in INPUT_NAMES)
    batch, tokens, caption = torch.export.Dim("batch"), torch.export.Dim("tokens"), torch.export.Dim("caption")
    dynamic = {
        "tokens": {0: batch, 1: tokens},
        "cos": {0: tokens},
        "sin": {0: tokens},
        "t": {0: batch},
        "cap_feats": {0: batch, 1: caption},
        "cap_mask": {0: batch, 1: caption},
        "motion": {0: batch},
    }
    if attention not in ATTENTION_FORMS:
        raise EngineError(f"unknown attention form {attention!r}; choose one of {ATTENTION_FORMS}")
    translation = _mha_translation() if attention == "ort-mha" else None
    form = ops.replace_torch_impl("gated_attention", _ort_mha_attention) if translation else contextlib.nullcontext()
    with form:
        program = dynamo_export(graph, args, dynamic, opset, translation)
    if program is None:
        raise EngineError(f"the ONNX exporter returned no program for scale {combo}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    raw = workdir / f"raw_{combo}.onnx"
    program.save(raw, external_data=True)
    del program
    proto = onnx.load(str(raw), load_external_data=False)
    pin_constant_tables(proto, _torch_tables(model), workdir)
    names = tuple(i.name for i in proto.graph.input)
    if names != INPUT_NAMES or [o.name for o in proto.graph.output] != [OUTPUT_NAME]:
        raise EngineError(f"exported graph of scale {combo} has inputs {names}, expected {INPUT_NAMES}")
    proto.doc_string = f"lumina_rt velocity, patch {combo}, {model.config.name}"
    return proto, workdir


def _torch_tables(model: MultiScaleNextDiT) -> list[np.ndarray]:
    """Constant tables the model computes at run time, as torch computes them (`TimestepEmbedder` frequencies)."""
    tables = []
    for module in (model.t_embedder, model.motion_embedder):
        half = module.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        tables.append(freqs.numpy())
    return tables


def pin_constant_tables(
    proto: onnx.ModelProto, tables: list[np.ndarray], base_dir: str | os.PathLike | None = None
) -> int:
    """Give folded constants the exact bits torch computes; returns how many initializers changed.

    The exporter folds the timestep-embedding frequencies exp(-ln(1e4) * i / half) with another exp than torch's,
    1 ulp apart in some entries. The times are scaled by t_scale = 1000 before the sin / cos, so 1 ulp in a
    frequency becomes ~1e-4 in an angle and ~2e-6 in the velocity (measured on the public fixture; 1e-6 after
    pinning). Only an initializer within 4 ulps of a table, and not equal to it, is replaced.
    """
    changed = 0
    for init in proto.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        for table in tables:
            if int(np.prod(init.dims)) != table.size:
                continue
            arr = _array(init, base_dir).ravel()
            if np.array_equal(arr, table) or not np.allclose(arr, table, rtol=5e-7, atol=0.0):
                continue
            init.CopyFrom(numpy_helper.from_array(table.reshape(tuple(init.dims)), init.name))
            changed += 1
    return changed


# ------------------------------------------------------------------------------------------------
# Graph checks
# ------------------------------------------------------------------------------------------------


def _tensor_types(proto: onnx.ModelProto) -> list[tuple[str, int]]:
    """(where, elem_type) of every typed value, initializer, constant and cast target in the graph."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    g = inferred.graph
    out = [(f"value {v.name!r}", v.type.tensor_type.elem_type) for v in [*g.input, *g.output, *g.value_info]]
    out += [(f"initializer {i.name!r}", i.data_type) for i in g.initializer]
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                out.append((f"{node.op_type} {node.name!r}", attr.t.data_type))
            elif node.op_type == "Cast" and attr.name == "to":
                out.append((f"Cast {node.name!r}", attr.i))
    return out


def _array(init: onnx.TensorProto, base_dir: str | os.PathLike | None) -> np.ndarray:
    if init.data_location == TensorProto.EXTERNAL:
        if base_dir is None:
            raise EngineError(f"initializer {init.name!r} has external data but no folder to read it from")
        return numpy_helper.to_array(init, str(base_dir))
    return numpy_helper.to_array(init)


def check_graph(graph: onnx.ModelProto | str | os.PathLike, combo: str, for_tensorrt: bool = False) -> dict[str, Any]:
    """Validate a graph (a ModelProto, or an .onnx file whose external data sits beside it): the ONNX checker, no
    complex / float64 tensor, operators (TensorRT's set when building for it).

    Returns {opset, ops, unsupported_by_tensorrt}. Raises EngineError naming the offending tensor or operator.
    """
    try:
        if isinstance(graph, onnx.ModelProto):
            proto = graph
            onnx.checker.check_model(proto)
        else:  # by path: external data resolved next to the file, no 2 GB limit
            onnx.checker.check_model(str(graph))
            proto = onnx.load(str(graph), load_external_data=False)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"exported graph of scale {combo} fails the ONNX checker: {exc}") from None
    for where, elem in _tensor_types(proto):
        if elem in FORBIDDEN_TYPES:
            raise EngineError(f"exported graph of scale {combo} has a {FORBIDDEN_TYPES[elem]} tensor: {where}")
    ops_used = sorted({n.op_type for n in proto.graph.node})
    foreign = [op for op in ops_used if op not in TENSORRT_OPS]
    if foreign and for_tensorrt:
        raise EngineError(f"graph of scale {combo} uses operators TensorRT's ONNX parser does not take: {foreign}")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "ops": ops_used, "unsupported_by_tensorrt": foreign}


def compare_with_reference(
    run: Callable[[dict[str, torch.Tensor]], torch.Tensor | np.ndarray],
    model: MultiScaleNextDiT,
    combo: str,
    cases: Sequence[CheckCase] = CHECK_CASES,
    seed: int = 1,
) -> list[dict[str, Any]]:
    """Relative error of `run(inputs)` against the reference model on random inputs, one entry per case."""
    results = []
    graph = VelocityGraph(model, combo).eval()
    for i, case in enumerate(cases):
        inputs = random_inputs(model.config, combo, case, seed=seed + i)
        with ops.use_backend("torch"), torch.no_grad():
            ref = graph(*(inputs[name] for name in INPUT_NAMES))
        err = rel_err(run(inputs), ref)
        results.append(
            {"batch": case.batch, "tokens": int(np.prod(case.grid)), "caption": case.caption, "rel_err": err}
        )
    return results


# ------------------------------------------------------------------------------------------------
# Shared weight store
# ------------------------------------------------------------------------------------------------


def _param_arrays(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[np.ndarray, str, str | None]]:
    """state-dict key -> (float32 array, content key, content key of its transpose when 2-D)."""
    out = {}
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu()
        arr = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        tkey = content_key(np.ascontiguousarray(arr.T)) if arr.ndim == 2 else None
        out[name] = (arr, content_key(arr), tkey)
    return out


def _param_keys(arrays: dict[str, tuple[np.ndarray, str, str | None]]) -> dict[str, tuple[str, bool]]:
    """content key -> (state-dict key, transposed) for every parameter and every 2-D parameter's transpose."""
    out: dict[str, tuple[str, bool]] = {}
    for name, (_, key, tkey) in arrays.items():
        out.setdefault(key, (name, False))
        if tkey is not None:
            out.setdefault(tkey, (name, True))
    return out


def _canonical_name(arr: np.ndarray, key: str, params: dict[str, tuple[str, bool]], state_dict) -> str:
    """Readable, content-determined name: the parameter it holds (".T" transposed, "@shape" reshaped) or a hash."""
    if key in params:
        name, transposed = params[key]
        if transposed:
            return f"{name}.T"
        if tuple(arr.shape) == tuple(state_dict[name].shape):
            return name
        return f"{name}@{'x'.join(str(d) for d in arr.shape)}"
    return f"const.{key[:16]}@{'x'.join(str(d) for d in arr.shape) or 'scalar'}"


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_inputs(attr.g, renames)
    for out in graph.output:
        if out.name in renames:
            out.name = renames[out.name]


class SharedWeights:
    """Builds the shared store graph by graph (see `build_weight_store`), streaming bytes to `weights.bin`."""

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor],
        path: str | os.PathLike | None = None,
        threshold: int = EXTERNAL_THRESHOLD,
    ):
        self.writer = WeightStoreWriter(stream_to=path)
        self.state_dict = state_dict
        self.arrays = _param_arrays(state_dict)
        self.params = _param_keys(self.arrays)
        self.threshold = threshold

    def externalize(self, combo: str, proto: onnx.ModelProto, base_dir: str | os.PathLike | None = None) -> None:
        """Move the graph's large initializers into the store and point them at `weights.bin` (in place)."""
        graph = proto.graph
        renames: dict[str, str] = {}
        kept: set[str] = set()
        drop = []
        for init in graph.initializer:
            arr = _array(init, base_dir)
            if arr.nbytes < self.threshold:
                if init.data_location == TensorProto.EXTERNAL:  # small but external in the raw export: inline it
                    init.CopyFrom(numpy_helper.from_array(arr, init.name))
                continue
            key = content_key(arr)
            name = _canonical_name(arr, key, self.params, self.state_dict)
            entry = self.writer.add(name, arr, key)
            del arr
            if name in kept:  # a second copy of the same tensor in one graph: point its users at the first
                renames[init.name] = name
                drop.append(init)
                continue
            if init.name != name:
                renames[init.name] = name
            kept.add(name)
            init.name = name
            init.ClearField("raw_data")
            for fld in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                init.ClearField(fld)
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            for k, v in (("location", WEIGHTS_FILE), ("offset", entry["offset"]), ("length", entry["nbytes"])):
                item = init.external_data.add()
                item.key, item.value = k, str(v)
        for init in drop:
            graph.initializer.remove(init)
        _rename_inputs(graph, renames)
        logger.debug("scale %s: %d initializers in the shared store", combo, len(kept))

    def finish(self) -> WeightStoreWriter:
        """Name every state-dict parameter in the store (torch backend); bytes already stored are not stored again."""
        writer = self.writer
        for name, (arr, key, tkey) in self.arrays.items():
            if tkey is not None and not writer.has_content(key) and writer.has_content(tkey):
                writer.add(f"{name}.T", np.ascontiguousarray(arr.T), tkey)
                writer.params[name] = {"tensor": f"{name}.T", "transpose": True, "shape": list(arr.shape)}
            else:
                writer.add(name, arr, key)
                writer.params[name] = {"tensor": name, "transpose": False, "shape": list(arr.shape)}
        return writer


def build_weight_store(
    protos: dict[str, onnx.ModelProto],
    state_dict: dict[str, torch.Tensor],
    threshold: int = EXTERNAL_THRESHOLD,
    base_dir: str | os.PathLike | None = None,
) -> WeightStoreWriter:
    """Move every large initializer of every graph into one store, deduplicated by content.

    Each such initializer is renamed to a content-determined name (so the same backbone tensor has the same name
    in every graph) and becomes ONNX external data pointing into `weights.bin`. The store's `params` map every
    state-dict key to the bytes holding it (added to the store when no graph holds it), for the torch backend.
    """
    shared = SharedWeights(state_dict, threshold=threshold)
    for combo, proto in protos.items():
        shared.externalize(combo, proto, base_dir)
    return shared.finish()
