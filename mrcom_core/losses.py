"""MrCoM's losses (paper §3.1–3.4), one named function each, and the likelihood helpers every model's loss
uses. The model computes latents (``MrCoM.observe_window`` → :class:`MrCoMWindow`, the contract between the
two); this module turns them into losses; the trainer calls both.

Choices where the paper is ambiguous (each is a config switch or documented here):

* KL direction (``ModelConfig.kl_direction``): eqs. 10 and 12 print ``KL(p‖q)`` (prior ‖ posterior). The
  variational bound and eq. 11's derivation use ``KL(q‖p)``; that is our default (``post_prior``),
  ``prior_post`` follows the printed equations.
* ``L_s`` vs ``L_var``: taken literally both would contain the same u-KL. We read ``L_s`` (eq. 12) as the
  information bottleneck of eq. 11 acting on the *posterior*: ``KL(q_u ‖ sg(p_u))`` with the prior held
  fixed, so it removes from ``u`` what context and action cannot predict, while ``L_var``'s KL trains
  prior and posterior together.
* Free nats (``kl_free_nats``): each row's KL counts at least this much, so KL below it gives no gradient.
* Reconstruction is the unit-variance Gaussian NLL (0.5·squared error, constants dropped) summed over the
  real observation dims of each scenario (padded dims are ignored); the reward head is part of ``L_var``'s
  likelihood term (``reward_loss_weight``), because imagination needs it.
* Value heads (eqs. 13–14) learn on detached latents, so they never shape the world model themselves; the
  TD target uses the same head on ``s_{t+1}`` under a stop-gradient. ``L_v`` (eq. 15) compares
  ``sg(v(s_{t+1}))`` with ``v(ŝ_{t+1})``, ŝ the one-step prior prediction from the posterior ``s_t`` (one
  sample of the expectation), evaluated with the meta-value's parameters detached: its gradient reaches
  the world model only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.func import functional_call

from .base import BaseWorldModel, Gaussian, LatentState
from .config import ModelOptions
from .ensemble import loss_ensemble
from .errors import check_int, check_number
from .kernels import gaussian_sample_kl
from .steps import prime_from_batch, rollout

Batch = dict[str, torch.Tensor]


class MrCoMWindow(NamedTuple):
    """What MrCoM's training pass over a window returns (time axis = window steps 0 … L)."""

    state: LatentState  # posterior latents, each (B, L+1, ·)
    prev: LatentState  # the posterior before each step: s_{-1} (the initial zeros), s_0 … s_{L-1}
    context: torch.Tensor  # (B, L+1, ctx) c_0 … c_L
    prev_action: torch.Tensor  # (B, L+1, A) a_{-1} … a_{L-1}
    u_prior: Gaussian  # p(u_j | c_j, a_{j-1}), (B, L+1, U)
    u_post: Gaussian  # q(u_j | c_j, a_{j-1}, o_j)
    h_prior: Gaussian  # p(h_j | c_j, h_{j-1}) with h_{j-1} the posterior's
    kl_u: torch.Tensor  # (B, L+1) KL between u posterior and prior, in the configured direction (fused)
    kl_h: torch.Tensor  # (B, L+1)


@dataclass(frozen=True)
class OvershootOptions(ModelOptions):
    """The options of a model whose loss has :func:`loss_overshoot` (MrCoM and the RSSMs): ``overshoot_horizon``
    > 0 adds that multi-step term, weight ``overshoot_weight``. A window of L steps holds at most L of them
    (``H = min(overshoot_horizon, L)``), so ``mrcom train`` refuses a horizon above ``train.window_len`` when
    either is set by the user (a preset's own pair stands: ``tiny`` imagines its 8-step windows)."""

    overshoot_horizon: int = 0
    overshoot_weight: float = 1.0

    def __post_init__(self):
        check_int("model.overshoot_horizon", self.overshoot_horizon, minimum=0)
        check_number("model.overshoot_weight", self.overshoot_weight)


