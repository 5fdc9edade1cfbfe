"""``compile=True``: the RIM's time step through ``torch.compile`` (``compile_chunk=8``: chunks of 8 steps per
graph, single steps for the rest) equals the eager step (float64, outputs, states, masks and gradients), and
falls back to eager where compiling fails. The comparisons compile, a few minutes on a cold cache: they are
marked slow; the fallback test is fast."""
import pytest
import torch

import zoo.layers.rim as rim_module
from zoo import RIM


def _pair(**kw):
    torch.manual_seed(0)
    eager = RIM(5, 24, **{**dict(num_units=4, k_active=2), **kw}).double()
    compiled = RIM(5, 24, compile=True, compile_chunk=8, **{**dict(num_units=4, k_active=2), **kw}).double()
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def _run(rim, x, h0, c0, starts):
    out, (h, c), info = rim(x, (h0, c0), episode_starts=starts, return_info=True)
    w = torch.linspace(-1, 1, out.numel(), dtype=torch.double).view_as(out)
    ((out * w).sum() + h.square().sum() + c.sin().sum()).backward()
    return out, h, c, info, {n: p.grad.clone() for n, p in rim.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("variant", [
    dict(),
    dict(cell="gru", input_heads=2, comm_source="candidate", comm_residual="gated", with_resets=True),
])
def test_compiled_step_equals_eager_float64(variant):
    variant = dict(variant)
    with_resets = variant.pop("with_resets", False)
    eager, compiled = _pair(**variant)
    torch.manual_seed(1)
    steps = 12                  # step 0 eager (a state without gradient), steps 1-8 one compiled chunk, 9-11 single
    x = torch.randn(steps, 3, 5, dtype=torch.double)
    h0, c0 = torch.randn(1, 3, 24, dtype=torch.double), torch.randn(1, 3, 24, dtype=torch.double)
    starts = None
    if with_resets:
        starts = torch.zeros(steps, 3, dtype=torch.double)
        starts[2, 1] = starts[4, 0] = starts[10, 2] = 1
    (o1, h1, c1, i1, g1), (o2, h2, c2, i2, g2) = (_run(m, x, h0, c0, starts) for m in (eager, compiled))
    assert torch.allclose(o1, o2, atol=1e-12) and torch.allclose(h1, h2, atol=1e-12) and torch.allclose(c1, c2, atol=1e-12)
    assert torch.equal(i1.mask, i2.mask)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-10), name
    with torch.no_grad():                                                # the inference graph too
        assert torch.allclose(eager.eval()(x)[0], compiled.eval()(x)[0], atol=1e-12)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(rim_module, "_COMPILED", {})
    monkeypatch.setattr(rim_module, "_COMPILE_ERROR", None)
    eager, compiled = _pair()
    x = torch.randn(4, 2, 5, dtype=torch.double)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*running eager"):
        out = compiled(x)[0]
    assert torch.equal(out, eager(x)[0])
    assert rim_module._COMPILE_ERROR is not None
    assert torch.equal(compiled(x)[0], out)                              # eager from then on, no new warning
