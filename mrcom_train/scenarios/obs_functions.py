"""Observation functions of the paper's Q3 (§5.2): how a scenario corrupts the true observation.

=========  ==========================================================================================
``none``   the observation as dm_control gives it
``add-g``  Gaussian noise N(0, σ²) added to every dimension (σ = ``ScenarioSpec.obs_noise_std``)
``add-d``  ``ceil(0.1·n)`` extra dimensions of pure N(0, 1) noise appended (n = original dims)
``msk-r``  every step a fresh random ``ceil(0.1·n)`` of the values set to 0
``msk-f``  a fixed ``ceil(0.1·n)`` of the dimensions, chosen once from the scenario seed, always 0
=========  ==========================================================================================

Each function is a small object with ``out_dim`` and ``__call__(obs, rng) -> obs``; the random
generator belongs to the environment, so a seeded reset reproduces the corruption exactly.
"""

from __future__ import annotations

import math

import numpy as np

OBS_FUNCTIONS = ("none", "add-g", "add-d", "msk-r", "msk-f")
FRACTION = 0.1


def affected_count(n: int) -> int:
    """How many dims ``add-d``, ``msk-r`` and ``msk-f`` touch for an ``n``-dim observation (10%, rounded up)."""
    return math.ceil(FRACTION * n)


class Identity:
    def __init__(self, n: int):
        self.out_dim = n

    def __call__(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return obs


class AddGaussian:
    def __init__(self, n: int, std: float):
        self.out_dim, self.std = n, float(std)

    def __call__(self, obs, rng):
        return obs + rng.normal(0.0, self.std, size=obs.shape)


class AddDims:
    def __init__(self, n: int):
        self.extra = affected_count(n)
        self.out_dim = n + self.extra

    def __call__(self, obs, rng):
        return np.concatenate([obs, rng.standard_normal(self.extra)])


class MaskRandom:
    def __init__(self, n: int):
        self.n, self.k, self.out_dim = n, affected_count(n), n

    def __call__(self, obs, rng):
        out = obs.copy()
        out[rng.choice(self.n, size=self.k, replace=False)] = 0.0
        return out


class MaskFixed:
    def __init__(self, n: int, seed: int):
        self.out_dim = n
        self.masked = np.sort(np.random.default_rng([seed, 0x6D736B66]).choice(n, affected_count(n), replace=False))

    def __call__(self, obs, rng):
        out = obs.copy()
        out[self.masked] = 0.0
        return out


def make_obs_function(name: str, n: int, *, std: float = 0.1, seed: int = 0):
    """The observation function ``name`` for ``n``-dim observations (see the module table)."""
    if name == "none":
        return Identity(n)
    if name == "add-g":
        return AddGaussian(n, std)
    if name == "add-d":
        return AddDims(n)
    if name == "msk-r":
        return MaskRandom(n)
    if name == "msk-f":
        return MaskFixed(n, seed)
    raise ValueError(f"unknown observation function {name!r}; choose one of {', '.join(OBS_FUNCTIONS)}")
