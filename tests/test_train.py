"""Trainer: loss falls, exact resume, and one test per ingredient of the recipe (each fails without it)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lumina_rt.training.core as C
import lumina_rt.training.video as T
from lumina_rt import ops
from lumina_rt.checkpoint import load_model
from lumina_rt.components.tiny import TinyTextEncoder
from lumina_rt.data import SYSTEM_PROMPTS
from lumina_rt.model import MultiScaleNextDiT


def tiny_config(**train) -> dict:
    return {
        "model": dict(
            dim=32,
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            multiple_of=16,
            in_channels=3,
            cap_feat_dim=64,
            all_patch_size=[4, 8, 8],
            all_f_patch_size=[2, 2, 4],
            qk_norm=True,
            rope_theta=256.0,
            t_scale=1000.0,
            motion_scale=100.0,
        ),
        "train": dict(dict(batch_size=4, image_batch_size=4, lr=2e-3, log_every=1, ckpt_every=3, threads=2), **train),
        "stages": [
            dict(name="low", iters=3, size=16, frames=4, frame_stride=2),
            dict(name="high", iters=3, size=32, frames=8),
        ],
    }


def logged_losses(res: dict) -> list[float]:
    """Per-log-line mean losses of a `T.train` result."""
    return [json.loads(line)["loss"] for line in res["log"].read_text().splitlines()]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One short run with the model's forward and the text encoder spied on."""
    calls, encodes, clips = [], [], []
    orig_forward, orig_encode, orig_clip = (
        MultiScaleNextDiT.forward,
        TinyTextEncoder.encode,
        T.torch.nn.utils.clip_grad_norm_,
    )

    def forward(self, x, t, cap_feats, cap_mask, motion, patch_size, f_patch_size):
        calls.append(
            dict(combo=f"{f_patch_size}x{patch_size}", shape=tuple(x.shape), t=t.clone(), motion=motion.clone())
        )
        return orig_forward(self, x, t, cap_feats, cap_mask, motion, patch_size, f_patch_size)

    def encode(self, prompts, system_prompts=None):
        encodes.append((list(prompts), list(system_prompts or [])))
        return orig_encode(self, prompts, system_prompts)

    def clip(params, max_norm, *a, **k):
        params = list(params)
        norm = orig_clip(params, max_norm, *a, **k)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        clips.append((max_norm, float(norm), float(after)))
        return norm

    mp = pytest.MonkeyPatch()
    mp.setattr(MultiScaleNextDiT, "forward", forward)
    mp.setattr(TinyTextEncoder, "encode", encode)
    mp.setattr(T.torch.nn.utils, "clip_grad_norm_", clip)
    cfg = tiny_config(batch_size=16, image_batch_size=4, caption_drop=0.3, grad_clip=0.05, ema=0.5)
    cfg["stages"] = [
        dict(name="low", iters=6, size=16, frames=4, frame_stride=2),
        dict(name="high", iters=4, size=32, frames=8),
    ]
    out = tmp_path_factory.mktemp("rec")
    res = T.train(cfg, out / "run", resume=False, export_dir=out / "export", progress=False)
    mp.undo()
    return dict(calls=calls, encodes=encodes, clips=clips, res=res, cfg=cfg)


