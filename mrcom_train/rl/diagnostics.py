"""How wrong the imagination is where the agent is: the one-step error of the model (or the oracle) on the
target's own real transitions, measured at every evaluation of ``mrcom adapt``.

:func:`model_error` draws :data:`DIAGNOSTIC_STARTS` start states from the adapter's real episodes (the live one
included) as imagination draws them, among those with a real next step; the imagination, started there (the
model primed with the ``history_len`` real steps before each, the oracle from the stored physics state), takes
the real action taken there, one step (the model with sampled latents). It returns:

* ``reward_mae``: mean |r̂ − r| of the reward imagined transitions get (``imagined_reward="true"``: the true
  reward of the predicted observation, so the error the dynamics cause in it; ``"learned"``: the target's reward
  model's of the transition with the predicted observation);
* ``reward_real_mean``: mean |r|, for scale;
* with a model's ensemble, ``real_disagreement`` (the elites' mean disagreement on these transitions, to set
  beside the disagreement of the imagined ones) and ``disagreement_error_corr`` (Pearson's correlation across
  the transitions between the disagreement and each one's relative error, the larger of its reward error over
  the mean |r| and its observation error: how well the gate's signal points at the model's errors);
* ``obs_nmse``: squared error of the next observation over the scenario's dims, each normalised by the
  export's observation statistics (``(o − obs_mean) / obs_std``: the open-loop error of ``mrcom rollout`` at
  horizon 1, :func:`~mrcom_train.training.evaluation.open_loop_error`); for the oracle, which has none, by the
  real next observations' own spread.

It draws from its own stream, seeded by the seed and env step, so the agent's and imagination's draws are
untouched and a resumed run measures the same. For the oracle every value but ``reward_real_mean`` is 0 on a
target whose observations are noise-free (a test of the branching).
"""

from __future__ import annotations

import math

import numpy as np

from ..training.evaluation import open_loop_error

DIAGNOSTICS = ("reward_mae", "reward_real_mean", "obs_nmse")  # model_error's keys
ENSEMBLE_DIAGNOSTICS = ("real_disagreement", "disagreement_error_corr")  # and with a model's ensemble
DIAGNOSTIC_STARTS = 256  # real transitions it measures at each evaluation (drawn with replacement)
_DIAGNOSTIC_STREAM = 0x6D6F64656C  # its random stream: default_rng([seed, env step, this])


def model_error(adapter, last: int | None = None) -> dict[str, float]:
    """The one-step error of ``adapter``'s imagination (a :class:`~mrcom_train.rl.adapt.Adapter`) on the
    target's real transitions (see the module docstring; ``last``: only those of the last episodes); all NaN
    without imagination, or before any real transition has the real steps before it that the model needs."""
    nan = dict.fromkeys(DIAGNOSTICS, math.nan)
    if adapter.imagined_env is None:
        return nan
    rng = np.random.default_rng([adapter.cfg.seed, adapter.step, _DIAGNOSTIC_STREAM])
    picks = adapter._starts(rng, DIAGNOSTIC_STARTS, after=1, last=last)
    if not picks:
        return nan
    B, od = len(picks), adapter.spec.obs_dim
    action = np.stack([ep["action"][t] for ep, t in picks])
    real_next = np.stack([ep["obs"][t + 1] for ep, t in picks])
    real_reward = np.array([ep["reward"][t] for ep, t in picks], np.float64)
    disagreement = None  # the ensemble's, where the model has one
    if adapter.cfg.oracle:
        oracle = adapter.imagined_env
        oracle.reset(options=adapter._start(picks))
        pred, reward, *_ = oracle.step(action)
        mean, std = real_next[:, :od].mean(0), np.maximum(real_next[:, :od].std(0), 1e-6)
    else:
        runtime = adapter.imagined_env.runtime
        lat = runtime.latent
        posterior_steps = runtime.history_len - runtime.context_len + 1  # 1 unless the context is recurrent
        runtime.reset(*adapter._prompts(picks), noise={k: rng.standard_normal((B, posterior_steps, lat[k]),
                                                                              np.float32) for k in ("u", "h")})
        disagreement = runtime.uncertainty(action)["disagreement"] if runtime.has_ensemble else None
        pred, reward, _ = runtime.step(action, noise={k: rng.standard_normal((B, lat[k]), np.float32)
                                                      for k in ("u", "h")})
        mean, std = (np.asarray(runtime.manifest[k], np.float32)[:od] for k in ("obs_mean", "obs_std"))
    obs = np.stack([ep["obs"][t] for ep, t in picks])
    reward = adapter._imagined_reward(obs, action, reward, pred)
    nmse = open_loop_error(((pred[:, :od] - mean) / std)[:, None], ((real_next[:, :od] - mean) / std)[:, None],
                           np.ones((B, od)))
    out = {"reward_mae": float(np.mean(np.abs(reward - real_reward))),
           "reward_real_mean": float(np.mean(np.abs(real_reward))), "obs_nmse": float(np.mean(nmse))}
    if disagreement is not None:
        # each transition's error as relative_error scores the mean: does the ensemble part where the model errs?
        error = np.maximum(np.abs(reward - real_reward) / max(out["reward_real_mean"], 0.01), nmse)
        spread = np.std(disagreement) * np.std(error)
        out["real_disagreement"] = float(np.mean(disagreement))
        out["disagreement_error_corr"] = (float(np.mean((disagreement - disagreement.mean()) * (error - error.mean()))
                                                / spread) if spread > 0 else math.nan)
    return out


def relative_error(error: dict[str, float]) -> float:
    """One number for a :func:`model_error`: the larger of the reward error relative to the reward's scale
    (``reward_mae / reward_real_mean``, the scale floored at 0.01) and ``obs_nmse``; 0 for a perfect model, about
    1 for one that is as far off as the quantities themselves vary. NaN when the error is."""
    parts = (error["reward_mae"] / max(error["reward_real_mean"], 0.01), error["obs_nmse"])
    return math.nan if any(math.isnan(p) for p in parts) else max(parts)
