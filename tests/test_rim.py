"""RIMs against the paper (thesis ch. 8): competition, frozen inactive units, independence, interface."""
import pytest
import torch
from torch import nn

from zoo import RIM, RIMCell


def _cell(**kw):
    torch.manual_seed(0)
    base = dict(input_size=8, hidden_size=24, num_units=4, k_active=2)
    base.update(kw)
    return RIMCell(**base)


def _unit_mask(info, unit_size):
    return info.mask.repeat_interleave(unit_size, dim=1).bool()     # (B, H)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("comm_source", ["kept", "candidate"])
def test_inactive_units_keep_state_bit_for_bit(cell, comm_source):
    rim = _cell(cell=cell, comm_source=comm_source)
    x, h, c = torch.randn(16, 8), torch.randn(16, 24), torch.randn(16, 24)
    _, (h2, c2), info = rim(x, (h, c), return_info=True)
    inactive = ~_unit_mask(info, rim.unit_size)
    assert inactive.any()
    assert torch.equal(h2[inactive], h[inactive])
    if cell == "lstm":
        assert torch.equal(c2[inactive], c[inactive])
    assert not torch.equal(h2[~inactive], h[~inactive])              # active units did move


@pytest.mark.parametrize("k_active", [1, 2, 3, 4])
def test_exactly_k_active_units_per_sample(k_active):
    rim = RIM(8, 24, num_units=4, k_active=k_active, batch_first=True)
    _, _, info = rim(torch.randn(5, 9, 8), return_info=True)
    assert info.mask.shape == (9, 1, 5, 4)
    assert torch.all(info.mask.sum(-1) == k_active)
    assert set(info.mask.unique().tolist()) <= {0.0, 1.0}


def test_active_units_are_those_with_least_null_attention():
    rim = _cell()
    state = (torch.randn(32, 24), torch.randn(32, 24))               # zero state ties every unit's query
    _, _, info = rim(torch.randn(32, 8), state, return_info=True)
    null = info.input_attention[..., 0].mean(1)                      # (B, U), averaged over heads
    for b in range(32):
        active = set(info.mask[b].nonzero().flatten().tolist())
        assert active == set(null[b].argsort()[:2].tolist())


def test_null_row_has_zero_key_and_value_by_default():
    rim = _cell()
    k, v = rim.project_input(torch.randn(3, 1, 8))
    assert torch.equal(k[:, 0], torch.zeros_like(k[:, 0])) and torch.equal(v[:, 0], torch.zeros_like(v[:, 0]))
    rim_b = _cell(kv_bias=True)
    k, _ = rim_b.project_input(torch.randn(3, 1, 8))
    assert torch.allclose(k[:, 0], rim_b.input_key.bias.view(1, 1, -1).expand_as(k[:, 0]))


def test_input_attention_rows_sum_to_one_and_null_is_column_zero():
    rim = _cell(input_heads=2)
    _, _, info = rim(torch.randn(4, 5, 8), return_info=True)          # a set of 5 rows per sample
    assert info.input_attention.shape == (4, 2, 4, 6)
    assert torch.allclose(info.input_attention.sum(-1), torch.ones(4, 2, 4))


def test_zero_input_sends_all_attention_mass_evenly_between_null_and_input():
    # With no key bias a zero input row has the null row's key (0): both logits are 0.
    rim = _cell()
    _, _, info = rim(torch.zeros(2, 8), return_info=True)
    assert torch.allclose(info.input_attention, torch.full_like(info.input_attention, 0.5))


def test_gradient_reaches_inactive_units_earlier_state():
    rim = _cell(comm=False)
    h = torch.randn(8, 24, requires_grad=True)
    c = torch.randn(8, 24, requires_grad=True)
    out, _, info = rim(torch.randn(8, 8), (h, c), return_info=True)
    inactive = ~_unit_mask(info, rim.unit_size)
    (out * inactive).sum().backward()                                 # loss only on inactive units
    assert torch.equal(h.grad[inactive], torch.ones_like(h.grad[inactive]))   # identity path
    assert torch.all(c.grad[inactive] == 0)                           # c is not read out