def test_loss_falls_on_a_short_run(tmp_path):
    cfg = tiny_config(lr=3e-3, log_every=4, ckpt_every=1000, image_batch_size=0)
    cfg["stages"] = [dict(name="s", iters=24, size=16, frames=4, frame_stride=2)]
    res = T.train(cfg, tmp_path, resume=False, progress=False)
    losses = logged_losses(res)
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    cfg = tiny_config(ema=0.9)
    full = T.train(cfg, tmp_path / "full", resume=False, progress=False)
    part = T.train(cfg, tmp_path / "part", resume=False, stop_after=3, progress=False)
    assert part["step"] == 3 and C.latest_checkpoint(tmp_path / "part").name == "step-0000003"
    resumed = T.train(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed["step"] == full["step"] == 6
    a = load_file(str(C.latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    b = load_file(str(C.latest_checkpoint(tmp_path / "part") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(C.latest_checkpoint(tmp_path / "full") / "ema.safetensors"))
    eb = load_file(str(C.latest_checkpoint(tmp_path / "part") / "ema.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert full["log"].read_text().count("\n") == resumed["log"].read_text().count("\n")


def test_checkpoints_are_atomic_native_and_skip_partial_writes(tmp_path):
    cfg = tiny_config()
    T.train(cfg, tmp_path, resume=False, stop_after=3, progress=False)
    # a crash while writing the next checkpoint leaves only a hidden temp folder: resume ignores it
    (tmp_path / "checkpoints" / ".step-0000006.tmp").mkdir()
    latest = C.latest_checkpoint(tmp_path)
    assert latest.name == "step-0000003"
    assert {"config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"} <= {
        p.name for p in latest.iterdir()
    }
    model = load_model(latest)  # native layout, loads with the runtime's loader
    assert model.config.dim == 32
    assert T.train(cfg, tmp_path, resume=True, progress=False)["step"] == 6


def test_algorithm1_every_patch_size_every_iteration(recorded):
    per_step = len(recorded["calls"]) // 10
    assert per_step == 4  # 3 video patch sizes + 1 image pass
    for k in range(10):
        step_calls = recorded["calls"][k * per_step : (k + 1) * per_step]
        assert sorted(c["combo"] for c in step_calls[:3]) == ["2x4", "2x8", "4x8"]


def test_algorithm1_gradients_reach_every_patch_size(tmp_path):
    cfg = tiny_config(image_batch_size=0, ckpt_every=1)
    cfg["stages"] = [dict(iters=1, size=16, frames=4, frame_stride=2)]
    T.train(cfg, tmp_path, resume=False, progress=False)
    sd = load_file(str(C.latest_checkpoint(tmp_path) / "model.safetensors"))
    for key in ("4-2", "8-2", "8-4"):  # final layers start at zero: only a trained patch size moves
        assert float(sd[f"all_final_layer.{key}.linear.weight"].abs().sum()) > 0, key


def test_each_patch_size_has_its_own_time_shift(recorded):
    shifts = T.task_shifts(T.TrainConfig.from_dict(recorded["cfg"]).model, {})
    assert shifts == {"image": 1.0, "2x4": 2.0, "2x8": 4.0, "4x8": 8.0}  # larger patches, larger shift
    medians = {}
    for combo in ("2x4", "2x8", "4x8"):
        ts = torch.cat([c["t"] for c in recorded["calls"] if c["combo"] == combo and c["shape"][2] > 1])
        medians[combo] = float(ts.median())
        expected = 1.0 / (1.0 + shifts[combo])  # median of a shifted logit-normal
        assert abs(medians[combo] - expected) < 0.08, (combo, medians[combo], expected)
    assert medians["2x4"] > medians["2x8"] > medians["4x8"]


def test_learning_rate_warmup_and_cosine_decay():
    tc = T.TrainConfig.from_dict(tiny_config(lr=1e-3, warmup=10, lr_decay_start=50, lr_min_ratio=0.1)).train
    assert C.learning_rate(tc, 0, 100) == pytest.approx(1e-4)
    assert C.learning_rate(tc, 9, 100) == C.learning_rate(tc, 50, 100) == pytest.approx(1e-3)
    assert C.learning_rate(tc, 99, 100) == pytest.approx(1e-4)
    assert C.learning_rate(tc, 50, 100) > C.learning_rate(tc, 75, 100) > C.learning_rate(tc, 99, 100)


def test_time_shift_matches_the_sampler():
    from lumina_rt.sampling import time_grid

    t = torch.linspace(0, 1, 11)
    assert torch.allclose(C.shift_time(t, 3.0), time_grid(11, 3.0))


def test_motion_condition_dropped_with_p04(recorded):
    motion = torch.cat([c["motion"] for c in recorded["calls"] if c["shape"][2] > 1])
    frac = float((motion < 0).float().mean())
    assert abs(frac - 0.4) < 0.13, frac
    # the 3 patch-size passes of a step share the same dropped items
    first = recorded["calls"][:3]
    assert torch.equal(first[0]["motion"], first[1]["motion"])


def test_caption_dropout_keeps_the_source_system_prompt(recorded):
    prompts, systems = [], []
    for p, s in recorded["encodes"]:
        prompts += p
        systems += s
    assert set(systems) == set(SYSTEM_PROMPTS.values())  # multi-source: a system prompt per source
    dropped = [s for p, s in zip(prompts, systems) if p == ""]
    assert 0.1 < len(dropped) / len(prompts) < 0.5
    assert all(s in SYSTEM_PROMPTS.values() for s in dropped)
    enc = TinyTextEncoder.create()
    feats, mask = enc.encode([""], [SYSTEM_PROMPTS["grainy"]])
    assert int(mask.sum()) > 3  # the dropped caption still carries the system prompt tokens


def test_images_train_at_the_finest_patch_only(recorded):
    images = [c for c in recorded["calls"] if c["shape"][2] == 1]
    assert len(images) == 10
    assert {c["combo"] for c in images} == {"2x4"}
    assert all(bool((c["motion"] < 0).all()) for c in images)  # images carry no motion score
    image_t = torch.cat([c["t"] for c in images])
    assert abs(float(image_t.median()) - 0.5) < 0.12  # shift 1 for images


def test_progressive_stages_raise_resolution_and_frame_rate(recorded):
    video = [c for c in recorded["calls"] if c["shape"][2] > 1]
    assert {c["shape"][2:] for c in video[:18]} == {(4, 16, 16)}
    assert {c["shape"][2:] for c in video[18:]} == {(8, 32, 32)}
    stages = [json.loads(line)["stage"] for line in recorded["res"]["log"].read_text().splitlines()]
    assert stages[0] == "low" and stages[-1] == "high"


def test_gradient_clipping(recorded):
    assert len(recorded["clips"]) == 10
    for max_norm, before, after in recorded["clips"]:
        assert max_norm == 0.05
        assert after <= max_norm * 1.01 and before > after


def test_ema_weights_are_exported(recorded):
    export = recorded["res"]["export"]
    run = recorded["res"]["out"]
    ckpt = C.latest_checkpoint(run)
    exported = load_file(str(export / "model.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors"))
    raw = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    comps = json.loads((export / "components.json").read_text())
    assert comps["text_encoder"]["kind"] == "lumina-tiny-text" and comps["latent"]["channels"] == 3
    assert (export / "train_log.jsonl").is_file()


def test_flow_matching_loss_and_cosine_term():
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(4, 3, 2, 8, 8, generator=gen)
    xt, t, target = C.flow_matching_inputs(x1, 1.0, "uniform", torch.Generator().manual_seed(1))
    x0 = x1 - target
    assert torch.allclose(xt, t.view(4, 1, 1, 1, 1) * x1 + (1 - t.view(4, 1, 1, 1, 1)) * x0, atol=1e-6)
    assert float(C.flow_matching_loss(target, target, vd_weight=0.5)) < 1e-6
    mse = float(((2 * target) ** 2).mean())
    assert abs(float(C.flow_matching_loss(-target, target, 0.0)) - mse) < 1e-4
    assert abs(float(C.flow_matching_loss(-target, target, 0.5)) - (mse + 1.0)) < 1e-4  # 0.5 * (1 - (-1))


def test_pca_latent_fits_round_trips_and_trains(tmp_path):
    from lumina_rt.components.tiny import PCAAutoencoder
    from lumina_rt.data import SyntheticDataset, analyse_frames

    clips = SyntheticDataset(seed=3).video_batch(0, 32).x
    ae = PCAAutoencoder.fit(clips, channels=12, factor=4)
    z = ae.encode(clips)
    assert z.shape == (32, 12, 8, 8, 8)
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 0.05  # whitened components
    rec = ae.decode(z)
    assert float(((rec - (clips + 1) / 2) ** 2).mean()) < 0.005
    assert all(analyse_frames(rec[i]).colour == analyse_frames((clips[i] + 1) / 2).colour for i in range(8))
    # without whitening: one scale for all components, their variances keep the PCA's ratios, the same round trip
    flat = PCAAutoencoder.fit(clips, channels=12, factor=4, whiten=False)
    zf = flat.encode(clips)
    var = zf.transpose(0, 1).reshape(12, -1).var(dim=1)
    torch.testing.assert_close(var / var[0], ae.z_std.pow(2) / ae.z_std[0].pow(2), rtol=1e-3, atol=1e-6)
    assert abs(float(var.mean()) - 1) < 0.05 and float(var[0]) > 5 * float(var[-1])
    torch.testing.assert_close(flat.decode(zf), rec, rtol=0, atol=1e-5)
    cfg = tiny_config(image_batch_size=2, ckpt_every=2)
    cfg["model"]["in_channels"] = 12
    cfg["model"]["all_patch_size"], cfg["model"]["all_f_patch_size"] = [2, 2, 4], [1, 2, 2]
    cfg["latent"] = dict(kind="pca", channels=12, factor=4, fit_clips=64, whiten=False)
    cfg["stages"] = [dict(iters=2, size=32, frames=8)]
    res = T.train(cfg, tmp_path / "run", resume=False, export_dir=tmp_path / "export", progress=False)
    comps = json.loads((res["export"] / "components.json").read_text())
    assert comps["decoder"]["kind"] == "lumina-tiny-pca" and comps["latent"]["spatial_factor"] == 4
    assert (res["export"] / "autoencoder.safetensors").is_file()
    z_std = PCAAutoencoder.load(res["export"]).z_std  # the config's whiten=False: one scale for every component
    assert bool((z_std == z_std[0]).all())


def test_train_subcommand_is_registered():
    from lumina_rt.cli import build_parser

    args = build_parser().parse_args(["train", "configs/builtin.json", "--stop-after", "5"])
    assert args.stop_after == 5
    cfg = T.TrainConfig.from_file("configs/builtin.json")
    assert cfg.train.motion_drop == 0.4 and cfg.train.grad_clip == 2.0
    assert [s.size for s in cfg.stages] == sorted(s.size for s in cfg.stages)


def test_bf16_autocast_runs_linears_in_bf16_attention_in_fp32(tmp_path, monkeypatch):
    import lumina_rt.model as M

    seen = []
    orig_sdpa, orig_linear = M.F.scaled_dot_product_attention, torch.nn.Linear.forward

    def sdpa(q, k, v, attn_mask=None):
        seen.append(("sdpa", q.dtype, k.dtype, v.dtype))
        return orig_sdpa(q, k, v, attn_mask=attn_mask)

    def linear(self, x):
        out = orig_linear(self, x)
        seen.append(("linear", out.dtype))
        return out

    monkeypatch.setattr(M.F, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(torch.nn.Linear, "forward", linear)
    cfg = tiny_config(log_every=1, ckpt_every=1000)
    cfg["stages"] = [dict(name="s", iters=3, size=16, frames=4, frame_stride=2)]
    ref = T.train(cfg, tmp_path / "fp32", resume=False, progress=False)
    assert {s[1] for s in seen if s[0] == "linear"} == {torch.float32}
    seen.clear()
    cfg["train"]["autocast"] = "bf16"
    res = T.train(cfg, tmp_path / "bf16", resume=False, progress=False)
    assert {s[1] for s in seen if s[0] == "linear"} == {torch.bfloat16}
    assert {d for s in seen if s[0] == "sdpa" for d in s[1:]} == {torch.float32}
    weights = load_file(str(C.latest_checkpoint(tmp_path / "bf16") / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    a = logged_losses(ref)
    b = logged_losses(res)
    assert a != b and a == pytest.approx(b, rel=0.02)


def test_autocast_setting_is_checked():
    with pytest.raises(T.ConfigError, match="autocast"):
        T.TrainConfig.from_dict(tiny_config(autocast="fp16"))


def test_compile_setting_is_checked():
    with pytest.raises(T.ConfigError, match="compile must be true or false, got 'yes'"):
        T.TrainConfig.from_dict(tiny_config(compile="yes"))
    cfg = tiny_config(compile=True)
    cfg["stages"][0]["compile"] = False
    stages = T.TrainConfig.from_dict(cfg).stages
    assert [s.compile for s in stages] == [False, True]


def test_padded_captions_change_no_output():
    torch.manual_seed(0)
    model = MultiScaleNextDiT(T.TrainConfig.from_dict(tiny_config()).model).eval()
    for p in model.parameters():  # the zero-initialised gates and final layer would hide the captions
        torch.nn.init.normal_(p, std=0.2)
    enc = TinyTextEncoder.create(dim=64)
    feats, mask = enc.encode(["a red circle moving left quickly", ""], [SYSTEM_PROMPTS["toon"]] * 2)
    pfeats, pmask = T.pad_captions(feats, mask, 8)
    assert pfeats.shape[1] % 8 == 0 and pfeats.shape[1] > feats.shape[1] and pmask[:, feats.shape[1] :].sum() == 0
    x, t, motion = torch.randn(2, 3, 4, 16, 16), torch.tensor([0.3, 0.7]), torch.tensor([1.0, -1.0])
    ref = model(x, t, feats, mask, motion, 4, 2)
    out = model(x, t, pfeats, pmask, motion, 4, 2)
    assert not torch.allclose(ref, model(x, t, feats * 0, mask, motion, 4, 2))  # the captions matter
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_compiled_stages_train_like_eager(tmp_path, monkeypatch):
    """`compile`: the compiled model runs the stages that ask for it, with the eager run's losses."""
    cfg = tiny_config(multiscale=False, image_batch_size=0, ckpt_every=1000)
    cfg["stages"] = [
        dict(name="low", iters=2, size=16, frames=4, frame_stride=2),
        dict(name="high", iters=3, size=32, frames=8),
    ]
    ref = T.train(cfg, tmp_path / "eager", resume=False, progress=False)
    compiled_shapes = []
    real_compile = T.torch.compile

    def spy(model, **kw):
        fn = real_compile(model, **kw)

        def call(x, *a):
            compiled_shapes.append(tuple(x.shape))
            return fn(x, *a)

        return call

    monkeypatch.setattr(T.torch, "compile", spy)
    cfg["train"]["compile"] = True
    cfg["stages"][0]["compile"] = False
    res = T.train(cfg, tmp_path / "compiled", resume=False, progress=False)
    assert [s[-3:] for s in compiled_shapes] == [(8, 32, 32)] * 3  # stage "high" only
    a = logged_losses(ref)
    b = logged_losses(res)
    assert len(a) == len(b) == 5 and a == pytest.approx(b, rel=1e-4)


def test_attention_math_matches_sdpa():
    """The written-out attention of compiled mixed-precision steps is SDPA's math, masks included."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])[:, None, None, :]
    for m in (None, mask):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
        torch.testing.assert_close(ops.attention_math(q, k, v, m), ref, rtol=1e-5, atol=1e-6)


def test_compiled_bf16_steps_use_fp32_math_attention(tmp_path, monkeypatch):
    """Compiled + bf16 autocast: attention is written out in fp32, with the eager bf16 run's losses."""
    cfg = tiny_config(multiscale=False, image_batch_size=0, ckpt_every=1000, autocast="bf16")
    cfg["stages"] = [dict(name="s", iters=3, size=16, frames=4, frame_stride=2)]
    ref = T.train(cfg, tmp_path / "eager", resume=False, progress=False)
    dtypes = []
    real = ops.attention_math

    def spy(q, k, v, mask):
        dtypes.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, mask)

    monkeypatch.setattr(ops, "attention_math", spy)
    cfg["train"]["compile"] = True
    res = T.train(cfg, tmp_path / "compiled", resume=False, progress=False)
    assert dtypes and {d for ds in dtypes for d in ds} == {torch.float32}  # traced into the compiled graph
    a = logged_losses(ref)
    b = logged_losses(res)
    assert len(a) == len(b) == 3 and a == pytest.approx(b, rel=2e-3)


def test_config_errors_name_the_bad_key_or_value(tmp_path):
    with pytest.raises(T.ConfigError, match=r"unknown train keys \['bogus'\]"):
        T.TrainConfig.from_dict(tiny_config(bogus=1))
    cfg = tiny_config()
    cfg["data"] = {"seeds": 1}
    with pytest.raises(T.ConfigError, match=r"unknown data keys \['seeds'\]"):
        T.TrainConfig.from_dict(cfg)
    cfg = tiny_config()
    cfg["stages"][0]["sizes"] = 3
    with pytest.raises(T.ConfigError, match=r"unknown stage 0 keys \['sizes'\]"):
        T.TrainConfig.from_dict(cfg)
    cfg = tiny_config()
    cfg["stages"][1]["iters"] = 0
    with pytest.raises(T.ConfigError, match="stage 1: iters must be a positive integer, got 0"):
        T.TrainConfig.from_dict(cfg)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config()))
    assert T.TrainConfig.from_file(path) == T.TrainConfig.from_dict(tiny_config())


def test_a_stage_sets_its_own_time_shifts_and_constant_learning_rate(tmp_path, monkeypatch):
    """A fine-tuning stage (configs/builtin_v2_tune.json): its own shifts for the named tasks, a constant lr, and
    the schedule of the stages before it ends where they end (so they train as they would without it)."""
    ts, orig = [], MultiScaleNextDiT.forward

    def forward(self, x, t, cap_feats, cap_mask, motion, patch_size, f_patch_size):
        ts.append((f"{f_patch_size}x{patch_size}", x.shape[2], t.clone()))
        return orig(self, x, t, cap_feats, cap_mask, motion, patch_size, f_patch_size)

    monkeypatch.setattr(MultiScaleNextDiT, "forward", forward)
    cfg = tiny_config(batch_size=16, lr=2e-3, lr_decay_start=0, lr_min_ratio=0.1, ckpt_every=100)
    cfg["stages"] = [
        dict(name="main", iters=4, size=16, frames=4, frame_stride=2),
        dict(name="tune", iters=3, size=16, frames=4, frame_stride=2, shifts={"2x4": 60.0}, lr=3e-4),
    ]
    parsed = T.TrainConfig.from_dict(cfg)
    assert parsed.schedule_end == 4 and parsed.total_iters == 7
    res = T.train(cfg, tmp_path, resume=False, progress=False)
    lines = [json.loads(line) for line in res["log"].read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["main"] * 4 + ["tune"] * 3
    lrs = [r["lr"] for r in lines]
    assert lrs[0] == pytest.approx(2e-3) and lrs[3] == pytest.approx(2e-4)  # cosine over the main stage only
    assert lrs[4:] == pytest.approx([3e-4] * 3)
    video = [(c, t) for c, f, t in ts if f > 1]  # 3 patch sizes per step
    main, tune = video[:12], video[12:]

    def median(part, combo):
        return float(torch.cat([t for c, t in part if c == combo]).median())

    assert abs(median(main, "2x4") - 1 / 3) < 0.1  # default shift 2
    assert median(tune, "2x4") < 0.05  # shift 60: median 1 / 61
    assert abs(median(tune, "2x8") - median(main, "2x8")) < 0.12  # unnamed tasks keep theirs (4)
    for bad in ({"9x9": 2.0}, {"2x4": 0}, ["2x4"]):
        cfg["stages"][1]["shifts"] = bad
        with pytest.raises(T.ConfigError, match="stage 1: shifts must map"):
            T.TrainConfig.from_dict(cfg)
    cfg["stages"][1]["shifts"] = {}
    for bad in (-1.0, True, "1e-4"):
        cfg["stages"][1]["lr"] = bad
        with pytest.raises(T.ConfigError, match="stage 1: lr must be a positive number"):
            T.TrainConfig.from_dict(cfg)


def test_the_tuning_config_continues_the_shipped_recipe():
    """configs/builtin_v2_tune.json (docs/training.md, run 5) resumes the shipped run: same sections, the same
    stages and learning rates for its first 15,000 iterations, then its constant-lr stage."""
    shipped, tune = (T.TrainConfig.from_file(f"configs/{n}.json") for n in ("builtin", "builtin_v2_tune"))
    for section in ("model", "data", "latent", "train"):
        assert getattr(tune, section) == getattr(shipped, section), section
    assert tune.stages[:-1] == shipped.stages and tune.schedule_end == shipped.total_iters == 15000
    for step in range(0, 15000, 250):
        assert tune.stage_at(step) == shipped.stage_at(step)
        assert C.learning_rate(tune.train, step, tune.schedule_end) == C.learning_rate(shipped.train, step, 15000)
    assert tune.stage_at(15000)[1].lr == 1e-4 and tune.total_iters == 16500
