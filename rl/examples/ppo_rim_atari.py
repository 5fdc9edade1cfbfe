"""PPO with a recurrent policy on Atari in one file, with RIMs (``zoo.RIM``) in place of ``nn.LSTM``.

The usual single-file PPO-LSTM Atari agent (Nature CNN -> LSTM -> policy and value heads, PPO with GAE,
minibatches of whole env sequences), written for reading. The only change for RIMs is the core:

    -   self.core = nn.LSTM(512, hidden_size)
    +   self.core = zoo.RIM(512, hidden_size, num_units=6, k_active=4)

``zoo.RIM`` takes ``nn.LSTM``'s arguments and returns what it returns (``output, (h, c)``, the state
``(num_layers, B, hidden)``), so the rest of the agent is untouched: the loop in :meth:`Agent.get_states`
that zeroes the state of envs whose episode just started, one step at a time, works as written. RIMs also
take the episode-start mask directly, ``self.core(x, state, episode_starts=done)``: the same numbers in
one call (``--one-call``, the default for RIM).

    python -m rl.examples.ppo_rim_atari --env-id ALE/Pong-v5 --core rim --total-timesteps 10000000
    python -m rl.examples.ppo_rim_atari --core lstm           # the nn.LSTM baseline, same everything else

Preprocessing: gymnasium's ``AtariPreprocessing`` (30 no-ops, action repeat 4 with max-pooling, 84x84
grayscale), rewards clipped to [-1, 1], one frame per observation (the recurrent core is the memory); no
episodic-life or FIRE-reset wrappers, to stay short (``rl.train`` has the full set). The scores
printed are real game scores (``RecordEpisodeStatistics`` under the preprocessing).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, TypeVar, Union, cast

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

import zoo
from zoo.engine import arg, parse_config, seed_everything

State = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class Args:
    """Hand-written PPO with an LSTM or RIM core on an Atari game (rl/examples/ppo_rim_atari.py)."""

    env_id: str = arg("ALE/Pong-v5", help="gymnasium Atari id")
    core: str = arg("rim", choices=["rim", "lstm"], help="recurrent core: zoo.RIM or nn.LSTM")
    one_call: bool = arg(True, help="RIM: pass episode starts to the core (one call) instead of stepping")
    total_timesteps: int = arg(10_000_000, help="total env steps")
    num_envs: int = arg(8, help="parallel envs")
    num_steps: int = arg(128, help="rollout length per env")
    learning_rate: float = arg(2.5e-4, help="Adam learning rate (annealed linearly to 0)")
    anneal_lr: bool = arg(True, help="anneal the learning rate")
    gamma: float = arg(0.99, help="discount")
    gae_lambda: float = arg(0.95, help="GAE lambda")
    num_minibatches: int = arg(4, help="minibatches per epoch (each holds num_envs / num_minibatches envs)")
    update_epochs: int = arg(4, help="PPO epochs per rollout")
    clip_coef: float = arg(0.1, help="PPO ratio clip")
    ent_coef: float = arg(0.01, help="entropy bonus")
    vf_coef: float = arg(0.5, help="value loss weight")
    max_grad_norm: float = arg(0.5, help="gradient-norm clip")
    hidden_size: int = arg(192, help="core state size (RIM: num_units x unit size)")
    num_units: int = arg(6, help="RIM units")
    k_active: int = arg(4, help="active RIM units per step")
    max_episode_frames: int = arg(0, help="cap on raw frames per episode (0: the game's default)")
    seed: int = arg(1, help="seed")
    threads: int = arg(1, help="torch CPU threads")
    progress: bool = arg(True, help="progress bar")


def make_env(env_id: str, seed: int, max_frames: int = 0):
    def thunk() -> gym.Env:
        import ale_py

        gym.register_envs(ale_py)
        kw: Dict[str, Any] = dict(max_num_frames_per_episode=max_frames) if max_frames else {}
        env = gym.make(env_id, frameskip=1, **kw)            # the preprocessing repeats actions itself
        env = gym.wrappers.RecordEpisodeStatistics(env)      # real scores, before clipping
        env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                              terminal_on_life_loss=False, grayscale_obs=True)
        env = gym.wrappers.ClipReward(env, -1.0, 1.0)
        env.action_space.seed(seed)
        return env
    return thunk


Layer = TypeVar("Layer", nn.Linear, nn.Conv2d)


def layer_init(layer: Layer, std: float = np.sqrt(2), bias: float = 0.0) -> Layer:
    nn.init.orthogonal_(layer.weight, std)
    assert layer.bias is not None                            # every layer here is built with a bias
    nn.init.constant_(layer.bias, bias)
    return layer


class Agent(nn.Module):
    """Nature CNN (84x84 frames -> 512) -> recurrent core -> policy logits and value."""

    def __init__(self, n_actions: int, core: str = "rim", hidden_size: int = 192, num_units: int = 6,
                 k_active: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            layer_init(nn.Conv2d(1, 32, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
            nn.Flatten(), layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU())
        self.core: Union[nn.LSTM, zoo.RIM]
        if core == "lstm":
            self.core = nn.LSTM(512, hidden_size)
        elif core == "rim":                                  # the swap: same arguments, same outputs
            self.core = zoo.RIM(512, hidden_size, num_units=num_units, k_active=k_active)
        else:
            raise ValueError(f"core={core!r} is not supported; allowed values: 'rim', 'lstm'")
        self.actor = layer_init(nn.Linear(hidden_size, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(hidden_size, 1), std=1.0)

    def initial_state(self, batch: int) -> State:
        z = torch.zeros(1, batch, self.core.hidden_size)
        return z, z.clone()

    def get_states(self, frames: torch.Tensor, state: State, done: torch.Tensor,
                   one_call: bool = False) -> Tuple[torch.Tensor, State]:
        """``frames (T * B, 84, 84)`` uint8, ``done (T * B,)`` (1 where a new episode starts at that step)
        -> core outputs ``(T * B, hidden)`` and the last state."""
        batch = state[0].shape[1]
        x = self.encoder(frames.unsqueeze(1).float() / 255.0)
        x = x.reshape(-1, batch, x.shape[-1])                        # (T, B, 512)
        done = done.reshape(-1, batch)
        if one_call:                                                 # zoo.RIM resets inside the sequence
            out, state = self.core(x, state, episode_starts=done)
            return out.reshape(-1, out.shape[-1]), state
        outs = []
        for x_t, d_t in zip(x, done):                                # nn.LSTM's way: one step at a time
            keep = (1.0 - d_t).view(1, -1, 1)
            out, state = self.core(x_t.unsqueeze(0), (keep * state[0], keep * state[1]))
            outs.append(out)
        return torch.cat(outs).reshape(-1, outs[0].shape[-1]), state

    def get_value(self, frames, state, done, one_call=False) -> torch.Tensor:
        return self.critic(self.get_states(frames, state, done, one_call)[0])

    def get_action_and_value(self, frames, state, done, action=None, one_call=False):
        hidden, state = self.get_states(frames, state, done, one_call)
        dist = Categorical(logits=self.actor(hidden))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(hidden), state


def _finished_scores(infos: dict) -> List[float]:
    """Real scores of the episodes that ended this step (gymnasium >= 1.0, same-step autoreset)."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    return [float(r) for r in final["episode"]["r"][final["_episode"]]]


