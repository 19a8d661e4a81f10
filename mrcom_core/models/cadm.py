"""CaDM-style context-aware dynamics, the paper's CaDM comparison (§5.1), behind the same interface as
MrCoM so it trains, evaluates, exports and drives adaptation through the same code paths.

A context vector from the last K = m transitions (the same streaming encoder as MrCoM) conditions an
observation-space Gaussian dynamics model ``o_t = o_{t-1} + Δ(o_{t-1}, a_{t-1}, c_t)``; the latent *is*
the normalized observation (slot ``u``; no ``d``, no ``h``). Loss (:func:`cadm_loss`): one-step Gaussian
NLL over real dims + reward. CaDM's backward model is not reproduced.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import ensemble
from ..base import BaseWorldModel, Gaussian, LatentSizes, LatentState
from ..config import ModelConfig
from ..kernels import gaussian_sample, gaussian_std
from ..layers import mlp
from ..losses import reward_nll, with_ensemble


class CaDMWindow(NamedTuple):
    obs: torch.Tensor  # (B, L+1, D) normalized o_0 … o_L
    prediction: Gaussian  # of o_1 … o_L from (o_{j-1}, a_{j-1}, c_j), (B, L, D)


def cadm_loss(model: BaseWorldModel, window: CaDMWindow, batch: dict, noise: dict) -> dict[str, torch.Tensor]:
    """One-step Gaussian NLL of ``o_j`` over real dims (mean over batch and steps) plus reward NLL."""
    c = model.config
    std = gaussian_std(window.prediction.std_raw, c.min_std)
    nll = 0.5 * torch.square((window.obs[:, 1:] - window.prediction.mean) / std) + torch.log(std)
    recon = (nll * batch["obs_mask"][:, None, :]).sum(-1).mean()
    reward = reward_nll(model, model.window_states(window), batch).mean()
    loss = c.lambda_var * (recon + c.reward_loss_weight * reward)
    parts = {"var": loss, "recon": recon, "reward": reward}
    return {"loss": with_ensemble(model, window, batch, noise, parts, loss), **parts}


class CaDM(BaseWorldModel):
    """CaDM-style baseline: context-conditioned dynamics in observation space."""

    label = "CaDM"
    loss = cadm_loss
    defaults = {**BaseWorldModel.defaults, **ensemble.DEFAULTS}
    supports_ensemble = True

    @classmethod
    def latent_sizes(cls, config: ModelConfig) -> LatentSizes:
        return LatentSizes(u=config.obs_dim, d=0, h=0, context=config.ctx_dim)

    def window_states(self, window: CaDMWindow) -> LatentState:
        obs = window.obs[:, :-1]
        empty = obs.new_zeros(*obs.shape[:2], 0)
        return LatentState(obs, empty, empty)

    def __init__(self, config: ModelConfig, **stats):
        super().__init__(config, **stats)
        c = config
        self.dynamics = mlp(self.sizes.context + c.obs_dim + c.act_dim, 2 * c.obs_dim, c.hidden_dim,
                            c.hidden_layers)
        self.reward_head = mlp(self.sizes.state + c.act_dim, 1, c.hidden_dim, c.hidden_layers)

    def predict(self, obs_n: torch.Tensor, context: torch.Tensor, prev_action: torch.Tensor) -> Gaussian:
        """The next normalized observation's Gaussian: ``o + Δ`` and the raw std."""
        delta = Gaussian.split(self.dynamics(torch.cat([context, obs_n, prev_action], -1)))
        return Gaussian(obs_n + delta.mean, delta.std_raw)

    def decode(self, state: LatentState) -> torch.Tensor:
        return state.u

    def observe_step(self, state, context, prev_action, obs_n, noise_u, noise_h) -> LatentState:
        return LatentState(obs_n, state.d, state.h)

    def imagine_step(self, state, context, prev_action, noise_u, noise_h) -> LatentState:
        p = self.predict(state.u, context, prev_action)
        return LatentState(gaussian_sample(p.mean, p.std_raw, noise_u, min_std=self.config.min_std), state.d,
                           state.h)

    def observe_window(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> CaDMWindow:
        """The window's normalized observations and the one-step predictions of ``o_1 … o_L``."""
        obs_n = self.normalize(batch["obs"])
        context = self.window_context(batch)[:, 1:]  # c_1 … c_L
        return CaDMWindow(obs_n, self.predict(obs_n[:, :-1], context, batch["action"]))
