"""Imagined rollouts in eager PyTorch: the open-loop prediction error used to evaluate world models.

From a posterior state at a window's first step, the model imagines forward with the real actions; the
context FIFO receives the *predicted* observations and rewards (paper §3: generated steps replace the
prompt first-in-first-out), one token per step through the streaming encoder's key/value cache.
"""

from __future__ import annotations

import torch

from .world_model import WorldModel


@torch.no_grad()
def open_loop_predictions(model: WorldModel, batch: dict[str, torch.Tensor], horizon: int,
                          noise_scale: float = 0.0) -> torch.Tensor:
    """Predicted normalized observations ``ô_1 … ô_H`` (B, H, obs_dim) of a batch's windows.

    ``s_0`` is the posterior at the window's first step; each step feeds the token
    ``(o_{k-1}, a_{k-1}, r̂_{k-1})`` into the context (``o_0`` real, later observations predicted) and
    takes one prior step with ``a_{k-1}``. ``noise_scale = 0`` predicts with the latent means.
    """
    action = batch["action"]
    if action.shape[1] < horizon:
        raise ValueError(f"the batch's windows have {action.shape[1]} actions, fewer than horizon={horizon}")
    c = model.config
    B = action.shape[0]
    obs_n = model.normalize(batch["obs"])

    def noise(dim: int) -> torch.Tensor:
        return noise_scale * torch.randn(B, dim, device=action.device) if noise_scale else action.new_zeros(B, dim)

    tokens = model.tokens(model.normalize(batch["context_obs"]), batch["context_action"], batch["context_reward"])
    readout, cache = model.encode_context(tokens)
    state = model.observe_step(model.initial_state(B, action.device), readout[:, -1],
                               batch["context_action"][:, -1], obs_n[:, 0], noise(c.stoch_dim), noise(c.aux_dim))
    last_obs = obs_n[:, 0]
    predictions = []
    for k in range(horizon):
        a = action[:, k]
        token = model.tokens(last_obs, a, model.reward(state, a))
        context, cache = model.context_step(token, cache)
        state = model.imagine_step(state, context, a, noise(c.stoch_dim), noise(c.aux_dim))
        last_obs = model.decode(state)
        predictions.append(last_obs)
    return torch.stack(predictions, dim=1)


@torch.no_grad()
def open_loop_error(model: WorldModel, batch: dict[str, torch.Tensor], horizon: int = 15) -> torch.Tensor:
    """Per-row H-step open-loop error: MSE of normalized observations over real dims, averaged over steps."""
    pred = open_loop_predictions(model, batch, horizon)
    target = model.normalize(batch["obs"][:, 1 : horizon + 1])
    mask = batch["obs_mask"][:, None, :]  # (B, 1, D)
    return (torch.square(pred - target) * mask).sum((-1, -2)) / (mask.sum((-1, -2)) * horizon).clamp(min=1)
