"""NFM (thesis ch. 10, Algorithm 2): rescaling, the attention block against an independent brute-force
reference (tests/nfm_reference.py), the multi-pass runner and its per-grid cache, the identity at gamma = 0,
the random-attention ablation, the timm API of every backbone, and a short learning run.
(The reference code's options: tests/test_nfm_options.py; bad inputs and empty batches: tests/test_nfm_inputs.py.)"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from nfm_reference import reference_block, slot_table
from timm.models import group_parameters
from torch import nn

from zoo.data.mnist import embedded_mnist_split
from zoo.engine import cycle, fit
from zoo.layers.nfm import (NFM, NFMAttention, depth_to_space, rescale, slot_mask, space_to_depth,
                            upsample_nearest)
from zoo.layers import nfm as nfm_module
from zoo.layers.nfm import _project_source, _upsample_int


# -- rescaling (10.3.2.2) ---------------------------------------------------------------------------------
def test_space_to_depth_is_an_invertible_permutation_of_windows():
    x = torch.randn(2, 3, 8, 6)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 3, 4, 4, 3)
    assert torch.equal(depth_to_space(y, 2), x)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)     # every value kept
    for r in range(2):
        for c in range(2):                                                        # slot r*2+c = window offset
            assert torch.equal(y[:, :, r * 2 + c], x[:, :, r::2, c::2])
    seq = torch.randn(2, 3, 12)
    assert torch.equal(depth_to_space(space_to_depth(seq, 3), 3), seq)            # 1-D layers
    with pytest.raises(ValueError, match="not divisible"):
        space_to_depth(x, 5)


@pytest.mark.parametrize("src,query", [((16, 16), (4, 4)), ((2, 2), (8, 8)), ((9, 9), (3, 3)), ((19, 19), (10, 10)),
                                       ((3, 5), (6, 10)), ((6, 7), (4, 4)), ((24,), (6,)), ((7,), (3,)), ((4, 4), ()),
                                       ((), (3, 3)), ((12, 3), (6, 6)), ((3, 5), (7, 7)), ((6,), (10,)),
                                       ((38, 38), (75, 75)), ((5, 10), (75, 75)), ((3, 5, 2), (7, 7, 5)),
                                       ((3, 9, 2), (7, 4, 5))])
@pytest.mark.parametrize("pad", ["mask", "replicate"])
def test_rescale_puts_every_slot_where_the_thesis_says(src, query, pad):
    """Each slot of each query position holds the source position the thesis' rule names (same index,
    nearest ``floor(q S_src / S_q)`` for smaller sources, the row-major window ``q f + r`` for larger ones),
    compared with an index table written position by position; masked padding is zeros and marked False by
    ``slot_mask``, replicate padding repeats the edge."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *src)
    out = rescale(x, query, pad=pad)
    idx, real = slot_table(src, query, pad)
    n, s = idx.shape
    assert out.shape == (2, 3, s, *query)
    expect = x.reshape(2, 3, -1)[:, :, idx].transpose(2, 3).reshape(out.shape)      # (B, C, S, *query)
    mask = slot_mask(src, query)
    if pad == "replicate":
        assert torch.equal(out, expect)
    else:
        real = real.t().reshape(s, *query)
        assert torch.equal(mask, real)
        assert torch.equal(out, torch.where(real, expect, torch.zeros_like(expect)))


def test_upsample_nearest_matches_interpolate_and_rescale_errors():
    z = torch.randn(1, 2, 3, 5)
    assert torch.equal(upsample_nearest(z, (7, 11)), F.interpolate(z, size=(7, 11), mode="nearest"))
    big = torch.randn(2, 3, 8, 8)
    assert torch.equal(rescale(big, (4, 4)), space_to_depth(big, 2))              # larger: space-to-depth
    assert torch.equal(rescale(big, ()), big.reshape(2, 3, 64))                  # vector query: all 64 slots
    with pytest.raises(ValueError, match="1-d and 2-d"):
        rescale(torch.randn(2, 3, 8), (4, 4))
    with pytest.raises(ValueError, match="pad="):
        rescale(big, (3, 3), pad="edge")


