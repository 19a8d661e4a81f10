"""The paper's comparison models (§5.1), behind the same interface as MrCoM (:class:`BaseWorldModel`), so
they train, evaluate, export and drive adaptation through exactly the same code paths.

* :class:`RSSMWorldModel` — DreamerV3-style recurrent state-space model: ``d_t = GRU(d_{t-1}, [u_{t-1},
  a_{t-1}])``, prior ``p(u_t | d_t)``, posterior ``q(u_t | d_t, o_t)``; no context, no auxiliary state,
  no meta regularizers. Loss: free-nats KL + reconstruction + reward (Gaussian, unit variance), as
  ``L_var`` without h. (DreamerV3's discrete latents, symlog and KL balancing are not reproduced: the
  comparison isolates the architecture.)
* :class:`CaDMWorldModel` — CaDM-style context-aware dynamics: a context vector from the last K = m
  transitions (the same streaming encoder as MrCoM) conditions an observation-space Gaussian dynamics
  model ``o_t = o_{t-1} + Δ(o_{t-1}, a_{t-1}, c_t)``; the latent *is* the normalized observation. Loss:
  one-step Gaussian NLL over real dims + reward. (CaDM's backward model is not reproduced.)

Slot names follow :class:`~mrcom_core.world_model.LatentState`: ``u`` stochastic (for CaDM the
observation), ``d`` deterministic (absent for CaDM), ``h`` auxiliary (absent for both).
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .kernels import gaussian_sample, gaussian_sample_kl, gaussian_std
from .layers import GRUCell, mlp
from .world_model import BaseWorldModel, LatentState


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over real dims (``mask`` (B, D) broadcast over time), mean over batch and time."""
    return (values * mask[:, None, :]).sum(-1).mean()


class RSSMWorldModel(BaseWorldModel):
    """DreamerV3-style RSSM baseline (see the module docstring)."""

    def __init__(self, config: ModelConfig, obs_mean=None, obs_std=None):
        super().__init__(config, obs_mean, obs_std)
        c = config
        self.gru = GRUCell(c.u_dim + c.act_dim, c.d_dim)
        self.prior = mlp(c.d_dim, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.post = mlp(c.d_dim + c.obs_dim, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.decoder = mlp(c.latent_dim, c.obs_dim, c.hidden_dim, c.hidden_layers)
        self.reward_head = mlp(c.latent_dim + c.act_dim, 1, c.hidden_dim, c.hidden_layers)

    def observe_step(self, state, context, prev_action, obs_n, noise_u, noise_h) -> LatentState:
        d = self.gru(torch.cat([state.u, prev_action], -1), state.d)
        mean, std = self._split(self.post(torch.cat([d, obs_n], -1)))
        return LatentState(gaussian_sample(mean, std, noise_u, min_std=self.config.min_std), d, state.h)

    def imagine_step(self, state, context, prev_action, noise_u, noise_h) -> LatentState:
        d = self.gru(torch.cat([state.u, prev_action], -1), state.d)
        mean, std = self._split(self.prior(d))
        return LatentState(gaussian_sample(mean, std, noise_u, min_std=self.config.min_std), d, state.h)

    def forward(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """RSSM loss: free-nats KL(q‖p) of u + reconstruction NLL + reward NLL over the window."""
        c = self.config
        obs_n = self.normalize(batch["obs"])
        prev_action = torch.cat([batch["context_action"][:, -1:], batch["action"]], dim=1)
        state = self.initial_state(obs_n.shape[0], obs_n.device)
        states, kls = [], []
        for j in range(obs_n.shape[1]):
            d = self.gru(torch.cat([state.u, prev_action[:, j]], -1), state.d)
            p_mean, p_std = self._split(self.prior(d))
            q_mean, q_std = self._split(self.post(torch.cat([d, obs_n[:, j]], -1)))
            u, kl = gaussian_sample_kl(p_mean, p_std, q_mean, q_std, noise["u"][:, j], min_std=c.min_std,
                                       reverse=c.kl_direction == "prior_post")
            state = LatentState(u, d, state.h)
            states.append(state)
            kls.append(kl)
        seq = LatentState(*(torch.stack(x, 1) for x in zip(*states, strict=True)))
        recon = 0.5 * _masked_mean(torch.square(self.decode(seq) - obs_n), batch["obs_mask"])
        reward = 0.5 * torch.square(self.reward(LatentState(*(x[:, :-1] for x in seq)), batch["action"])
                                    - batch["reward"]).mean()
        kl = torch.stack(kls, 1)
        loss = c.lambda_var * (torch.clamp(kl, min=c.kl_free_nats).mean() + recon + c.reward_loss_weight * reward)
        return {"loss": loss, "var": loss, "kl_u": kl.mean(), "recon": recon, "reward": reward}


class CaDMWorldModel(BaseWorldModel):
    """CaDM-style context-conditioned observation-space dynamics baseline (see the module docstring)."""

    def __init__(self, config: ModelConfig, obs_mean=None, obs_std=None):
        super().__init__(config, obs_mean, obs_std)
        c = config
        self.dynamics = mlp(c.context_dim + c.obs_dim + c.act_dim, 2 * c.obs_dim, c.hidden_dim, c.hidden_layers)
        self.reward_head = mlp(c.latent_dim + c.act_dim, 1, c.hidden_dim, c.hidden_layers)

    def _predict(self, obs_n, context, prev_action):
        delta, std_raw = self._split(self.dynamics(torch.cat([context, obs_n, prev_action], -1)))
        return obs_n + delta, std_raw

    def decode(self, state: LatentState) -> torch.Tensor:
        return state.u

    def observe_step(self, state, context, prev_action, obs_n, noise_u, noise_h) -> LatentState:
        return LatentState(obs_n, state.d, state.h)

    def imagine_step(self, state, context, prev_action, noise_u, noise_h) -> LatentState:
        mean, std_raw = self._predict(state.u, context, prev_action)
        return LatentState(gaussian_sample(mean, std_raw, noise_u, min_std=self.config.min_std), state.d, state.h)

    def forward(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One-step Gaussian NLL of ``o_j`` from ``(o_{j-1}, a_{j-1}, c_j)`` over real dims, plus reward NLL."""
        c = self.config
        obs_n = self.normalize(batch["obs"])
        context = self.window_context(batch)[:, 1:]  # c_1 … c_L
        mean, std_raw = self._predict(obs_n[:, :-1], context, batch["action"])
        std = gaussian_std(std_raw, c.min_std)
        nll = 0.5 * torch.square((obs_n[:, 1:] - mean) / std) + torch.log(std)
        recon = _masked_mean(nll, batch["obs_mask"])
        state = LatentState(obs_n[:, :-1], obs_n.new_zeros(*obs_n.shape[:2], 0)[:, :-1],
                            obs_n.new_zeros(*obs_n.shape[:2], 0)[:, :-1])
        reward = 0.5 * torch.square(self.reward(state, batch["action"]) - batch["reward"]).mean()
        loss = c.lambda_var * (recon + c.reward_loss_weight * reward)
        return {"loss": loss, "var": loss, "recon": recon, "reward": reward}


def build_model(config: ModelConfig, obs_mean=None, obs_std=None) -> BaseWorldModel:
    """The world model of ``config.model_type`` (``mrcom``, ``rssm`` or ``cadm``)."""
    from .world_model import WorldModel

    classes = {"mrcom": WorldModel, "rssm": RSSMWorldModel, "cadm": CaDMWorldModel}
    return classes[config.model_type](config, obs_mean, obs_std)
