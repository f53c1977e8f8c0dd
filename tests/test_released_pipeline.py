"""The released pipeline end to end, offline, with real architectures at tiny sizes made here.

A released-layout checkpoint (model_args.pth + consolidated.00-of-01.safetensors, random weights), a tiny random
Gemma-2 (transformers layout, with a word-level tokenizer built here) and a tiny random CogVideoX VAE (diffusers
layout): `lumina-rt build --checkpoint --text-encoder --vae` -> `lumina-rt generate` writes an MP4 that follows the
released frame / size / fps rules; the caption features and the decoded frames equal direct transformers / diffusers
calls. Also: the typed errors when transformers / diffusers are missing, and the torch engines' device policy
(`torch_engine.placement`) on a fake CUDA device here and on a real one where CUDA exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.nn.attention import SDPBackend

from lumina_rt.config import ModelConfig
from lumina_rt.engines import torch_engine
from lumina_rt.errors import DecoderError, TextEncoderError
from lumina_rt.model import MultiScaleNextDiT

FRAMES, HEIGHT, WIDTH, FPS = 8, 32, 32, 24
VAE_SCALE = 0.7  # not the released 1.15258426: the test sees that the VAE config's factor is the one applied, once
GEMMA_WIDTH = 32
PROMPT = "a red circle moving right"


def require_module(name: str, extra: str) -> None:
    """A test failure in CI / a skip elsewhere naming the missing package (as tests/_paths.py `require`)."""
    if importlib.util.find_spec(name) is None:
        msg = f"{name} is not installed (pip install 'lumina-rt[{extra}]', or bash scripts/install.sh --dev)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


# ------------------------------------------------------------------------------------------------ tiny models
def tiny_released_checkpoint(path: Path, cap_feat_dim: int = GEMMA_WIDTH, seed: int = 0) -> Path:
    """A released-layout checkpoint: 16 latent channels, patch sizes 1x2 / 2x2 / 2x4, random weights."""
    args = argparse.Namespace(
        model="MultiScaleNextDiT", qk_norm=True, patch_sizes=[2, 2, 4], f_patch_sizes=[1, 2, 2], rope_theta=256.0,
        t_scale=1000.0, motion_scale=20.0, dim=64, n_layers=2, n_heads=2, n_kv_heads=1, multiple_of=32, lr=1e-4,
    )  # fmt: skip
    config = ModelConfig(
        all_patch_size=(2, 2, 4), all_f_patch_size=(1, 2, 2), in_channels=16, dim=64, n_layers=2, n_heads=2,
        n_kv_heads=1, multiple_of=32, qk_norm=True, cap_feat_dim=cap_feat_dim, rope_theta=256.0, t_scale=1000.0,
        motion_scale=20.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = MultiScaleNextDiT(config)
    with torch.no_grad():
        for p in model.parameters():  # the released init zeroes some layers: make every one matter
            p.copy_(torch.randn_like(p) * 0.05)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(args, path / "model_args.pth")
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(path / "consolidated.00-of-01.safetensors"))
    return path


def tiny_gemma(path: Path) -> Path:
    """A random Gemma-2 (hidden 32, 3 layers) and a word-level tokenizer, saved for AutoModel / AutoTokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    from lumina_rt.components.gemma import SYSTEM_PROMPT

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in (SYSTEM_PROMPT + PROMPT + " a blue square moving left slowly").lower().split():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    ).save_pretrained(path)
    config = Gemma2Config(
        vocab_size=len(vocab), hidden_size=GEMMA_WIDTH, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(1)
    Gemma2Model(config).save_pretrained(path)
    return path


def tiny_vae(path: Path) -> Path:
    """A random AutoencoderKLCogVideoX (16 latent channels, x8 in space, x4 in time), diffusers layout."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(2)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, latent_channels=16, layers_per_block=1,
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        scaling_factor=VAE_SCALE,
    )  # fmt: skip
    vae.save_pretrained(path)
    return path


def _build_argv(ckpt: Path, gemma: Path, vae: Path, out: Path) -> list[str]:
    released = ["--checkpoint", str(ckpt), "--text-encoder", str(gemma), "--vae", str(vae), "--out", str(out)]
    return [*released, "--target", "torch", "--resolutions", f"{HEIGHT}x{WIDTH}", "--frames", str(FRAMES),
            "--no-measure"]  # fmt: skip


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(checkpoint, gemma dir, vae dir, engine dir built with `lumina-rt build`)."""
    require_module("transformers", "text")
    require_module("diffusers", "vae")
    from lumina_rt.cli import main

    root = tmp_path_factory.mktemp("released")
    ckpt = tiny_released_checkpoint(root / "ckpt")
    gemma = tiny_gemma(root / "gemma")
    vae = tiny_vae(root / "vae")
    eng = root / "engines"
    assert main(["build", *_build_argv(ckpt, gemma, vae, eng)]) == 0
    return ckpt, gemma, vae, eng


# ------------------------------------------------------------------------------------------------ build
def test_build_writes_the_released_components(released, capsys):
    ckpt, gemma, vae, eng = released
    comps = json.loads((eng / "components.json").read_text())
    assert comps["latent"] == {"channels": 16, "temporal_factor": 4, "spatial_factor": 8, "scale": VAE_SCALE}
    assert comps["text_encoder"] == {"kind": "gemma-2-2b", "path": str(gemma.resolve()), "dtype": "auto"}
    assert comps["decoder"]["kind"] == "cogvideox-vae" and comps["decoder"]["path"] == str(vae.resolve())
    from lumina_rt.sampling import SAMPLE_PRESETS

    assert comps["sampling"] == SAMPLE_PRESETS
    manifest = json.loads((eng / "manifest.json").read_text())
    assert manifest["default_sample_preset"] == "f24F96R960-MultiScale"
    assert manifest["shapes"]["latent"]["temporal_factor"] == 4 and manifest["components"]["referenced"] == [
        str(gemma.resolve()),
        str(vae.resolve()),
    ]
    assert not (eng / "gemma").exists() and not (eng / "vae").exists()  # referenced, not copied

    # The same flags through `lumina-rt build` (which export/build_engines.py runs): nothing changed, nothing to do.
    from lumina_rt.cli import main

    capsys.readouterr()
    assert main(["build", *_build_argv(ckpt, gemma, vae, eng)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_components_key_follows_the_referenced_files(released, tmp_path):
    """Changing a file inside a referenced folder changes the components stage's key (its SHA-256 is in it)."""
    import shutil

    from lumina_rt.export.build_engines import _components_key, build_components

    ckpt, gemma, vae, _ = released
    copy = shutil.copytree(gemma, tmp_path / "gemma")
    comps = build_components(ckpt, copy, vae)
    key, copied, hashes = _components_key(ckpt, comps)
    assert copied == [] and str((copy / "model.safetensors").resolve()) in hashes
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert _components_key(ckpt, comps, hashes)[0] != key


# ------------------------------------------------------------------------------------------------ generate
def test_generate_writes_the_released_video(released, tmp_path):
    """`lumina-rt generate` in a fresh process: an MP4 of frames // 4 latent frames decoded, at the asked fps."""
    import imageio.v3 as iio

    from lumina_rt.components.cogvideox import decoded_frames

    _, _, _, eng = released
    out = tmp_path / "v.mp4"
    argv = ["generate", str(eng), "--prompt", PROMPT, "--frames", str(FRAMES), "--height", str(HEIGHT),
            "--width", str(WIDTH), "--fps", str(FPS), "--steps", "3", "--backend", "torch", "--no-progress",
            "--out", str(out)]  # fmt: skip
    code = (
        "import sys, time; from lumina_rt.cli import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
        "print('PEAK', hwm[0].split()[1] if hwm else 0, 'kB', round(time.perf_counter() - t, 2), 's'); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak = next(line for line in proc.stdout.splitlines() if line.startswith("PEAK"))
    print(f"lumina-rt generate (tiny released pipeline): peak RSS {int(peak.split()[1]) / 1024:.0f} MiB, {peak}")
    assert "frames" in proc.stdout and "latent preview" not in proc.stdout

    frames = iio.imread(out, plugin="pyav") if importlib.util.find_spec("av") else iio.imread(out)
    assert frames.shape == (decoded_frames(FRAMES // 4), HEIGHT, WIDTH, 3) == (8, 32, 32, 3)
    import imageio.v2 as imageio

    with imageio.get_reader(out) as reader:
        assert reader.get_meta_data()["fps"] == FPS


def test_decoded_frames_equal_diffusers(released):
    """Runtime's frames == diffusers `vae.decode(latents / scaling_factor)`, (x + 1) / 2 clamped (factor once)."""
    from diffusers import AutoencoderKLCogVideoX

    from lumina_rt.runtime import Runtime

    _, _, vae_dir, eng = released
    rt = Runtime(eng, backend="torch")
    res = rt.generate(PROMPT, frames=FRAMES, height=HEIGHT, width=WIDTH, steps=3, seed=3, progress=False)
    assert res.latents.shape == (1, 16, FRAMES // 4, HEIGHT // 8, WIDTH // 8)
    vae = AutoencoderKLCogVideoX.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        ref = ((vae.decode(res.latents / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    assert res.frames is not None and res.frames.shape == ref.shape == (1, 3, 8, HEIGHT, WIDTH)
    assert (res.frames - ref).abs().max().item() <= 1e-5
    assert ref.std() > 0.01  # not a constant video


def test_caption_features_equal_transformers(released):
    """The encoder's features == `hidden_states[-2]` of a direct transformers call on the system-prompted texts."""
    from transformers import AutoModel, AutoTokenizer

    from lumina_rt.components.gemma import SYSTEM_PROMPT
    from lumina_rt.runtime import Runtime

    _, gemma, _, eng = released
    encoder = Runtime(eng, backend="torch").pipeline.text_encoder()
    prompts = [PROMPT, ""]
    feats, mask = encoder.encode(prompts)

    tok = AutoTokenizer.from_pretrained(gemma)
    tok.padding_side = "right"
    model = AutoModel.from_pretrained(gemma).eval()
    ids = tok([SYSTEM_PROMPT + p for p in prompts], padding=True, pad_to_multiple_of=8, max_length=256,
              truncation=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        ref = model(**ids, output_hidden_states=True).hidden_states[-2]
    assert feats.shape == ref.shape and feats.shape[1] % 8 == 0 and feats.dtype == torch.float32
    assert torch.equal(mask, ids.attention_mask) and mask.dtype == torch.int64
    n_system = len(SYSTEM_PROMPT.split())
    assert mask[1].sum() == n_system and mask[0].sum() == n_system + len(PROMPT.split())  # system prompt included
    assert mask[1, -1] == 0 and mask[1, 0] == 1  # right padding
    assert (feats - ref).abs().max().item() <= 1e-6


# ------------------------------------------------------------------------------------------------ typed errors
def test_missing_transformers_is_a_typed_error(released, monkeypatch):
    from lumina_rt.components.gemma import GemmaTextEncoder
    from lumina_rt.runtime import Runtime

    _, gemma, _, eng = released
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(TextEncoderError, match=r"'transformers'.*lumina-rt\[text\]"):
        GemmaTextEncoder(gemma)
    with pytest.raises(TextEncoderError, match=r"lumina-rt\[text\]"):
        Runtime(eng, backend="torch").generate(PROMPT, frames=FRAMES, height=HEIGHT, width=WIDTH, progress=False)


def test_missing_diffusers_is_a_typed_error(released, monkeypatch):
    from lumina_rt.components.cogvideox import CogVideoXDecoder

    _, _, vae, _ = released
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(DecoderError, match=r"'diffusers'.*lumina-rt\[vae\]"):
        CogVideoXDecoder(vae)


def test_vae_scaling_factor_and_frame_rule(tmp_path):
    from lumina_rt.components.cogvideox import RELEASED_SCALING_FACTOR, decoded_frames, scaling_factor

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLCogVideoX"}))
    assert scaling_factor(tmp_path) == RELEASED_SCALING_FACTOR == 1.15258426
    assert [decoded_frames(f) for f in (1, 2, 3, 24)] == [1, 8, 9, 96]
    with pytest.raises(DecoderError, match="cannot read the VAE config"):
        scaling_factor(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ device policy
def test_placement_policy():
    """On CUDA: the manifest's precision and SDPA's fused kernels; on the CPU: fp32, or bf16 for bf16 builds."""
    p = torch_engine.placement("bf16", "cuda")
    assert p.device.type == "cuda" and p.dtype == torch.bfloat16 and SDPBackend.MATH not in p.sdpa
    assert set(p.sdpa) == {SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION}
    assert torch_engine.placement("fp16", "cuda:0").dtype == torch.float16
    fp32 = torch_engine.placement("fp32", "cuda")
    assert fp32.dtype == torch.float32 and SDPBackend.EFFICIENT_ATTENTION in fp32.sdpa
    assert torch_engine.placement("bf16", "cpu") == torch_engine.Placement(torch.device("cpu"), torch.bfloat16, None)
    assert torch_engine.placement("fp32", "cpu").dtype == torch.float32
    from lumina_rt.errors import EngineError

    with pytest.raises(EngineError, match="unknown engine precision 'int8'"):
        torch_engine.placement("int8", "cuda")


def _bf16_engines(tmp_path: Path) -> Path:
    from lumina_rt.engines.profiles import ServeShapes
    from lumina_rt.export.build_engines import build

    ckpt = tiny_released_checkpoint(tmp_path / "ckpt", cap_feat_dim=32)
    shapes = ServeShapes(resolutions=[(HEIGHT, WIDTH)], frames=[FRAMES], max_batch=1, max_caption=16)
    build(ckpt, tmp_path / "eng", target="torch", precision="bf16", shapes=shapes, measure=False)
    return tmp_path / "eng"


def _record_sdpa(monkeypatch) -> list[dict[str, bool]]:
    """Wrap SDPA to record which kernels are enabled at each call."""
    seen: list[dict[str, bool]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        b = torch.backends.cuda
        seen.append({"flash": b.flash_sdp_enabled(), "efficient": b.mem_efficient_sdp_enabled(),
                     "cudnn": b.cudnn_sdp_enabled(), "math": b.math_sdp_enabled(), "dtype": args[0].dtype})  # fmt: skip
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def _velocity(rt) -> torch.Tensor:
    combo = rt.engines.patch_combos[0]
    x = torch.randn(2, 16, FRAMES // 4, HEIGHT // 8, WIDTH // 8)
    feats, mask = torch.randn(2, 8, 32), torch.ones(2, 8, dtype=torch.int64)
    return rt.engines.velocity(x, torch.tensor([0.3, 0.3]), feats, mask, torch.tensor([6.0, 6.0]), combo)


def test_runtime_follows_the_placement_policy(tmp_path, monkeypatch):
    """A fake device policy (the CUDA decision for this bf16 build, run on the CPU with the math kernel only):
    the engine's parameters take its dtype and attention runs under its SDPA kernels."""
    from lumina_rt.runtime import Runtime

    eng = _bf16_engines(tmp_path)
    asked, real = [], torch_engine.placement

    def fake(precision, device):
        asked.append((precision, str(device)))
        return torch_engine.Placement(torch.device("cpu"), real(precision, "cuda").dtype, (SDPBackend.MATH,))

    monkeypatch.setattr(torch_engine, "placement", fake)
    monkeypatch.setattr(torch_engine, "cpu_has_native_bf16", lambda: True)
    rt = Runtime(eng, backend="torch")
    assert asked == [("bf16", "cpu")]
    params = {p.dtype for p in rt.engines.engine(rt.engines.patch_combos[0]).model.parameters()}
    assert params == {torch.bfloat16}
    seen = _record_sdpa(monkeypatch)
    v = _velocity(rt)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert seen and all(s == {**s, "flash": False, "efficient": False, "cudnn": False, "math": True} for s in seen)
    assert all(s["dtype"] == torch.bfloat16 for s in seen)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU test above covers the policy)")
def test_runtime_on_cuda_runs_the_manifest_precision(tmp_path, monkeypatch):
    from lumina_rt.runtime import Runtime

    eng = _bf16_engines(tmp_path)
    rt = Runtime(eng, backend="torch-cuda")
    params = list(rt.engines.engine(rt.engines.patch_combos[0]).model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16} and {p.device.type for p in params} == {"cuda"}
    seen = _record_sdpa(monkeypatch)
    v = _velocity(rt)
    assert torch.isfinite(v).all()
    assert seen and all(not s["math"] and s["efficient"] and s["dtype"] == torch.bfloat16 for s in seen)
