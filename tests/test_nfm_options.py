"""NFM options (issue 20): the authors' code's choices next to the thesis text's defaults, each against the
independent reference (tests/nfm_reference.py) or a direct check of what it changes: the top-k rule, the
score scale, 3x3 output convolutions, pass-2 initialisation, masked vs replicate padding, a block before the
pass-2 stem (Algorithm 2), one key/value projection per layer vs per (block, source) pair, torch.compile."""
import copy

import pytest
import timm
import torch
from nfm_reference import reference_block
from torch import nn

from zoo.layers.nfm import NFM, NFMAttention


def _block_and_data(qshape=(6, 6, 6), sshapes=((5, 12, 12), (7, 6, 6), (4, 3, 3)), **kw):
    torch.manual_seed(0)
    blk = NFMAttention(qshape[0], [s[0] for s in sshapes], d_k=4, d_v=3, num_heads=2, gamma_init=0.7, **kw).double()
    h = torch.randn(3, *qshape, dtype=torch.float64)
    srcs = [torch.randn(3, *s, dtype=torch.float64) for s in sshapes]
    return blk, h, srcs


@pytest.mark.parametrize("top_k", [2, 3, 5, 6])
def test_reference_top_k_rule(top_k):
    """topk_rule="reference": softmax over all 7 slots, minus the (k+1)-th probability, clamped and
    renormalised (all slots kept when there are at most k + 1 of them); at most k nonzero weights; not the
    thesis-text rule (softmax over the k largest scores)."""
    blk, h, srcs = _block_and_data(sshapes=((5, 12, 12), (7, 6, 6), (4, 3, 3)), top_k=top_k, topk_rule="reference")
    out, w, _ = blk(h, srcs, return_weights=True)
    ref_out, ref_w = reference_block(blk, h, srcs, rule="reference")
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)
    n_slots = w.shape[-1]
    assert n_slots == 1 + 4 + 1 + 1
    if top_k + 1 >= n_slots:
        torch.testing.assert_close(w, reference_block(blk, h, srcs, top_k=None)[1])   # plain softmax
    else:
        assert ((w > 0).sum(-1) <= top_k).all() and ((w > 0).sum(-1) >= 1).all()
        assert not torch.allclose(w, reference_block(blk, h, srcs)[1])


@pytest.mark.parametrize("scale,value", [("inv_sqrt_d_k", 0.5), ("inv_d_k", 0.25), (0.3, 0.3)])
def test_score_scale_option(scale, value):
    blk, h, srcs = _block_and_data(top_k=3, scale=scale)
    with torch.no_grad():
        blk.q.weight.mul_(3.0)
    out, w, _ = blk(h, srcs, return_weights=True)
    ref_out, ref_w = reference_block(blk, h, srcs, scale=value)                   # d_k = 4
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)
    for other in {0.5, 0.25, 0.3} - {value}:
        assert not torch.allclose(w, reference_block(blk, h, srcs, scale=other)[1], atol=1e-4)


def test_scale_option_errors():
    for bad in ("sqrt", -1.0, float("nan"), 0):
        with pytest.raises(ValueError, match="scale"):
            NFMAttention(4, [4], scale=bad)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_conv3x3_output_layers(batch_norm):
    """out_layers="conv3x3" (the authors' code): 3x3 convolutions from heads * d_v to the query's channels and
    back, with or without the BN before the ReLU; the block equals the reference with those convolutions,
    and at gamma = 0 it is still the identity."""
    blk, h, srcs = _block_and_data(top_k=3, out_layers="conv3x3", batch_norm=batch_norm)
    assert isinstance(blk.out1, nn.Conv2d) and blk.out1.kernel_size == (3, 3)
    assert (blk.out1.in_channels, blk.out1.out_channels, blk.out2.out_channels) == (2 * 3, 6, 6)
    assert isinstance(blk.norm, nn.BatchNorm2d) == batch_norm
    out, w, _ = blk(h, srcs, return_weights=True)
    ref_out, ref_w = reference_block(blk, h, srcs)
    torch.testing.assert_close(out, ref_out)
    linear = NFMAttention(6, [5, 7, 4], d_k=4, d_v=3, num_heads=2, top_k=3).double()
    linear.load_state_dict({k: v for k, v in blk.state_dict().items() if k.startswith(("q.", "kv."))}, strict=False)
    torch.testing.assert_close(linear(h, srcs, return_weights=True)[1], w)         # same attention, other head
    with torch.no_grad():
        blk.gamma.zero_()
    assert torch.equal(blk(h, srcs), h)
    with pytest.raises(ValueError, match="2-D query"):
        NFMAttention(6, [5], out_layers="conv3x3")(torch.randn(2, 6, 8), [torch.randn(2, 5, 8)])


