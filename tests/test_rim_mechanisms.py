"""Each RIM mechanism of thesis ch. 8 against an independent computation from the module's weights, so that
breaking any one of them fails a test (issue 19): per-unit input weights, queries and communication maps,
the residual and the gate, dropout, head averaging, score scaling, gradient blocking, both competition
rules, ``comm_topk`` and attention over every input row."""
import copy
import math

import pytest
import torch

from zoo import RIMCell


def _cell(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(input_size=5, hidden_size=24, num_units=4, k_active=2)
    base.update(kw)
    return RIMCell(**base).double()


def _inputs(batch=6, rows=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 5) if rows is None else (batch, rows, 5)
    return (torch.randn(*shape, generator=g, dtype=torch.double),
            torch.randn(batch, 24, generator=g, dtype=torch.double),
            torch.randn(batch, 24, generator=g, dtype=torch.double))


def _units(t, units=4):
    return t.view(t.shape[0], units, -1)                                  # (B, U, d)


def _input_logits(cell, x, h):
    """Independent eq. 8.1-8.3: logits (B, H, U, 1+N) of h_u W^q_u against keys of [0 ; x]."""
    rows = x if x.dim() == 3 else x.unsqueeze(1)
    rows = torch.cat([torch.zeros_like(rows[:, :1]), rows], dim=1)        # (B, 1+N, F)
    H, de = cell.input_heads, cell.input_key_size
    k = torch.nn.functional.linear(rows, cell.input_key.weight, cell.input_key.bias)
    k = k.view(rows.shape[0], rows.shape[1], H, de)
    q = torch.einsum("bud,udo->buo", _units(h, cell.num_units), cell.input_query.weight)
    q = q.view(q.shape[0], cell.num_units, H, de)
    return torch.einsum("buhe,bnhe->bhun", q, k) / math.sqrt(de)


def _perturbed(cell, fn):
    other = copy.deepcopy(cell)
    with torch.no_grad():
        fn(other)
    return other


# --- every unit owns its weights ---------------------------------------------------------------------
def test_units_own_their_input_weights():
    cell = _cell(k_active=4, comm=False)                                 # every unit active, no mixing
    x, h, c = _inputs()
    _, (h1, _) = cell(x, (h, c))
    other = _perturbed(cell, lambda m: m.w_ih.weight[1].mul_(-3.0))
    _, (h2, _) = other(x, (h, c))
    moved = (_units(h1) - _units(h2)).abs().amax(dim=(0, 2))
    assert moved[1] > 1e-3 and torch.equal(moved[[0, 2, 3]], torch.zeros(3, dtype=torch.double))


def test_units_own_their_input_queries():
    cell = _cell(input_heads=2, comm=False)
    x, h, c = _inputs()
    _, _, i1 = cell(x, (h, c), return_info=True)
    other = _perturbed(cell, lambda m: m.input_query.weight[2].mul_(-3.0))
    _, _, i2 = other(x, (h, c), return_info=True)
    moved = (i1.input_attention - i2.input_attention).abs().amax(dim=(0, 1, 3))   # per unit
    assert moved[2] > 1e-3 and torch.equal(moved[[0, 1, 3]], torch.zeros(3, dtype=torch.double))


@pytest.mark.parametrize("block", ["query", "key", "value"])
def test_units_own_their_communication_maps(block):
    cell = _cell(k_active=4)
    x, h, c = _inputs()
    H, dk = cell.comm_heads, cell.comm_key_size
    cols = {"query": slice(0, H * dk), "key": slice(H * dk, 2 * H * dk), "value": slice(2 * H * dk, None)}[block]
    _, (h1, _), i1 = cell(x, (h, c), return_info=True)
    other = _perturbed(cell, lambda m: m.comm_qkv.weight[1, :, cols].mul_(-3.0))
    _, (h2, _), i2 = other(x, (h, c), return_info=True)
    p1, p2 = i1.comm_attention, i2.comm_attention                       # (B, H, U query, U key)
    if block == "query":       # only unit 1's row of scores moves
        moved = (p1 - p2).abs().amax(dim=(0, 1, 3))
        assert moved[1] > 1e-3 and torch.equal(moved[[0, 2, 3]], torch.zeros(3, dtype=torch.double))
    elif block == "key":       # only the scores on unit 1 move: ratios among the other keys stay
        keep = [0, 2, 3]
        r1 = p1[..., keep] / p1[..., keep].sum(-1, keepdim=True)
        r2 = p2[..., keep] / p2[..., keep].sum(-1, keepdim=True)
        assert torch.allclose(r1, r2, atol=1e-12) and not torch.allclose(p1, p2)
    else:                      # the scores stay, what every unit reads changes
        assert torch.equal(p1, p2) and not torch.allclose(h1, h2)


# --- communication: the residual, the gate, dropout --------------------------------------------------
def _comm_update(cell, src):
    """Independent eq. of 8.2.4 on the states ``src`` (B, U, d): per-unit q, k, v, per-head
    softmax(q k^T / sqrt(d_k)) v, then the output map of ``comm_residual``."""
    B, U, d = src.shape
    H, dk, dv = cell.comm_heads, cell.comm_key_size, cell.comm_value_size
    qkv = torch.einsum("bud,udo->buo", src, cell.comm_qkv.weight)
    q, k, v = qkv.split([H * dk, H * dk, H * dv], dim=-1)
    q, k, v = q.view(B, U, H, dk), k.view(B, U, H, dk), v.view(B, U, H, dv)
    probs = torch.softmax(torch.einsum("buhe,bwhe->bhuw", q, k) / math.sqrt(dk), dim=-1)
    a = torch.einsum("bhuw,bwhv->buhv", probs, v).reshape(B, U, H * dv)
    residual = cell.options.comm_residual
    if residual == "paper":
        return a
    out = torch.einsum("bui,uio->buo", a, cell.comm_out.weight) + cell.comm_out.bias
    if residual == "linear":
        return out
    gate = torch.einsum("bui,uio->buo", a, cell.comm_gate.weight) + cell.comm_gate.bias
    return torch.sigmoid(gate) * torch.tanh(out)


@pytest.mark.parametrize("residual", ["linear", "paper", "gated"])
def test_communication_residual_is_added_to_the_active_candidates(residual):
    cell = _cell(comm_residual=residual, comm_heads=2, comm_value_size=3 if residual == "paper" else None)
    silent = _cell(comm=False)
    silent.load_state_dict(cell.state_dict(), strict=False)
    x, h, c = _inputs()
    _, (h_on, _), info = cell(x, (h, c), return_info=True)
    _, (h_off, _) = silent(x, (h, c))                                    # h~ (active), h (inactive)
    act = info.mask.bool()
    expected = _units(h_off) + _comm_update(cell, _units(h_off))
    assert torch.allclose(_units(h_on)[act], expected[act], atol=1e-12)
    assert torch.equal(_units(h_on)[~act], _units(h)[~act])


def test_gate_changes_the_output():
    cell = _cell(comm_residual="gated")
    x, h, c = _inputs()
    outs = []
    for bias in (-30.0, 0.0, 30.0):
        with torch.no_grad():
            cell.comm_gate.bias.fill_(bias)
        outs.append(cell(x, (h, c))[0])
    silent = _cell(comm=False)
    silent.load_state_dict(cell.state_dict(), strict=False)
    assert torch.allclose(outs[0], silent(x, (h, c))[0], atol=1e-12)    # gate shut: no communication
    assert not torch.allclose(outs[1], outs[2])                          # the gate scales the update


@pytest.mark.parametrize("which", ["input_dropout", "comm_dropout"])
def test_dropouts_apply_in_training_only(which):
    cell = _cell(**{which: 0.5})
    x, h, c = _inputs(batch=16)
    cell.train()
    torch.manual_seed(0)
    a = cell(x, (h, c))[0]
    torch.manual_seed(1)
    b = cell(x, (h, c))[0]
    cell.eval()
    e1, e2 = cell(x, (h, c))[0], cell(x, (h, c))[0]
    reference = _cell()                                                  # same weights, no dropout
    reference.load_state_dict(cell.state_dict())
    assert not torch.allclose(a, b) and not torch.allclose(a, e1)       # random in training
    assert torch.equal(e1, e2) and torch.allclose(e1, reference.eval()(x, (h, c))[0], atol=1e-12)


# --- input attention and competition ------------------------------------------------------------------
def test_input_attention_scores_are_scaled_and_cover_every_row():
    cell = _cell(input_heads=2, input_key_size=7, kv_bias=True)
    x, h, c = _inputs(rows=5)
    _, _, info = cell(x, (h, c), return_info=True)
    expected = torch.softmax(_input_logits(cell, x, h), dim=-1)         # (B, H, U, 1+N)
    assert torch.allclose(info.input_attention, expected, atol=1e-12)
    # every row is read: changing only the last row moves the attention
    x2 = x.clone()
    x2[:, -1] += 1.0
    _, _, info2 = cell(x2, (h, c), return_info=True)
    assert not torch.allclose(info.input_attention, info2.input_attention)


def test_competition_averages_null_attention_over_heads():
    # find inputs where ranking by head 0 alone and by the head average disagree, then check the mask
    cell = _cell(input_heads=3, k_active=2)
    disagree = 0
    for seed in range(5):
        x, h, c = _inputs(batch=16, seed=seed)
        _, _, info = cell(x, (h, c), return_info=True)
        null = info.input_attention[..., 0]                              # (B, H, U)
        by_mean = torch.zeros(16, 4, dtype=torch.double).scatter_(1, (-null.mean(1)).topk(2, dim=1).indices, 1.0)
        by_head0 = torch.zeros(16, 4, dtype=torch.double).scatter_(1, (-null[:, 0]).topk(2, dim=1).indices, 1.0)
        assert torch.equal(info.mask, by_mean)
        disagree += int((by_mean != by_head0).any(1).sum())
    assert disagree > 0                                                  # the test can tell them apart


@pytest.mark.parametrize("rows", [1, 4])
def test_input_logit_rule_ranks_by_the_strongest_raw_logit(rows):
    x, h, c = _inputs(batch=32, rows=rows)
    logit_rule = _cell(competition="input_logit", kv_bias=True, input_heads=2)
    null_rule = _cell(competition="null_softmax", kv_bias=True, input_heads=2)
    null_rule.load_state_dict(logit_rule.state_dict())
    logits = _input_logits(logit_rule, x if rows > 1 else x, h)          # (B, H, U, 1+N)
    score = logits[..., 1:].amax(-1).mean(1)                             # best row, averaged over heads
    expected = torch.zeros(32, 4, dtype=torch.double).scatter_(1, score.topk(2, dim=1).indices, 1.0)
    _, _, i_logit = logit_rule(x, (h, c), return_info=True)
    _, _, i_null = null_rule(x, (h, c), return_info=True)
    assert torch.equal(i_logit.mask, expected)
    assert not torch.equal(i_logit.mask, i_null.mask)                    # the rules differ here


def test_input_logit_rule_equals_null_softmax_with_one_row_and_no_bias():
    x, h, c = _inputs(batch=32)
    a, b = _cell(competition="input_logit"), _cell()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x, (h, c), return_info=True)[2].mask, b(x, (h, c), return_info=True)[2].mask)