def test_gradient_flows_through_a_dormant_unit_over_time():
    # seeded: find a (sample, unit) that stayed inactive for all 6 steps (with k_active=1 of 4 units most
    # draws have one); its final state must be its initial state, and the gradient must reach it
    for seed in range(20):
        torch.manual_seed(seed)
        rim = RIM(8, 24, num_units=4, k_active=1, comm=False)
        h0 = torch.randn(1, 3, 24, requires_grad=True)
        c0 = torch.zeros(1, 3, 24)
        out, _, info = rim(torch.randn(6, 3, 8), (h0, c0), return_info=True)
        never = (info.mask[:, 0] == 0).all(0)                         # (B, U)
        if never.any():
            break
    b, u = never.nonzero()[0].tolist()
    sl = slice(u * 6, (u + 1) * 6)
    assert torch.equal(out[-1, b, sl], h0[0, b, sl])
    out[-1, b, sl].sum().backward()
    assert torch.equal(h0.grad[0, b, sl], torch.ones(6))


def test_units_do_not_share_dynamics_parameters():
    rim = _cell(comm=False)
    x, h, c = torch.randn(16, 8), torch.randn(16, 24), torch.randn(16, 24)
    # force every unit active so that every unit's update is visible
    rim.k_active = rim.num_units
    _, (h1, _) = rim(x, (h, c))
    with torch.no_grad():
        rim.w_hh.weight[0].add_(1.0)                                 # perturb unit 0's recurrent weights
        rim.w_ih.weight[0].mul_(-2.0)
    _, (h2, _) = rim(x, (h, c))
    d = rim.unit_size
    assert not torch.allclose(h1[:, :d], h2[:, :d])                  # unit 0 changed
    assert torch.equal(h1[:, d:], h2[:, d:])                         # the others did not move at all


def test_grouped_weights_are_block_diagonal():
    rim = _cell()
    assert rim.w_hh.weight.shape == (4, 6, 24)                       # (U, d, 4d): one LSTM per unit
    assert rim.w_ih.weight.shape[0] == 4


def test_communication_changes_only_active_units():
    on, off = _cell(comm=True), _cell(comm=False)
    off.load_state_dict(on.state_dict(), strict=False)
    x, h, c = torch.randn(16, 8), torch.randn(16, 24), torch.randn(16, 24)
    _, (h_on, _), info = on(x, (h, c), return_info=True)
    _, (h_off, _) = off(x, (h, c))
    act = _unit_mask(info, on.unit_size)
    assert torch.equal(h_on[~act], h_off[~act])
    assert not torch.allclose(h_on[act], h_off[act])
    assert info.comm_attention.shape == (16, 4, 4, 4)
    assert torch.allclose(info.comm_attention.sum(-1), torch.ones(16, 4, 4))


def test_comm_topk_keeps_k_entries():
    rim = _cell(comm_topk=2)
    _, _, info = rim(torch.randn(16, 8), return_info=True)
    assert torch.all((info.comm_attention > 0).sum(-1) == 2)


def test_comm_source_candidate_exposes_candidate_and_blocks_its_gradient():
    torch.manual_seed(0)
    kept, cand = _cell(comm_source="kept"), _cell(comm_source="candidate")
    cand.load_state_dict(kept.state_dict())
    x, h, c = torch.randn(16, 8), torch.randn(16, 24), torch.randn(16, 24)
    o1, _ = kept(x, (h, c))
    o2, _ = cand(x, (h, c))
    assert not torch.allclose(o1, o2)                                # inactive units expose different states


def test_readout_active_zeroes_inactive_units():
    rim = _cell(readout="active")
    out, (h, _), info = rim(torch.randn(8, 8), return_info=True)
    act = _unit_mask(info, rim.unit_size)
    assert torch.all(out[~act] == 0) and torch.equal(out[act], h[act])


def test_gated_residual_option_has_gate_parameters():
    rim = _cell(comm_residual="gated")
    assert rim.comm_gate is not None
    x = torch.randn(4, 8)
    out, _ = rim(x)
    assert out.shape == (4, 24)


def test_official_preset_numerics():
    rim = RIMCell.official(32, 600)
    assert rim.input_heads == 1 and rim.input_key_size == 64 and rim.input_value_size == 400
    assert rim.comm_heads == 4 and rim.comm_key_size == 16
    assert rim.options.comm_source == "candidate" and rim.options.comm_residual == "gated"
    assert rim.input_key.bias is None                                 # null logit exactly 0


def test_competition_input_logit_ranks_by_raw_logit():
    rim = _cell(competition="input_logit", input_heads=1)
    x = torch.randn(10, 8)
    _, _, info = rim(x, return_info=True)
    # with one input row and no bias, softmax null prob = sigmoid(-logit): the two rules agree
    ref = _cell(input_heads=1)
    ref.load_state_dict(rim.state_dict())
    _, _, info_ref = ref(x, return_info=True)
    assert torch.equal(info.mask, info_ref.mask)
    # with a key bias, the null logit is no longer 0 and the rules can disagree; both stay valid top-k
    rim_b = _cell(competition="input_logit", kv_bias=True)
    _, _, info_b = rim_b(torch.randn(64, 3, 8), return_info=True)
    assert torch.all(info_b.mask.sum(-1) == 2)


