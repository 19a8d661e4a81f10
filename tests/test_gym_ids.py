"""The Gymnasium IDs build the scenario `mrcom adapt` adapts to, and the imagined vector env of an export."""

import gymnasium as gym
import numpy as np
import pytest

import mrcom_train.gym_ids  # noqa: F401  (registers the IDs)
from mrcom_train.rl.adapt_config import AdaptConfig


def test_a_scenario_id_is_the_adaptation_target():
    env = gym.make("MrCoM/cheetah-v0", split="t1-a10b50", range="ood", seed=2, episode_length=5)
    target = AdaptConfig(split="t1-a10b50", range="ood", domain="cheetah", seed=2, episode_length=5).target()
    assert env.unwrapped.spec_ == target
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.dtype == np.float32
    steps, truncated = 0, False
    while not truncated:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        assert not terminated and np.isfinite(reward)
    assert steps == 5


def test_padding_and_the_module_form_of_the_id():
    env = gym.make("mrcom_train.gym_ids:MrCoM/hopper-v0", pad_to=(30, 6), episode_length=3)
    assert env.observation_space.shape == (30,) and env.action_space.shape == (6,)
    with pytest.raises(Exception, match="no range 'sideways'"):
        gym.make("MrCoM/walker-v0", range="sideways")


def test_the_imagined_id_is_the_vector_env_of_an_export(unified_export):
    from mrcom_export.runtime import Runtime

    out = unified_export
    rt = Runtime(out)
    m = max(rt.context_len, rt.history_len)
    rng = np.random.default_rng(0)
    prompts = (rng.normal(size=(3, m + 1, rt.obs_dim)).astype(np.float32),
               rng.uniform(-1, 1, (3, m, rt.act_dim)).astype(np.float32), np.zeros((3, m), np.float32))
    envs = gym.make_vec("MrCoM/Imagined-v0", num_envs=4, export=str(out), horizon=2, prompts=prompts)
    obs, _ = envs.reset(seed=1)
    assert obs.shape == (4, rt.obs_dim)
    obs, reward, terminated, truncated, _ = envs.step(np.zeros((4, rt.act_dim), np.float32))
    assert obs.shape == (4, rt.obs_dim) and reward.shape == (4,) and np.isfinite(reward).all()