# --- comm_topk, gradient blocking ---------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_comm_topk_keeps_the_largest_scores(k):
    dense, sparse = _cell(k_active=4), _cell(k_active=4, comm_topk=k)
    sparse.load_state_dict(dense.state_dict())
    x, h, c = _inputs()
    p_dense = dense(x, (h, c), return_info=True)[2].comm_attention       # (B, H, U, U)
    p_sparse = sparse(x, (h, c), return_info=True)[2].comm_attention
    top = p_dense.topk(k, dim=-1).indices
    kept = torch.zeros_like(p_dense, dtype=torch.bool).scatter_(-1, top, True)
    assert torch.equal(p_sparse > 0, kept)
    renorm = torch.where(kept, p_dense, torch.zeros_like(p_dense))
    assert torch.allclose(p_sparse, renorm / renorm.sum(-1, keepdim=True), atol=1e-12)


def test_candidate_source_blocks_the_gradient_of_inactive_candidates():
    cell = _cell(comm_source="candidate")
    x, h, c = _inputs(batch=1)
    out, _, info = cell(x, (h, c), return_info=True)
    out.sum().backward()
    inactive = (info.mask[0] == 0).nonzero().flatten()
    grad = cell.w_hh.weight.grad[inactive]                               # their candidates' weights
    assert torch.equal(grad, torch.zeros_like(grad))                     # no gradient through the candidates
    # ... although the output depends on them (the active units read the candidates)
    other = _perturbed(cell, lambda m: [m.w_hh.weight[u].mul_(-2.0) for u in inactive.tolist()])
    assert not torch.allclose(other(x, (h, c))[0], out)