def train(args: Args) -> Dict[str, object]:
    """Run PPO; returns per-iteration losses, the finished episodes' scores and the throughput."""
    if args.num_envs % args.num_minibatches:
        raise ValueError(f"num_envs={args.num_envs} must be divisible by num_minibatches={args.num_minibatches}")
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    envs = gym.vector.SyncVectorEnv([make_env(args.env_id, args.seed + i, args.max_episode_frames)
                                     for i in range(args.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    n_actions = int(cast(gym.spaces.Discrete, envs.single_action_space).n)      # Atari: Discrete actions
    agent = Agent(n_actions, args.core, args.hidden_size, args.num_units, args.k_active)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    one_call = args.one_call and args.core == "rim"
    T, N = args.num_steps, args.num_envs
    obs = torch.zeros((T, N, 84, 84), dtype=torch.uint8)
    actions, logprobs, rewards, dones, values = (torch.zeros(T, N) for _ in range(5))

    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0])
    next_done = torch.ones(N)                                        # every env starts an episode
    state = agent.initial_state(N)
    iterations = max(args.total_timesteps // (T * N), 1)
    history: Dict[str, list] = {"pg_loss": [], "v_loss": [], "entropy": [], "approx_kl": [], "scores": []}
    t0, step = time.time(), 0
    bar = None
    if args.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations * T * N, unit="step", desc=f"ppo-{args.core}")
    for it in range(iterations):
        start_state = (state[0].clone(), state[1].clone())           # the minibatches replay from here
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = (1.0 - it / iterations) * args.learning_rate
        for t in range(T):                                            # --- rollout
            obs[t], dones[t] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value, state = agent.get_action_and_value(next_obs, state, next_done,
                                                                              one_call=one_call)
            actions[t], logprobs[t], values[t] = action, logprob, value.flatten()
            next_obs, reward, term, trunc, infos = envs.step(action.numpy())
            rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.as_tensor(next_obs)
            next_done = torch.as_tensor(np.logical_or(term, trunc), dtype=torch.float32)
            history["scores"] += _finished_scores(infos)
            step += N
        with torch.no_grad():                                         # --- GAE(lambda) advantages
            next_value = agent.get_value(next_obs, state, next_done, one_call).flatten()
            adv = torch.zeros(T, N)
            last = torch.zeros(N)
            for t in reversed(range(T)):
                not_done = 1.0 - (next_done if t == T - 1 else dones[t + 1])
                v_next = next_value if t == T - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * v_next * not_done - values[t]
                adv[t] = last = delta + args.gamma * args.gae_lambda * not_done * last
            returns = adv + values
        # --- PPO epochs: minibatches of whole env sequences, replayed from the rollout's start state
        per_mb = N // args.num_minibatches
        for _ in range(args.update_epochs):
            perm = torch.randperm(N)
            for mb in perm.split(per_mb):
                _, new_logprob, entropy, new_value, _ = agent.get_action_and_value(
                    obs[:, mb].flatten(0, 1), (start_state[0][:, mb], start_state[1][:, mb]),
                    dones[:, mb].flatten(), actions[:, mb].flatten().long(), one_call=one_call)
                log_ratio = new_logprob - logprobs[:, mb].flatten()
                ratio = log_ratio.exp()
                mb_adv = adv[:, mb].flatten()
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio,
                                    -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v_old, v_new, v_ret = values[:, mb].flatten(), new_value.flatten(), returns[:, mb].flatten()
                v_clipped = v_old + (v_new - v_old).clamp(-args.clip_coef, args.clip_coef)
                v_loss = 0.5 * torch.max((v_new - v_ret) ** 2, (v_clipped - v_ret) ** 2).mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
        for k, v in (("pg_loss", pg_loss), ("v_loss", v_loss), ("entropy", entropy.mean()), ("approx_kl", approx_kl)):
            history[k].append(float(v.detach()))
        if bar is not None:
            recent = history["scores"][-20:]
            bar.update(T * N)
            bar.set_postfix(score=f"{np.mean(recent):.1f}" if recent else "-", kl=f"{float(approx_kl):.4f}")
    if bar is not None:
        bar.close()
    envs.close()
    sps = step / (time.time() - t0)
    print(f"{args.env_id} ppo-{args.core}: {step} steps, {sps:.0f} steps/s, "
          f"{len(history['scores'])} games (mean score {np.mean(history['scores'] or [np.nan]):.1f})")
    return {"agent": agent, "steps": step, "iterations": iterations, "steps_per_second": sps, **history}


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    return train(parse_config(Args, argv, prog="python -m rl.examples.ppo_rim_atari"))


if __name__ == "__main__":
    main()
