"""The oracle model: imagined rollouts that come from the target scenario's own simulator.

Adaptation's oracle arm (``AdaptConfig.imagination = "oracle"``) runs the loop of :mod:`mrcom_train.rl.adapt`
with every imagined rollout replaced by the true simulator, branched from the physics state of the stored real
step it starts at (:meth:`~mrcom_train.scenarios.ScenarioEnv.branch`: bit-identical to the real episode for the
same action), at the same horizon, batch, G and real ratio. A perfect world model can do no better, so the arm
is the ceiling every model arm is measured against; and if it does not beat model-free SAC with the same G,
the loop, not the model, is at fault.

:class:`OracleRollouts` has the part of :class:`~mrcom_export.vector_env.ImaginedVectorEnv`'s interface the
adapter uses: ``horizon``, ``reset(options={"state": …, "obs": …})`` and ``step(actions)``.
"""

from __future__ import annotations

import numpy as np

from ..scenarios import ScenarioEnv, ScenarioSpec, UnifiedSpace


class OracleRollouts:
    """``B`` rollouts of ``horizon`` steps in the scenario ``spec`` itself, each started from a stored physics
    state. ``seed`` seeds the observation function's noise (for the scenarios whose observations are noisy)."""

    def __init__(self, spec: ScenarioSpec, space: UnifiedSpace, seed: int, horizon: int = 1):
        self.env = ScenarioEnv(spec, space)
        self.env.reset(seed=seed)
        self.horizon = horizon
        self._states: np.ndarray | None = None
        self._t = 0

    def random_state(self) -> dict:
        """The observation function's random state (JSON-ready), for a resumed run to continue exactly."""
        return self.env.random_state()

    def set_random_state(self, state: dict) -> None:
        self.env.set_random_state(state)

    def reset(self, *, options: dict) -> tuple[np.ndarray, dict]:
        """Start one rollout per row of ``options["state"]`` (B, state dim) from the real observation there,
        ``options["obs"]`` (B, obs dim), which it returns."""
        self._states = np.array(options["state"], np.float64)
        self._t = 0
        return np.asarray(options["obs"], np.float32), {}

    def step(self, actions: np.ndarray):
        """One true step of every rollout: ``(obs, reward, terminated, truncated, info)`` as a vector env."""
        B = len(self._states)
        obs = np.empty((B, self.env.observation_space.shape[0]), np.float32)
        reward = np.empty(B, np.float32)
        for b in range(B):
            obs[b], reward[b], self._states[b] = self.env.branch(self._states[b], actions[b])
        self._t += 1
        return obs, reward, np.zeros(B, bool), np.full(B, self._t >= self.horizon), {}
