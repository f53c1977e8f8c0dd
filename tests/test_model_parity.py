"""The reference model against fixtures made by the released code, and properties that must hold for any config."""

from __future__ import annotations

import pytest
import torch

from lumina_rt.config import ModelConfig
from lumina_rt.model import MultiScaleNextDiT, rope_tables
from lumina_rt.parity import ModelParityTarget, load_fixture, run_parity
from tests._paths import PUBLIC_FIXTURE, require


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(require(PUBLIC_FIXTURE))


def test_public_fixture_every_case(fixture):
    model = MultiScaleNextDiT(fixture.config).eval()
    model.load_state_dict(fixture.state_dict, strict=True)
    results = run_parity(fixture, ModelParityTarget(model))
    kinds = {r.kind for r in results}
    assert kinds == {"forward", "forward_list", "forward_with_multi_cfg", "sample_euler"}
    assert len(results) == 16
    worst = max(results, key=lambda r: r.rel_err)
    assert worst.rel_err <= 1e-5, worst


def test_parity_detects_a_wrong_model(fixture):
    """A perturbed weight must fail parity: the comparison is not vacuous."""
    model = MultiScaleNextDiT(fixture.config).eval()
    sd = fixture.state_dict
    sd["layers.1.attention.gate"] = sd["layers.1.attention.gate"] + 0.01
    model.load_state_dict(sd, strict=True)
    results = run_parity(fixture, ModelParityTarget(model))
    assert not all(r.passed for r in results)


VARIANTS = {
    "no-gqa-no-qknorm": dict(dim=64, n_layers=2, n_heads=2, qk_norm=False, norm_eps=1e-6, ffn_dim_multiplier=1.3),
    "gqa-4to1": dict(dim=128, n_layers=1, n_heads=4, n_kv_heads=1, qk_norm=True, multiple_of=16),
    "odd-heads": dict(dim=144, n_layers=1, n_heads=3, n_kv_heads=3, qk_norm=True, multiple_of=48),
}


def _random_model(kwargs: dict, seed: int = 0) -> MultiScaleNextDiT:
    base = dict(
        in_channels=3, cap_feat_dim=24, all_patch_size=(2, 2, 4), all_f_patch_size=(1, 2, 2),
        rope_theta=256.0, t_scale=1000.0, motion_scale=20.0, multiple_of=32,
    )  # fmt: skip
    base.update(kwargs)
    torch.manual_seed(seed)
    model = MultiScaleNextDiT(ModelConfig.from_kwargs(base)).eval()
    with torch.no_grad():  # released init zeroes gates and modulation; randomise so every path matters
        for name, p in model.named_parameters():
            if any(s in name for s in ("adaLN", "gate", "final_layer", "cap_embedder.1", "motion_embedder")):
                p.normal_(0, 0.05)
    return model