def test_pass_init_independent_vs_copy():
    torch.manual_seed(0)
    mods = [nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)]
    copied = NFM(copy.deepcopy(mods), [8, 8], in_chans=3, passes=3)
    indep = NFM(copy.deepcopy(mods), [8, 8], in_chans=3, passes=3, pass_init="independent")
    for p in (1, 2):
        for i in range(2):
            assert torch.equal(copied.module(p, i).weight, copied.module(0, i).weight)
            assert not torch.allclose(indep.module(p, i).weight, indep.module(0, i).weight)
    assert not torch.allclose(indep.module(1, 0).weight, indep.module(2, 0).weight)
    torch.testing.assert_close(indep.module(0, 0).weight, mods[0].weight)        # pass 1 keeps the given weights
    const = NFM(copy.deepcopy(mods), [8, 8], in_chans=3, passes=2, pass_init="independent",
                init_fn=lambda m: nn.init.constant_(m.weight, 0.25))
    assert torch.equal(const.module(1, 1).weight, torch.full_like(mods[1].weight, 0.25))
    with pytest.raises(ValueError, match="share_modules"):
        NFM(mods, [8, 8], in_chans=3, pass_init="independent", share_modules=True)
    with pytest.raises(ValueError, match="pass_init"):
        NFM(mods, [8, 8], in_chans=3, pass_init="random")


def test_pass_init_independent_on_the_resnet_uses_its_kaiming_init():
    torch.manual_seed(0)
    m = timm.create_model("nfm_preactresnet18", nfm_pass_init="independent", num_classes=3)
    w1, w2 = m.nfm.module(0, 2)[0].conv1.weight, m.nfm.module(1, 2)[0].conv1.weight    # 128 x 64 x 3 x 3
    assert not torch.allclose(w1, w2)
    expected_std = (2.0 / (128 * 9)) ** 0.5                                       # kaiming normal, fan_out
    assert abs(w2.std().item() / expected_std - 1) < 0.05 and abs(w1.std().item() / expected_std - 1) < 0.05


