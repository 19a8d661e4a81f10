"""How a policy is scored in a target scenario, and the two floors every result states beside it.

Every method is scored on the same episodes: ``episodes`` episodes of the target scenario started from
seeds ``EVAL_SEED + i``, normalized return = 100 × episode return / episode length (dm_control rewards are
in [0, 1] per step). Two policies that learn nothing give the floors a learner has to clear: the
zero-action policy (standing still, or collapsing) and the uniform-random policy; a table that does not
show them cannot tell learning from the luck of the drawn target speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..scenarios import ScenarioEnv, ScenarioSpec, UnifiedSpace
from .adapt_config import normalized_return

EVAL_SEED = 1_000_000
FLOORS = ("zero", "random")  # the floor policies, in table order
FLOOR_LABELS = {"zero": "zero-action", "random": "random"}


def evaluate_policy(env: ScenarioEnv, act: Callable[[np.ndarray], np.ndarray], episodes: int) -> float:
    """Mean normalized return of ``act`` (observation → action in ``env``'s action space) over ``episodes``
    episodes of ``env``'s scenario, started from the evaluation seeds."""
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            obs, reward, _, done, _ = env.step(act(obs))
            total += reward
        returns.append(normalized_return(total, env.spec_.episode_length))
    return float(np.mean(returns))


def floor_scores(spec: ScenarioSpec, episodes: int, seed: int = 0) -> dict[str, float]:
    """The floors of scenario ``spec``: ``{"zero": …, "random": …}``, each the mean normalized return over
    the same evaluation episodes every learner is scored on (the random policy draws uniform actions in
    [-1, 1] from ``seed``)."""
    env = ScenarioEnv(spec, UnifiedSpace(spec.obs_dim, spec.act_dim))
    rng = np.random.default_rng(seed)
    zero = np.zeros(spec.act_dim, np.float32)
    return {"zero": evaluate_policy(env, lambda obs: zero, episodes),
            "random": evaluate_policy(env, lambda obs: rng.uniform(-1, 1, spec.act_dim).astype(np.float32),
                                      episodes)}


def summarize(results: list[float]) -> str:
    """``mean ± std`` over seeds (population std), as the paper's tables."""
    if not results:
        return "n/a"
    mean = float(np.mean(results))
    std = float(np.std(results)) if len(results) > 1 else 0.0
    return f"{mean:.1f}±{std:.1f}" if math.isfinite(mean) else "n/a"
