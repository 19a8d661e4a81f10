"""MrCoM's losses (paper §3.1–3.4), one named function each.

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

from typing import TYPE_CHECKING

import torch
from torch.func import functional_call

if TYPE_CHECKING:
    from .world_model import Posterior, WorldModel


def _masked_sq_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over dims of ``(pred - target)² · mask``; ``mask`` (B, D) broadcast over time."""
    return (torch.square(pred - target) * mask[:, None, :]).sum(-1)


def loss_var(model: WorldModel, post: Posterior, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``L_var`` (eq. 10): KL of u and h between prior and posterior, plus the negative log-likelihood of
    the observations (decoder) and the rewards (reward head), averaged over batch and window steps."""
    c = model.config
    obs_n = model.normalize(batch["obs"])
    recon = 0.5 * _masked_sq_error(model.decode(post.state), obs_n, batch["obs_mask"])  # (B, L+1)
    states = type(post.state)(*(x[:, :-1] for x in post.state))
    reward_pred = model.reward(states, batch["action"])
    reward_nll = 0.5 * torch.square(reward_pred - batch["reward"])  # (B, L)
    kl_u = torch.clamp(post.kl_u, min=c.kl_free_nats)
    kl_h = torch.clamp(post.kl_h, min=c.kl_free_nats)
    total = (kl_u + kl_h + recon).mean() + c.reward_loss_weight * reward_nll.mean()
    return {"var": total, "kl_u": post.kl_u.mean(), "kl_h": post.kl_h.mean(), "recon": recon.mean(),
            "reward": reward_nll.mean()}


def loss_s(post: Posterior) -> torch.Tensor:
    """``L_s`` (eq. 12), meta-state regularization: ``KL(q(u_t|C_t,a,o_t) ‖ sg(p(u_t|C_t,a)))``, which
    bounds the mutual information ``I(u_t; o_t | C_t, a)`` of eq. 11."""
    return post.ls_kl_u.mean()


def loss_value_heads(model: WorldModel, post: Posterior, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-scenario value heads by TD (eq. 14) and the meta-value regressed on them (eq. 13).

    ``L_value_i = ‖v_i(s_t) − (r_t + γ·sg(v_i(s_{t+1})))‖²`` with i the batch row's scenario;
    ``L_value = ‖v(s_t) − sg(v_i(s_t))‖²``. Latents are detached: these losses train the heads only.
    """
    s = post.state.cat().detach()  # (B, L+1, S)
    per_scenario = model.value_heads(s)  # (B, L+1, N)
    index = batch["scenario"][:, None, None].expand(-1, s.shape[1], 1)
    v_i = per_scenario.gather(-1, index)[..., 0]  # (B, L+1)
    target = batch["reward"] + model.config.gamma * v_i[:, 1:].detach()
    td = torch.square(v_i[:, :-1] - target).mean()
    meta = torch.square(model.meta_value(s)[..., 0] - v_i.detach()).mean()
    return {"value_i": td, "value": meta}


def loss_v(model: WorldModel, post: Posterior) -> torch.Tensor:
    """``L_v`` (eq. 15), meta-value regularization: ``‖sg(v(s_{t+1})) − v(ŝ_{t+1})‖²`` with ŝ_{t+1} the
    prior's prediction from ``s_t, a_t``; the meta-value's parameters are frozen here, so the gradient
    goes to the world model only."""
    target = model.meta_value(post.state.cat()[:, 1:].detach())[..., 0].detach()
    frozen = {name: p.detach() for name, p in model.meta_value.named_parameters()}
    predicted = functional_call(model.meta_value, frozen, (post.prior_state.cat()[:, 1:],))[..., 0]
    return torch.square(predicted - target).mean()


def loss_overshoot(model: WorldModel, post: Posterior, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Multi-step open-loop reconstruction (not in the paper; ``overshoot_horizon`` > 0 turns it on).

    From each window's first posterior state ``s_0`` the prior imagines ``H = min(overshoot_horizon, L)``
    steps with the real actions, exactly as in imagination: mean latents, and every predicted observation
    and reward goes back into the context FIFO. The loss is the unit-variance Gaussian NLL of the real
    observations under the decoded predictions (real dims only), averaged over steps. The one-step
    priors of ``L_var`` never see their own predictions in the context; this term trains them to.
    """
    from .rollout import imagine_open_loop

    action = batch["action"]
    H = min(model.config.overshoot_horizon, action.shape[1])
    obs_n = model.normalize(batch["obs"])
    tokens = model.tokens(model.normalize(batch["context_obs"]), batch["context_action"], batch["context_reward"])
    _, cache = model.encode_context(tokens)
    state = type(post.state)(*(x[:, 0] for x in post.state))
    pred = imagine_open_loop(model, state, cache, obs_n[:, 0], action[:, :H])
    return 0.5 * _masked_sq_error(pred, obs_n[:, 1 : H + 1], batch["obs_mask"]).mean()


def total_loss(model: WorldModel, post: Posterior, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``L = λ_var·L_var + λ_s·L_s + λ_v·L_v`` (eq. 16) plus the value heads' own losses (and the optional
    overshooting term).

    Returns a dict with ``loss`` (what to minimize) and every term for logging; ablated terms are absent.
    """
    c = model.config
    parts = loss_var(model, post, batch)
    loss = c.lambda_var * parts["var"]
    if not c.no_ls:
        parts["s"] = loss_s(post)
        loss = loss + c.lambda_s * parts["s"]
    if not c.no_lv:
        parts.update(loss_value_heads(model, post, batch))
        parts["v"] = loss_v(model, post)
        loss = loss + c.lambda_v * parts["v"] + c.value_loss_weight * (parts["value_i"] + parts["value"])
    if c.overshoot_horizon:
        parts["overshoot"] = loss_overshoot(model, post, batch)
        loss = loss + c.overshoot_weight * parts["overshoot"]
    parts["loss"] = loss
    return parts
