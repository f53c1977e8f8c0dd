"""The one switch: which implementation `lumina_rt.ops` runs, and that training never hits a kernel without backward."""

from __future__ import annotations

import pytest
import torch

from lumina_rt import ops
from lumina_rt.errors import BackendUnavailableError


def _spy(monkeypatch, backend: str) -> list[str]:
    calls: list[str] = []
    if backend == "triton":
        from lumina_rt.kernels import registry as mod

        table = mod.TRITON_IMPLS
    else:
        from lumina_rt.kernels import cpu as mod

        table = mod.CPU_IMPLS
    for name, fn in list(table.items()):

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls.append(_name)
            return _fn(*a, **k)

        monkeypatch.setitem(table, name, wrapped)
    return calls


@pytest.mark.parametrize("backend", ["triton", "cpu-fused"])
def test_fused_backend_runs_under_no_grad_and_torch_under_autograd(monkeypatch, backend):
    calls = _spy(monkeypatch, backend)
    x = torch.randn(2, 5, 32)
    w, s = torch.randn(32), torch.randn(2, 32)
    with ops.use_backend(backend):
        with torch.no_grad():
            out = ops.rmsnorm_modulate(x, w, s, 1e-5)
        assert calls == ["rmsnorm_modulate"]
        torch.testing.assert_close(out, ops._rmsnorm_modulate_torch(x, w, s, 1e-5), rtol=1e-5, atol=1e-5)
        wp = w.clone().requires_grad_(True)
        y = ops.rmsnorm_modulate(x, wp, s, 1e-5)
        assert calls == ["rmsnorm_modulate"], "a kernel without backward ran while autograd was recording"
        y.sum().backward()
        assert wp.grad is not None and torch.isfinite(wp.grad).all()


def test_model_step_fused_equals_torch():
    from lumina_rt.config import ModelConfig
    from lumina_rt.model import MultiScaleNextDiT

    torch.manual_seed(0)
    model = MultiScaleNextDiT(ModelConfig.from_name("tiny")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("adaLN", "gate", "final_layer", "motion_embedder", "cap_embedder.1")):
                p.normal_(0, 0.05)
    args = (torch.randn(2, 4, 4, 8, 8), torch.rand(2), torch.randn(2, 6, 48), torch.ones(2, 6, dtype=torch.long),
            torch.tensor([3.0, -1.0]))  # fmt: skip
    with torch.no_grad():
        ref = model.velocity(*args, "2x2")
        for backend in ("cpu-fused", "triton"):
            with ops.use_backend(backend):
                out = model.velocity(*args, "2x2")
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_unknown_backend():
    with pytest.raises(BackendUnavailableError, match="'cuda-magic'"):
        ops.set_backend("cuda-magic")