def test_masked_padding_makes_every_position_one_slot_and_replicate_duplicates_the_edge():
    """A 5x5 source read from a 2x2 query (windows of 3, padded to 6x6) whose position (4, 4) has by far
    the largest key: with masked padding it is one slot, so it takes one of the 4 top-k picks of query
    (1, 1) and the padding slots get weight 0; with replicate padding its 4 copies take all 4 picks."""
    torch.manual_seed(0)
    weights = {}
    for pad in ("mask", "replicate"):
        blk = NFMAttention(2, [1], d_k=1, d_v=1, num_heads=1, top_k=4, pad=pad, gamma_init=1.0)
        with torch.no_grad():
            blk.q.weight.zero_(), blk.q.bias.fill_(1.0)
            blk.kv[0].weight.fill_(1.0), blk.kv[0].bias.zero_()
        src = torch.rand(1, 1, 5, 5) * 0.1
        src[0, 0, 4, 4] = 5.0
        weights[pad] = blk(torch.randn(1, 2, 2, 2), [src], return_weights=True)[1][0, 0, 3]   # query (1, 1)
    # window of query (1, 1): rows/cols 3, 4, 5 -> slots r*3+c; (4, 4) is slot 4; padding: r or c = 2
    pad_slots = [1 + s for s in range(9) if s // 3 == 2 or s % 3 == 2]
    w = weights["mask"]
    assert (w[pad_slots] == 0).all() and (w > 0).sum() == 4 and w[1 + 4] == w.max()
    dup = [1 + s for s in (4, 5, 7, 8)]                                              # (4,4) and its 3 copies
    torch.testing.assert_close(weights["replicate"][dup].sum(), torch.tensor(1.0))
    assert (weights["replicate"][dup] > 0).all()


def test_replicate_padding_matches_the_reference():
    blk, h, srcs = _block_and_data(qshape=(6, 5, 5), sshapes=((5, 9, 9), (7, 14, 11)), top_k=None, pad="replicate")
    out, w, _ = blk(h, srcs, return_weights=True)
    ref_out, ref_w = reference_block(blk, h, srcs, pad="replicate")
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


def test_block_before_the_pass2_stem():
    """attend="all" adds Algorithm 2's block before module 0 of pass 2 (the stem of a ResNet): its query is
    the input image, it reads every pass-1 layer; pass 1's stem has nothing to read, so no block there."""
    torch.manual_seed(0)
    plain = timm.create_model("nfm_preactresnet18", num_classes=3)
    algo2 = timm.create_model("nfm_preactresnet18", num_classes=3, nfm_attend="all")
    assert sorted(plain.nfm.attn) == [f"{p}_{i}" for p in (0, 1) for i in (1, 2, 3, 4)]
    assert sorted(algo2.nfm.attn) == sorted(list(plain.nfm.attn) + ["1_0"])
    blk = algo2.nfm.attn["1_0"]
    assert blk.query_dim == 3 and blk.source_dims == (64, 64, 128, 256, 512)
    b = timm.create_model("preactresnet18", num_classes=3)
    algo2.load_backbone(b)
    x = torch.randn(2, 3, 16, 16)
    algo2.eval(), b.eval()
    assert torch.equal(algo2(x), b(x))                                              # still the identity at gamma 0
    tr = algo2.nfm_trace(x)
    assert (tr.attention[4].pass_idx, tr.attention[4].module_idx) == (1, 0)
    assert tr.attention[4].sources == [(0, j) for j in range(5)]
    with pytest.raises(ValueError, match="attend"):
        NFM([nn.Identity()], [3], in_chans=3, attend="stem")


def test_per_pair_projections_option():
    """share_kv=False (nfm_share_kv=False): each block projects each source with its own weights (the
    parametrization of the thesis' parameter list); shared (default): one projection per stored layer."""
    torch.manual_seed(0)
    shared = timm.create_model("nfm_mnist_convnet", widths=(8, 16, 32))
    pair = timm.create_model("nfm_mnist_convnet", widths=(8, 16, 32), nfm_share_kv=False)
    assert shared.nfm.share_kv and sorted(shared.nfm.kv) == ["0_0", "0_1", "0_2", "1_0", "1_1"]
    assert pair.nfm.kv is None
    n_pairs = sum(len(blk.kv) for blk in pair.nfm.attn.values())
    assert n_pairs == sum(len(pair.nfm.sources_of(*map(int, k.split("_")))) for k in pair.nfm.attn) == 1 + 2 + 3 + 4 + 5
    count = lambda m: sum(p.numel() for p in m.parameters())                     # noqa: E731
    assert count(pair) > count(shared)


def test_model_options_reach_every_block():
    m = timm.create_model("nfm_mnist_convnet", widths=(8, 16, 32), topk_rule="reference", scale="inv_sqrt_d_k",
                          out_layers="conv3x3", pad="replicate", top_k=3, d_k=8)
    for blk in m.nfm.attn.values():
        assert (blk.topk_rule, blk.scale, blk.out_layers, blk.pad, blk.top_k) == ("reference", 8 ** -0.5,
                                                                                 "conv3x3", "replicate", 3)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    for bad in (dict(topk_rule="sab"), dict(out_layers="conv"), dict(pad="zeros"), dict(nfm_pass_init="fresh")):
        with pytest.raises(ValueError, match="allowed values"):
            timm.create_model("nfm_mnist_convnet", **bad)


def test_compiled_block_copies_and_pickles():
    """compile_blocks compiles lazily: a copy (an EMA teacher, a checkpoint) carries the flag, not the
    compiled function."""
    net = NFM([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)], [4, 4], in_chans=3,
              compile_blocks=True)
    blk = net.attn["0_1"]
    blk._compiled = lambda *a: None                         # stands in for a compiled function
    dup = copy.deepcopy(net)
    assert dup.attn["0_1"].compile_blocks and dup.attn["0_1"]._compiled is None
    net.set_compile_blocks(False)
    assert not blk.compile_blocks and blk._compiled is None


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_torch_compile_of_the_blocks_matches_eager():
    torch.manual_seed(0)
    mods = [nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()), nn.Sequential(nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU())]
    eager = NFM(mods, [6, 8], in_chans=3, passes=2, d_k=4, d_v=4, num_heads=2, top_k=3)
    for blk in eager.attn.values():
        with torch.no_grad():
            blk.gamma.fill_(0.5)
    compiled = copy.deepcopy(eager)
    compiled.set_compile_blocks(True)
    x = torch.randn(2, 3, 8, 8)
    ye, yc = eager(x), compiled(x)
    torch.testing.assert_close(yc, ye, rtol=1e-4, atol=1e-5)
    ye.square().sum().backward()
    yc.square().sum().backward()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5)


