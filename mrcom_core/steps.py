"""The imagination steps, written once for every model: evaluation, the overshooting loss, the exported
graphs (and through them the runtime and the C++ examples) all call these functions.

Step order (docs/design.md): the context of step t is ``C_t = {(o_k, a_k, r_k)}_{k=t-m}^{t-1}``.

* :func:`prime` — a prompt of m real steps fills the context FIFO; the first posterior step observes
  ``o_t`` right after it.
* :func:`observe` — one more real step: the token ``(o_{t-1}, a_{t-1}, r_{t-1})`` enters the FIFO, then the
  posterior observes ``o_t``.
* :func:`imagine` — one imagined step: reward ``r̂(s_t, a_t)`` → the token ``(ô_t, a_t, r̂_t)`` enters the
  FIFO → prior step with ``a_t`` → decoded ``ô_{t+1}`` (the paper's FIFO of generated steps).
* :func:`rollout` — H imagined steps with actions given or chosen by a policy from the predictions.

Observations are normalized (``model.normalize``) throughout; noise is always an input (``None`` in
:func:`rollout` means the latents' means). Everything here is traceable for export: no branching on
tensor values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .base import BaseWorldModel, LatentState
from .layers import KVCache


class Imagined(NamedTuple):
    """What :func:`imagine` and :func:`rollout` return (``obs`` and ``reward`` per step for a rollout)."""

    state: LatentState
    obs: torch.Tensor  # (B, D) or (B, H, D), normalized
    reward: torch.Tensor  # (B,) or (B, H): the reward of the action taken in the state before
    cache: KVCache


def _step_noise(model: BaseWorldModel, like: torch.Tensor, noise_u, noise_h, t: int | None = None):
    """The noise for one step: the given noise (at step ``t`` of a sequence), or zeros (the latents' means)."""
    B = like.shape[0]
    if t is not None:
        noise_u, noise_h = (None if n is None else n[:, t] for n in (noise_u, noise_h))
    return (like.new_zeros(B, model.sizes.u) if noise_u is None else noise_u,
            like.new_zeros(B, model.sizes.h) if noise_h is None else noise_h)


def prime(model: BaseWorldModel, prompt_obs: torch.Tensor, prompt_action: torch.Tensor,
          prompt_reward: torch.Tensor, obs: torch.Tensor, noise_u: torch.Tensor,
          noise_h: torch.Tensor) -> tuple[LatentState, KVCache]:
    """Encode a prompt of m steps (``prompt_obs`` (B, m, D) normalized, ``prompt_action`` (B, m, A),
    ``prompt_reward`` (B, m)) into the context and take the first posterior step at ``obs`` (B, D), the
    observation after the prompt's last action. Returns the state and the context FIFO."""
    readout, cache = model.encode_context(model.tokens(prompt_obs, prompt_action, prompt_reward))
    start = model.initial_state(obs.shape[0], obs.device)
    return model.observe_step(start, readout[:, -1], prompt_action[:, -1], obs, noise_u, noise_h), cache


def observe(model: BaseWorldModel, state: LatentState, cache: KVCache, prev_obs: torch.Tensor,
            prev_action: torch.Tensor, prev_reward: torch.Tensor, obs: torch.Tensor, noise_u: torch.Tensor,
            noise_h: torch.Tensor) -> tuple[LatentState, KVCache]:
    """One more real step after :func:`prime`: the previous step's token enters the FIFO, then the posterior
    observes ``obs``."""
    context, cache = model.context_step(model.tokens(prev_obs, prev_action, prev_reward), cache)
    return model.observe_step(state, context, prev_action, obs, noise_u, noise_h), cache


def imagine(model: BaseWorldModel, state: LatentState, cache: KVCache, obs: torch.Tensor, action: torch.Tensor,
            noise_u: torch.Tensor, noise_h: torch.Tensor) -> Imagined:
    """One imagined step from ``state`` (whose observation is ``obs``) taking ``action``."""
    reward = model.reward(state, action)
    context, cache = model.context_step(model.tokens(obs, action, reward), cache)
    state = model.imagine_step(state, context, action, noise_u, noise_h)
    return Imagined(state, model.decode(state), reward, cache)


def rollout(model: BaseWorldModel, state: LatentState, cache: KVCache, obs: torch.Tensor, horizon: int,
            act: torch.Tensor | Callable[[int, torch.Tensor], torch.Tensor], noise_u: torch.Tensor | None = None,
            noise_h: torch.Tensor | None = None) -> Imagined:
    """``horizon`` imagined steps; ``act`` is the actions (B, H, A) or ``act(t, obs) -> action`` (a policy
    reading the current normalized prediction). ``noise_u``/``noise_h`` (B, H, ·) sample the latents;
    ``None`` predicts with their means. Gradients flow (the overshooting loss trains through this)."""
    observations, rewards = [], []
    for t in range(horizon):
        action = act(t, obs) if callable(act) else act[:, t]
        step = imagine(model, state, cache, obs, action, *_step_noise(model, obs, noise_u, noise_h, t))
        state, obs, cache = step.state, step.obs, step.cache
        observations.append(obs)
        rewards.append(step.reward)
    return Imagined(state, torch.stack(observations, 1), torch.stack(rewards, 1), cache)


def prime_from_batch(model: BaseWorldModel, batch: dict[str, torch.Tensor], noise_u: torch.Tensor | None = None,
                     noise_h: torch.Tensor | None = None) -> tuple[LatentState, KVCache]:
    """:func:`prime` on a sampled batch: its context is the prompt, the window's first observation the
    posterior's (``None`` noise: the latents' means)."""
    obs = model.normalize(batch["obs"][:, 0])
    return prime(model, model.normalize(batch["context_obs"]), batch["context_action"], batch["context_reward"],
                 obs, *_step_noise(model, obs, noise_u, noise_h))


@torch.no_grad()
def open_loop_predictions(model: BaseWorldModel, batch: dict[str, torch.Tensor], horizon: int) -> torch.Tensor:
    """Predicted normalized observations ``ô_1 … ô_H`` (B, H, obs_dim) of a batch's windows with the latents
    at their means: :func:`prime_from_batch`, then :func:`rollout` with the real actions."""
    action = batch["action"]
    if action.shape[1] < horizon:
        raise ValueError(f"the batch's windows have {action.shape[1]} actions, fewer than horizon={horizon}")
    state, cache = prime_from_batch(model, batch)
    return rollout(model, state, cache, model.normalize(batch["obs"][:, 0]), horizon, action[:, :horizon]).obs