@pytest.mark.parametrize("src,query", [((16, 16), (4, 4)), ((2, 2), (8, 8)), ((9, 9), (3, 3)), ((19, 19), (10, 10)),
                                       ((3, 5), (6, 10)), ((24,), (6,)), ((4, 4), ())])
@pytest.mark.parametrize("pad", ["mask", "replicate"])
def test_project_then_rescale_equals_rescale_then_project(src, query, pad):
    """The block projects each source at its own resolution and rescales only the projection: exact on every
    real slot because a 1x1 projection commutes with space-to-depth, nearest upsampling and replication."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 6 + 4)
    x = torch.randn(2, 5, *src)
    k, v = _project_source(lin, x, 6)
    r = rescale(x, query, pad=pad)
    ref = torch.einsum("oc,bcs...->bos...", lin.weight, r) + lin.bias.view(1, -1, *[1] * (r.dim() - 2))
    got = torch.cat([rescale(k, query, pad=pad), rescale(v, query, pad=pad)], 1)
    real = slot_mask(src, query) if pad == "mask" else torch.ones(r.shape[2:], dtype=torch.bool)
    torch.testing.assert_close(got[:, :, real], ref[:, :, real])


@pytest.mark.parametrize("u", [(2, 2), (3, 1), (4, 3), (3,), (2, 2, 2), (8, 8), (2, 1, 2, 3)])
def test_integer_upsampling_equals_nearest_by_index_forward_and_backward(u):
    """The fast upsampling (repeat forward, sum pooling backward) is nearest upsampling, gradients included
    (also the second derivative, for gradient penalties)."""
    x = torch.randn(2, 3, *[5] * len(u), dtype=torch.float64, requires_grad=True)
    y = _upsample_int(x, u)
    ref = upsample_nearest(x, [5 * k for k in u])
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    small = torch.randn(1, 2, *[2] * len(u), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _upsample_int(t, u), (small,))
    assert torch.autograd.gradgradcheck(lambda t: _upsample_int(t, u) ** 2, (small,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("src,size", [((3, 5), (7, 11)), ((38, 38), (75, 75)), ((5, 19), (75, 75)), ((6,), (10,)),
                                      ((3, 5, 2), (7, 7, 5)), ((4, 6, 3, 2), (9, 7, 5, 3)), ((28, 6), (46, 74))])
def test_non_integer_upsampling_is_nearest_by_index_forward_and_backward(src, size, dtype, monkeypatch):
    """Smaller sources at non-integer ratios (Sort-of-CLEVR's 38, 19, 10, 5 onto 75) are upsampled by one
    ``F.interpolate``, verified per size pair, number of spatial dims and dtype to pick
    ``floor(q S_src / S_q)``: equal to gathering by that index (forward, gradient, second derivative), and the
    per-dim ``index_select`` path taken where the check fails (28 -> 46 and 6 -> 74 in float32, and in float64
    in 2-D: interpolate's index is off by one there; above 3 spatial dims; or forced) gives the same."""
    def by_index(t):
        for d, (n_src, n_q) in enumerate(zip(src, size)):
            t = t.index_select(2 + d, torch.div(torch.arange(n_q) * n_src, n_q, rounding_mode="floor"))
        return t
    x = torch.randn(2, 3, *src, dtype=dtype, requires_grad=True)
    g = torch.randn(2, 3, *size, dtype=dtype)
    ref = by_index(x)
    ref_grad, = torch.autograd.grad(ref, x, g)
    cpu, exact = torch.device("cpu"), nfm_module._interpolate_is_exact
    assert exact(28, 46, 1, cpu, torch.float64) and exact(28, 46, 3, cpu, torch.float64)
    assert not exact(28, 46, 2, cpu, torch.float64) and not exact(28, 46, 1, cpu, torch.float32)
    for forced in (False, True):
        if forced:
            monkeypatch.setattr(nfm_module, "_interpolate_is_exact", lambda n_src, n_q, nd, device, dtype: False)
        y = upsample_nearest(x, size)
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], ref_grad)
        if math.prod(src) <= 64 and dtype == torch.float64:               # gradgradcheck: float64, quadratic
            small = torch.randn(1, 1, *src, dtype=torch.float64, requires_grad=True)
            assert torch.autograd.gradgradcheck(lambda t: upsample_nearest(t, size) ** 2, (small,))