# ------------------------------------------------------------------------------------ shared likelihoods
def masked_sq_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over dims of ``(pred - target)² · mask``; ``mask`` (B, D) broadcast over time."""
    return (torch.square(pred - target) * mask[:, None, :]).sum(-1)


def reward_nll(model: BaseWorldModel, states: LatentState, batch: Batch) -> torch.Tensor:
    """Unit-variance Gaussian NLL (B, L) of the window's rewards under the reward head, both in the head's
    scale (standardized under ``reward_scale="unit"``); ``states`` are the latents ``s_0 … s_{L-1}`` in which
    the window's actions were taken."""
    return 0.5 * torch.square(model.reward_scaled(states, batch["action"]) - model.scale_reward(batch["reward"]))


# ----------------------------------------------------------------------------------------- MrCoM's terms
def loss_var(model: BaseWorldModel, window: MrCoMWindow, batch: Batch) -> dict[str, torch.Tensor]:
    """``L_var`` (eq. 10): KL of u and h between prior and posterior, plus the negative log-likelihood of
    the observations (decoder) and the rewards (reward head), averaged over batch and window steps."""
    c = model.config
    recon = 0.5 * masked_sq_error(model.decode(window.state), model.normalize(batch["obs"]), batch["obs_mask"])
    reward = reward_nll(model, model.window_states(window), batch)  # (B, L)
    kl_u = torch.clamp(window.kl_u, min=c.kl_free_nats)
    kl_h = torch.clamp(window.kl_h, min=c.kl_free_nats)
    total = (kl_u + kl_h + recon).mean() + c.reward_loss_weight * reward.mean()
    return {"var": total, "kl_u": window.kl_u.mean(), "kl_h": window.kl_h.mean(), "recon": recon.mean(),
            "reward": reward.mean()}


def loss_s(model: BaseWorldModel, window: MrCoMWindow) -> torch.Tensor:
    """``L_s`` (eq. 12), meta-state regularization: ``KL(q(u_t|C_t,a,o_t) ‖ sg(p(u_t|C_t,a)))``, which
    bounds the mutual information ``I(u_t; o_t | C_t, a)`` of eq. 11 (trains only the posterior)."""
    p, q = window.u_prior, window.u_post
    _, kl = gaussian_sample_kl(p.mean.detach(), p.std_raw.detach(), q.mean, q.std_raw, torch.zeros_like(q.mean),
                               min_std=model.config.min_std, reverse=False)
    return kl.mean()


def one_step_priors(model: BaseWorldModel, window: MrCoMWindow, noise: Batch) -> LatentState:
    """ŝ_j, the prior's prediction of each window step from the posterior ``s_{j-1}`` (``s_{-1}`` = 0): the
    model's own transition from the window's priors, sampled with ``noise["u_prior"]`` / ``noise["h_prior"]``."""
    return model.transition(window.prev, (window.u_prior, window.h_prior), window.prev_action, noise["u_prior"],
                            noise["h_prior"])


def loss_value_heads(model: BaseWorldModel, window: MrCoMWindow, batch: Batch) -> dict[str, torch.Tensor]:
    """The per-scenario value heads by TD (eq. 14) and the meta-value regressed on them (eq. 13).

    ``L_value_i = ‖v_i(s_t) − (r_t + γ·sg(v_i(s_{t+1})))‖²`` with i the batch row's scenario;
    ``L_value = ‖v(s_t) − sg(v_i(s_t))‖²``. Latents are detached: these losses train the heads only.
    """
    s = window.state.cat().detach()  # (B, L+1, S)
    per_scenario = model.value_heads(s)  # (B, L+1, N)
    index = batch["scenario"][:, None, None].expand(-1, s.shape[1], 1)
    v_i = per_scenario.gather(-1, index)[..., 0]  # (B, L+1)
    target = batch["reward"] + model.config.options.gamma * v_i[:, 1:].detach()
    td = torch.square(v_i[:, :-1] - target).mean()
    meta = torch.square(model.meta_value(s)[..., 0] - v_i.detach()).mean()
    return {"value_i": td, "value": meta}


def loss_v(model: BaseWorldModel, window: MrCoMWindow, noise: Batch) -> torch.Tensor:
    """``L_v`` (eq. 15), meta-value regularization: ``‖sg(v(s_{t+1})) − v(ŝ_{t+1})‖²`` with ŝ_{t+1} the
    prior's prediction from ``s_t, a_t`` (:func:`one_step_priors`); the meta-value's parameters are frozen
    here, so the gradient goes to the world model only."""
    target = model.meta_value(window.state.cat()[:, 1:].detach())[..., 0].detach()
    frozen = {name: p.detach() for name, p in model.meta_value.named_parameters()}
    predicted = functional_call(model.meta_value, frozen, (one_step_priors(model, window, noise).cat()[:, 1:],))
    return torch.square(predicted[..., 0] - target).mean()


