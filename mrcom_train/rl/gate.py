"""One round of imagined rollouts, gated by how far the world model's ensemble parts.

A model errs where its training data never went, and an agent trained on its rollouts goes exactly there
(it exploits the error). An export of a model with ensemble heads (``model.ensemble`` > 0) says, for every
imagined transition, how far its elite members disagree (:meth:`~mrcom_export.runtime.Runtime.uncertainty`,
``info["disagreement"]`` of the vector env). ``AdaptConfig.gate`` decides what that does:

* ``"truncate"`` (MACURA, Frauenknecht et al. 2024): the threshold is the ``gate_percentile``-th percentile of
  the disagreement at the round's first step, which starts from real states; a rollout whose disagreement
  exceeds it stops there (that transition and every later one of the rollout are dropped);
* ``"penalty"`` (MOPO, Yu et al. 2020): every imagined reward minus ``gate_penalty`` × disagreement;
* ``"none"``: nothing; the disagreement is not measured (it costs one more batched call of the runtime per
  imagined step), only at evaluations on the agent's real transitions (:mod:`~mrcom_train.rl.diagnostics`).

With a gate, each round records the mean disagreement of the transitions it generated and the share it kept
(:data:`GATE_FIELDS`, in ``metrics.csv`` and TensorBoard).
"""

from __future__ import annotations

import math
import time

import numpy as np

GATE_FIELDS = ("disagreement", "gate_kept")  # what each imagination round logs (with an ensemble)


def imagine_round(adapter, horizon: int) -> tuple[int, dict[str, float]]:
    """One round of ``adapter``'s (:class:`~mrcom_train.rl.adapt.Adapter`) imagined rollouts from real states
    into its model buffer (resized first to hold the latest ``retain_rounds`` rounds at this horizon). Returns
    the transitions added and the round's :data:`GATE_FIELDS` (empty when the env reports no disagreement: the
    adapter's measures it only with a gate)."""
    cfg, start = adapter.cfg, time.perf_counter()
    adapter.model.resize(cfg.retain_rounds * cfg.rollout_batch * horizon)
    env = adapter.imagined_env
    picks = adapter._starts(adapter.rng, cfg.rollout_batch)
    if not picks:
        return 0, {}
    env.horizon = horizon
    current, _ = env.reset(options=adapter._start(picks))
    od, ad = adapter.spec.obs_dim, adapter.spec.act_dim
    alive = np.ones(len(picks), bool)
    threshold, generated, added, seen, truncated = math.inf, 0, 0, [], False
    while not truncated:
        action = adapter._act(current)
        nxt, reward, _, trunc, info = env.step(action)
        reward = adapter._imagined_reward(current, action, reward, nxt)
        keep = alive  # the rollouts still running: a truncated one is stepped on with the batch but never kept
        if "disagreement" in info:
            u = np.asarray(info["disagreement"], np.float64)
            seen.append(u[alive])
            if cfg.gate == "truncate":
                if generated == 0:  # the first step starts from real states: the model's own level there
                    threshold = float(np.percentile(u, cfg.gate_percentile))
                keep = alive & (u <= threshold)
            elif cfg.gate == "penalty":
                reward = reward - cfg.gate_penalty * u
        generated += int(alive.sum())
        alive = keep
        adapter.model.add_batch(current[keep, :od], action[keep, :ad], reward[keep], nxt[keep, :od],
                                np.zeros(int(keep.sum())))
        added += int(keep.sum())
        current, truncated = nxt, bool(trunc.all())
    adapter.imagined += added
    adapter.imagine_seconds += time.perf_counter() - start
    if not seen:
        return added, {}
    return added, {"disagreement": float(np.concatenate(seen).mean()), "gate_kept": added / max(generated, 1)}