# -- the block against the independent reference ---------------------------------------------------------
CASES = [
    ((6, 8, 8), [(5, 16, 16), (7, 8, 8), (3, 4, 4), (4,)], 3),    # s2d, same, upsample, vector
    ((6, 10, 10), [(5, 19, 19), (7, 6, 6)], 4),                    # non-divisible: masked padding slots
    ((6,), [(5, 4, 4), (4,)], 3),                                  # vector query
    ((6, 12), [(5, 24), (2, 5), (3,)], 3),                         # 1-D layers
    ((6, 6, 6), [(5, 18, 18), (7, 2, 2), (3, 3, 6), (4, 12, 3)], 4),   # factors 3, mixed larger / smaller dims
    ((6, 9), [(5, 5), (2, 9)], None),                              # keep everything
]


@pytest.mark.parametrize("qshape,sshapes,top_k", CASES)
def test_block_matches_brute_force_attention(qshape, sshapes, top_k):
    """Default block (the thesis: scale 1/d_k, softmax over the top k, masked padding, 1x1 output layers)
    against the reference, float64, training-mode BN, gamma != 0: weights, output and input gradients."""
    torch.manual_seed(0)
    blk = NFMAttention(qshape[0], [s[0] for s in sshapes], d_k=4, d_v=3, num_heads=2, top_k=top_k,
                       gamma_init=0.7).double()
    h = torch.randn(3, *qshape, dtype=torch.float64, requires_grad=True)
    srcs = [torch.randn(3, *s, dtype=torch.float64, requires_grad=True) for s in sshapes]
    out, w, slots = blk(h, srcs, return_weights=True)
    ref_out, ref_w = reference_block(blk, h, srcs)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)
    assert w.shape[-1] == 1 + sum(slots) == ref_w.shape[-1]
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w[..., 0]))             # weights sum to 1
    if top_k is not None:                                  # top-k: exactly k (or every real slot, if fewer)
        n_real = 1 + sum(slot_table(s[1:], qshape[1:])[1].sum(1) for s in sshapes)   # (N,)
        assert ((w > 0).sum(-1) == n_real.clamp(max=top_k)).all()
        assert (n_real > top_k).any()
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [h] + srcs)
    ref_grads = torch.autograd.grad((ref_out * g).sum(), [h] + srcs)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_default_block_scale_is_one_over_d_k():
    """The default score scale is the thesis' 1/d_k (the reference hard-codes it); 1/sqrt(d_k) differs."""
    torch.manual_seed(1)
    blk = NFMAttention(6, [5], d_k=9, d_v=3, num_heads=2, top_k=None, gamma_init=0.5).double()
    h, src = torch.randn(2, 6, 4, 4, dtype=torch.float64), torch.randn(2, 5, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        blk.q.weight.mul_(4.0)                                        # scores large enough for the scale to show
    _, w = blk(h, [src], return_weights=True)[:2]
    torch.testing.assert_close(w, reference_block(blk, h, [src])[1])
    assert not torch.allclose(w, reference_block(blk, h, [src], scale=9 ** -0.5)[1], atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(q=st.integers(1, 5), s1=st.integers(1, 11), s2=st.integers(1, 11), heads=st.integers(1, 3),
       top_k=st.one_of(st.none(), st.integers(1, 8)), seed=st.integers(0, 2 ** 16),
       pad=st.sampled_from(["mask", "replicate"]), rule=st.sampled_from(["topk_softmax", "reference"]))
def test_weights_sum_to_one_with_at_most_k_nonzero(q, s1, s2, heads, top_k, seed, pad, rule):
    """For any grid sizes (smaller, equal, larger, non-divisible), heads, k, padding and top-k rule: every
    query's weights sum to 1, at most k are nonzero, and masked padding slots get none. (The authors' rule,
    ``"reference"``, renormalises with a +1e-7 in the denominator: its sums fall short of 1 by 1e-7 / S, S the
    mass left after subtracting the (k+1)-th probability, which is tiny near ties; with at most k + 1 slots it
    keeps the plain softmax.)"""
    torch.manual_seed(seed)
    blk = NFMAttention(3, [2, 4], d_k=2, d_v=2, num_heads=heads, top_k=top_k, pad=pad, topk_rule=rule)
    _, w, _ = blk(torch.randn(2, 3, q, q), [torch.randn(2, 2, s1, s1), torch.randn(2, 4, s2, s2)],
                  return_weights=True)
    sums = w.sum(-1)
    if rule == "topk_softmax" or top_k is None:
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:
        assert (sums <= 1 + 1e-6).all() and (sums >= 0).all()       # exact values: tests/nfm_reference.py
    if top_k is not None and (rule == "topk_softmax" or w.shape[-1] > top_k + 1):   # the authors' code keeps
        assert ((w > 0).sum(-1) <= top_k).all()                       # the full softmax up to k + 1 slots
    if pad == "mask":
        real = torch.cat([torch.ones(q * q, 1, dtype=torch.bool)]
                         + [slot_mask((s, s), (q, q)).reshape(-1, q * q).t() for s in (s1, s2)], 1)
        assert (w[:, :, ~real] == 0).all()


def test_top_k_keeps_exactly_k_with_ties():
    blk = NFMAttention(4, [4, 4], d_k=2, d_v=2, num_heads=2, top_k=2, gamma_init=1.0)
    for p in blk.kv.parameters():                     # every key and value 0: all scores tie with the null
        nn.init.zeros_(p)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 4, 3, 3, generator=g)
    _, w, _ = blk(h, [torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 3, 3, generator=g)], return_weights=True)
    assert ((w > 0).sum(-1) == 2).all()
    torch.testing.assert_close(w.max(-1).values, torch.full_like(w[..., 0], 0.5))


