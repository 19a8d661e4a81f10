"""DreamerV3-style recurrent state-space models behind the same interface as MrCoM, so they train, evaluate,
export and drive adaptation through the same code paths:

* :class:`ContextRSSM` — the paper's DreamerV3 comparison (§5.1: "a context-augmented RSSM"): prior
  ``p(u_t | d_t, c_t)`` and posterior ``q(u_t | d_t, c_t, o_t)`` also read the readout ``c_t`` of the same
  streaming context encoder MrCoM uses (same tokens, same window ``m``);
* :class:`RSSM` — the same model without the context (``c_t`` has 0 dims), which shows what the context
  is worth.

``d_t = GRU(d_{t-1}, [u_{t-1}, a_{t-1}])``; no auxiliary state, no meta regularizers. Loss
(:func:`rssm_loss`): free-nats KL + reconstruction + reward (Gaussian, unit variance), as ``L_var`` without
h. DreamerV3's discrete latents, symlog and KL balancing are not reproduced: the comparison isolates the
architecture.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch

from .. import ensemble
from ..base import BaseWorldModel, Gaussian, LatentSizes, LatentState
from ..config import ModelConfig
from ..kernels import gaussian_sample, gaussian_sample_kl
from ..layers import GRUCell, mlp
from ..losses import OvershootOptions, masked_sq_error, reward_nll, with_ensemble, with_overshoot
from ..scan import scan


class Posterior(NamedTuple):
    """What :meth:`RSSM.posterior_step` returns per step (and the window's scan, stacked over the steps)."""

    state: LatentState  # the posterior sample s_t
    u: Gaussian  # q(u_t | d_t(, c_t), o_t)


class RSSMWindow(NamedTuple):
    state: LatentState  # posterior latents (B, L+1, ·)
    kl_u: torch.Tensor  # (B, L+1), fused with the posterior sample


def rssm_loss(model: BaseWorldModel, window: RSSMWindow, batch: dict, noise: dict, *,
              overshoot: bool = True) -> dict[str, torch.Tensor]:
    """Free-nats KL of u + reconstruction NLL (real dims) + reward NLL over the window; with
    ``model.overshoot_horizon`` > 0 (its :class:`~mrcom_core.losses.OvershootOptions`) also MrCoM's
    multi-step open-loop term (:func:`~mrcom_core.losses.loss_overshoot`, off by default: DreamerV3 has none; a
    switch to test what it is worth to a baseline; ``overshoot=False`` leaves it out for a caller that computes
    it apart)."""
    c = model.config
    recon = 0.5 * masked_sq_error(model.decode(window.state), model.normalize(batch["obs"]), batch["obs_mask"])
    recon = recon.mean()
    reward = reward_nll(model, model.window_states(window), batch).mean()
    kl = window.kl_u
    loss = c.lambda_var * (torch.clamp(kl, min=c.kl_free_nats).mean() + recon + c.reward_loss_weight * reward)
    parts = {"var": loss, "kl_u": kl.mean(), "recon": recon, "reward": reward}
    loss = with_overshoot(model, batch, noise, parts, loss) if overshoot else loss
    loss = with_ensemble(model, window, batch, noise, parts, loss)
    return {"loss": loss, **parts}


class RSSM(BaseWorldModel):
    """DreamerV3-style RSSM without context (stochastic u, GRU d); :class:`ContextRSSM` adds ``c_t``."""

    label = "DreamerV3 (no context)"
    loss = rssm_loss
    defaults = {**BaseWorldModel.defaults, **ensemble.DEFAULTS}
    supports_ensemble = True
    Options = OvershootOptions
    #: whether prior and posterior read the context readout ``c_t`` (a class constant: no tensor branching)
    uses_context: ClassVar[bool] = False

    @classmethod
    def latent_sizes(cls, config: ModelConfig) -> LatentSizes:
        return LatentSizes(u=config.u_dim, d=config.d_dim, h=0, context=config.ctx_dim if cls.uses_context else 0)

    def __init__(self, config: ModelConfig, **stats):
        super().__init__(config, **stats)
        c, C = config, self.sizes.context
        self.gru = GRUCell(c.u_dim + c.act_dim, c.d_dim)
        self.prior = mlp(c.d_dim + C, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.post = mlp(c.d_dim + C + c.obs_dim, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.decoder = mlp(self.sizes.state, c.obs_dim, c.hidden_dim, c.hidden_layers)
        self.reward_head = mlp(self.sizes.state + c.act_dim, 1, c.hidden_dim, c.hidden_layers)

    def _with_context(self, d: torch.Tensor, context: torch.Tensor, *obs_n: torch.Tensor) -> torch.Tensor:
        """``[d_t(, c_t)(, o_t)]``: the prior's input, or the posterior's given ``o_t``."""
        return torch.cat([d, context, *obs_n] if self.uses_context else [d, *obs_n], -1)

    def posterior_step(self, state: LatentState, context: torch.Tensor, prev_action: torch.Tensor,
                       obs_n: torch.Tensor, noise_u: torch.Tensor) -> tuple[LatentState, Posterior]:
        """:meth:`observe_step`, also returning the posterior it sampled from (the step a window scans)."""
        d = self.gru(torch.cat([state.u, prev_action], -1), state.d)
        q = Gaussian.split(self.post(self._with_context(d, context, obs_n)))
        state = LatentState(gaussian_sample(q.mean, q.std_raw, noise_u, min_std=self.config.min_std), d, state.h)
        return state, Posterior(state, q)

    def observe_step(self, state, context, prev_action, obs_n, noise_u, noise_h) -> LatentState:
        return self.posterior_step(state, context, prev_action, obs_n, noise_u)[0]

    def imagine_step(self, state, context, prev_action, noise_u, noise_h) -> LatentState:
        d = self.gru(torch.cat([state.u, prev_action], -1), state.d)
        p = Gaussian.split(self.prior(self._with_context(d, context)))
        return LatentState(gaussian_sample(p.mean, p.std_raw, noise_u, min_std=self.config.min_std), d, state.h)

    def observe_window(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> RSSMWindow:
        """Posterior pass over the window, a scan of :meth:`posterior_step`; the prior and its KL feed nothing
        inside the loop, so they run over the whole window at once afterwards (fewer, larger kernels)."""
        c = self.config
        obs_n = self.normalize(batch["obs"])
        prev_action = torch.cat([batch["context_action"][:, -1:], batch["action"]], dim=1)
        # c_0 … c_L, read once over context + window (0 dims without the context)
        context = self.window_context(batch) if self.uses_context else obs_n[..., :0]
        start = self.initial_state(obs_n.shape[0], obs_n.device)
        _, (state, q) = scan(self.posterior_step, start, context, prev_action, obs_n, noise["u"])
        p = Gaussian.split(self.prior(self._with_context(state.d, context)))
        # the fused kernel's sample equals the posterior's (same distribution and noise); only its KL is kept
        _, kl = gaussian_sample_kl(p.mean, p.std_raw, q.mean, q.std_raw, noise["u"], min_std=c.min_std,
                                   reverse=c.kl_direction == "prior_post")
        return RSSMWindow(state, kl)


class ContextRSSM(RSSM):
    """The paper's DreamerV3 baseline (§5.1): the RSSM whose prior and posterior also read ``c_t``."""

    label = "DreamerV3"
    uses_context = True