def test_gradcheck_float64_small_cell():
    torch.manual_seed(0)
    rim = RIMCell(3, 6, num_units=3, k_active=2, comm_heads=2, comm_key_size=2, comm_value_size=2,
                  input_key_size=4).double()
    x = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    h = torch.randn(2, 6, dtype=torch.double, requires_grad=True)
    c = torch.randn(2, 6, dtype=torch.double, requires_grad=True)

    def f(x, h, c):
        out, (h2, c2) = rim(x, (h, c))
        return out, c2

    assert torch.autograd.gradcheck(f, (x, h, c), eps=1e-6, atol=1e-5)


def test_sequence_equals_cell_stepping_with_resets():
    torch.manual_seed(0)
    rim = RIM(8, 24, num_units=4, k_active=2, num_layers=2).eval()
    x = torch.randn(10, 3, 8)
    starts = torch.zeros(10, 3)
    starts[4, 1] = 1
    starts[7, 0] = 1
    out, (h, c) = rim(x, episode_starts=starts)
    states = [None, None]
    outs = []
    for t in range(10):
        inp = x[t]
        for i, cell in enumerate(rim.cells):
            inp, states[i] = cell(inp, states[i], reset=starts[t])
        outs.append(inp)
    assert torch.allclose(torch.stack(outs), out, atol=1e-6)
    assert torch.allclose(torch.stack([s[0] for s in states]), h, atol=1e-6)
    # resetting equals starting a fresh sequence at that step
    fresh, _ = rim(x[4:, 1:2])
    assert torch.allclose(fresh[:, 0], out[4:, 1], atol=1e-6)


def test_batch_first_both_ways_and_unbatched():
    torch.manual_seed(0)
    rim = RIM(8, 24, num_units=4, k_active=2).eval()
    x = torch.randn(7, 3, 8)
    out_tf, (h_tf, _) = rim(x)
    rim.batch_first = True
    out_bf, (h_bf, _) = rim(x.transpose(0, 1))
    assert torch.allclose(out_bf.transpose(0, 1), out_tf) and torch.allclose(h_bf, h_tf)
    rim.batch_first = False
    out_u, (h_u, c_u) = rim(x[:, 0])
    assert out_u.shape == (7, 24) and h_u.shape == (1, 24)
    assert torch.allclose(out_u, out_tf[:, 0], atol=1e-6)


def test_state_shapes_match_nn_lstm():
    x = torch.randn(5, 4, 8)
    lstm = nn.LSTM(8, 24, num_layers=2)
    rim = RIM(8, 24, num_layers=2, num_units=4, k_active=2)
    (o1, (h1, c1)), (o2, (h2, c2)) = lstm(x), rim(x)
    assert o1.shape == o2.shape and h1.shape == h2.shape and c1.shape == c2.shape
    gru_rim = RIM(8, 24, num_units=4, k_active=2, cell="gru", comm=False)
    _, (h, c) = gru_rim(x)
    assert torch.equal(h, c)                  # GRU units: c is the state before communication, h without it


def test_initial_state_is_zeros_and_explicit_zeros_match():
    torch.manual_seed(0)
    rim = RIM(8, 24, num_units=4, k_active=2).eval()
    x = torch.randn(5, 2, 8)
    z = torch.zeros(1, 2, 24)
    assert torch.equal(rim(x)[0], rim(x, (z, z))[0])


