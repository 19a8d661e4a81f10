"""The exported graphs: thin ``nn.Module`` wrappers around :mod:`mrcom_core.steps` (torch side only).

Every graph takes raw (un-normalized, zero-padded) observations and returns raw predictions; all
tensors are float32 with the batch as the dynamic first axis (the key/value cache: second axis); every
random number is an input. The contract (index convention of docs/design.md)::

    context_full (obs[B,m,D], action[B,m,A], reward[B,m])         -> context[B,C], keys, values
    context_step (obs[B,D], action[B,A], reward[B], keys, values)  -> context, keys, values
    imagine      (u, d, h, context, prev_action, noise_u, noise_h)        -> u, d, h, obs (prior + decoder)
    reward       (u, d, h, action)                                        -> reward
    ensemble     (u, d, h, action) -> ensemble_obs[B,K,D], ensemble_reward[B,K], disagreement[B]  (K members)
    prime        (obs[B,m+1,D], action[B,m,A], reward[B,m], noise_u, noise_h) -> u, d, h, keys, values
    observe      (u, d, h, keys, values, prev_obs, prev_action, prev_reward, obs, noise_u, noise_h)
                 -> u, d, h, keys, values
    step         (u, d, h, obs, action, keys, values, noise_u, noise_h)
                 -> u, d, h, obs_next, reward, keys, values
    rollout      (u, d, h, obs, keys, values, actions[B,H,A], noise_u[B,H,U], noise_h[B,H,Hd])
                 -> obs[B,H,D], reward[B,H], u, d, h, keys, values    (any H: a Loop over ``step``)
    policy_rollout (… without actions, with noise_action[B,H,A_pi]) -> + actions[B,H,A]

``context_full``, ``context_step``, ``imagine`` and ``reward`` are the building blocks (the context encoder
and the latent transition) for users who compose their own loops; ``prime`` → ``observe``* → ``step``* /
``rollout`` is what the runtime and the C++ examples run (with ``ensemble``, the members' predictions and
their disagreement, for a model that has ensemble heads): :func:`~mrcom_core.steps.prime`,
:func:`~mrcom_core.steps.observe`, :func:`~mrcom_core.steps.imagine` and :func:`~mrcom_core.steps.rollout`.
keys/values are ``(layers, B, heads, m, head_dim)``; a model without a context encoder carries a
(1, B, 1, 1, 1) placeholder that the graphs pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mrcom_core import ensemble, steps
from mrcom_core.base import BaseWorldModel, LatentState
from mrcom_core.layers import KVCache, RolloutCache


@dataclass(frozen=True)
class GraphSpec:
    """Names of a graph's inputs and outputs and which axis of each is the batch."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch_axis: dict[str, int]


_STATE = ("u", "d", "h")
_NEXT = ("u_next", "d_next", "h_next")
_KV = ("keys", "values", "keys_next", "values_next")  # (layers, B, …); a layer's recent_keys_L … are (B, …)


def _spec(inputs, outputs) -> GraphSpec:
    return GraphSpec(tuple(inputs), tuple(outputs), {n: (1 if n in _KV else 0) for n in (*inputs, *outputs)})


class _Graph(nn.Module):
    spec: GraphSpec

    def __init__(self, model: BaseWorldModel):
        super().__init__()
        self.m = model


class ContextFull(_Graph):
    spec = _spec(("obs", "action", "reward"), ("context", "keys", "values"))

    def forward(self, obs, action, reward):
        readout, cache = self.m.encode_context(self.m.tokens(self.m.normalize(obs), action, reward))
        return readout[:, -1], cache.keys, cache.values


class ContextStep(_Graph):
    spec = _spec(("obs", "action", "reward", "keys", "values"), ("context", "keys_next", "values_next"))

    def forward(self, obs, action, reward, keys, values):
        context, cache = self.m.context_step(self.m.tokens(self.m.normalize(obs), action, reward),
                                             KVCache(keys, values))
        return context, cache.keys, cache.values


class Imagine(_Graph):
    spec = _spec((*_STATE, "context", "prev_action", "noise_u", "noise_h"), (*_NEXT, "obs_next"))

    def forward(self, u, d, h, context, prev_action, noise_u, noise_h):
        s = self.m.imagine_step(LatentState(u, d, h), context, prev_action, noise_u, noise_h)
        return s.u, s.d, s.h, self.m.denormalize(self.m.decode(s))


class Reward(_Graph):
    spec = _spec((*_STATE, "action"), ("reward",))

    def forward(self, u, d, h, action):
        return self.m.reward(LatentState(u, d, h), action)


