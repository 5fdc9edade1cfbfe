"""RIM / LSTM / GRU cores in sb3-contrib's RecurrentPPO (rl.policies, rl.cores, rl.pomdp).

Episode starts against sb3-contrib's own step-by-step reference, resets, state shapes in the rollout
buffer, save/load, and a short RecurrentPPO run on CartPole without velocities that must learn.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")
from sb3_contrib import RecurrentPPO  # noqa: E402
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from torch import nn  # noqa: E402

import zoo  # noqa: E402
from rl import RecurrentCorePolicy, RIMActorCriticCnnPolicy, RIMActorCriticPolicy  # noqa: E402
from rl.cores import MaskedGRU, MaskedLSTM, make_core, run_core  # noqa: E402
from rl.pomdp import MaskObservation  # noqa: E402

CORES = ["rim", "lstm", "gru"]
RIM_KW = dict(num_units=4, k_active=2)


def _policy(core: str, hidden: int = 32, layers: int = 1, **kw) -> RecurrentCorePolicy:
    env = gym.make("zoo/CartPoleNoVel-v0")
    extra = RIM_KW if core == "rim" else {}
    return RecurrentCorePolicy(env.observation_space, env.action_space, lambda _: 3e-4, core=core,
                               lstm_hidden_size=hidden, n_lstm_layers=layers, **extra, **kw)


def _random_state(core, layers, n, hidden, gen):
    h = torch.randn(layers, n, hidden, generator=gen)
    c = h.clone() if core == "gru" else torch.randn(layers, n, hidden, generator=gen)
    return h, c


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("core", CORES)
def test_one_call_equals_stepping_with_resets(core, layers):
    """The whole padded batch in one call == sb3-contrib's own time loop (step by step, resets in the middle)."""
    torch.manual_seed(0)
    policy = _policy(core, layers=layers)
    gen = torch.Generator().manual_seed(1)
    n_seq, steps, hidden = 5, 9, 32
    features = torch.randn(n_seq * steps, 2, generator=gen)
    starts = torch.zeros(n_seq, steps)
    starts[0, 0] = starts[1, 3] = starts[1, 6] = starts[3, 1] = starts[4, 8] = 1.0
    states = _random_state(core, layers, n_seq, hidden, gen)
    for module in (policy.lstm_actor, policy.lstm_critic):
        out, (h, c) = policy._process_sequence(features, states, starts.flatten(), module)
        # sb3-contrib's stock code path: one core call per time step, resets by multiplying the state
        ref_out, (ref_h, ref_c) = RecurrentActorCriticPolicy._process_sequence(features, states, starts.flatten(),
                                                                               module)
        assert out.shape == (n_seq * steps, hidden) and h.shape == (layers, n_seq, hidden)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, ref_c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("core", CORES)
