"""An ensemble of one-step heads on the latent state: what tells imagination where the model does not know.

``ModelConfig.ensemble`` = K > 0 gives a world model K small MLPs (:class:`EnsembleHeads`, one batched
module) that each predict, from ``[s_t, a_t]``, the next normalized observation ``o_{t+1}`` and the reward
``r_t`` in the reward head's scale, as Plan2Explore's ensemble of one-step predictors reads an RSSM's state.
They train on the posterior latents of real windows with the latents detached (so their loss never shapes
the world model; only the trainer's one gradient-norm clip sees both), each batch resampled for each member:
every window counts twice or not at all for a member (:func:`bootstrap_weights`, an online double-or-nothing
bootstrap drawn afresh for every batch from standard-normal noise, like every other random input), so the
members differ by their initial weights and the windows each saw when. The members' LayerNorms share their
scale and shift (one ``nn.LayerNorm`` per hidden layer); everything else is per member. Where the members
were trained their predictions agree; where the agent takes the model into states no data covered they part,
and :func:`disagreement` says by how much.

Elites (MBPO keeps 5 of 7): ``ensemble_elites`` members with the lowest error on held-out data
(:func:`held_out_errors`, :func:`choose_elites`) make up the ``elites`` mask, a buffer saved with the weights
and used by the exported ``ensemble`` graph; the trainer chooses them at every evaluation and a refit after
each fine-tuning.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: the model classes' ``defaults`` for the ensemble (every built-in model has one): 5 members, the best 4 elites
DEFAULTS = {"ensemble": 5, "ensemble_elites": 4}


class EnsembleLinear(nn.Module):
    """K independent ``Linear(in_dim, out_dim)`` applied to ``(..., K, in_dim)`` (or to ``(..., in_dim)``,
    shared by all members) → ``(..., K, out_dim)``; initialized as ``nn.Linear`` is, member by member."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        if shared:
            return torch.einsum("...i,kio->...ko", x, self.weight) + self.bias
        return torch.einsum("...ki,kio->...ko", x, self.weight) + self.bias


class EnsembleHeads(nn.Module):
    """K MLPs ``hidden_layers`` × (Linear → LayerNorm → SiLU) → Linear, as :func:`~mrcom_core.layers.mlp`
    builds one (each LayerNorm's scale and shift shared by the members), evaluated as one batched module:
    ``(..., in_dim)`` → ``(..., K, out_dim)``."""

    def __init__(self, members: int, in_dim: int, out_dim: int, hidden_dim: int, hidden_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * hidden_layers
        self.hidden = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(hidden_layers))
        self.out = EnsembleLinear(members, dims[-1], out_dim)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = True
        for layer, norm in zip(self.hidden, self.norms, strict=True):
            x = nn.functional.silu(norm(layer(x, shared)))
            shared = False
        return self.out(x, shared)


def bootstrap_weights(noise: torch.Tensor) -> torch.Tensor:
    """Double-or-nothing bootstrap weights (2 or 0, mean 1) from standard-normal ``noise``: each window of the
    batch counts twice or not at all for each member."""
    return 2.0 * (noise > 0).to(noise.dtype)


def predictions(model, state, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's prediction from ``[s_t, a_t]``: the next normalized observation ``(..., K, D)`` and the
    reward in the head's scale ``(..., K)`` (see :meth:`~mrcom_core.base.BaseWorldModel.scale_reward`)."""
    out = model.ensemble_heads(torch.cat([state.cat(), action], dim=-1))
    return out[..., :-1], out[..., -1]


def member_loss(model, states, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per member and window ``(B, K)``: the unit-variance Gaussian NLL of the window's next observations
    (normalized, every dim: a padded dim is a constant to learn, so it adds no disagreement) and rewards
    (in the head's scale), averaged over the window's steps. ``states``: the latents ``s_0 … s_{L-1}``."""
    detached = type(states)(*(x.detach() for x in states))
    obs, reward = predictions(model, detached, batch["action"])  # (B, L, K, D), (B, L, K)
    obs_error = torch.square(obs - model.normalize(batch["obs"][:, 1:])[:, :, None]).sum(-1)
    reward_error = torch.square(reward - model.scale_reward(batch["reward"])[..., None])
    return 0.5 * (obs_error + reward_error).mean(1)


def loss_ensemble(model, states, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ensemble's training loss: :func:`member_loss` weighted by each member's bootstrap
    (``noise["ensemble"]`` (B, K)), averaged over windows and members."""
    return (member_loss(model, states, batch) * bootstrap_weights(noise["ensemble"])).mean()


def disagreement(obs: torch.Tensor, reward: torch.Tensor, elites: torch.Tensor) -> torch.Tensor:
    """How far the elite members part: the root-mean-square over the prediction's dims (normalized
    observation and scaled reward) of their standard deviation across members; ``(..., K, D)``, ``(..., K)``
    and the ``elites`` mask (K,) → ``(...)``. 0 where the elites agree; about 1 where they differ by as much as
    the quantities vary in the data. Every one of the D padded observation dims counts (the graph knows no
    scenario's mask; the members learn a padded dim's constant and agree on it), so a scenario with fewer real
    dims reads lower by a constant factor: a percentile threshold is unaffected, a penalty's weight is not."""
    both = torch.cat([obs, reward[..., None]], dim=-1)  # (..., K, D+1)
    w = elites[:, None] / elites.sum()
    mean = (both * w).sum(-2, keepdim=True)
    var = (torch.square(both - mean) * w).sum(-2)  # (..., D+1)
    return torch.sqrt(var.mean(-1))


def choose_elites(errors: torch.Tensor, count: int) -> torch.Tensor:
    """The elite mask (K,) float: 1 for the ``count`` members with the lowest ``errors`` (K,), 0 elsewhere
    (``count`` 0 or ≥ K: every member)."""
    mask = torch.zeros_like(errors, dtype=torch.float32)
    k = errors.shape[0] if count <= 0 else min(count, errors.shape[0])
    mask[torch.argsort(errors)[:k]] = 1.0
    return mask


@torch.no_grad()
def held_out_errors(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each member's :func:`member_loss` (K,) on a held-out ``batch`` (the sampler's layout), from the posterior
    with its latents at their means (zero noise)."""
    noise = {k: torch.zeros(shape, device=batch["obs"].device)
             for k, shape in model.noise_shapes(*batch["action"].shape[:2]).items()}
    return member_loss(model, model.window_states(model(batch, noise)), batch).mean(0)


def update_elites(model, errors: torch.Tensor) -> float:
    """Set ``model.elites`` from the members' held-out ``errors`` (K,) (:func:`choose_elites` with
    ``config.ensemble_elites``); returns the elites' mean error."""
    errors = errors.float().cpu()
    mask = choose_elites(errors, model.config.ensemble_elites)
    model.elites.copy_(mask.to(model.elites.device))
    return float(errors[mask.bool()].mean())