class Prime(_Graph):
    """m prompt steps into the context, then the first posterior step at the prompt's last observation."""

    spec = _spec(("obs", "action", "reward", "noise_u", "noise_h"), (*_NEXT, "keys_next", "values_next"))

    def forward(self, obs, action, reward, noise_u, noise_h):
        obs_n = self.m.normalize(obs)
        s, cache = steps.prime(self.m, obs_n[:, :-1], action, reward, obs_n[:, -1], noise_u, noise_h)
        return s.u, s.d, s.h, cache.keys, cache.values


class Observe(_Graph):
    """One more real step after ``prime``: the previous step's token enters the context, then the posterior."""

    spec = _spec((*_STATE, "keys", "values", "prev_obs", "prev_action", "prev_reward", "obs", "noise_u", "noise_h"),
                 (*_NEXT, "keys_next", "values_next"))

    def forward(self, u, d, h, keys, values, prev_obs, prev_action, prev_reward, obs, noise_u, noise_h):
        s, cache = steps.observe(self.m, LatentState(u, d, h), KVCache(keys, values), self.m.normalize(prev_obs),
                                 prev_action, prev_reward, self.m.normalize(obs), noise_u, noise_h)
        return s.u, s.d, s.h, cache.keys, cache.values


class Step(_Graph):
    spec = _spec((*_STATE, "obs", "action", "keys", "values", "noise_u", "noise_h"),
                 (*_NEXT, "obs_next", "reward", "keys_next", "values_next"))

    def forward(self, u, d, h, obs, action, keys, values, noise_u, noise_h):
        out = steps.imagine(self.m, LatentState(u, d, h), KVCache(keys, values), self.m.normalize(obs), action,
                            noise_u, noise_h)
        s, cache = out.state, out.cache
        return s.u, s.d, s.h, self.m.denormalize(out.obs), out.reward, cache.keys, cache.values


class Rollout(_Graph):
    """Imagined steps with the actions given; the horizon is ``actions.shape[1]`` (the eager reference of the
    exported ``rollout`` graph, which runs :class:`RolloutBody` in an ONNX ``Loop`` or a TorchScript loop)."""

    spec = _spec((*_STATE, "obs", "keys", "values", "actions", "noise_u", "noise_h"),
                 ("obs_seq", "reward_seq", *_NEXT, "keys_next", "values_next"))

    def forward(self, u, d, h, obs, keys, values, actions, noise_u, noise_h):
        out = steps.rollout(self.m, LatentState(u, d, h), KVCache(keys, values), self.m.normalize(obs),
                            actions.shape[1], actions, noise_u, noise_h)
        s, cache = out.state, out.cache
        return self.m.denormalize(out.obs), out.reward, s.u, s.d, s.h, cache.keys, cache.values


class Ensemble(_Graph):
    """Every ensemble member's prediction of the transition ``(s_t, a_t)`` (the next observation and the reward,
    in the data's units) and the elites' disagreement (:func:`~mrcom_core.ensemble.disagreement`): what says
    where the model does not know. Exported for a model with ``ensemble`` > 0, beside ``step``, which it reads
    the same state and action as."""

    spec = _spec((*_STATE, "action"), ("ensemble_obs", "ensemble_reward", "disagreement"))

    def forward(self, u, d, h, action):
        obs, reward = ensemble.predictions(self.m, LatentState(u, d, h), action)
        return (self.m.denormalize(obs), reward * self.m.reward_std + self.m.reward_mean,
                ensemble.disagreement(obs, reward, self.m.elites))


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
    """Imagined steps with the policy choosing each action from the current (raw) prediction; the horizon is
    ``noise_action.shape[1]`` (eager reference of the exported ``policy_rollout``, see :class:`Rollout`)."""

    spec = _spec((*_STATE, "obs", "keys", "values", "noise_action", "noise_u", "noise_h"),
                 ("obs_seq", "reward_seq", "action_seq", *_NEXT, "keys_next", "values_next"))

    def __init__(self, model: BaseWorldModel, policy: PolicyActor):
        super().__init__(model)
        self.policy = policy

    def forward(self, u, d, h, obs, keys, values, noise_action, noise_u, noise_h):
        actions = []

        def act(t: int, obs_n: torch.Tensor) -> torch.Tensor:
            actions.append(self.policy(self.m.denormalize(obs_n), noise_action[:, t]))
            return actions[-1]

        out = steps.rollout(self.m, LatentState(u, d, h), KVCache(keys, values), self.m.normalize(obs),
                            noise_action.shape[1], act, noise_u, noise_h)
        s, cache = out.state, out.cache
        return (self.m.denormalize(out.obs), out.reward, torch.stack(actions, 1), s.u, s.d, s.h, cache.keys,
                cache.values)


