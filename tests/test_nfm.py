"""NFM (thesis ch. 10, Algorithm 2): rescaling, the attention block against a brute-force reference, the
multi-pass memory, the identity at gamma = 0, the random-attention ablation, and a short learning run."""
import pytest
import timm
import torch
from timm.models import group_parameters
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.data.mnist import embedded_mnist_split
from zoo.engine import cycle, fit
from zoo.layers.nfm import NFM, NFMAttention, depth_to_space, rescale, space_to_depth, upsample_nearest
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


def test_upsample_nearest_and_rescale_cases():
    z = torch.randn(1, 2, 3, 5)
    assert torch.equal(upsample_nearest(z, (7, 11)), F.interpolate(z, size=(7, 11), mode="nearest"))
    up = rescale(torch.arange(4.0).view(1, 1, 2, 2), (4, 4))                     # smaller: one slot, copies
    assert up.shape == (1, 1, 1, 4, 4) and torch.equal(up[0, 0, 0, :2, :2], torch.zeros(2, 2))
    big = torch.randn(2, 3, 8, 8)
    assert torch.equal(rescale(big, (4, 4)), space_to_depth(big, 2))             # larger: space-to-depth
    odd = rescale(torch.randn(2, 3, 19, 19), (10, 10))                            # 19 -> 2 x 10, replicate pad
    assert odd.shape == (2, 3, 4, 10, 10)
    vec = torch.randn(2, 5)
    assert torch.equal(rescale(vec, (4, 4)), vec.view(2, 5, 1, 1, 1).expand(2, 5, 1, 4, 4))   # vector source
    assert torch.equal(rescale(big, ()), big.reshape(2, 3, 64))                  # vector query: all 64 slots
    with pytest.raises(ValueError, match="1-d and 2-d"):
        rescale(torch.randn(2, 3, 8), (4, 4))


@pytest.mark.parametrize("src,query", [((16, 16), (4, 4)), ((2, 2), (8, 8)), ((9, 9), (3, 3)), ((19, 19), (10, 10)),
                                       ((3, 5), (6, 10)), ((24,), (6,)), ((4, 4), ())])