def test_reset_restores_the_initial_state(core):
    """After an episode start the core continues exactly as from the zero initial state, whatever came before."""
    torch.manual_seed(0)
    policy = _policy(core)
    gen = torch.Generator().manual_seed(2)
    steps, n_seq, hidden, t = 8, 3, 32, 5
    x = torch.randn(steps, n_seq, 2, generator=gen)
    starts = torch.zeros(steps, n_seq)
    starts[t] = 1.0
    state = _random_state(core, 1, n_seq, hidden, gen)
    out, (h, c) = run_core(policy.lstm_actor, x, state, starts)
    zero = (torch.zeros(1, n_seq, hidden), torch.zeros(1, n_seq, hidden))
    fresh_out, (fresh_h, fresh_c) = policy.lstm_actor(x[t:], zero)
    torch.testing.assert_close(out[t:], fresh_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close((h, c), (fresh_h, fresh_c), rtol=1e-6, atol=1e-6)
    # the state right after a one-step call with a start does not depend on the state passed in
    one = torch.ones(1, n_seq)
    _, s1 = run_core(policy.lstm_actor, x[:1], state, one)
    _, s0 = run_core(policy.lstm_actor, x[:1], zero, one)
    torch.testing.assert_close(s1, s0, rtol=0, atol=0)
    # and predict() with episode_start=True ignores whatever state it is given
    obs = np.zeros((n_seq, 2), dtype=np.float32) + 0.1
    a1, st1 = policy.predict(obs, state=tuple(s.numpy() for s in state), episode_start=np.ones(n_seq, bool),
                             deterministic=True)
    a0, st0 = policy.predict(obs, state=None, episode_start=np.ones(n_seq, bool), deterministic=True)
    np.testing.assert_array_equal(a1, a0)
    np.testing.assert_array_equal(st1[0], st0[0])


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_masked_rnn_is_the_torch_rnn(core):
    """MaskedLSTM / MaskedGRU are nn.LSTM / nn.GRU: same state dict, same output without resets; GRU gives c = h."""
    torch.manual_seed(0)
    masked = make_core(core, 3, 16, 2)
    plain = (nn.LSTM if core == "lstm" else nn.GRU)(3, 16, 2)
    plain.load_state_dict(masked.state_dict())
    assert isinstance(masked, MaskedLSTM if core == "lstm" else MaskedGRU) and isinstance(masked, type(plain))
    x, h = torch.randn(7, 4, 3), torch.randn(2, 4, 16)
    c = torch.randn(2, 4, 16)
    out, (hn, cn) = masked(x, (h, c))
    ref_out, ref_state = plain(x, (h, c) if core == "lstm" else h)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(hn, ref_state[0] if core == "lstm" else ref_state, rtol=0, atol=0)
    if core == "gru":
        assert torch.equal(cn, hn)


def test_rim_core_is_zoo_rim_and_kwargs_reach_it():
    policy = _policy("rim", hidden=48, core_kwargs=dict(cell="gru", comm_topk=2))
    for core in (policy.lstm_actor, policy.lstm_critic):
        assert isinstance(core, zoo.RIM)
        assert core.cells[0].cell == "gru" and core.cells[0].comm_topk == 2 and core.num_units == 4
    assert policy.lstm_actor is not policy.lstm_critic
    # the optimizer holds the cores' parameters (rebuilt after the parent's nn.LSTMs were replaced)
    opt_params = {id(p) for g in policy.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in policy.parameters()} == opt_params


def test_default_sizes_and_bad_configurations():
    env = gym.make("CartPole-v1")
    policy = RIMActorCriticPolicy(env.observation_space, env.action_space, lambda _: 3e-4, num_units=6, k_active=4)
    assert policy.lstm_actor.hidden_size == 252 and policy.lstm_output_dim == 252     # 6 x 42 <= 256
    args = (env.observation_space, env.action_space, lambda _: 3e-4)
    with pytest.raises(ValueError, match="core="):
        RecurrentCorePolicy(*args, core="transformer")
    with pytest.raises(ValueError, match="divisible"):
        RecurrentCorePolicy(*args, core="rim", lstm_hidden_size=250, num_units=6)
    with pytest.raises(ValueError, match="k_active"):
        RecurrentCorePolicy(*args, core="rim", num_units=4, k_active=5)
    with pytest.raises(ValueError, match="RIM options"):
        RecurrentCorePolicy(*args, core="lstm", num_units=4)


def _cell_policy(core: str, cells: int = 49, cell_features: int = 20, cell_dim: int = 8, **kw) -> RecurrentCorePolicy:
    from rl.encoders import CellEncoder

    obs = gym.spaces.Box(0.0, 1.0, (cells * cell_features,), np.float32)
    extra = RIM_KW if core == "rim" else {}
    return RecurrentCorePolicy(obs, gym.spaces.Discrete(4), lambda _: 3e-4, core=core, lstm_hidden_size=32,
                               features_extractor_class=CellEncoder,
                               features_extractor_kwargs=dict(cells=cells, cell_dim=cell_dim), **extra, **kw)


def test_cell_encoder_embeds_each_cell_with_its_position():
    """CellEncoder: cell i -> ReLU(W x_i + p_i), one W for all cells, p_i learned per position."""
    torch.manual_seed(0)
    policy = _cell_policy("lstm")
    enc = policy.features_extractor
    obs = torch.rand(3, 49 * 20)
    with torch.no_grad():
        enc.position.normal_()
        got = enc(obs).reshape(3, 49, 8)
        cells = obs.reshape(3, 49, 20)
        for i in (0, 17, 48):
            want = torch.relu(cells[:, i] @ enc.embed.weight.T + enc.embed.bias + enc.position[i])
            torch.testing.assert_close(got[:, i], want)
    assert enc.rows == 49 and policy.features_dim == 49 * 8


def test_rim_core_reads_the_cells_as_a_set_of_input_rows():
    """With a CellEncoder the RIM core gets (T, B, 49, cell_dim) rows (thesis eq. 8.1: attention over
    [null; rows]), so its output does not depend on the order of the cells; an LSTM reads them concatenated."""
    torch.manual_seed(0)
    policy = _cell_policy("rim")
    core = policy.lstm_actor
    assert isinstance(core, zoo.RIM) and core.input_size == 8 and policy.input_rows == 49
    gen = torch.Generator().manual_seed(1)
    n_seq, steps = 3, 5
    features = torch.randn(n_seq * steps, 49 * 8, generator=gen)
    starts = torch.zeros(n_seq * steps)
    states = _random_state("rim", 1, n_seq, 32, gen)
    out, _ = policy._process_sequence(features, states, starts, core)
    rows = features.reshape(n_seq, steps, 49, 8).transpose(0, 1)                   # (T, n_seq, 49, 8)
    ref, _ = core(rows, states)
    torch.testing.assert_close(out, ref.transpose(0, 1).flatten(0, 1))
    perm = torch.randperm(49, generator=gen)
    shuffled = features.reshape(-1, 49, 8)[:, perm].reshape(-1, 49 * 8)
    out_perm, _ = policy._process_sequence(shuffled, states, starts, core)
    torch.testing.assert_close(out_perm, out, rtol=1e-5, atol=1e-5)
    lstm = _cell_policy("lstm")
    assert lstm.input_rows == 1 and lstm.lstm_actor.input_size == 49 * 8
    # input_rows overrides the extractor's rows (7 rows of 7 cells each)
    assert _cell_policy("rim", input_rows=7).lstm_actor.input_size == 7 * 8
    for bad, what in ((0, "positive int"), (3, "does not divide"), (True, "positive int")):
        with pytest.raises(ValueError, match=what):
            _cell_policy("rim", input_rows=bad)
    with pytest.raises(ValueError, match="RIM option"):
        _cell_policy("lstm", input_rows=7)


def test_cnn_policy_on_images():
    """RIMActorCriticCnnPolicy: Nature CNN features -> RIM core (CnnLstmPolicy's equivalent)."""
    space = gym.spaces.Box(0, 255, (1, 36, 36), dtype=np.uint8)
    policy = RIMActorCriticCnnPolicy(space, gym.spaces.Discrete(3), lambda _: 3e-4, lstm_hidden_size=64, **RIM_KW)
    obs = np.stack([space.sample() for _ in range(4)])
    actions, (h, c) = policy.predict(obs, episode_start=np.ones(4, bool))
    assert actions.shape == (4,) and h.shape == (1, 4, 64) and c.shape == (1, 4, 64)
    assert isinstance(policy.lstm_actor, zoo.RIM) and policy.features_extractor.__class__.__name__ == "NatureCNN"


@pytest.mark.parametrize("core", CORES)
def test_rollout_buffer_states_and_save_load_round_trip(core, tmp_path):
    """A short RecurrentPPO run fills the buffer with (L, n_envs, H) states; save/load reproduces actions and states."""
    kw = dict(core=core, lstm_hidden_size=32, **(RIM_KW if core == "rim" else {}))
    model = RecurrentPPO(RecurrentCorePolicy, make_vec_env("zoo/CartPoleNoVel-v0", n_envs=2, seed=0), n_steps=16,
                         batch_size=32, n_epochs=1, policy_kwargs=kw, seed=0)
    model.learn(32)
    assert model.rollout_buffer.hidden_state_shape == (16, 1, 2, 32)          # (n_steps, L, n_envs, H)
    assert model.rollout_buffer.hidden_states_pi.shape == (32, 1, 32)          # flattened by get()
    pi_h, pi_c = model._last_lstm_states.pi
    assert pi_h.shape == (1, 2, 32)
    if core == "gru":
        assert torch.equal(pi_h, pi_c)
    model.save(tmp_path / "agent.zip")
    loaded = RecurrentPPO.load(tmp_path / "agent.zip")
    assert type(loaded.policy) is RecurrentCorePolicy and loaded.policy.core_name == core
    for (name, p), (_, q) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert torch.equal(p, q), name
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6, 3, 2)).astype(np.float32)
    starts = np.array([[1, 1, 1], [0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    states = [None, None]
    for t in range(6):
        acts = []
        for i, m in enumerate((model, loaded)):
            a, states[i] = m.predict(obs[t], state=states[i], episode_start=starts[t], deterministic=True)
            acts.append(a)
        np.testing.assert_array_equal(acts[0], acts[1])
        np.testing.assert_array_equal(states[0][0], states[1][0])
        np.testing.assert_array_equal(states[0][1], states[1][1])


def test_mask_observation():
    env = gym.make("zoo/CartPoleNoVel-v0")
    obs, _ = env.reset(seed=0)
    full = gym.make("CartPole-v1")
    full_obs, _ = full.reset(seed=0)
    np.testing.assert_array_equal(obs, full_obs[[0, 2]])
    assert env.observation_space.shape == (2,) and env.spec.max_episode_steps == 500
    with pytest.raises(ValueError, match="keep"):
        MaskObservation(full, keep=(0, 7))
    pend = gym.make("zoo/PendulumNoVel-v0")
    obs, _ = pend.reset(seed=0)
    full_obs, _ = gym.make("Pendulum-v1").reset(seed=0)
    np.testing.assert_array_equal(obs, full_obs[:2])
    assert pend.spec.max_episode_steps == 200


@pytest.mark.slow
def test_rim_policy_learns_cartpole_without_velocities():
    """A short RecurrentPPO run with the RIM policy clearly improves the greedy return of the untrained policy.

    Settings of ``benchmarks/rl_pomdp_learning.py`` (where the long RIM / LSTM / GRU comparison lives), 30k steps
    (at 20k one CPU kind, with AVX-512, reached 41.65 from 21.1: just short of twice; float paths differ by CPU kind).
    """
    torch.set_num_threads(1)
    kw = dict(core="rim", lstm_hidden_size=64, num_units=4, k_active=3, ortho_init=False, activation_fn=nn.ReLU,
              net_arch=dict(pi=[64], vf=[64]))
    model = RecurrentPPO(RecurrentCorePolicy, make_vec_env("zoo/CartPoleNoVel-v0", n_envs=16, seed=0), n_steps=32,
                         batch_size=512, n_epochs=8, learning_rate=3e-3, gamma=0.98, gae_lambda=0.8, ent_coef=0.0,
                         policy_kwargs=kw, seed=0)
    eval_env = make_vec_env("zoo/CartPoleNoVel-v0", n_envs=1, seed=123)
    before, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    model.learn(30_720)
    after, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    assert after >= 2 * before and after >= before + 15, (before, after)


@pytest.mark.parametrize("core", ["rim", "lstm", "gru"])
def test_dict_observations_and_multibinary_actions(core):
    """Dict observations go through CombinedExtractor (MultiInputLstmPolicy's equivalent) and MultiBinary
    actions train (sb3-contrib's own policies crash on them: int8 actions in the Bernoulli log-prob)."""
    from stable_baselines3.common.envs import IdentityEnvMultiBinary, SimpleMultiObsEnv
    from stable_baselines3.common.torch_layers import CombinedExtractor

    from rl import RIMMultiInputActorCriticPolicy

    kw = dict(n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    pk = dict(core=core, lstm_hidden_size=24) if core != "rim" else dict(core=core, lstm_hidden_size=24, num_units=4, k_active=2)
    model = RecurrentPPO(RecurrentCorePolicy, SimpleMultiObsEnv(random_start=True), policy_kwargs=pk, **kw)
    assert isinstance(model.policy.features_extractor, CombinedExtractor)
    model.learn(32)
    obs = model.env.reset()
    action, state = model.predict(obs, episode_start=np.ones(1, bool))
    assert state[0].shape == (1, 1, 24)
    model = RecurrentPPO(RecurrentCorePolicy, IdentityEnvMultiBinary(dim=3, ep_length=8), policy_kwargs=pk, **kw)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(32)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    action, _ = model.predict(model.env.reset(), episode_start=np.ones(1, bool))
    assert action.shape == (1, 3) and set(np.unique(action)) <= {0, 1}
    if core == "rim":
        with pytest.raises(ValueError, match="RIMMultiInputActorCriticPolicy"):
            RecurrentPPO(RIMActorCriticPolicy, SimpleMultiObsEnv(), device="cpu")
        model = RecurrentPPO(RIMMultiInputActorCriticPolicy, SimpleMultiObsEnv(), policy_kwargs=dict(
            lstm_hidden_size=24, num_units=4, k_active=2), **kw)
        assert model.policy.core_name == "rim"