# -- edge paths the mutation sample of zoo/layers found unguarded (benchmarks/mutation.md) -----------------

def _rim(**kw):
    from zoo import RIM
    torch.manual_seed(0)
    base = dict(num_units=4, k_active=2)
    base.update(kw)
    return RIM(5, 24, **base).double()


@pytest.mark.parametrize("rows", [None, 3])
def test_an_empty_sequence_gives_info_shaped_like_a_longer_ones_minus_time(rows):
    rim = _rim(num_layers=2)
    shape = (4, 2, 5) if rows is None else (4, 2, rows, 5)
    x = torch.randn(*shape, dtype=torch.double)
    _, _, full = rim(x, return_info=True)
    out, (h, c), empty = rim(x[:0], return_info=True)
    assert out.shape == (0, 2, 24) and h.shape == c.shape == (2, 2, 24)
    for a, b in zip(empty, full):
        assert a.shape == (0,) + b.shape[1:]


def test_batch_first_moves_episode_starts_with_the_input():
    tm, bf = _rim(), _rim(batch_first=True)
    x = torch.randn(6, 3, 5, dtype=torch.double)                          # (T, B, F)
    starts = torch.zeros(6, 3)
    starts[3, 1] = 1
    out_tm, (h_tm, _) = tm(x, episode_starts=starts)
    out_bf, (h_bf, _) = bf(x.transpose(0, 1), episode_starts=starts.transpose(0, 1))
    assert torch.allclose(out_bf.transpose(0, 1), out_tm) and torch.allclose(h_bf, h_tm)
    assert not torch.allclose(out_tm, tm(x)[0])                           # the reset did something


