"""The exported graphs: small ``nn.Module`` wrappers around a trained world model (torch side only).

Every graph takes raw (un-normalized, zero-padded) observations and returns raw predictions; all
tensors are float32 with the batch as the dynamic first axis (the key/value cache: second axis); every
random number is an input. The per-step contract (index convention of DESIGN.md)::

    context_full (obs[B,m,D], action[B,m,A], reward[B,m])         -> context[B,C], keys, values
    context_step (obs[B,D], action[B,A], reward[B], keys, values)  -> context, keys, values
    observe      (u, d, h, context, prev_action, obs, noise_u, noise_h)   -> u, d, h      (posterior)
    imagine      (u, d, h, context, prev_action, noise_u, noise_h)        -> u, d, h, obs (prior + decoder)
    reward       (u, d, h, action)                                        -> reward
    step         (u, d, h, obs, action, keys, values, noise_u, noise_h)
                 -> u, d, h, obs_next, reward, keys, values
    rollout      (u, d, h, obs, keys, values, actions[B,H,A], noise_u[B,H,U], noise_h[B,H,Hd])
                 -> obs[B,H,D], reward[B,H], u, d, h, keys, values               (H fused steps)
    policy_rollout (… without actions, with noise_action[B,H,A_pi]) -> + actions[B,H,A]

``step`` is ``reward`` (for the action taken in the current state) → the token
``(o_t, a_t, r̂_t)`` enters the context FIFO → ``imagine`` with ``a_t``. keys/values are
``(layers, B, heads, m, head_dim)``; a model trained without context (``no_context``) carries a
(1, B, 1, 1, 1) placeholder that the graphs pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mrcom_core.layers import KVCache
from mrcom_core.world_model import BaseWorldModel as WorldModel
from mrcom_core.world_model import LatentState


@dataclass(frozen=True)
class GraphSpec:
    """Names of a graph's inputs and outputs and which axis of each is the batch."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch_axis: dict[str, int]


