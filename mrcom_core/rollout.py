"""Imagined rollouts in eager PyTorch: the open-loop prediction error used to evaluate world models.

From a posterior state at a window's first step, the model imagines forward with the real actions; the
context FIFO receives the *predicted* observations and rewards (paper §3: generated steps replace the
prompt first-in-first-out), one token per step through the streaming encoder's key/value cache.
"""

from __future__ import annotations

import torch

from .layers import KVCache
from .world_model import LatentState, WorldModel


def imagine_open_loop(model: WorldModel, state: LatentState, cache: KVCache, obs_n: torch.Tensor,
                      actions: torch.Tensor, noise_u: torch.Tensor | None = None,
                      noise_h: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded predictions (B, H, obs_dim) of H = ``actions.shape[1]`` prior steps from ``state``.

    ``cache`` holds the context up to the step before ``state``'s observation ``obs_n`` (normalized);
    each step feeds the token ``(ô_{k-1}, a_{k-1}, r̂_{k-1})`` into the context, then takes one prior step.
    ``noise_u``/``noise_h`` (B, H, ·) sample the latents; ``None`` predicts with their means. Gradients
    flow (``loss_overshoot`` trains through this); wrap in ``torch.no_grad`` to evaluate.
    """
    c = model.config
    B, H = actions.shape[:2]
    zero_u, zero_h = actions.new_zeros(B, c.stoch_dim), actions.new_zeros(B, c.aux_dim)
    last_obs, predictions = obs_n, []
    for k in range(H):
        a = actions[:, k]
        context, cache = model.context_step(model.tokens(last_obs, a, model.reward(state, a)), cache)
        state = model.imagine_step(state, context, a, zero_u if noise_u is None else noise_u[:, k],
                                   zero_h if noise_h is None else noise_h[:, k])
        last_obs = model.decode(state)
        predictions.append(last_obs)
    return torch.stack(predictions, dim=1)


@torch.no_grad()
def open_loop_predictions(model: WorldModel, batch: dict[str, torch.Tensor], horizon: int,
                          noise_scale: float = 0.0) -> torch.Tensor:
    """Predicted normalized observations ``ô_1 … ô_H`` (B, H, obs_dim) of a batch's windows.

    ``s_0`` is the posterior at the window's first step; then :func:`imagine_open_loop` with the real
    actions. ``noise_scale = 0`` predicts with the latent means.
    """
    action = batch["action"]
    if action.shape[1] < horizon:
        raise ValueError(f"the batch's windows have {action.shape[1]} actions, fewer than horizon={horizon}")
    c = model.config
    B = action.shape[0]
    obs_n = model.normalize(batch["obs"])

    def noise(*shape: int) -> torch.Tensor:
        return noise_scale * torch.randn(*shape, device=action.device) if noise_scale else action.new_zeros(shape)

    tokens = model.tokens(model.normalize(batch["context_obs"]), batch["context_action"], batch["context_reward"])
    readout, cache = model.encode_context(tokens)
    state = model.observe_step(model.initial_state(B, action.device), readout[:, -1],
                               batch["context_action"][:, -1], obs_n[:, 0], noise(B, c.stoch_dim), noise(B, c.aux_dim))
    return imagine_open_loop(model, state, cache, obs_n[:, 0], action[:, :horizon],
                             noise(B, horizon, c.stoch_dim), noise(B, horizon, c.aux_dim))


@torch.no_grad()
def open_loop_error(model: WorldModel, batch: dict[str, torch.Tensor], horizon: int = 15) -> torch.Tensor:
    """Per-row H-step open-loop error: MSE of normalized observations over real dims, averaged over steps."""
    pred = open_loop_predictions(model, batch, horizon)
    target = model.normalize(batch["obs"][:, 1 : horizon + 1])
    mask = batch["obs_mask"][:, None, :]  # (B, 1, D)
    return (torch.square(pred - target) * mask).sum((-1, -2)) / (mask.sum((-1, -2)) * horizon).clamp(min=1)
