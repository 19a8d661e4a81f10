"""The MrCoM world model (paper §3.1), with separate ``observe`` (posterior) and ``imagine`` (prior) steps.

Index convention (docs/design.md): the context of step t is ``C_t = {(o_k, a_k, r_k)}_{k=t-m}^{t-1}`` and
``c_t = Enc(C_t)``;

* stochastic ``u_t``: prior ``p(u_t | c_t, a_{t-1})``, posterior ``q(u_t | c_t, a_{t-1}, o_t)`` (eq. 6 read
  literally); with ``model.u_on_d`` (:class:`MrCoMOptions`, the default) both also see ``d_{t-1}`` (eq. 15's
  transition from the whole ``s̃_t``; ``d_{-1}`` = the initial state's zeros), so imagination carries memory
  through d, not only through the decoded predictions in the context;
* deterministic ``d_t = GRU(d_{t-1}, [u_t, a_{t-1}])``;
* auxiliary ``h_t``: prior ``p(h_t | c_t, h_{t-1})``, posterior ``q(h_t | c_t, h_{t-1}, o_t)``;
* latent ``s_t = [u_t, d_t, h_t]``; decoder ``o_t ≈ dec(s_t)``; reward ``r_t ≈ rew(s_t, a_t)``;
* per-scenario value heads ``v_i(s_t)`` and the meta-value ``v(s_t)`` (§3.3).

The losses are in :mod:`mrcom_core.losses` (one function per equation). Random numbers never come from
inside: every sample takes its standard-normal noise as an input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import ensemble
from ..base import BaseWorldModel, Gaussian, LatentSizes, LatentState
from ..config import ABLATIONS, ModelConfig, check_bool
from ..errors import UserInputError, check_number
from ..kernels import gaussian_sample, gaussian_sample_kl
from ..layers import GRUCell, mlp
from ..losses import MrCoMWindow, OvershootOptions, total_loss
from ..scan import scan, shifted


@dataclass(frozen=True)
class MrCoMOptions(OvershootOptions):
    """MrCoM's own switches (``--set model.FIELD=VALUE`` like every model field).

    The paper's ablations (§5.3; :mod:`mrcom_core.config`): ``no_d``, ``no_context``, ``no_ls``, ``no_lv``.
    Eq. 16's weights ``lambda_s`` (``L_s``) and ``lambda_v`` (``L_v``), and ``value_loss_weight`` on the value
    heads' own TD and regression losses (they only train the value heads); ``gamma``: their TD discount
    (eq. 14).

    ``u_on_d`` (off = eq. 6 read literally, ``p(u_t | c_t, a_{t-1})``): also condition u's prior and posterior
    on the previous deterministic state, ``p(u_t | c_t, a_{t-1}, d_{t-1})`` and ``q(u_t | c_t, a_{t-1},
    d_{t-1}, o_t)``. Eq. 15 writes the transition from the whole ``s̃_t = {u, d, h}`` and §5.3 says d carries
    the temporal information; read literally, u has no recurrent input and in imagination all memory of the
    previous step passes through the decoded prediction in the context. ``d_{-1}`` is the model's initial d
    (zeros), in training and in the one-step functions alike. Under ``no_d`` there is no d to feed, so
    ``u_on_d`` changes nothing there (a documented no-op, which keeps the w/o d ablation runnable).

    ``overshoot_horizon`` (:class:`~mrcom_core.losses.OvershootOptions`; not in the paper): each window's first
    posterior state imagines that many steps open loop (mean latents, predictions fed back into the context, as
    in imagination) and the decoded observations are regressed on the real ones
    (:func:`~mrcom_core.losses.loss_overshoot`).

    The defaults, ``u_on_d`` with 15-step overshooting, are the best of the four transition variants measured in
    docs/results.md; the literal reading is ``mrcom train --config configs/mrcom-literal.toml`` (or ``--set
    model.u_on_d=false --set model.overshoot_horizon=0``).
    """

    overshoot_horizon: int = 15
    no_d: bool = False
    no_context: bool = False
    no_ls: bool = False
    no_lv: bool = False
    u_on_d: bool = True
    lambda_s: float = 0.1
    lambda_v: float = 0.1
    value_loss_weight: float = 1.0
    gamma: float = 0.99

    def __post_init__(self):
        super().__post_init__()
        for name in (*ABLATIONS, "u_on_d"):
            check_bool(f"model.{name}", getattr(self, name))
        for name in ("lambda_s", "lambda_v", "value_loss_weight"):
            check_number(f"model.{name}", getattr(self, name))
        if not 0 <= self.gamma < 1:
            raise UserInputError(f"model.gamma must be in [0, 1), got {self.gamma!r}")


class Posterior(NamedTuple):
    """What :meth:`MrCoM.posterior_step` returns per step (and a window pass, stacked over the steps)."""

    state: LatentState  # the posterior sample s_t
    u: Gaussian  # q(u_t | c_t, a_{t-1}(, d_{t-1}), o_t)
    h: Gaussian  # q(h_t | c_t, h_{t-1}, o_t)


class MrCoM(BaseWorldModel):
    """MrCoM (paper §3): context encoder, latents u (stochastic), d (GRU), h (auxiliary), meta-value heads.

    See the module docstring for the factorization.
    """

    label = "Ours"
    Options = MrCoMOptions
    #: the options that ablate a component (paper §5.3)
    ablations = ABLATIONS
    defaults = {**BaseWorldModel.defaults, **ensemble.DEFAULTS}
    supports_ensemble = True
    loss = total_loss

    @classmethod
    def latent_sizes(cls, config: ModelConfig) -> LatentSizes:
        o = config.options
        return LatentSizes(u=config.u_dim, d=0 if o.no_d else config.d_dim, h=config.h_dim,
                           context=0 if o.no_context else config.ctx_dim)

    def __init__(self, config: ModelConfig, **stats):
        super().__init__(config, **stats)
        c, o, s = config, config.options, self.sizes
        A, C, H = c.act_dim, s.context, c.h_dim
        self.u_on_d = o.u_on_d and s.d > 0  # under no_d there is no d to feed: a no-op (see MrCoMOptions)
        Du = s.d if self.u_on_d else 0
        self.u_prior = mlp(C + A + Du, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.u_post = mlp(C + A + Du + c.obs_dim, 2 * c.u_dim, c.hidden_dim, c.hidden_layers)
        self.gru = None if o.no_d else GRUCell(c.u_dim + A, s.d)
        self.h_prior = mlp(C + H, 2 * H, c.hidden_dim, c.hidden_layers)
        self.h_post = mlp(C + H + c.obs_dim, 2 * H, c.hidden_dim, c.hidden_layers)
        self.decoder = mlp(s.state, c.obs_dim, c.hidden_dim, c.hidden_layers)
        self.reward_head = mlp(s.state + A, 1, c.hidden_dim, c.hidden_layers)
        if not o.no_lv:
            self.value_heads = mlp(s.state, c.num_scenarios, c.hidden_dim, c.hidden_layers)
            self.meta_value = mlp(s.state, 1, c.hidden_dim, c.hidden_layers)
        else:
            self.value_heads = self.meta_value = None

    def deterministic(self, d: torch.Tensor, u: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        """``d_t = GRU(d_{t-1}, [u_t, a_{t-1}])`` (``d`` unchanged, 0 dims, under ``no_d``)."""
        if self.gru is None:
            return d
        return self.gru(torch.cat([u, prev_action], dim=-1), d)

    def u_inputs(self, context: torch.Tensor, prev_action: torch.Tensor, d_prev: torch.Tensor,
                 *obs_n: torch.Tensor) -> torch.Tensor:
        """The input of u's prior ``[c_t, a_{t-1}(, d_{t-1})]`` or, given ``o_t``, of its posterior (with
        ``o_t`` last); ``d_{t-1}`` only under ``u_on_d`` (a config constant: no branching on tensors)."""
        parts = [context, prev_action, d_prev] if self.u_on_d else [context, prev_action]
        return torch.cat([*parts, *obs_n], -1)

    # ------------------------------------------------------------------------------------ step functions
    def priors(self, prev: LatentState, context: torch.Tensor, prev_action: torch.Tensor) -> tuple[Gaussian, Gaussian]:
        """``p(u_t | c_t, a_{t-1}(, d_{t-1}))`` and ``p(h_t | c_t, h_{t-1})`` from the previous state ``prev``;
        one step ``(B, ·)`` or a whole window ``(B, T, ·)`` at once."""
        return (Gaussian.split(self.u_prior(self.u_inputs(context, prev_action, prev.d))),
                Gaussian.split(self.h_prior(torch.cat([context, prev.h], -1))))

    def posteriors(self, prev: LatentState, context: torch.Tensor, prev_action: torch.Tensor,
                   obs_n: torch.Tensor) -> tuple[Gaussian, Gaussian]:
        """``q(u_t | c_t, a_{t-1}(, d_{t-1}), o_t)`` and ``q(h_t | c_t, h_{t-1}, o_t)``."""
        return (Gaussian.split(self.u_post(self.u_inputs(context, prev_action, prev.d, obs_n))),
                Gaussian.split(self.h_post(torch.cat([context, prev.h, obs_n], -1))))

    def transition(self, prev: LatentState, dists: tuple[Gaussian, Gaussian], prev_action: torch.Tensor,
                   noise_u: torch.Tensor, noise_h: torch.Tensor) -> LatentState:
        """``s_t`` from ``s_{t-1}`` and the distributions of ``u_t`` and ``h_t`` (the priors or the posteriors):
        ``u_t`` and ``h_t`` sampled with the given standard-normal noise, ``d_t`` by the GRU."""
        ms = self.config.min_std
        (u_mean, u_raw), (h_mean, h_raw) = dists
        u = gaussian_sample(u_mean, u_raw, noise_u, min_std=ms)
        return LatentState(u, self.deterministic(prev.d, u, prev_action),
                           gaussian_sample(h_mean, h_raw, noise_h, min_std=ms))

    def observe_step(self, state, context, prev_action, obs_n, noise_u, noise_h) -> LatentState:
        return self.transition(state, self.posteriors(state, context, prev_action, obs_n), prev_action, noise_u,
                               noise_h)

    def imagine_step(self, state, context, prev_action, noise_u, noise_h) -> LatentState:
        return self.transition(state, self.priors(state, context, prev_action), prev_action, noise_u, noise_h)

    def posterior_step(self, prev: LatentState, context, prev_action, obs_n, noise_u,
                       noise_h) -> tuple[LatentState, Posterior]:
        """:meth:`observe_step` that also returns the posteriors it sampled from (the step a window scans)."""
        q = self.posteriors(prev, context, prev_action, obs_n)
        state = self.transition(prev, q, prev_action, noise_u, noise_h)
        return state, Posterior(state, *q)

    # ------------------------------------------------------------------------------ training-time pass
    def observe_window(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> MrCoMWindow:
        """Posterior pass over a sampled window (see ``mrcom_train.datasets.sampler`` for the batch layout): a
        scan of :meth:`posterior_step`, then the priors of every step from the posterior before it and their KL
        terms, over the whole window at once (they feed nothing inside the loop).

        The context and window form one (m + L)-token sequence that the streaming encoder reads once; ``c_j``
        for window step j is the readout at token ``m - 1 + j``. Uses ``noise["u"]`` and ``noise["h"]`` (B, L+1, ·).
        """
        c = self.config
        obs_n = self.normalize(batch["obs"])  # (B, L+1, D)
        context = self.window_context(batch)  # (B, L+1, ctx)
        prev_action = torch.cat([batch["context_action"][:, -1:], batch["action"]], dim=1)  # a_{j-1}
        start = self.initial_state(obs_n.shape[0], obs_n.device)
        _, post = scan(self.posterior_step, start, context, prev_action, obs_n, noise["u"], noise["h"])
        prev = shifted(start, post.state)
        u_prior, h_prior = self.priors(prev, context, prev_action)
        # the fused kernel's sample equals the posterior's (same distribution and noise); only its KL is kept
        reverse = c.kl_direction == "prior_post"
        _, kl_u = gaussian_sample_kl(u_prior.mean, u_prior.std_raw, post.u.mean, post.u.std_raw, noise["u"],
                                     min_std=c.min_std, reverse=reverse)
        _, kl_h = gaussian_sample_kl(h_prior.mean, h_prior.std_raw, post.h.mean, post.h.std_raw, noise["h"],
                                     min_std=c.min_std, reverse=reverse)
        return MrCoMWindow(post.state, prev, context, prev_action, u_prior, post.u, h_prior, kl_u, kl_h)