def test_bf16_autocast_and_channels_last_inputs():
    """The block runs under CPU bfloat16 autocast (close to float32) and takes channels-last maps (same result)."""
    blk, h, srcs = _block_and_data(top_k=3)
    blk, h, srcs = blk.float(), h.float(), [s.float() for s in srcs]
    ref = blk(h, srcs)
    cl = blk(h.contiguous(memory_format=torch.channels_last),
             [s.contiguous(memory_format=torch.channels_last) for s in srcs])
    torch.testing.assert_close(cl, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = blk(h, srcs)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    rel = (low.float() - ref).norm() / ref.norm()                    # bf16 keeps ~3 digits: a 1-2% relative error
    assert rel < 0.03, rel


# -- edge paths the mutation sample of zoo/layers found unguarded (benchmarks/mutation.md) -----------------

def _tiny_net(**kw):
    torch.manual_seed(0)
    mods = [nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)]
    return NFM(mods, [4, 6], in_chans=3, d_k=4, d_v=4, num_heads=2, top_k=2, **kw)


def test_the_thesis_sizes_are_the_defaults():
    """Thesis 10.3.2.1 / 10.4: 4 heads, top-k 5 of the slots, 2 passes, score scale 1/d_k."""
    blk = NFMAttention(8, [8])
    assert (blk.num_heads, blk.top_k, blk.scale) == (4, 5, 1 / 16)
    net = NFM([nn.Conv2d(3, 4, 3, padding=1)], [4], in_chans=3)
    assert net.num_passes == 2
    assert blk.out1.bias is None                  # the BN after W_o1 makes its bias redundant; none is made


def test_run_collects_attention_only_when_asked_and_set_compile_blocks_defaults_to_on():
    net = _tiny_net()
    x = torch.randn(2, 3, 8, 8)
    assert net.run(x).attention == []
    assert len(net.run(x, return_attention=True).attention) == len(net.attn)
    net.set_compile_blocks()
    assert net.compile_blocks and all(b.compile_blocks for b in net.attn.values())
    net.set_compile_blocks(False)
    assert not any(b.compile_blocks for b in net.attn.values())


@pytest.mark.parametrize("call, match", [
    (lambda: NFMAttention(0, [8]), "query_dim must be a positive int, got 0"),
    (lambda: NFMAttention(8, []), "source_dims must be a non-empty list of positive channel counts"),
    (lambda: NFMAttention(8, [8], topk_rule="bogus"), "allowed values: 'topk_softmax', 'reference'"),
    (lambda: NFMAttention(8, [8])(torch.randn(2, 8, 4, 4), [[1, 2]]), r"source 0 must be a tensor \(B, C, \*S\), got list"),
    (lambda: NFMAttention(8, [8], out_layers="conv3x3")(torch.randn(2, 8, 5), [torch.randn(2, 8, 5)]),
     "use out_layers='linear' for vectors and sequences"),
])
def test_bad_nfm_input_names_what_is_wrong(call, match):
    with pytest.raises(ValueError, match=match):
        call()
