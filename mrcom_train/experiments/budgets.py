"""The budgets of ``mrcom reproduce`` (:data:`BUDGETS`: how much data, training and adaptation one table's split
gets) and :func:`customized`, a budget with the user's adaptation settings (``--set``) and cell domains
(``--domains``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mrcom_core.config import apply_overrides
from mrcom_core.errors import UserInputError

from ..rl.adapt_config import AdaptConfig
from ..scenarios import DOMAINS

#: AdaptConfig fields the protocol sets for every cell itself (``--set`` may not)
PER_CELL = ("split", "range", "domain", "seed", "env_steps", "episode_length", "use_model", "imagination",
            "eval_every", "checkpoint_every")


@dataclass(frozen=True)
class Budget:
    scenarios_per_domain: int
    episodes_per_scenario: int
    episode_length: int
    behaviour: str
    preset: str
    train_steps: int
    export_horizon: int
    eval_scenarios: int
    adapt_env_steps: int
    adapt_episode_length: int
    adapt: dict
    domains: tuple[str, ...] = field(default_factory=lambda: tuple(DOMAINS))  # collected, evaluated and tabulated
    collect: dict = field(default_factory=dict)  # extra CollectConfig fields for the training data
    reference_env_steps: int | None = None  # SAC (G=1)'s env steps, when it runs longer (the efficiency reference)
    eval_every: int | None = None  # adaptation's evaluation interval [default: a quarter of its env steps]
    adapt_domains: tuple[str, ...] | None = None  # the domains of the adaptation cells [default: ``domains``]

    @property
    def cell_domains(self) -> tuple[str, ...]:
        return self.adapt_domains or self.domains


# ``small``: sized to run Table 1 (c)/(d) for one split and 3 seeds in <= 4 h on 2 cores (see docs/results.md):
# walker and cheetah only (hopper's cells would add half again, and SAC scores ~0 on it at 10k steps), 8
# scenarios per domain collected by warm-started SAC chains (later scenarios by a policy that moves), the
# `small` model for 3,000 updates (MrCoM's best checkpoint came at ~1,250 of 1,500 in the variant table),
# SAC 2x128 with batch 128 and G = 4, each SAC batch half real (MBPO's 5% let the agent exploit a model that
# was pretrained elsewhere: on cheetah the frozen arm ended at its floors on 5 of 6 targets, the refit arm on
# 3; see docs/history.md). ``paper``: the paper's scale on a many-core machine or a GPU: every
# domain, 20 scenarios x 50 episodes, the `base` model, MBPO's G = 20 and 100,000 rollouts per round.
BUDGETS = {
    "smoke": Budget(1, 2, 100, "random", "tiny", 30, 2, 1, 150, 50,
                    dict(learning_starts=50, model_rollout_every=50, rollout_batch=32, retain_rounds=2,
                         horizon_start=1, horizon_end=2, updates_per_step=2, eval_episodes=1, sac_hidden=32,
                         batch_size=32, refit_every=50, refit_steps=5)),
    "small": Budget(8, 10, 1000, "sac", "small", 3000, 15, 2, 10_000, 1000,
                    dict(learning_starts=1000, model_rollout_every=250, rollout_batch=4000, retain_rounds=4,
                         updates_per_step=4, real_ratio=0.5, sac_hidden=128, batch_size=128, eval_episodes=3,
                         refit_every=1000),
                    domains=("walker", "cheetah"),
                    collect=dict(sac_chain=8, sac_hidden_dim=128, sac_batch_size=128)),
    # The refit arms refit every 1,000 env steps at ``small`` and 2,500 at ``long`` (MBPO's 250 costs ~35 s of CPU
    # per refit of the ``small`` model: 36 refits would add ~20 min to every 10,000-step cell).
    # ``long``: the sample-efficiency measure: the model arms for 50,000 env steps, SAC (G=1) for 100,000, every
    # arm evaluated every 2,500 steps, so each arm's steps to SAC (G=1)'s final return can be read off its curve
    # (``--seeds 2``: two targets per domain and range).
    "long": Budget(8, 10, 1000, "sac", "small", 3000, 15, 2, 50_000, 1000,
                   dict(learning_starts=1000, model_rollout_every=250, rollout_batch=4000, retain_rounds=4,
                        updates_per_step=4, real_ratio=0.5, sac_hidden=128, batch_size=128, eval_episodes=3,
                        refit_every=2500),
                   domains=("walker", "cheetah"), collect=dict(sac_chain=8, sac_hidden_dim=128, sac_batch_size=128),
                   reference_env_steps=100_000, eval_every=2500),
    "paper": Budget(20, 50, 1000, "sac", "base", 100_000, 15, 5, 200_000, 1000,
                    dict(learning_starts=5000, model_rollout_every=250, rollout_batch=100_000, retain_rounds=4,
                         updates_per_step=20, real_ratio=0.05, eval_episodes=10),
                    collect=dict(sac_chain=5)),
}


def customized(b: Budget, adapt: dict | None = None, domains: tuple[str, ...] = ()) -> Budget:
    """``b`` with ``adapt`` (AdaptConfig field → value or string, e.g. ``{"updates_per_step": "20"}``: every arm's
    adaptation setting, except that SAC (G=1) keeps G = 1 and the arms without a world model of their own ignore
    :data:`~mrcom_train.rl.adapt_config.WORLD_MODEL_FIELDS`) and the adaptation cells limited to ``domains`` (the
    world models still learn every domain of the budget). Bad fields and values are one line naming them."""
    adapt = dict(adapt or {})
    fixed = [k for k in adapt if k in PER_CELL]
    if fixed:
        raise UserInputError(f"--set {fixed[0]}: the protocol sets it for every cell (use the budget, --seeds or "
                             f"--domains)")
    unknown = [d for d in domains if d not in b.domains]
    if unknown:
        raise UserInputError(f"--domains: {unknown[0]!r} is not one of this budget's domains "
                             f"({', '.join(b.domains)})")
    domains = tuple(dict.fromkeys(domains))
    # names and values as `mrcom adapt --set` reads them (every arm's whole config is checked by the caller)
    checked = apply_overrides(AdaptConfig(domain=(domains or b.domains)[0]), adapt, "adapt")
    return dataclasses.replace(b, adapt={**b.adapt, **{k: getattr(checked, k) for k in adapt}},
                               adapt_domains=domains or None)