def kv_shape(model: WorldModel, batch: int) -> tuple[int, ...]:
    c = model.config
    if model.encoder is None:
        return (1, batch, 1, 1, 1)
    return (c.ctx_layers, batch, c.ctx_heads, c.context_len, c.ctx_width // c.ctx_heads)


class _Graph(nn.Module):
    spec: GraphSpec

    def __init__(self, model: WorldModel):
        super().__init__()
        self.m = model

    def _cache(self, keys, values) -> KVCache:
        return KVCache(keys, values)

    def _context_step(self, obs, action, reward, keys, values):
        token = self.m.tokens(self.m.normalize(obs), action, reward)
        if self.m.encoder is None:
            return obs.new_zeros(obs.shape[0], 0), keys, values
        context, cache = self.m.encoder.step(token, KVCache(keys, values))
        return context, cache.keys, cache.values

    def _step(self, state: LatentState, obs, action, keys, values, noise_u, noise_h):
        reward = self.m.reward(state, action)
        context, keys, values = self._context_step(obs, action, reward, keys, values)
        nxt = self.m.imagine_step(state, context, action, noise_u, noise_h)
        return nxt, self.m.denormalize(self.m.decode(nxt)), reward, keys, values


_STATE = ("u", "d", "h")
_NEXT = ("u_next", "d_next", "h_next")


def _spec(inputs, outputs, kv=("keys", "values", "keys_next", "values_next")) -> GraphSpec:
    return GraphSpec(tuple(inputs), tuple(outputs), {n: (1 if n in kv else 0) for n in (*inputs, *outputs)})


class ContextFull(_Graph):
    spec = _spec(("obs", "action", "reward"), ("context", "keys", "values"))

    def forward(self, obs, action, reward):
        tokens = self.m.tokens(self.m.normalize(obs), action, reward)
        if self.m.encoder is None:
            B = obs.shape[0]
            return obs.new_zeros(B, 0), obs.new_zeros(1, B, 1, 1, 1), obs.new_zeros(1, B, 1, 1, 1)
        readout, cache = self.m.encoder(tokens)
        return readout[:, -1], cache.keys, cache.values


class ContextStep(_Graph):
    spec = _spec(("obs", "action", "reward", "keys", "values"), ("context", "keys_next", "values_next"))

    def forward(self, obs, action, reward, keys, values):
        return self._context_step(obs, action, reward, keys, values)


class Observe(_Graph):
    spec = _spec((*_STATE, "context", "prev_action", "obs", "noise_u", "noise_h"), _NEXT)

    def forward(self, u, d, h, context, prev_action, obs, noise_u, noise_h):
        s = self.m.observe_step(LatentState(u, d, h), context, prev_action, self.m.normalize(obs), noise_u, noise_h)
        return s.u, s.d, s.h


class Imagine(_Graph):
    spec = _spec((*_STATE, "context", "prev_action", "noise_u", "noise_h"), (*_NEXT, "obs_next"))

    def forward(self, u, d, h, context, prev_action, noise_u, noise_h):
        s = self.m.imagine_step(LatentState(u, d, h), context, prev_action, noise_u, noise_h)
        return s.u, s.d, s.h, self.m.denormalize(self.m.decode(s))


class Reward(_Graph):
    spec = _spec((*_STATE, "action"), ("reward",))

    def forward(self, u, d, h, action):
        return self.m.reward(LatentState(u, d, h), action)


class Step(_Graph):
    spec = _spec((*_STATE, "obs", "action", "keys", "values", "noise_u", "noise_h"),
                 (*_NEXT, "obs_next", "reward", "keys_next", "values_next"))

    def forward(self, u, d, h, obs, action, keys, values, noise_u, noise_h):
        s, obs_next, reward, keys, values = self._step(LatentState(u, d, h), obs, action, keys, values, noise_u,
                                                       noise_h)
        return s.u, s.d, s.h, obs_next, reward, keys, values


class Rollout(_Graph):
    """``horizon`` steps of :class:`Step` unrolled into one graph, actions given."""

    spec = _spec((*_STATE, "obs", "keys", "values", "actions", "noise_u", "noise_h"),
                 ("obs_seq", "reward_seq", *_NEXT, "keys_next", "values_next"))

    def __init__(self, model: WorldModel, horizon: int):
        super().__init__(model)
        self.horizon = horizon

    def forward(self, u, d, h, obs, keys, values, actions, noise_u, noise_h):
        state, observations, rewards = LatentState(u, d, h), [], []
        for t in range(self.horizon):
            state, obs, reward, keys, values = self._step(state, obs, actions[:, t], keys, values, noise_u[:, t],
                                                          noise_h[:, t])
            observations.append(obs)
            rewards.append(reward)
        return (torch.stack(observations, 1), torch.stack(rewards, 1), state.u, state.d, state.h, keys, values)


class PolicyActor(nn.Module):
    """A SAC actor as a deterministic function of its noise: ``a = tanh(mean + exp(log_std)·ε)``, reading
    the first ``obs_dim`` observation dims and zero-padded to the model's action dim."""

    def __init__(self, actor: nn.Module, obs_dim: int, act_dim: int, model_act_dim: int):
        super().__init__()
        self.actor, self.obs_dim, self.act_dim, self.pad = actor, obs_dim, act_dim, model_act_dim - act_dim

    def forward(self, obs, noise):
        mean, log_std = self.actor(obs[:, : self.obs_dim])
        action = torch.tanh(mean + log_std.exp() * noise)
        return torch.nn.functional.pad(action, (0, self.pad)) if self.pad else action


class Policy(nn.Module):
    spec = _spec(("obs", "noise_action"), ("action",))

    def __init__(self, policy: PolicyActor):
        super().__init__()
        self.policy = policy

    def forward(self, obs, noise_action):
        return self.policy(obs, noise_action)


class PolicyRollout(_Graph):
    """``horizon`` fused steps with the policy choosing each action from the current observation."""

    spec = _spec((*_STATE, "obs", "keys", "values", "noise_action", "noise_u", "noise_h"),
                 ("obs_seq", "reward_seq", "action_seq", *_NEXT, "keys_next", "values_next"))

    def __init__(self, model: WorldModel, policy: PolicyActor, horizon: int):
        super().__init__(model)
        self.policy, self.horizon = policy, horizon

    def forward(self, u, d, h, obs, keys, values, noise_action, noise_u, noise_h):
        state, observations, rewards, actions = LatentState(u, d, h), [], [], []
        for t in range(self.horizon):
            action = self.policy(obs, noise_action[:, t])
            state, obs, reward, keys, values = self._step(state, obs, action, keys, values, noise_u[:, t],
                                                          noise_h[:, t])
            observations.append(obs)
            rewards.append(reward)
            actions.append(action)
        return (torch.stack(observations, 1), torch.stack(rewards, 1), torch.stack(actions, 1), state.u, state.d,
                state.h, keys, values)


def example_inputs(name: str, model: WorldModel, batch: int, horizon: int = 1, policy_act_dim: int = 0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of graph ``name`` at ``batch`` (for tracing and parity checks)."""
    c = model.config
    shapes = {
        "u": (batch, c.stoch_dim), "d": (batch, c.deter_dim), "h": (batch, c.aux_dim),
        "context": (batch, c.context_dim),
        "prev_action": (batch, c.act_dim), "action": (batch, c.act_dim), "noise_u": (batch, c.stoch_dim),
        "noise_h": (batch, c.aux_dim), "keys": kv_shape(model, batch), "values": kv_shape(model, batch),
        "reward": (batch,), "actions": (batch, horizon, c.act_dim), "noise_action": (batch, horizon, policy_act_dim),
    }
    if name == "context_full":
        shapes.update(obs=(batch, c.context_len, c.obs_dim), action=(batch, c.context_len, c.act_dim),
                      reward=(batch, c.context_len))
    else:
        shapes["obs"] = (batch, c.obs_dim)
    if name in ("rollout", "policy_rollout"):
        shapes.update(noise_u=(batch, horizon, c.stoch_dim), noise_h=(batch, horizon, c.aux_dim))
    if name == "policy":
        shapes["noise_action"] = (batch, policy_act_dim)
    spec = GRAPHS[name].spec
    out = []
    for n in spec.inputs:
        x = torch.randn(shapes[n], generator=generator)
        if n in ("action", "prev_action", "actions"):
            x = torch.tanh(x)
        out.append(x)
    return tuple(out)


GRAPHS: dict[str, type[nn.Module]] = {
    "context_full": ContextFull, "context_step": ContextStep, "observe": Observe, "imagine": Imagine,
    "reward": Reward, "step": Step, "rollout": Rollout, "policy": Policy, "policy_rollout": PolicyRollout,
}
