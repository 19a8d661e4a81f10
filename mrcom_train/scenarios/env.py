"""Gymnasium environment over a :class:`ScenarioSpec`, with the unified padded spaces of a scenario set.

Unified spaces (TD-MPC2's practice, without a task id): observations are zero-padded to the largest
observation dim of the scenario set, actions to the largest action dim. ``obs_mask`` / ``action_mask``
mark the real dims (1) and the padding (0); padded action dims are ignored by the environment. The model
is never told which scenario it is in: it must infer it from context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np

from mrcom_core.errors import UserInputError

from .domains import build_dm_env
from .obs_functions import make_obs_function
from .spec import ScenarioSpec

_INTEGRATION = int(mujoco.mjtState.mjSTATE_INTEGRATION)  # everything mj_step reads: a branch continues exactly


@dataclass(frozen=True)
class UnifiedSpace:
    """Padded dims shared by every scenario of a set."""

    obs_dim: int
    act_dim: int

    @classmethod
    def of(cls, specs: Sequence[ScenarioSpec]) -> UnifiedSpace:
        if not specs:
            raise UserInputError("a scenario set needs at least one scenario")
        return cls(max(s.obs_dim for s in specs), max(s.act_dim for s in specs))

    def obs_mask(self, spec: ScenarioSpec) -> np.ndarray:
        return _mask(spec.obs_dim, self.obs_dim)

    def action_mask(self, spec: ScenarioSpec) -> np.ndarray:
        return _mask(spec.act_dim, self.act_dim)


def _mask(n: int, total: int) -> np.ndarray:
    mask = np.zeros(total, dtype=np.float32)
    mask[:n] = 1.0
    return mask


def pad(x: np.ndarray, dim: int) -> np.ndarray:
    """Zero-pad the last axis of ``x`` to ``dim`` (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] > dim:
        raise ValueError(f"cannot pad {x.shape[-1]} dims down to {dim}")
    out = np.zeros(x.shape[:-1] + (dim,), dtype=np.float32)
    out[..., : x.shape[-1]] = x
    return out


class ScenarioEnv(gym.Env):
    """One scenario as a ``gymnasium.Env``.

    Args:
        spec: the scenario.
        space: pad observations/actions to this unified space; ``None`` gives the scenario's own dims.

    ``reset(seed=s)`` reseeds the task's initial-state randomness and the observation function, so the
    same seed gives the same episode; without a seed, the first reset uses ``spec.seed`` and later ones
    continue the stream. Episodes end by truncation after ``spec.episode_length`` steps (dm_control's
    tasks never terminate). ``info`` holds the uncorrupted observation (``true_obs``) and the masks.
    """

    metadata = {"render_modes": []}

    def __init__(self, spec: ScenarioSpec, space: UnifiedSpace | None = None):
        self.spec_ = spec
        self.space = space or UnifiedSpace(spec.obs_dim, spec.act_dim)
        if self.space.obs_dim < spec.obs_dim or self.space.act_dim < spec.act_dim:
            raise UserInputError(f"unified space {self.space} is smaller than scenario {spec.describe()}")
        self._env = build_dm_env(spec.domain, spec.length_scale, spec.size_scale, spec.target_speed,
                                 spec.speed_margin, random=spec.seed)
        self._obs_fn = make_obs_function(spec.obs_fn, self._true_dim(), std=spec.obs_noise_std, seed=spec.seed)
        self._rng = np.random.default_rng(spec.seed)
        self._act_dim = spec.act_dim
        self.obs_mask = self.space.obs_mask(spec)
        self.action_mask = self.space.action_mask(spec)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.space.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.space.act_dim,), np.float32)
        self._steps = 0
        self._needs_reset = True
        self._n_sub_steps = int(round(self._env.control_timestep() / self._env.physics.timestep()))

    def _true_dim(self) -> int:
        obs = self._env.task.get_observation(self._env.physics)
        self._slices = []
        start = 0
        for value in obs.values():
            size = int(np.size(value))
            self._slices.append(slice(start, start + size))
            start += size
        self._flat_dim = start
        return start

    def _observe(self, obs_dict) -> tuple[np.ndarray, np.ndarray]:
        true = np.empty(self._flat_dim)
        for sl, value in zip(self._slices, obs_dict.values(), strict=True):
            true[sl] = value
        seen = self._obs_fn(true, self._rng)
        out = np.zeros(self.space.obs_dim, dtype=np.float32)
        out[: seen.shape[0]] = seen
        return out, true

    @property
    def physics(self):
        """The underlying ``dm_control`` physics (for tests and diagnostics)."""
        return self._env.physics

    @property
    def dm_env(self):
        """The wrapped ``dm_control.rl.control.Environment``."""
        return self._env

    def random_state(self) -> dict:
        """Every random state of the environment (task initial states, observation function), JSON-ready:
        :meth:`set_random_state` continues from exactly here."""
        name, keys, pos, has_gauss, gauss = self._env.task.random.get_state()
        return {"task": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "obs_rng": self._rng.bit_generator.state}

    def set_random_state(self, state: dict) -> None:
        name, keys, pos, has_gauss, gauss = state["task"]
        self._env.task.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
        self._rng.bit_generator.state = state["obs_rng"]

    def physics_state(self) -> np.ndarray:
        """The simulator's whole integration state at the current observation (MuJoCo's
        ``mjSTATE_INTEGRATION``: time, positions, velocities, actuator activations, controls, warm start …),
        float64: :meth:`branch` continues from it exactly as the episode did."""
        return self._env.physics.get_state(_INTEGRATION)

    def branch(self, state: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """Take ``action`` from the physics ``state`` (:meth:`physics_state`, of this scenario) and return the
        observation (through the scenario's observation function, padded), the reward and the new state: the
        true dynamics, reward and observation of the target, branched from a stored step (the oracle-model
        arm of adaptation). The episode's clock is not touched; a later :meth:`reset` starts afresh."""
        physics, task = self._env.physics, self._env.task
        with physics.reset_context():  # derived quantities (positions, sensors) recomputed for the new state
            physics.set_state(np.asarray(state, np.float64), _INTEGRATION)
        task.before_step(np.asarray(action)[: self._act_dim], physics)
        physics.step(self._n_sub_steps)
        task.after_step(physics)
        obs, _ = self._observe(task.get_observation(physics))
        return obs, float(task.get_reward(physics)), physics.get_state(_INTEGRATION)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed)  # the same state as a fresh RandomState(seed)
            self._rng = np.random.default_rng(seed)
        time_step = self._env.reset()
        self._steps = 0
        self._needs_reset = False
        obs, true = self._observe(time_step.observation)
        return obs, {"true_obs": true, "obs_mask": self.obs_mask.copy(), "action_mask": self.action_mask.copy()}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("ScenarioEnv.step called before reset() or after the episode ended")
        action = np.asarray(action)
        if action.shape != (self.space.act_dim,):
            raise ValueError(f"action must have shape ({self.space.act_dim},), got {action.shape}")
        # Padded dims are dropped; MuJoCo clamps controls to ctrlrange [-1, 1] itself (ctrllimited).
        time_step = self._env.step(action[: self._act_dim])
        self._steps += 1
        truncated = self._steps >= self.spec_.episode_length
        self._needs_reset = truncated
        obs, true = self._observe(time_step.observation)
        return obs, float(time_step.reward), False, truncated, {"true_obs": true}
