"""Gymnasium IDs for the scenarios and for imagination.

``import mrcom_train.gym_ids`` registers them (or name the module in the ID:
``gymnasium.make("mrcom_train.gym_ids:MrCoM/cheetah-v0", …)``):

* ``MrCoM/hopper-v0``, ``MrCoM/walker-v0``, ``MrCoM/cheetah-v0``: one scenario of a split as a
  :class:`~mrcom_train.scenarios.ScenarioEnv`; keyword arguments ``split`` (default ``t1-a5b20``), ``range``
  (``in``), ``seed`` (0) and ``episode_length`` (1,000) draw the same scenario ``mrcom adapt`` adapts to with
  those flags (:func:`~mrcom_train.scenarios.target_scenario`); ``pad_to=(obs_dim, act_dim)`` pads observations
  and actions to a model's dims (an export's ``Runtime.obs_dim`` / ``act_dim``). Episodes end by truncation.
* ``MrCoM/Imagined-v0``, for ``gymnasium.make_vec(…, num_envs=B)``: B imagined rollouts of an export as an
  :class:`~mrcom_export.vector_env.ImaginedVectorEnv`; ``export`` (the folder, required), ``horizon`` (15),
  ``seed`` (0), ``prompts`` (real trajectories to start from; else pass ``options={"prompts": …}`` to
  ``reset``), ``threads`` (ONNX Runtime's intra-op threads).

The entry points are functions of this module, so registering imports neither MuJoCo nor ONNX Runtime.
"""

from __future__ import annotations

import gymnasium as gym

DOMAIN_IDS = {"hopper": "MrCoM/hopper-v0", "walker": "MrCoM/walker-v0", "cheetah": "MrCoM/cheetah-v0"}
IMAGINED_ID = "MrCoM/Imagined-v0"


def make_scenario(domain: str, split: str = "t1-a5b20", range: str = "in", seed: int = 0,  # noqa: A002
                  episode_length: int = 1000, pad_to: tuple[int, int] | None = None):
    """The scenario env behind ``MrCoM/<domain>-v0`` (see the module docstring)."""
    from .scenarios import ScenarioEnv, UnifiedSpace, target_scenario

    spec = target_scenario(split, range, domain, seed, episode_length)
    return ScenarioEnv(spec, UnifiedSpace(*pad_to) if pad_to is not None else None)


def make_imagined(num_envs: int, export: str, horizon: int = 15, seed: int = 0, prompts=None,
                  threads: int | None = None, **kwargs):
    """The vector env behind ``MrCoM/Imagined-v0`` (see the module docstring); other keyword arguments go to
    :class:`~mrcom_export.vector_env.ImaginedVectorEnv`."""
    from mrcom_export.runtime import Runtime
    from mrcom_export.vector_env import ImaginedVectorEnv

    runtime = Runtime(export, seed=seed, threads=threads)
    return ImaginedVectorEnv(runtime, num_envs, prompts=prompts, horizon=horizon, seed=seed, **kwargs)


def register() -> None:
    """Register the IDs (a second call changes nothing)."""
    for domain, env_id in DOMAIN_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=f"{__name__}:make_scenario", kwargs={"domain": domain},
                         disable_env_checker=True)
    if IMAGINED_ID not in gym.registry:
        gym.register(IMAGINED_ID, vector_entry_point=f"{__name__}:make_imagined")


register()