@pytest.mark.parametrize("real_score", [-0.01, 0.01])
def test_null_slot_has_key_zero_and_reads_zero(real_score):
    """One head, top-1, every real key giving the score ``real_score`` (just below / just above 0) and every
    real value 1, output layers the identity behind a ReLU: the null slot (key 0 -> score 0) wins exactly
    when the real scores are negative, and then the block adds ReLU(0) = 0; otherwise it adds ReLU(1) = 1."""
    torch.manual_seed(0)
    blk = NFMAttention(2, [3], d_k=1, d_v=2, num_heads=1, top_k=1, gamma_init=1.0, batch_norm=False)
    with torch.no_grad():
        blk.q.weight.zero_(), blk.q.bias.fill_(1.0)                                # query 1 everywhere
        blk.kv[0].weight.zero_()
        blk.kv[0].bias.copy_(torch.tensor([real_score, 1.0, 1.0]))                # key real_score, values 1
        blk.out1.weight.copy_(torch.eye(2)), blk.out1.bias.zero_()
        blk.out2.weight.copy_(torch.eye(2)), blk.out2.bias.zero_()
    h = torch.randn(3, 2, 4, 4)
    out, w, _ = blk(h, [torch.randn(3, 3, 4, 4)], return_weights=True)
    null_wins = real_score < 0
    assert torch.equal(w[..., 0], torch.full_like(w[..., 0], float(null_wins)))
    torch.testing.assert_close(out - h, torch.full_like(h, 0.0 if null_wins else 1.0))


# -- the runner ---------------------------------------------------------------------------------------
def _toy_modules():
    return [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()),
            nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10))]                 # a vector layer


def test_memory_holds_n_times_k_layers_and_attention_covers_it():
    torch.manual_seed(0)
    net = NFM(_toy_modules(), [8, 16, 10], in_chans=3, passes=3)
    tr = net.run(torch.randn(2, 3, 8, 8), return_attention=True)
    assert len(tr.memory) == 3 * 3 and tr.memory_index == [(p, i) for p in range(3) for i in range(3)]
    assert [(a.pass_idx, a.module_idx) for a in tr.attention] == [(p, i) for p in range(3) for i in range(3)][1:]
    last = tr.attention[-1]
    assert last.sources == tr.memory_index[:-1] and last.per_source().shape[-1] == 1 + 8
    assert last.weights.shape[:3] == (2, 4, 16)                                     # 4 heads, 4x4 queries
    torch.testing.assert_close(last.per_source().sum(-1), torch.ones(2, 4, 16))
    assert net.run(torch.randn(2, 3, 8, 8), passes=1).output.shape == (2, 10)