def test_unbatched_input_with_a_given_state_equals_a_batch_of_one():
    rim = _rim(num_layers=2)
    x = torch.randn(5, 5, dtype=torch.double)
    h0, c0 = torch.randn(2, 24, dtype=torch.double), torch.randn(2, 24, dtype=torch.double)
    out, (h, c) = rim(x, (h0, c0))
    out1, (h1, c1) = rim(x[:, None], (h0[:, None], c0[:, None]))
    assert out.shape == (5, 24) and h.shape == (2, 24)
    assert torch.equal(out, out1[:, 0]) and torch.equal(h, h1[:, 0]) and torch.equal(c, c1[:, 0])


def test_init_state_takes_the_requested_dtype_and_comm_scale_stays_out_of_checkpoints():
    cell = _cell()
    h, c = cell.init_state(3, dtype=torch.float64)
    assert h.dtype == c.dtype == torch.float64 and h.shape == (3, 24) and not h.any()
    assert not any("comm_scale" in k for k in cell.state_dict())         # a buffer derived from the sizes


@pytest.mark.parametrize("build, match", [
    (lambda: _rim(bias=False), "bias=False is not supported by RIM"),
    (lambda: _rim(proj_size=3), "proj_size is not supported by RIM"),
    (lambda: _cell(input_size=0), "input_size"),
    (lambda: _cell(comm_heads=0), "comm_heads"),
    (lambda: _cell(competition="bogus"), "competition"),
    (lambda: _cell(readout="bogus"), "readout"),
])
def test_bad_rim_options_name_themselves(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_grouped_linear_applies_unit_u_weights_to_unit_u_only():
    from zoo.layers.grouped import GroupedLinear
    torch.manual_seed(0)
    lin = GroupedLinear(3, 4, 2).double()
    x = torch.randn(2, 5, 3, 4, dtype=torch.double)                       # (..., U, in)
    y = lin(x)
    assert y.shape == (2, 5, 3, 2)
    for u in range(3):
        assert torch.allclose(y[..., u, :], x[..., u, :] @ lin.weight[u] + lin.bias[u])