def test_drop_in_replacement_for_nn_lstm_in_user_code():
    class Tagger(nn.Module):                                           # written for nn.LSTM
        def __init__(self, rnn_cls, **kw):
            super().__init__()
            self.emb = nn.Embedding(12, 16)
            self.rnn = rnn_cls(16, 32, num_layers=2, batch_first=True, dropout=0.1, **kw)
            self.out = nn.Linear(32, 5)

        def forward(self, tokens, state=None):
            self.rnn.flatten_parameters()
            y, state = self.rnn(self.emb(tokens), state)
            return self.out(y), state

    torch.manual_seed(0)
    tokens = torch.randint(0, 12, (4, 9))
    for model in (Tagger(nn.LSTM), Tagger(RIM, num_units=4, k_active=2)):
        logits, state = model(tokens)
        logits2, _ = model(tokens[:, :3], state)                       # state round-trips
        loss = logits.logsumexp(-1).mean() + logits2.mean()
        loss.backward()
        assert logits.shape == (4, 9, 5) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kwargs, match", [
    (dict(k_active=5), "k_active"),
    (dict(k_active=0), "k_active"),
    (dict(hidden_size=25), "hidden_size=25 is not divisible by num_units=4"),
    (dict(cell="rnn"), "cell='rnn'.*'lstm', 'gru'"),
    (dict(competition="max"), "competition"),
    (dict(comm_source="x"), "comm_source"),
    (dict(readout="x"), "readout"),
    (dict(comm_residual="x"), "comm_residual"),
    (dict(comm_topk=9), "comm_topk"),
    (dict(compile_chunk=0), "compile_chunk must be a positive integer"),
    (dict(compile_chunk=2.5), "compile_chunk must be a positive integer"),
])
def test_bad_configurations_raise_value_error(kwargs, match):
    base = dict(input_size=8, hidden_size=24, num_units=4, k_active=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        RIMCell(**base)


def test_bad_inputs_raise_value_error():
    rim = RIM(8, 24, num_units=4, k_active=2)
    with pytest.raises(ValueError, match="input_size=8"):
        rim(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="rank"):
        rim(torch.randn(5))
    with pytest.raises(ValueError, match="h_0"):
        rim(torch.randn(5, 2, 8), (torch.zeros(1, 3, 24), torch.zeros(1, 3, 24)))
    with pytest.raises(ValueError, match="bidirectional"):
        RIM(8, 24, bidirectional=True, num_units=4, k_active=2)
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        RIMCell(8, 24, 4, 2)(torch.randn(2, 3, 4, 8))


def test_sets_of_rows_as_input():
    rim = RIM(8, 24, num_units=4, k_active=2, batch_first=True)
    out, (h, _), info = rim(torch.randn(3, 5, 7, 8), return_info=True)   # (B, T, N, F): a CNN map per step
    assert out.shape == (3, 5, 24) and info.input_attention.shape == (5, 1, 3, 1, 4, 8)


# --- the one-row fast path (RIMCell._fast_step) against the general path (RIMCell.step) ---------------
def _general_only(rim):
    """Force the general path (attention over [null ; x] with a softmax) on every cell of ``rim``."""
    for cell in (rim.cells if isinstance(rim, RIM) else [rim]):
        cell.fast_path_applies = lambda num_rows: False
    return rim


def _fast_and_general(**kw):
    torch.manual_seed(0)
    fast = RIM(5, 24, **{**dict(num_units=4, k_active=2), **kw}).double()
    general = RIM(5, 24, **{**dict(num_units=4, k_active=2), **kw}).double()
    general.load_state_dict(fast.state_dict())
    return fast, _general_only(general)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("variant", [
    dict(),
    dict(num_layers=2, input_heads=2),
    dict(input_heads=3, competition="input_logit", comm_topk=2),
    dict(comm_source="candidate", comm_residual="gated", readout="active"),
    dict(comm=False, input_value_size=10),
])
def test_fast_path_equals_general_path_float64(cell, with_resets, variant):
    fast, general = _fast_and_general(cell=cell, **variant)
    assert all(c.fast_path_applies(1) for c in fast.cells)
    torch.manual_seed(1)
    steps, batch, layers = 7, 3, fast.num_layers
    x = torch.randn(steps, batch, 5, dtype=torch.double)
    h0 = torch.randn(layers, batch, 24, dtype=torch.double)
    c0 = torch.randn(layers, batch, 24, dtype=torch.double)
    starts = None
    if with_resets:
        starts = torch.zeros(steps, batch, dtype=torch.double)
        starts[0, 1] = starts[3, 0] = starts[5, 2] = 1
    results = []
    for rim in (fast, general):
        out, (h, c), info = rim(x, (h0, c0), episode_starts=starts, return_info=True)
        w = torch.linspace(-1, 1, out.numel(), dtype=torch.double).view_as(out)
        ((out * w).sum() + h.square().sum() + c.sin().sum()).backward()
        grads = {n: p.grad.clone() for n, p in rim.named_parameters() if p.grad is not None}
        results.append((out, h, c, info, grads))
    (o1, h1, c1, i1, g1), (o2, h2, c2, i2, g2) = results
    assert torch.allclose(o1, o2, atol=1e-12) and torch.allclose(h1, h2, atol=1e-12)
    assert torch.allclose(c1, c2, atol=1e-12)
    assert torch.equal(i1.mask, i2.mask)
    assert i1.input_attention.shape == i2.input_attention.shape == (steps, layers, batch, fast.cells[0].input_heads, 4, 2)
    assert torch.allclose(i1.input_attention, i2.input_attention, atol=1e-12)
    assert torch.allclose(i1.input_attention[..., 0], 1 - i1.input_attention[..., 1], atol=1e-12)
    if i2.comm_attention is None:
        assert i1.comm_attention is None
    else:
        assert torch.allclose(i1.comm_attention, i2.comm_attention, atol=1e-12)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-10), name


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fast_path_single_cell_step_equals_general_path(cell):
    torch.manual_seed(0)
    fast = RIMCell(5, 24, num_units=4, k_active=2, cell=cell).double()
    general = _general_only(RIMCell(5, 24, num_units=4, k_active=2, cell=cell).double())
    general.load_state_dict(fast.state_dict())
    x, h, c = (torch.randn(6, n, dtype=torch.double) for n in (5, 24, 24))
    reset = torch.tensor([0, 1, 0, 0, 1, 0])
    (o1, s1, i1), (o2, s2, i2) = (rim(x, (h, c), reset=reset, return_info=True) for rim in (fast, general))
    assert torch.allclose(o1, o2, atol=1e-12) and torch.allclose(s1[1], s2[1], atol=1e-12)
    assert torch.equal(i1.mask, i2.mask) and torch.allclose(i1.input_attention, i2.input_attention, atol=1e-12)


