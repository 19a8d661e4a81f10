"""The MrCoM world model (paper §3.1), with separate ``observe`` (posterior) and ``imagine`` (prior) steps.

Index convention (DESIGN.md): the context of step t is ``C_t = {(o_k, a_k, r_k)}_{k=t-m}^{t-1}`` and
``c_t = Enc(C_t)``;

* stochastic ``u_t``: prior ``p(u_t | c_t, a_{t-1})``, posterior ``q(u_t | c_t, a_{t-1}, o_t)``;
* deterministic ``d_t = GRU(d_{t-1}, [u_t, a_{t-1}])``;
* auxiliary ``h_t``: prior ``p(h_t | c_t, h_{t-1})``, posterior ``q(h_t | c_t, h_{t-1}, o_t)``;
* latent ``s_t = [u_t, d_t, h_t]``; decoder ``o_t ≈ dec(s_t)``; reward ``r_t ≈ rew(s_t, a_t)``;
* per-scenario value heads ``v_i(s_t)`` and the meta-value ``v(s_t)`` (§3.3).

Observations are normalized with dataset statistics held as buffers (saved with the weights). Random
numbers never come from inside: every sample takes its standard-normal noise as an input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import ModelConfig
from .kernels import gaussian_sample, gaussian_sample_kl
from .layers import GRUCell, KVCache, StreamingContextEncoder, mlp


class LatentState(NamedTuple):
    """``s_t = [u_t, d_t, h_t]``; ``d`` has 0 dims under the ``no_d`` ablation."""

    u: torch.Tensor
    d: torch.Tensor
    h: torch.Tensor

    def cat(self) -> torch.Tensor:
        return torch.cat([self.u, self.d, self.h], dim=-1)


class Posterior(NamedTuple):
    """What the training pass over a window returns (time axis = window steps 0 … L)."""

    state: LatentState  # posterior latents, each (B, L+1, ·)
    prior_state: LatentState  # one-step prior predictions ŝ_j from s_{j-1} (j ≥ 1; j = 0 from the zero state)
    kl_u: torch.Tensor  # (B, L+1) KL between u posterior and prior, in the configured direction
    kl_h: torch.Tensor  # (B, L+1)
    ls_kl_u: torch.Tensor  # (B, L+1) KL(q_u ‖ sg(p_u)) for L_s (zeros under no_ls)
    context: torch.Tensor  # (B, L+1, ctx) c_0 … c_L


class BaseWorldModel(nn.Module):
    """What every world model shares (MrCoM and the baselines): observation normalization (buffers saved
    with the weights), context tokens, the optional streaming context encoder, latent bookkeeping and the
    interface the trainer, the evaluation and the exporters use: ``observe_step``, ``imagine_step``,
    ``decode``, ``reward``, ``encode_context``, ``context_step``, ``forward`` (losses), ``noise_shapes``."""

    def __init__(self, config: ModelConfig, obs_mean=None, obs_std=None):
        super().__init__()
        self.config = c = config
        self.register_buffer("obs_mean", torch.zeros(c.obs_dim) if obs_mean is None
                             else torch.as_tensor(obs_mean, dtype=torch.float32).clone())
        self.register_buffer("obs_std", torch.ones(c.obs_dim) if obs_std is None
                             else torch.as_tensor(obs_std, dtype=torch.float32).clone())
        self.encoder = None if c.context_dim == 0 else StreamingContextEncoder(
            c.token_dim, c.ctx_width, c.ctx_layers, c.ctx_heads, c.ctx_dim, c.context_len)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def denormalize(self, obs_n: torch.Tensor) -> torch.Tensor:
        return obs_n * self.obs_std + self.obs_mean

    def tokens(self, obs_n: torch.Tensor, action: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """Context tokens ``(o_k, a_k[, r_k])`` from normalized observations."""
        parts = [obs_n, action] + ([reward[..., None]] if self.config.context_reward else [])
        return torch.cat(parts, dim=-1)

    def initial_state(self, batch: int, device=None) -> LatentState:
        c = self.config
        z = torch.zeros
        return LatentState(z(batch, c.stoch_dim, device=device), z(batch, c.deter_dim, device=device),
                           z(batch, c.aux_dim, device=device))

    def encode_context(self, tokens: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Full-sequence context encoding: ``tokens`` (B, T, E) → readouts (B, T, ctx) and the cache.

        The readout at token k is ``c_{k+1}``. Without an encoder the readouts have 0 dims and the cache
        is empty.
        """
        if self.encoder is None:
            B, T, _ = tokens.shape
            empty = tokens.new_zeros(0)
            return tokens.new_zeros(B, T, 0), KVCache(empty, empty)
        return self.encoder(tokens)

    def context_step(self, token: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Add one token (B, E) to the context: ``c`` of the next step and the shifted cache."""
        if self.encoder is None:
            return token.new_zeros(token.shape[0], 0), cache
        return self.encoder.step(token, cache)

    def window_context(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``c_0 … c_L`` (B, L+1, ctx) of a sampled window: context and window read as one token sequence."""
        c = self.config
        m = c.context_len
        obs_n = self.normalize(batch["obs"])
        B, T1, _ = obs_n.shape
        ctx_tokens = self.tokens(self.normalize(batch["context_obs"]), batch["context_action"],
                                 batch["context_reward"])
        win_tokens = self.tokens(obs_n[:, :-1], batch["action"], batch["reward"])
        tokens = torch.cat([ctx_tokens, win_tokens], dim=1)
        if c.ctx_reencode and self.encoder is not None:  # each step's window from scratch (slow reference)
            windows = tokens.unfold(1, m, 1).transpose(-1, -2)  # (B, L+1, m, E)
            readout, _ = self.encode_context(windows.reshape(B * T1, m, -1))
            return readout[:, -1].reshape(B, T1, -1)
        readout, _ = self.encode_context(tokens)
        return readout[:, m - 1 :]

    def decode(self, state: LatentState) -> torch.Tensor:
        """Predicted normalized observation (the Gaussian decoder's mean)."""
        return self.decoder(state.cat())

    def reward(self, state: LatentState, action: torch.Tensor) -> torch.Tensor:
        return self.reward_head(torch.cat([state.cat(), action], dim=-1))[..., 0]

    def noise_shapes(self, batch_size: int, window_len: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the standard-normal inputs of :meth:`forward` for ``window_len`` = L."""
        c = self.config
        u, h = (batch_size, window_len + 1, c.stoch_dim), (batch_size, window_len + 1, c.aux_dim)
        return {"u": u, "h": h, "u_prior": u, "h_prior": h}

    @staticmethod
    def _split(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std_raw = raw.chunk(2, dim=-1)
        return mean, std_raw


class WorldModel(BaseWorldModel):
    """MrCoM's latent world model. See the module docstring for the factorization."""

    def __init__(self, config: ModelConfig, obs_mean=None, obs_std=None):
        super().__init__(config, obs_mean, obs_std)
        c = config
        A, C, H, D = c.act_dim, c.context_dim, c.h_dim, c.deter_dim
        self.u_prior = mlp(C + A, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.u_post = mlp(C + A + c.obs_dim, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.gru = None if c.no_d else GRUCell(c.u_dim + A, D)
        self.h_prior = mlp(C + H, 2 * H, c.hidden_dim, c.hidden_layers)
        self.h_post = mlp(C + H + c.obs_dim, 2 * H, c.hidden_dim, c.hidden_layers)
        self.decoder = mlp(c.latent_dim, c.obs_dim, c.hidden_dim, c.hidden_layers)
        self.reward_head = mlp(c.latent_dim + A, 1, c.hidden_dim, c.hidden_layers)
        if not c.no_lv:
            self.value_heads = mlp(c.latent_dim, c.num_scenarios, c.hidden_dim, c.hidden_layers)
            self.meta_value = mlp(c.latent_dim, 1, c.hidden_dim, c.hidden_layers)
        else:
            self.value_heads = self.meta_value = None

    def _deter(self, d: torch.Tensor, u: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        if self.gru is None:
            return d
        return self.gru(torch.cat([u, prev_action], dim=-1), d)

    # ------------------------------------------------------------------------------------ step functions
    def observe_step(self, state: LatentState, context: torch.Tensor, prev_action: torch.Tensor,
                     obs_n: torch.Tensor, noise_u: torch.Tensor, noise_h: torch.Tensor) -> LatentState:
        """Posterior step: ``s_t`` from ``s_{t-1}``, ``c_t``, ``a_{t-1}`` and the normalized ``o_t``."""
        ms = self.config.min_std
        u_mean, u_std = self._split(self.u_post(torch.cat([context, prev_action, obs_n], -1)))
        u = gaussian_sample(u_mean, u_std, noise_u, min_std=ms)
        d = self._deter(state.d, u, prev_action)
        h_mean, h_std = self._split(self.h_post(torch.cat([context, state.h, obs_n], -1)))
        return LatentState(u, d, gaussian_sample(h_mean, h_std, noise_h, min_std=ms))

    def imagine_step(self, state: LatentState, context: torch.Tensor, prev_action: torch.Tensor,
                     noise_u: torch.Tensor, noise_h: torch.Tensor) -> LatentState:
        """Prior step: ``ŝ_t`` from ``s_{t-1}``, ``c_t`` and ``a_{t-1}`` (no observation)."""
        ms = self.config.min_std
        u_mean, u_std = self._split(self.u_prior(torch.cat([context, prev_action], -1)))
        u = gaussian_sample(u_mean, u_std, noise_u, min_std=ms)
        d = self._deter(state.d, u, prev_action)
        h_mean, h_std = self._split(self.h_prior(torch.cat([context, state.h], -1)))
        return LatentState(u, d, gaussian_sample(h_mean, h_std, noise_h, min_std=ms))

    # ------------------------------------------------------------------------------ training-time pass
    def observe_window(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> Posterior:
        """Posterior pass over a sampled window (see ``mrcom_train.sampler`` for the batch layout).

        The context and window form one (m + L)-token sequence that the streaming encoder reads once;
        ``c_j`` for window step j is the readout at token ``m - 1 + j``. ``u`` depends on no recurrent
        state, so its posterior and prior heads and their fused sample+KL run over all steps at once; ``d``
        and ``h`` are recurrent and run step by step. Also returns the one-step prior predictions ŝ_j
        (for ``L_v``), made from the posterior ``s_{j-1}`` with separate noise.

        ``noise`` holds standard-normal ``u``, ``h``, ``u_prior``, ``h_prior`` tensors of shape
        (B, L+1, u_dim / h_dim).
        """
        c = self.config
        obs_n = self.normalize(batch["obs"])  # (B, L+1, D)
        B, T1, _ = obs_n.shape
        context = self.window_context(batch)  # (B, L+1, ctx)
        prev_action = torch.cat([batch["context_action"][:, -1:], batch["action"]], dim=1)  # a_{j-1}

        reverse = c.kl_direction == "prior_post"
        p_mean, p_std = self._split(self.u_prior(torch.cat([context, prev_action], -1)))
        q_mean, q_std = self._split(self.u_post(torch.cat([context, prev_action, obs_n], -1)))
        u, kl_u = gaussian_sample_kl(p_mean, p_std, q_mean, q_std, noise["u"], min_std=c.min_std, reverse=reverse)
        if c.no_ls:
            ls_kl_u = torch.zeros_like(kl_u)
        else:  # KL(q_u ‖ sg(p_u)): trains only the posterior (meta-state regularization, eq. 12)
            _, ls_kl_u = gaussian_sample_kl(p_mean.detach(), p_std.detach(), q_mean, q_std, noise["u"],
                                            min_std=c.min_std, reverse=False)
        u_hat = gaussian_sample(p_mean, p_std, noise["u_prior"], min_std=c.min_std)  # prior sample for ŝ

        state = self.initial_state(B, obs_n.device)
        ds, hs, kls, h_priors = [], [], [], []
        for j in range(T1):
            d = self._deter(state.d, u[:, j], prev_action[:, j])
            hp_mean, hp_std = self._split(self.h_prior(torch.cat([context[:, j], state.h], -1)))
            hq_mean, hq_std = self._split(self.h_post(torch.cat([context[:, j], state.h, obs_n[:, j]], -1)))
            h, kl_h = gaussian_sample_kl(hp_mean, hp_std, hq_mean, hq_std, noise["h"][:, j], min_std=c.min_std,
                                         reverse=reverse)
            h_priors.append(gaussian_sample(hp_mean, hp_std, noise["h_prior"][:, j], min_std=c.min_std))
            ds.append(d)
            hs.append(h)
            kls.append(kl_h)
            state = LatentState(u[:, j], d, h)
        d_seq, h_seq = torch.stack(ds, 1), torch.stack(hs, 1)
        posterior = LatentState(u, d_seq, h_seq)
        # One-step prior predictions: ŝ_j = [û_j, GRU(d_{j-1}, [û_j, a_{j-1}]), ĥ_j] with s_{-1} = 0.
        d_prev = torch.cat([d_seq.new_zeros(B, 1, c.deter_dim), d_seq[:, :-1]], dim=1)
        d_hat = self._deter(d_prev, u_hat, prev_action)
        prior = LatentState(u_hat, d_hat, torch.stack(h_priors, 1))
        return Posterior(posterior, prior, kl_u, torch.stack(kls, 1), ls_kl_u, context)

    def forward(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training forward: the posterior pass and every loss term (``out["loss"]`` is minimized)."""
        from .losses import total_loss

        return total_loss(self, self.observe_window(batch, noise), batch)