@pytest.mark.parametrize("share_kv", [True, False])
def test_runner_blocks_match_the_reference_on_the_memory(share_kv):
    """Every block of a 2-pass network (float64, gamma != 0), fed the memory the runner stored, equals the
    reference block reading the same layers through the projections the runner uses (one per stored layer
    by default, the block's own with share_kv=False): the per-grid cache changes nothing."""
    torch.manual_seed(0)
    mods = [nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 5, 3, 2, 1), nn.ReLU())]
    net = NFM(mods, [6, 8, 5], in_chans=3, passes=2, share_kv=share_kv, d_k=4, d_v=3, num_heads=2, top_k=3).double()
    for blk in net.attn.values():
        with torch.no_grad():
            blk.gamma.fill_(0.6)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    tr = net.run(x, return_attention=True)
    for info in tr.attention:
        p, i = info.pass_idx, info.module_idx
        blk = net.attn[f"{p}_{i}"]
        h = x if i == 0 else tr.memory[tr.memory_index.index((p, i - 1))]
        srcs = [tr.memory[tr.memory_index.index(s)] for s in info.sources]
        kv = [net.kv[f"{q}_{j}"] for q, j in info.sources] if share_kv else None
        ref_h, ref_w = reference_block(blk, h, srcs, kv=kv)
        torch.testing.assert_close(info.weights, ref_w)
        torch.testing.assert_close(net.module(p, i)(ref_h), tr.memory[tr.memory_index.index((p, i))])


def test_runner_builds_every_block_with_the_configured_top_k():
    """top_k reaches every block: each query keeps exactly 2 slots wherever a block has more than 2."""
    torch.manual_seed(0)
    net = NFM(_toy_modules(), [8, 16, 10], in_chans=3, passes=2, top_k=2)
    tr = net.run(torch.randn(2, 3, 8, 8), return_attention=True)
    checked = [info for info in tr.attention if info.weights.shape[-1] > 2]
    assert len(checked) == 4                                # all blocks but (0, 1), which has null + 1 slot
    for info in checked:
        assert ((info.weights > 0).sum(-1) == 2).all(), (info.pass_idx, info.module_idx)


def test_fresh_nfm_equals_its_backbone_and_random_attention_changes_it():
    torch.manual_seed(0)
    mods = _toy_modules()
    x = torch.randn(4, 3, 8, 8)
    backbone = nn.Sequential(*mods)
    for passes in (1, 2):
        for share_kv in (True, False):
            net = NFM(mods, [8, 16, 10], in_chans=3, passes=passes, share_kv=share_kv)
            torch.testing.assert_close(net(x), backbone(x), rtol=0, atol=0)
    with torch.no_grad():
        for blk in net.attn.values():
            blk.gamma.fill_(0.5)
    net.eval()
    y = net(x)
    net.set_random_attention(True)
    assert not torch.allclose(net(x), y)
    net.set_random_attention(False)
    torch.testing.assert_close(net(x), y)


def test_random_attention_replaces_the_scores_by_gaussian_draws():
    """With the ablation on, the weights do not depend on the data or the block's parameters (the same
    seed gives the same weights for different inputs), and they are the top-k rule applied to standard
    Gaussian scores of shape (B, heads, L, N) drawn from the global generator, the null slot's included."""
    torch.manual_seed(0)
    blk = NFMAttention(4, [4, 4], d_k=2, d_v=2, num_heads=2, top_k=3)
    blk.random_attention = True
    inputs = [(torch.randn(2, 4, 3, 3), [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)]) for _ in range(2)]
    weights = []
    for h, srcs in inputs:
        torch.manual_seed(7)
        weights.append(blk(h, srcs, return_weights=True)[1])
    assert torch.equal(weights[0], weights[1])
    torch.manual_seed(7)
    scores = torch.randn(2, 2, 1 + 4 + 1, 9)
    vals, idx = scores.topk(3, dim=2)
    expect = torch.zeros_like(scores).scatter(2, idx, vals.softmax(2)).transpose(2, 3)
    torch.testing.assert_close(weights[0], expect)
    blk.random_attention = False
    assert not torch.allclose(blk(*inputs[0], return_weights=True)[1], weights[0])