def test_fast_path_applies_only_where_exact():
    cell = _cell()
    assert cell.fast_path_applies(1) and not cell.fast_path_applies(3)           # one row only
    assert not _cell(kv_bias=True).fast_path_applies(1)                          # null row has a key
    drop = _cell(input_dropout=0.1)
    assert not drop.fast_path_applies(1) and drop.eval().fast_path_applies(1)    # dropout on the read vector
    calls = []
    import zoo.layers.rim as rim_module
    original = rim_module._fast_step
    rim_module._fast_step = lambda *a: calls.append(1) or original(*a)
    try:
        cell(torch.randn(2, 8))
        assert calls == [1]
        cell(torch.randn(2, 3, 8))                                               # a set of rows: general path
        assert calls == [1]
    finally:
        rim_module._fast_step = original


# --- initialization loops written for nn.LSTM (issue 16, drop-in details) -----------------------------
def test_lstm_style_init_loop_on_named_unit_parameters_initializes_each_unit():
    torch.manual_seed(0)
    rim = RIM(8, 48, num_layers=2, num_units=4, k_active=2)
    names = [n for n, _ in rim.named_unit_parameters()]
    assert "cells.1.weight_hh_u3" in names and "cells.0.bias_ih_u0" in names and len(names) == 2 * 4 * 4
    for name, p in rim.named_unit_parameters():                        # the loop as written for nn.LSTM
        if "weight" in name:
            nn.init.orthogonal_(p)
        else:
            nn.init.zeros_(p)
    d = 12
    for cell in rim.cells:
        for u in range(4):
            w = cell.w_hh.weight[u]                                      # (d, 4d): nn.LSTM's weight_hh^T per unit
            assert torch.allclose(w @ w.T, torch.eye(d), atol=1e-5)     # an orthogonal map per unit
        assert torch.equal(cell.w_ih.bias, torch.zeros_like(cell.w_ih.bias))
    # the layout matches nn.LSTM's: (4 d, in) with the forget gate at rows [d:2d]
    lstm = nn.LSTM(8, d)
    shapes = {n: p.shape for n, p in rim.cells[0].named_unit_parameters() if n.endswith("_u0")}
    assert shapes["weight_ih_u0"][0] == lstm.weight_ih_l0.shape[0] and shapes["weight_hh_u0"] == lstm.weight_hh_l0.shape


def test_lstm_style_init_loop_on_named_parameters_does_what_the_docs_say():
    # documented in docs/rims.md: on the stacked (U, in, out) weights nn.init.orthogonal_ makes each unit's
    # flattened weight one unit-norm row (std 1/sqrt(in * out)), not an orthogonal map per unit
    torch.manual_seed(0)
    rim = RIM(8, 128, num_units=4, k_active=2)
    for name, p in rim.named_parameters():
        if "weight" in name and p.dim() >= 2:
            nn.init.orthogonal_(p)
    w = rim.cells[0].w_hh.weight                                         # (4, 32, 128)
    assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(4), atol=1e-5)
    assert abs(w.std().item() - 1 / (32 * 128) ** 0.5) < 2e-3            # ~0.016, not an orthogonal map's 0.088
