"""A Gymnasium ``VectorEnv`` whose B environments are imagined rollouts of an exported world model.

Standard RL code (SAC, PPO, …) can train inside the model: each ``reset`` starts every sub-environment
from a prompt trajectory of the target scenario (drawn from ``prompts``), each ``step`` is one batched
call of the runtime. Episodes last ``horizon`` imagined steps and are truncated together; the step after
a truncation resets them (Gymnasium's ``NEXT_STEP`` autoreset). Needs gymnasium, numpy, onnxruntime.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from .manifest import ExportError
from .runtime import Runtime


class ImaginedVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` imagined rollouts as a vector environment.

    Args:
        export_dir: an ONNX export (``mrcom export``).
        prompts: ``(obs (N, T+1, D), actions (N, T, A), rewards (N, T))`` real trajectories of the target
            scenario; each reset draws ``num_envs`` of them (with replacement).
        num_envs: B.
        horizon: imagined steps per episode.
        seed: seeds prompt choice and latent noise (``reset(seed=…)`` reseeds both).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, export_dir, prompts: tuple[np.ndarray, np.ndarray, np.ndarray], num_envs: int,
                 horizon: int = 15, seed: int = 0, providers: list[str] | None = None):
        if num_envs < 1:
            raise ExportError(f"num_envs must be >= 1, got {num_envs}")
        if horizon < 1:
            raise ExportError(f"horizon must be >= 1, got {horizon}")
        self.runtime = Runtime(export_dir, seed=seed, providers=providers)
        self.prompts = tuple(np.asarray(p, dtype=np.float32) for p in prompts)
        if self.prompts[0].ndim != 3 or len({len(p) for p in self.prompts}) != 1:
            raise ExportError("prompts must be (obs (N, T+1, D), actions (N, T, A), rewards (N, T)) with equal N")
        self.num_envs, self.horizon = num_envs, horizon
        D, A = self.runtime.obs_dim, self.runtime.act_dim
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (D,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (A,), np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self.runtime.rng = np.random.default_rng(seed)
        pick = self._rng.integers(len(self.prompts[0]), size=self.num_envs)
        obs = self.runtime.reset(*(p[pick] for p in self.prompts))
        self._t, self._needs_reset = 0, False
        return obs, {"prompt_index": pick}

    def step(self, actions):
        B = self.num_envs
        if self._needs_reset:  # NEXT_STEP autoreset: this step only resets
            obs, info = self.reset()
            return obs, np.zeros(B, np.float32), np.zeros(B, bool), np.zeros(B, bool), info
        obs, reward, _ = self.runtime.step(np.asarray(actions, dtype=np.float32).reshape(B, -1))
        self._t += 1
        truncated = np.full(B, self._t >= self.horizon)
        self._needs_reset = bool(truncated[0])
        return obs, reward.astype(np.float32), np.zeros(B, bool), truncated, {}