def test_random_attention_null_option_keeps_the_null_score_at_zero():
    torch.manual_seed(0)
    net = NFM(_toy_modules(), [8, 16, 10], in_chans=3, passes=2, top_k=3)
    x = torch.randn(2, 3, 8, 8)
    for null in (True, False):
        net.set_random_attention(True, null=null)
        torch.manual_seed(3)
        w = net.run(x, return_attention=True).attention[0].weights                   # block (0, 1): 8x8, 1 slot
        torch.manual_seed(3)
        scores = torch.randn(2, 4, 2, 64)
        if not null:
            scores[:, :, 0] = 0.0
        torch.testing.assert_close(w, scores.softmax(2).transpose(2, 3))


def test_model_level_identity_at_gamma_zero_and_attention_maps():
    torch.manual_seed(0)
    b = timm.create_model("mnist_convnet", widths=(8, 16, 32))
    x = torch.randn(3, 1, 28, 28)
    for passes in (1, 2):
        m = timm.create_model("nfm_mnist_convnet", widths=(8, 16, 32), nfm_passes=passes)
        m.load_backbone(b)
        m.eval(), b.eval()
        assert torch.equal(m(x), b(x))
    tr = m.nfm_trace(x)
    assert len(tr.attention) == 5 and {a.pass_idx for a in tr.attention} == {0, 1}
    with pytest.raises(ValueError, match="NFM options"):
        timm.create_model("mnist_convnet", top_k=3)
    with pytest.raises(ValueError, match="passes must be"):
        NFM(_toy_modules(), [8, 16, 10], in_chans=3, passes=0)


def test_shared_kv_is_the_default_and_per_pair_and_shared_modules_options():
    torch.manual_seed(0)
    # a block fed pre-projected sources equals the block that projects them itself
    own = NFMAttention(6, [5, 7], d_k=4, d_v=3, num_heads=2, top_k=3, gamma_init=0.5)
    ext = NFMAttention(6, [5, 7], d_k=4, d_v=3, num_heads=2, top_k=3, gamma_init=0.5, project_sources=False)
    ext.load_state_dict(own.state_dict(), strict=False)
    h, srcs = torch.randn(2, 6, 4, 4), [torch.randn(2, 5, 8, 8), torch.randn(2, 7, 2, 2)]
    projected = [torch.einsum("oc,bchw->bohw", lin.weight, s) + lin.bias[:, None, None]
                 for lin, s in zip(own.kv, srcs)]
    torch.testing.assert_close(ext(h, projected), own(h, srcs))
    torch.testing.assert_close(ext(h, [p.split([8, 6], 1) for p in projected]), own(h, srcs))   # (keys, values)
    with pytest.raises(ValueError, match="projected source"):
        ext(h, srcs)
    mods = _toy_modules()
    x = torch.randn(3, 3, 8, 8)
    ref = nn.Sequential(*mods)(x)
    kv = NFM(mods, [8, 16, 10], in_chans=3, passes=2)                                # default: shared
    assert kv.share_kv and sorted(kv.kv) == ["0_0", "0_1", "0_2", "1_0", "1_1"]      # every layer read, once
    assert all(blk.kv is None for blk in kv.attn.values())
    pair = NFM(mods, [8, 16, 10], in_chans=3, passes=2, share_kv=False)
    assert pair.kv is None and len(pair.attn["1_2"].kv) == 5                       # one per source read
    shared = NFM(mods, [8, 16, 10], in_chans=3, passes=2, share_modules=True)
    assert len(shared.passes) == 1 and shared.module(0, 1) is shared.module(1, 1)
    assert kv.module(0, 1) is not kv.module(1, 1)                                    # per-pass copies (thesis)
    for net in (kv, pair, shared):
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)                     # gamma = 0: the backbone
        tr = net.run(x, return_attention=True)
        assert len(tr.memory) == 6 and tr.attention[-1].weights.shape[-1] == 1 + 4 + 1 + 1 + 4 + 1   # null; 8x8 maps onto 4x4: 4 slots
        net(x).sum().backward()
        assert all(p.grad is not None for p in net.parameters())


