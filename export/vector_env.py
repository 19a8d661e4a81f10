"""A Gymnasium ``VectorEnv`` whose B environments are imagined rollouts of an exported world model.

Standard RL code (SAC, PPO, …) can train inside the model, and ``mrcom adapt`` generates its imagined
transitions through it: each ``reset`` starts every sub-environment from a prompt trajectory of the target
scenario (``options={"prompts": …}``, or B drawn from the ``prompts`` given at construction), each ``step``
is one batched call of the runtime (two when it measures uncertainty, which a model with an ensemble does by
default: each step's ``info["disagreement"]`` (B,) says how far the ensemble's elites part on that transition,
:meth:`~mrcom_export.runtime.Runtime.uncertainty`; ``uncertainty=False`` skips that second call). Episodes
last ``horizon`` imagined steps (settable between resets) and are truncated together; the step after a
truncation resets them (Gymnasium's ``NEXT_STEP`` autoreset).
Needs gymnasium, numpy, onnxruntime.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from mrcom_core.errors import check_int

from .manifest import ExportError
from .runtime import Runtime, real_array

Prompts = tuple[np.ndarray, np.ndarray, np.ndarray]


def _as_prompts(prompts) -> Prompts:
    usage = "prompts must be (obs (N, T+1, D), actions (N, T, A), rewards (N, T)) with equal N"
    if not isinstance(prompts, tuple | list) or len(prompts) != 3:
        raise ExportError(usage)
    names = (("prompt obs", "(N, T+1, D)"), ("prompt actions", "(N, T, A)"), ("prompt rewards", "(N, T)"))
    out = tuple(real_array(name, p, shape) for (name, shape), p in zip(names, prompts, strict=True))
    if out[0].ndim != 3 or len({len(p) for p in out}) != 1:
        raise ExportError(usage)
    return out


class ImaginedVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` imagined rollouts of ``runtime``'s model as a vector environment.

    Args:
        runtime: a :class:`~mrcom_export.runtime.Runtime` (its seeded generator draws the latent noise).
        num_envs: B.
        prompts: ``(obs (N, T+1, D), actions (N, T, A), rewards (N, T))`` real trajectories of the target
            scenario; a reset without ``options["prompts"]`` draws B of them (with replacement).
        horizon: imagined steps per episode.
        seed: seeds the prompt choice (``reset(seed=…)`` reseeds it and the runtime's noise).
        uncertainty: whether each step reports ``info["disagreement"]`` (one more batched call of the runtime's
            ``ensemble`` graph, 0.2–0.45 of an imagined step's cost); ``None``: whenever the model has an ensemble.
            ``True`` for a model without one is an error. Settable between steps.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, runtime: Runtime, num_envs: int, prompts: Prompts | None = None, horizon: int = 15,
                 seed: int = 0, uncertainty: bool | None = None):
        check_int("num_envs", num_envs, error=ExportError)
        self.runtime = runtime
        self.uncertainty = runtime.has_ensemble if uncertainty is None else uncertainty
        self.prompts = None if prompts is None else _as_prompts(prompts)
        self.num_envs = num_envs
        self.horizon = horizon
        D, A = runtime.obs_dim, runtime.act_dim
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (D,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (A,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._needs_reset = True

    @property
    def uncertainty(self) -> bool:
        return self._uncertainty

    @uncertainty.setter
    def uncertainty(self, value: bool) -> None:
        if value and not self.runtime.has_ensemble:
            raise ExportError(f"uncertainty=True needs a model exported with ensemble heads; {self.runtime.root} "
                              "has none (train with model.ensemble > 0)")
        self._uncertainty = bool(value)

    @property
    def horizon(self) -> int:
        return self._horizon

    @horizon.setter
    def horizon(self, value: int) -> None:
        self._horizon = check_int("horizon", value, error=ExportError)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start B rollouts: from ``options["prompts"]`` (B prompts) or B drawn from the stored prompts."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self.runtime.rng = np.random.default_rng(seed)
        info = {}
        if options and "prompts" in options:
            prompts = _as_prompts(options["prompts"])
            if len(prompts[0]) != self.num_envs:
                raise ExportError(f"options['prompts'] holds {len(prompts[0])} prompts for {self.num_envs} envs")
        elif self.prompts is not None:
            pick = self._rng.integers(len(self.prompts[0]), size=self.num_envs)
            prompts, info = tuple(p[pick] for p in self.prompts), {"prompt_index": pick}
        else:
            raise ExportError("reset needs options={'prompts': (obs, actions, rewards)}: no prompts were given")
        obs = self.runtime.reset(*prompts)
        self._t, self._needs_reset = 0, False
        return obs, info

    def step(self, actions):
        B = self.num_envs
        if self._needs_reset:  # NEXT_STEP autoreset: this step only resets
            obs, info = self.reset()
            return obs, np.zeros(B, np.float32), np.zeros(B, bool), np.zeros(B, bool), info
        actions = real_array("actions", actions, f"({B}, act_dim)").reshape(B, -1)
        info = {"disagreement": self.runtime.uncertainty(actions)["disagreement"]} if self._uncertainty else {}
        obs, reward, _ = self.runtime.step(actions)
        self._t += 1
        truncated = np.full(B, self._t >= self.horizon)
        self._needs_reset = bool(truncated[0])
        return obs, reward.astype(np.float32), np.zeros(B, bool), truncated, info