def _inputs(b: int, length: int, cap_dim: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cap = torch.randn(b, length, cap_dim, generator=g)
    mask = torch.zeros(b, length, dtype=torch.long)
    for i in range(b):
        mask[i, : length - i] = 1
    t = torch.rand(b, generator=g)
    motion = torch.tensor([3.0, -1.0, 0.5][:b])
    return cap, mask, t, motion


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_list_path_equals_batch_path_per_item(variant):
    """Each list item (video or image) attends only to its own tokens and caption: same as a batch of one."""
    model = _random_model(VARIANTS[variant])
    cfg = model.config
    cap, mask, t, motion = _inputs(3, 6, cfg.cap_feat_dim)
    g = torch.Generator().manual_seed(2)
    items = [torch.randn(3, 4, 8, 16, generator=g), torch.randn(3, 1, 16, 8, generator=g),
             torch.randn(3, 2, 8, 8, generator=g)]  # fmt: skip
    for combo in cfg.patch_combos:
        pf, p = cfg.check_combo(combo)
        with torch.no_grad():
            outs = model.forward_list(items, t, cap, mask, motion, p, pf)
            for i, item in enumerate(items):
                ref = model(item[None], t[i : i + 1], cap[i : i + 1], mask[i : i + 1], motion[i : i + 1], p, pf)[0]
                assert outs[i].shape == item.shape
                torch.testing.assert_close(outs[i], ref, rtol=1e-5, atol=1e-5)


def test_padded_caption_tokens_change_nothing():
    model = _random_model(VARIANTS["gqa-4to1"])
    cap, mask, t, motion = _inputs(2, 6, model.config.cap_feat_dim)
    x = torch.randn(2, 3, 2, 8, 8)
    with torch.no_grad():
        a = model(x, t, cap, mask, motion, 2, 2)
        cap2 = cap.clone()
        cap2[mask == 0] = 1e3  # garbage in the padding must be invisible
        b = model(x, t, cap2, mask, motion, 2, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_negative_motion_means_unconditioned():
    model = _random_model(VARIANTS["gqa-4to1"])
    cap, mask, t, _ = _inputs(2, 6, model.config.cap_feat_dim)
    x = torch.randn(2, 3, 2, 8, 8)
    with torch.no_grad():
        m1 = torch.tensor([-1.0, -5.0])
        before = m1.clone()
        a = model(x, t, cap, mask, m1, 2, 1)
        b = model(x, t, cap, mask, torch.tensor([-0.1, -3.0]), 2, 1)
        c = model(x, t, cap, mask, torch.tensor([2.0, 2.0]), 2, 1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-4
    assert torch.equal(m1, before), "the model must not write into the motion tensor it is given"


def test_image_is_repeated_to_frame_patch_and_cropped():
    model = _random_model(VARIANTS["no-gqa-no-qknorm"])
    cap, mask, t, motion = _inputs(2, 6, model.config.cap_feat_dim)
    img = torch.randn(2, 3, 1, 8, 8)
    with torch.no_grad():
        out = model(img, t, cap, mask, motion, 2, 2)
        rep = model(img.repeat(1, 1, 2, 1, 1), t, cap, mask, motion, 2, 2)
    assert out.shape == img.shape
    torch.testing.assert_close(out, rep[:, :, :1], rtol=0, atol=0)


def test_rope_tables_match_complex_reference():
    """Real cos/sin tables equal the released complex64 polar table (float64 angles)."""
    head_dim, theta = 48, 256.0
    cos, sin = rope_tables(3, 4, 5, head_dim, theta)
    dims = (head_dim // 8 * 2, head_dim // 8 * 3, head_dim // 8 * 3)
    parts = []
    for n, d, shape in zip((3, 4, 5), dims, ((3, 1, 1), (1, 4, 1), (1, 1, 5))):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        ang = torch.polar(torch.ones(n, d // 2, dtype=torch.float64), torch.outer(torch.arange(n).double(), freqs))
        parts.append(ang.to(torch.complex64).view(*shape, d // 2).expand(3, 4, 5, d // 2))
    ref = torch.cat(parts, dim=-1).reshape(60, head_dim // 2)
    torch.testing.assert_close(cos, ref.real, rtol=0, atol=0)
    torch.testing.assert_close(sin, ref.imag, rtol=0, atol=0)


def test_batch_path_has_no_host_syncs():
    """The batch path must export / capture: tracing it must not hit .item() / .tolist() / data-dependent flow."""
    model = _random_model(VARIANTS["gqa-4to1"]).requires_grad_(False)
    cap, mask, t, motion = _inputs(2, 6, model.config.cap_feat_dim)
    x = torch.randn(2, 3, 2, 8, 8)
    with torch.no_grad():
        traced = torch.jit.trace(lambda *a: model(*a, 2, 2), (x, t, cap, mask, motion), check_trace=False)
        x2, t2 = torch.randn_like(x), torch.rand(2)
        torch.testing.assert_close(traced(x2, t2, cap, mask, motion), model(x2, t2, cap, mask, motion, 2, 2))