_HEAVY = {"preactresnet34", "preactresnet50", "wrn28_10"}
_BACKBONES = [pytest.param(n, marks=pytest.mark.slow) if n.removeprefix("nfm_") in _HEAVY else n
              for n in timm.list_models(module="preact_resnet") + timm.list_models(module="small_cnns")]


@pytest.mark.parametrize("name", _BACKBONES)
def test_backbone_timm_api(name):
    """timm model API: feature_info matches forward_intermediates, whose last output (normed) is
    forward_features; reset_classifier, in_chans, num_classes, grad checkpointing (same output and grads).
    (tests/test_models.py trains every registered model at its default input size.)"""
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=7, in_chans=2).eval()
    size = m.pretrained_cfg["input_size"][1:]
    size = (16, 16) if size == (32, 32) else size                  # CIFAR nets take any size: keep it cheap
    x = torch.randn(2, 2, *size)
    assert m.num_classes == 7 and m(x).shape == (2, 7)
    with torch.no_grad():
        feats = m.forward_features(x)
        final, inter = m.forward_intermediates(x)
        only = m.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    torch.testing.assert_close(final, feats)
    assert len(inter) == len(m.feature_info)
    for t, info in zip(inter, m.feature_info):
        assert t.shape[1] == info["num_chs"]
        assert -(-size[0] // info["reduction"]) <= t.shape[-1] <= size[0] // info["reduction"] + 1
        assert isinstance(m.get_submodule(info["module"]), nn.Module)
    torch.testing.assert_close(m.norm(inter[-1]), feats)
    for a, b in zip(only, inter[:2]):
        torch.testing.assert_close(a, b)
    if sum(p.numel() for p in m.parameters()) < 5e6:                # checkpointing: same values and grads
        ref = m(x)
        ref.sum().backward()
        grads = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        m.set_grad_checkpointing(True)
        out = m(x)
        out.sum().backward()
        torch.testing.assert_close(out, ref)
        for p, g in zip(m.parameters(), grads):
            torch.testing.assert_close(p.grad, g)
    groups = group_parameters(m, m.group_matcher())                # layer-wise LR decay groups
    assert sum(len(v) for v in groups.values()) == len(list(m.parameters())) and len(groups) > len(m.feature_info)
    m.reset_classifier(3)
    assert m(x).shape == (2, 3) and m.get_classifier().out_features == 3
    m.reset_classifier(0)
    assert m(x).shape == (2, m.head_hidden_size if hasattr(m, "mlp") else m.num_features)


@pytest.mark.slow
def test_nfm_learns_embedded_digits():
    """A short run (2 passes, the thesis' multi-digit convnet shrunk) on the 5,000 embedded MNIST digits at
    14x14: well above chance (10 %) after 120 steps, and the blocks' gamma moves off 0 (attention is used)."""
    torch.manual_seed(0)
    data = embedded_mnist_split()
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    xtr, xte = F.avg_pool2d(xtr, 2), F.avg_pool2d(xte, 2)
    model = timm.create_model("nfm_mnist_convnet", widths=(8, 16, 32), d_k=8, d_v=8, num_heads=2, top_k=3)
    assert model.nfm.num_passes == 2 and len(model.nfm.attn) == 5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    batches = cycle([(xtr[i], ytr[i]) for i in torch.randperm(len(xtr), generator=g).split(32)])

    def step(m, batch):
        x, y = batch
        return F.cross_entropy(m(x), y), {}

    fit(model, opt, batches, step, steps=120, progress=False, log_every=1000)
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    assert acc > 0.6, acc
    print(f"nfm_mnist_convnet 14x14, 120 steps: test acc {acc:.3f}")
    assert max(abs(b.gamma.item()) for b in model.nfm.attn.values()) > 1e-2
