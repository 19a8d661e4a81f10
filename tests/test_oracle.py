"""The oracle-model arm: adaptation's loop with the target's own simulator imagining, branched from stored real
states. Branching must reproduce the real episode exactly, the arm must run, checkpoint and resume like every
other, and its one-step error on the agent's real transitions must be zero."""

import json

import numpy as np
import pytest
from conftest import kill_adapter_at

from mrcom_core.errors import UserInputError
from mrcom_train.cli import main
from mrcom_train.rl.adapt import AdaptConfig, Adapter
from mrcom_train.rl.oracle import OracleRollouts
from mrcom_train.scenarios import ScenarioEnv, UnifiedSpace, get_split, sample_scenarios

QUIET = dict(progress=False, log=lambda s: None)
ORACLE = dict(split="t1-a10b50", domain="cheetah", env_steps=300, episode_length=100, learning_starts=100,
              model_rollout_every=50, rollout_batch=16, horizon_start=1, horizon_end=2, eval_every=100,
              eval_episodes=1, checkpoint_every=100, sac_hidden=32, batch_size=32, updates_per_step=2, seed=1,
              imagination="oracle")


@pytest.mark.parametrize("domain,obs_fn", [("cheetah", None), ("walker", None), ("hopper", None),
                                           ("cheetah", "add-g")])
def test_a_branch_from_a_stored_state_is_the_real_step(domain, obs_fn):
    spec = sample_scenarios(get_split("t1-a10b50").range("in"), (domain,), 1, 3)[0]
    if obs_fn:
        import dataclasses

        spec = dataclasses.replace(spec, obs_fn=obs_fn)
    real, branch = ScenarioEnv(spec), ScenarioEnv(spec)
    real.reset(seed=0)
    branch.reset(seed=5)  # another episode entirely: only the state given to branch() may matter
    rng = np.random.default_rng(0)
    for _ in range(60):
        state = real.physics_state()
        action = rng.uniform(-1, 1, real.action_space.shape).astype(np.float32)
        obs, reward, after = branch.branch(state, action)
        real_obs, real_reward, *_ = real.step(action)
        assert reward == real_reward and np.array_equal(after, real.physics_state())
        if obs_fn is None:
            assert np.array_equal(obs, real_obs)
        else:  # the same noise-free observation under independent noise
            assert np.abs(obs - real_obs).max() < 10 * spec.obs_noise_std + 1e-6


def test_oracle_rollouts_step_every_start_for_the_horizon():
    spec = sample_scenarios(get_split("t1-a10b50").range("in"), ("walker",), 1, 0)[0]
    env = ScenarioEnv(spec)
    obs0, _ = env.reset(seed=0)
    states, observations = [env.physics_state()], [obs0]
    for _ in range(3):
        observations.append(env.step(np.zeros(spec.act_dim, np.float32))[0])
        states.append(env.physics_state())
    oracle = OracleRollouts(spec, UnifiedSpace(spec.obs_dim + 2, spec.act_dim), seed=0, horizon=2)
    start, _ = oracle.reset(options={"state": np.stack(states[:2]), "obs": np.stack(observations[:2])})
    assert start.shape == (2, spec.obs_dim)
    zeros = np.zeros((2, spec.act_dim), np.float32)
    obs, reward, terminated, truncated, _ = oracle.step(zeros)
    assert obs.shape == (2, spec.obs_dim + 2) and not truncated.any() and not terminated.any()
    np.testing.assert_array_equal(obs[:, : spec.obs_dim], np.stack(observations[1:3]))  # the real next steps
    assert oracle.step(zeros)[3].all()  # the horizon is reached


def test_the_oracle_arm_adapts_checkpoints_and_resumes_exactly(tmp_path):
    config = AdaptConfig(**ORACLE)
    assert config.oracle and not AdaptConfig(**{**ORACLE, "use_model": False}).oracle
    straight = Adapter(config, tmp_path / "straight", **QUIET).run()
    assert straight["imagined"] > 0 and straight["reward_mae"] == 0 and straight["obs_nmse"] == 0
    assert 0 < straight["reward_real_mean"]
    rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5  # header, step 0 and three evaluations

    kill_adapter_at(Adapter(config, tmp_path / "resumed", **QUIET), 200)
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "latest.json").read_text())
    assert state["step"] == 100  # the checkpoint before the stop, with the stored physics states
    resumed = Adapter(config, tmp_path / "resumed", resume=True, **QUIET).run()
    assert resumed == straight


def test_the_oracle_needs_no_export_and_bad_values_are_one_line(tmp_path, capsys):
    with pytest.raises(UserInputError, match="imagination must be one of model, oracle, got 'perfect'"):
        AdaptConfig(**{**ORACLE, "imagination": "perfect"})
    args = ["adapt", "--split", "t1-a10b50", "--domain", "cheetah", "--env-steps", "100", "--episode-length", "50",
            "--set", "learning_starts=50", "--set", "model_rollout_every=25", "--set", "rollout_batch=8",
            "--set", "eval_every=100", "--set", "eval_episodes=1", "--set", "sac_hidden=16", "--set", "batch_size=16",
            "--set", "updates_per_step=1", "--set", "imagination=oracle", "--no-progress", "--out",
            str(tmp_path / "run")]
    main(args)
    assert "oracle rollouts" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main([*args[:-1], str(tmp_path / "other"), "--set", "imagination=dream"])
    assert info.value.code == 2 and "imagination must be one of" in capsys.readouterr().err