def loss_overshoot(model: BaseWorldModel, batch: Batch, noise: Batch) -> torch.Tensor:
    """Multi-step open-loop reconstruction (not in the paper; ``overshoot_horizon`` > 0 turns it on).

    From each window's first posterior state (:func:`~mrcom_core.steps.prime_from_batch`, with the window's
    own step-0 noise) the prior imagines ``H = min(overshoot_horizon, L)`` steps with the real actions,
    exactly as in imagination (:func:`~mrcom_core.steps.rollout`): mean latents, and every predicted
    observation and reward goes back into the context FIFO. The loss is the unit-variance Gaussian NLL of
    the real observations under the decoded predictions (real dims only), averaged over steps. The one-step
    priors of ``L_var`` never see their own predictions in the context; this term trains them to.
    """
    action = batch["action"]
    H = min(model.config.options.overshoot_horizon, action.shape[1])
    obs_n = model.normalize(batch["obs"])
    state, cache = prime_from_batch(model, batch, noise["u"][:, 0], noise["h"][:, 0])
    pred = rollout(model, state, cache, obs_n[:, 0], H, action[:, :H]).obs
    return 0.5 * masked_sq_error(pred, obs_n[:, 1 : H + 1], batch["obs_mask"]).mean()


def total_loss(model: BaseWorldModel, window: MrCoMWindow, batch: Batch, noise: Batch, *,
               overshoot: bool = True) -> dict[str, torch.Tensor]:
    """``L = λ_var·L_var + λ_s·L_s + λ_v·L_v`` (eq. 16) plus the value heads' own losses (and the optional
    overshooting term; ``overshoot=False`` leaves it out for a caller that computes it apart).

    Returns a dict with ``loss`` (what to minimize) and every term for logging; ablated terms are absent.
    """
    o = model.config.options
    parts = loss_var(model, window, batch)
    loss = model.config.lambda_var * parts["var"]
    if not o.no_ls:
        parts["s"] = loss_s(model, window)
        loss = loss + o.lambda_s * parts["s"]
    if not o.no_lv:
        parts.update(loss_value_heads(model, window, batch))
        parts["v"] = loss_v(model, window, noise)
        loss = loss + o.lambda_v * parts["v"] + o.value_loss_weight * (parts["value_i"] + parts["value"])
    loss = with_overshoot(model, batch, noise, parts, loss) if overshoot else loss
    loss = with_ensemble(model, window, batch, noise, parts, loss)
    parts["loss"] = loss
    return parts


def with_overshoot(model: BaseWorldModel, batch: Batch, noise: Batch, parts: dict,
                   loss: torch.Tensor) -> torch.Tensor:
    """``loss`` plus, when the model's options ask for it (:class:`OvershootOptions` with a horizon > 0), the
    weighted :func:`loss_overshoot`, logged as ``parts["overshoot"]``."""
    if not overshoots(model.config.options):
        return loss
    parts["overshoot"] = loss_overshoot(model, batch, noise)
    return loss + model.config.options.overshoot_weight * parts["overshoot"]


def overshoots(options: ModelOptions) -> bool:
    """Whether a model with ``options`` trains with :func:`loss_overshoot`."""
    return isinstance(options, OvershootOptions) and options.overshoot_horizon > 0


def with_ensemble(model: BaseWorldModel, window, batch: Batch, noise: Batch, parts: dict,
                  loss: torch.Tensor) -> torch.Tensor:
    """``loss`` plus, for a model with an ensemble (``config.ensemble`` > 0), its heads' own loss
    (:func:`~mrcom_core.ensemble.loss_ensemble` on the detached latents of ``window``,
    :meth:`~mrcom_core.base.BaseWorldModel.window_states`: it trains the heads only), logged as
    ``parts["ensemble"]``."""
    if model.ensemble_heads is None:
        return loss
    parts["ensemble"] = loss_ensemble(model, model.window_states(window), batch, noise)
    return loss + parts["ensemble"]