def test_project_then_rescale_equals_rescale_then_project(src, query):
    """The block projects each source at its own resolution and rescales only the projection: exact because
    a 1x1 projection commutes with space-to-depth, nearest upsampling and replicate padding."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 6 + 4)
    x = torch.randn(2, 5, *src)
    k, v = _project_source(lin, x, 6)
    r = rescale(x, query)
    ref = torch.einsum("oc,bcs...->bos...", lin.weight, r) + lin.bias.view(1, -1, *[1] * (r.dim() - 2))
    torch.testing.assert_close(torch.cat([rescale(k, query), rescale(v, query)], 1), ref)


def test_integer_upsampling_equals_nearest_by_index():
    for u in [(2, 2), (3, 1), (4, 3), (3,), (2, 2, 2), (8, 8)]:        # F.interpolate (powers of 2) or a copy
        x = torch.randn(2, 3, *[5] * len(u))
        torch.testing.assert_close(_upsample_int(x, u), upsample_nearest(x, [5 * k for k in u]), rtol=0, atol=0)


# -- the block against a brute-force reference ---------------------------------------------------------
def _reference(blk, h, sources):
    """Materialise every rescaled source, per-position top-k softmax attention with the null slot first."""
    b, qs, nh, dk, dv = h.shape[0], tuple(h.shape[2:]), blk.num_heads, blk.d_k, blk.d_v
    hf = h.reshape(b, h.shape[1], -1)
    n = hf.shape[-1]
    q = (blk.q.weight @ hf + blk.q.bias[:, None]).reshape(b, nh, dk, n)
    ks, vs = [], []
    for lin, src in zip(blk.kv, sources):
        r = rescale(src, qs)
        r = r.reshape(b, r.shape[1], r.shape[2], -1)
        p = torch.einsum("oc,bcsn->bosn", lin.weight, r) + lin.bias[None, :, None, None]
        ks.append(p[:, :nh * dk].reshape(b, nh, dk, r.shape[2], n))
        vs.append(p[:, nh * dk:].reshape(b, nh, dv, r.shape[2], n))
    k, v = torch.cat(ks, 3), torch.cat(vs, 3)
    sc = torch.einsum("bhdn,bhdsn->bhns", q, k) * blk.scale
    sc = torch.cat([sc.new_zeros(b, nh, n, 1), sc], -1)
    top = sc.topk(blk.top_k or sc.shape[-1], dim=-1).values[..., -1:]
    w = torch.where(sc >= top, sc, torch.full_like(sc, float("-inf"))).softmax(-1)   # no ties in random data
    a = torch.einsum("bhns,bhdsn->bhdn", w[..., 1:], v).reshape(b, nh * dv, n)
    out = blk.out2.weight @ F.relu(blk.norm(blk.out1.weight @ a)) + blk.out2.bias[:, None]
    return h + blk.gamma * out.reshape(h.shape), w


@pytest.mark.parametrize("qshape,sshapes,top_k", [
    ((6, 8, 8), [(5, 16, 16), (7, 8, 8), (3, 4, 4), (4,)], 3),   # s2d, same, upsample, vector
    ((6, 10, 10), [(5, 19, 19), (7, 6, 6)], None),                # non-divisible sizes (padding duplicates
    ((6,), [(5, 4, 4), (4,)], 3),                                 # slots, so ties: compare with keep-all)
    ((6, 12), [(5, 24), (2, 5), (3,)], 3),                        # vector query; 1-D layers
    ((6, 6, 6), [(5, 18, 18), (7, 2, 2), (3, 3, 6), (4, 12, 3)], 4),   # factors 3 (not powers of 2), mixed
])
def test_block_matches_brute_force_attention(qshape, sshapes, top_k):
    torch.manual_seed(0)
    blk = NFMAttention(qshape[0], [s[0] for s in sshapes], d_k=4, d_v=3, num_heads=2, top_k=top_k,
                       gamma_init=0.7)
    h, srcs = torch.randn(3, *qshape), [torch.randn(3, *s) for s in sshapes]
    out, w, slots = blk(h, srcs, return_weights=True)
    ref_out, ref_w = _reference(blk, h, srcs)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)
    assert w.shape[-1] == 1 + sum(slots)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w[..., 0]))             # weights sum to 1
    assert ((w > 0).sum(-1) == (top_k or w.shape[-1])).all()                        # top-k: exactly k


def test_top_k_keeps_exactly_k_with_ties_and_null_slot_reads_nothing():
    blk = NFMAttention(4, [4, 4], d_k=2, d_v=2, num_heads=2, top_k=2, gamma_init=1.0)
    for p in blk.kv.parameters():                     # every key and value 0: all scores tie with the null
        nn.init.zeros_(p)
    h = torch.randn(2, 4, 3, 3)
    out, w, _ = blk(h, [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)], return_weights=True)
    assert ((w > 0).sum(-1) == 2).all()
    torch.testing.assert_close(w.max(-1).values, torch.full_like(w[..., 0], 0.5))
    # a head that reads only the null slot gets A = 0: sigma(BN(0 W1)) W2 is the same at every position
    blk2 = NFMAttention(4, [4], d_k=2, d_v=2, num_heads=1, top_k=1, gamma_init=1.0, batch_norm=False)
    with torch.no_grad():
        blk2.q.weight.zero_(), blk2.q.bias.fill_(1.0), blk2.kv[0].weight.zero_(), blk2.kv[0].bias.fill_(-1.0)
    out2, w2, _ = blk2(h, [torch.randn(2, 4, 3, 3)], return_weights=True)
    assert torch.equal(w2[..., 0], torch.ones_like(w2[..., 0]))                    # score 0 > -1/d_k
    expected = blk2.out2.bias + blk2.out2.weight @ F.relu(blk2.out1.bias)
    torch.testing.assert_close(out2 - h, expected.view(1, 4, 1, 1).expand_as(h))


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


def test_fresh_nfm_equals_its_backbone_and_random_attention_changes_it():
    torch.manual_seed(0)
    mods = _toy_modules()
    x = torch.randn(4, 3, 8, 8)
    backbone = nn.Sequential(*mods)
    for passes in (1, 2):
        net = NFM(mods, [8, 16, 10], in_chans=3, passes=passes)
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


def test_shared_kv_and_shared_modules_options():
    torch.manual_seed(0)
    # a block fed pre-projected sources equals the block that projects them itself
    own = NFMAttention(6, [5, 7], d_k=4, d_v=3, num_heads=2, top_k=3, gamma_init=0.5)
    ext = NFMAttention(6, [5, 7], d_k=4, d_v=3, num_heads=2, top_k=3, gamma_init=0.5, project_sources=False)
    ext.load_state_dict(own.state_dict(), strict=False)
    h, srcs = torch.randn(2, 6, 4, 4), [torch.randn(2, 5, 8, 8), torch.randn(2, 7, 2, 2)]
    projected = [torch.einsum("oc,bchw->bohw", lin.weight, s) + lin.bias[:, None, None]
                 for lin, s in zip(own.kv, srcs)]
    torch.testing.assert_close(ext(h, projected), own(h, srcs))
    with pytest.raises(ValueError, match="projected source"):
        ext(h, srcs)
    mods = _toy_modules()
    x = torch.randn(3, 3, 8, 8)
    ref = nn.Sequential(*mods)(x)
    kv = NFM(mods, [8, 16, 10], in_chans=3, passes=2, share_kv=True)
    assert sorted(kv.kv) == ["0_0", "0_1", "0_2", "1_0", "1_1"]                     # every layer read, once
    assert all(blk.kv is None for blk in kv.attn.values())
    shared = NFM(mods, [8, 16, 10], in_chans=3, passes=2, share_modules=True)
    assert len(shared.passes) == 1 and shared.module(0, 1) is shared.module(1, 1)
    per_pass = NFM(mods, [8, 16, 10], in_chans=3, passes=2)
    assert per_pass.module(0, 1) is not per_pass.module(1, 1)                       # per-pass copies (thesis)
    for net in (kv, shared):
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)                     # gamma = 0: the backbone
        tr = net.run(x, return_attention=True)
        assert len(tr.memory) == 6 and tr.attention[-1].weights.shape[-1] == 1 + 4 + 1 + 1 + 4 + 1   # null; 8x8 maps onto 4x4: 4 slots
        net(x).sum().backward()
        assert all(p.grad is not None for p in net.parameters())


_BACKBONES = timm.list_models(module="preact_resnet") + timm.list_models(module="small_cnns")


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