def _pick(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Step ``t`` (a 0-d int64 tensor, so that it stays an input of the traced graph) of a (B, H, ·) input."""
    return x.index_select(1, t.reshape(1)).squeeze(1)


class RolloutBody(_Graph):
    """One iteration of the exported ``rollout`` (``policy`` given: ``policy_rollout``):
    :func:`~mrcom_core.steps.imagine` on step ``t`` of the per-step inputs, as the :class:`Step` graph computes
    it. Exported alone, then wrapped into an ONNX ``Loop`` (:mod:`.onnx_loop`) whose body reads
    :attr:`per_step` (``actions`` or ``noise_action``, and the noise) from the enclosing graph.

    For a model with a streaming context encoder (:attr:`~mrcom_core.base.BaseWorldModel.has_rollout_cache`)
    the loop carries a :class:`~mrcom_core.layers.RolloutCache`: the start cache ``keys``/``values`` is read
    from the enclosing graph in place, and only the rollout's own tokens (``recent_keys_L``/``recent_values_L``
    per layer L, ``(B, heads, t, head_dim)`` at step t) are carried, so no step copies the whole cache (the
    FIFO body shifts it every step: two copies of it in ONNX Runtime); the loop model rebuilds the final
    FIFO once. Otherwise the loop carries ``keys``/``values`` as the :class:`Step` graph does.

    Inputs: ``t``, then :attr:`carried`, then :attr:`per_step`; outputs: the next carried state, then the
    step's ``reward`` (and ``action``). ``split=False`` keeps the FIFO body for any model (the benchmark's
    "before")."""

    def __init__(self, model: BaseWorldModel, policy: PolicyActor | None = None, split: bool = True):
        super().__init__(model)
        self.policy = policy
        self.split = split and model.has_rollout_cache
        layers = range(model.config.ctx_layers if self.split else 0)
        cache = (tuple(f"recent_{kv}_{i}" for i in layers for kv in ("keys", "values")) if self.split
                 else ("keys", "values"))
        drive = "noise_action" if policy is not None else "actions"
        self.carried = (*_STATE, "obs", *cache)
        self.per_step = (*(("keys", "values") if self.split else ()), drive, "noise_u", "noise_h")
        outputs = (*_NEXT, "obs_next", *(f"{n}_next" for n in cache), "reward", *(("action",) if policy else ()))
        self.spec = _spec(("t", *self.carried, *self.per_step), outputs)

    def forward(self, t, *inputs):
        x = dict(zip(self.spec.inputs[1:], inputs, strict=True))
        state, obs = LatentState(x["u"], x["d"], x["h"]), x["obs"]
        n = self.m.config.ctx_layers
        cache = (RolloutCache(KVCache(x["keys"], x["values"]),
                              tuple(KVCache(x[f"recent_keys_{i}"], x[f"recent_values_{i}"]) for i in range(n)))
                 if self.split else KVCache(x["keys"], x["values"]))
        action = (self.policy(obs, _pick(x["noise_action"], t)) if self.policy is not None
                  else _pick(x["actions"], t))
        out = steps.imagine(self.m, state, cache, self.m.normalize(obs), action, _pick(x["noise_u"], t),
                            _pick(x["noise_h"], t))
        s = out.state
        kv = [tensor for layer in out.cache.recent for tensor in layer] if self.split else list(out.cache)
        return (s.u, s.d, s.h, self.m.denormalize(out.obs), *kv, out.reward,
                *((action,) if self.policy is not None else ()))


class ScriptedRollout(nn.Module):
    """The TorchScript ``rollout``: a scripted loop over a traced :class:`Step` (the horizon is read from the
    actions at run time). Build it with :func:`scripted_rollout`."""

    def __init__(self, step: torch.jit.ScriptModule):
        super().__init__()
        self.step = step

    def forward(self, u, d, h, obs, keys, values, actions, noise_u, noise_h):
        observations, rewards = [], []
        for t in range(actions.shape[1]):
            u, d, h, obs, reward, keys, values = self.step(u, d, h, obs, actions[:, t], keys, values, noise_u[:, t],
                                                           noise_h[:, t])
            observations.append(obs)
            rewards.append(reward)
        return torch.stack(observations, 1), torch.stack(rewards, 1), u, d, h, keys, values


class ScriptedPolicyRollout(nn.Module):
    """The TorchScript ``policy_rollout``: :class:`ScriptedRollout` with a traced policy choosing the actions."""

    def __init__(self, step: torch.jit.ScriptModule, policy: torch.jit.ScriptModule):
        super().__init__()
        self.step, self.policy = step, policy

    def forward(self, u, d, h, obs, keys, values, noise_action, noise_u, noise_h):
        observations, rewards, actions = [], [], []
        for t in range(noise_action.shape[1]):
            action = self.policy(obs, noise_action[:, t])
            u, d, h, obs, reward, keys, values = self.step(u, d, h, obs, action, keys, values, noise_u[:, t],
                                                           noise_h[:, t])
            observations.append(obs)
            rewards.append(reward)
            actions.append(action)
        return (torch.stack(observations, 1), torch.stack(rewards, 1), torch.stack(actions, 1), u, d, h, keys,
                values)


def scripted_rollout(name: str, model: BaseWorldModel, policy: PolicyActor | None,
                     generator: torch.Generator | None = None) -> torch.jit.ScriptModule:
    """The TorchScript module of ``rollout`` or ``policy_rollout``: :class:`Step` (and :class:`Policy`) traced,
    the loop over the horizon scripted."""
    with torch.no_grad():
        step = torch.jit.trace(Step(model).eval(), example_inputs("step", model, 7, generator=generator),
                               check_trace=False)
        if name == "rollout":
            return torch.jit.script(ScriptedRollout(step))
        pol = torch.jit.trace(Policy(policy).eval(), example_inputs("policy", model, 7, 1, policy.act_dim, generator),
                              check_trace=False)
        return torch.jit.script(ScriptedPolicyRollout(step, pol))


def build_graph(name: str, model: BaseWorldModel, policy: PolicyActor | None = None) -> nn.Module:
    """The (eager) graph module ``name`` of :data:`GRAPHS` around ``model`` (and ``policy`` for the policy
    graphs)."""
    if name in ("policy", "policy_rollout"):
        return GRAPHS[name](policy) if name == "policy" else PolicyRollout(model, policy)
    return GRAPHS[name](model)


def loop_body(name: str, model: BaseWorldModel, policy: PolicyActor | None = None, split: bool = True) -> RolloutBody:
    """The one-step body of the ``rollout`` or ``policy_rollout`` loop (``split``: see :class:`RolloutBody`)."""
    return RolloutBody(model, None if name == "rollout" else policy, split)


def example_inputs(name: str, model: BaseWorldModel, batch: int, horizon: int = 1, policy_act_dim: int = 0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of graph ``name`` at ``batch`` (for tracing and parity checks)."""
    c, s = model.config, model.sizes
    m, D, A = c.context_len, c.obs_dim, c.act_dim
    kv = model.cache_shape(batch)
    shapes = {
        "u": (batch, s.u), "d": (batch, s.d), "h": (batch, s.h), "context": (batch, s.context),
        "prev_action": (batch, A), "action": (batch, A), "noise_u": (batch, s.u), "noise_h": (batch, s.h),
        "keys": kv, "values": kv, "reward": (batch,), "obs": (batch, D), "prev_obs": (batch, D),
        "prev_reward": (batch,), "actions": (batch, horizon, A), "noise_action": (batch, horizon, policy_act_dim),
    }
    if name == "context_full":
        shapes.update(obs=(batch, m, D), action=(batch, m, A), reward=(batch, m))
    elif name == "prime":
        shapes.update(obs=(batch, m + 1, D), action=(batch, m, A), reward=(batch, m))
    elif name in ("rollout", "policy_rollout"):
        shapes.update(noise_u=(batch, horizon, s.u), noise_h=(batch, horizon, s.h))
    elif name == "policy":
        shapes["noise_action"] = (batch, policy_act_dim)
    out = []
    for n in GRAPHS[name].spec.inputs:
        x = torch.randn(shapes[n], generator=generator)
        out.append(torch.tanh(x) if "action" in n and "noise" not in n else x)
    return tuple(out)


GRAPHS: dict[str, type[nn.Module]] = {
    "context_full": ContextFull, "context_step": ContextStep, "imagine": Imagine, "reward": Reward,
    "prime": Prime, "observe": Observe, "step": Step, "rollout": Rollout, "policy": Policy,
    "policy_rollout": PolicyRollout, "ensemble": Ensemble,
}
#: the graphs that loop over the horizon (an ONNX ``Loop`` / a scripted loop: any horizon at run time)
LOOP_GRAPHS = ("rollout", "policy_rollout")
#: what the runtime, the vector env and the C++ examples run (every export has them).
RUNTIME_GRAPHS = ("prime", "observe", "step", "rollout")
#: the building blocks for hand-written loops (``mrcom export`` includes them unless ``--no-blocks``);
#: ``policy`` and ``policy_rollout`` come with ``--policy``.
BLOCK_GRAPHS = ("context_full", "context_step", "imagine", "reward")
#: exported for (and run by the runtime with) a model that has ensemble heads
ENSEMBLE_GRAPHS = ("ensemble",)
