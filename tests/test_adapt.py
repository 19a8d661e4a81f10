import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mrcom_core.errors import UserInputError
from mrcom_train.agents.sac import load_actor
from mrcom_train.rl.adapt import AdaptConfig, Adapter, normalized_return
from mrcom_train.rl.scoring import floor_scores, summarize
from mrcom_train.scenarios import ScenarioEnv

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}
QUIET = dict(progress=False, log=lambda s: None)
EASY = dict(split="t1-a5b20", domain="cheetah", env_steps=400, episode_length=100, learning_starts=100,
            model_rollout_every=50, rollout_batch=32, horizon_end=3, eval_every=400, eval_episodes=2, sac_hidden=64,
            batch_size=64, seed=3, updates_per_step=1)


def _random_policy_score(config: AdaptConfig) -> float:
    spec = config.target()
    env = ScenarioEnv(spec)
    rng = np.random.default_rng(config.seed)
    scores = []
    for i in range(config.eval_episodes):
        env.reset(seed=1_000_000 + i)
        total, done = 0.0, False
        while not done:
            _, r, _, done, _ = env.step(rng.uniform(-1, 1, spec.act_dim).astype(np.float32))
            total += r
        scores.append(normalized_return(total, spec.episode_length))
    return float(np.mean(scores))


def test_adaptation_reports_its_score_beside_the_floors_of_its_own_target(unified_export, tmp_path):
    # 400 env steps learn little; what must hold is the bookkeeping: the score and the two floors are measured
    # on the same target scenario and evaluation episodes (whether learning clears the floors is measured by
    # `mrcom reproduce`, see docs/results.md)
    config = AdaptConfig(**EASY)
    adapter = Adapter(config, tmp_path / "run", unified_export, **QUIET)
    result = adapter.run()
    assert result["env_steps"] == 400 and result["imagined"] > 0
    assert 0 <= result["normalized_return"] <= 100
    assert result["floors"]["random"] == pytest.approx(_random_policy_score(config))  # uniform actions, same episodes
    assert result["floors"] == floor_scores(config.target(), config.eval_episodes, config.seed)
    lines = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert lines[0] == ("env_steps,normalized_return,imagined,reward_mae,reward_real_mean,obs_nmse,real_disagreement,"
                        "disagreement_error_corr,wall_s,imagined_per_s")  # an ensemble but no gate: no round fields
    rows = list(csv.DictReader(lines))
    assert len([r for r in rows if r["normalized_return"]]) == 2  # at env step 0 and at the end
    assert not adapter.imagined_env.uncertainty  # gate=none: the imagined steps skip the ensemble graph
    assert (tmp_path / "run" / "agent.pt").exists() and (tmp_path / "run" / "checkpoints" / "latest.json").exists()
    assert load_actor(tmp_path / "run" / "agent.pt").act_dim == config.target().act_dim


def test_imagined_transitions_come_from_the_runtime(unified_export, tmp_path):
    adapter = Adapter(AdaptConfig(**{**EASY, "env_steps": 150}), tmp_path / "run", unified_export, **QUIET)
    adapter.model_error = lambda: {}  # the evaluation's one-step model error steps the runtime too: not imagined data
    seen = []
    runtime = adapter.imagined_env.runtime
    real_step = runtime.step

    def spy(actions, noise=None):
        out = real_step(actions, noise)
        seen.append((np.array(actions), out[0].copy(), out[1].copy()))
        return out

    runtime.step = spy
    adapter.run()
    assert seen and adapter.imagined == sum(len(r) for _, _, r in seen) == len(adapter.model)
    data = adapter.model.state_dict()
    od, ad = adapter.spec.obs_dim, adapter.spec.act_dim
    actions = np.concatenate([a[:, :ad] for a, _, _ in seen])
    next_obs = np.concatenate([o[:, :od] for _, o, _ in seen])
    rewards = np.concatenate([r for _, _, r in seen])
    n = len(rewards)
    np.testing.assert_array_equal(data["action"][:n], actions)
    np.testing.assert_array_equal(data["next_obs"][:n], next_obs)
    np.testing.assert_array_equal(data["reward"][:n], rewards)


def test_model_free_baseline_uses_the_same_loop(tmp_path):
    result = Adapter(AdaptConfig(**{**EASY, "env_steps": 150, "use_model": False}), tmp_path / "run", **QUIET).run()
    assert result["imagined"] == 0 and np.isfinite(result["normalized_return"])


def test_summary_and_bad_config():
    assert summarize([50.0, 60.0]) == "55.0±5.0"
    with pytest.raises(UserInputError, match="unknown domain"):
        AdaptConfig(domain="ant")
    with pytest.raises(UserInputError, match="real_ratio"):
        AdaptConfig(real_ratio=2.0)
    with pytest.raises(UserInputError, match="unknown split"):
        AdaptConfig(split="t9")


@pytest.mark.parametrize("args,message", [
    (["--model", "{tmp}/none"], "manifest.json is missing"),
    (["--domain", "ant"], "Invalid value for '--domain': 'ant'"),
    (["--range", "sideways"], "Invalid value for '--range': 'sideways'"),
    (["--set", "horizon_end=lots"], "adapt.horizon_end: cannot read 'lots'"),
])
def test_adapt_cli_bad_input_exits_2(tmp_path, args, message):
    full = ["adapt", "--out", str(tmp_path / "run"), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    if "--model" not in args:
        full.append("--model-free")
    r = subprocess.run([sys.executable, "-m", "mrcom_train.cli", *full], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_adaptation_resumes_exactly_after_a_kill(unified_export, tmp_path, monkeypatch):
    config = AdaptConfig(**{**EASY, "env_steps": 300, "episode_length": 50, "checkpoint_every": 100,
                            "eval_every": 150})
    straight = Adapter(config, tmp_path / "a", unified_export, **QUIET)
    straight.run()

    killed = Adapter(config, tmp_path / "b", unified_export, **QUIET)
    real_step = killed.env.step
    count = {"n": 0}

    def dies_at_230(action):
        count["n"] += 1
        if count["n"] == 230:
            raise KeyboardInterrupt
        return real_step(action)

    monkeypatch.setattr(killed.env, "step", dies_at_230)
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    with pytest.raises(UserInputError, match="pass --resume"):
        Adapter(config, tmp_path / "b", unified_export, **QUIET)
    resumed = Adapter(config, tmp_path / "b", unified_export, resume=True, **QUIET)
    assert resumed.step == 200  # the checkpoint at the first episode end after step 100·k
    resumed.run()
    for (name, a), (_, b) in zip(straight.agent.actor.state_dict().items(), resumed.agent.actor.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:] != []
    def untimed(run):  # every column but the timings
        return [{k: v for k, v in row.items() if k not in ("wall_s", "imagined_per_s")}
                for row in csv.DictReader((tmp_path / run / "metrics.csv").read_text().splitlines())]

    assert untimed("a") == untimed("b")
    with pytest.raises(UserInputError, match="ran with seed=3, now 4"):
        Adapter(AdaptConfig(**{**EASY, "env_steps": 300, "episode_length": 50, "checkpoint_every": 100,
                               "eval_every": 150, "seed": 4}), tmp_path / "b", unified_export, resume=True, **QUIET)


# ---------------------------------------------------------------------------------------------------- MBPO
def test_g_updates_happen_per_env_step(tmp_path, monkeypatch):
    from mrcom_train.agents import sac as sac_module

    calls = []
    real = sac_module.SAC.update
    monkeypatch.setattr(sac_module.SAC, "update", lambda self, batch: calls.append(len(batch["reward"])) or
                        real(self, batch))
    config = AdaptConfig(**{**EASY, "env_steps": 130, "learning_starts": 100, "use_model": False,
                            "updates_per_step": 3, "eval_every": 130})
    Adapter(config, tmp_path / "run", **QUIET).run()
    # G updates after every env step once the real buffer holds learning_starts transitions (steps 100 … 130)
    assert len(calls) == 3 * (130 - 100 + 1) and set(calls) == {config.batch_size}


def test_the_model_buffer_keeps_only_the_latest_rounds(unified_export, tmp_path):
    config = AdaptConfig(**{**EASY, "rollout_batch": 8, "retain_rounds": 2, "horizon_start": 2, "horizon_end": 2})
    adapter = Adapter(config, tmp_path / "run", unified_export, **QUIET)
    obs, _ = adapter.env.reset(seed=0)
    episode = {"obs": [obs], "action": [], "reward": []}
    for _ in range(40):
        action = adapter._pad(adapter.rng.uniform(-1, 1, adapter.spec.act_dim))
        obs, reward, *_ = adapter.env.step(action)
        episode["obs"].append(obs), episode["action"].append(action), episode["reward"].append(reward)
    adapter.episodes.append({k: np.asarray(v, np.float32) for k, v in episode.items()})
    rounds = []
    real_add = adapter.model.add_batch

    def record(obs, action, reward, next_obs, terminated):
        rounds[-1].append(np.asarray(reward, np.float32))
        return real_add(obs, action, reward, next_obs, terminated)

    adapter.model.add_batch = record

    def kept() -> np.ndarray:  # the buffer's rewards, oldest first
        state = adapter.model.state_dict()
        ptr, size = state["ptr_size"]
        return state["reward"][(ptr - size + np.arange(size)) % adapter.model.capacity]

    for _ in range(4):
        rounds.append([])
        adapter.imagine(2)
    rounds = [np.concatenate(r) for r in rounds]
    assert all(len(r) == 8 * 2 for r in rounds)
    np.testing.assert_array_equal(kept(), np.concatenate(rounds[-2:]))  # rounds 3 and 4, in order; 1 and 2 dropped
    rounds.append([])
    adapter.imagine(3)  # a longer horizon resizes the buffer: still the latest rounds, oldest dropped first
    rounds[-1] = np.concatenate(rounds[-1])
    assert adapter.model.capacity == 2 * 8 * 3 and len(adapter.model) == 2 * 8 * 3
    np.testing.assert_array_equal(kept(), np.concatenate(rounds[-3:])[-2 * 8 * 3:])
    adapter.close()


def test_imagined_data_joins_sac_batches_only_after_a_full_round(unified_export, tmp_path):
    config = AdaptConfig(**{**EASY, "rollout_batch": 8, "real_ratio": 0.25, "batch_size": 16})
    adapter = Adapter(config, tmp_path / "run", unified_export, **QUIET)
    adapter.real.add_batch(np.ones((20, adapter.spec.obs_dim)), np.zeros((20, adapter.spec.act_dim)), np.ones(20),
                           np.ones((20, adapter.spec.obs_dim)), np.zeros(20))
    adapter.model.resize(100)
    adapter.model.add_batch(np.zeros((7, adapter.spec.obs_dim)), np.zeros((7, adapter.spec.act_dim)), np.zeros(7),
                            np.zeros((7, adapter.spec.obs_dim)), np.zeros(7))
    assert adapter._batch()["reward"].min() == 1  # 7 < one round of 8: real data only
    adapter.model.add_batch(np.zeros((1, adapter.spec.obs_dim)), np.zeros((1, adapter.spec.act_dim)), np.zeros(1),
                            np.zeros((1, adapter.spec.obs_dim)), np.zeros(1))
    assert (adapter._batch()["reward"] == 1).sum() == 4  # real_ratio of 16
    adapter.close()


def test_horizon_schedules_follow_mbpo_per_domain():
    assert (AdaptConfig(domain="hopper").horizon_start, AdaptConfig(domain="hopper").horizon_end) == (1, 15)
    assert AdaptConfig(domain="walker").horizon_end == AdaptConfig(domain="cheetah").horizon_end == 1
    config = AdaptConfig(domain="hopper", env_steps=11_000, learning_starts=1000)
    assert [config.horizon(s) for s in (0, 1000, 3500, 6000, 11_000)] == [1, 1, 8, 15, 15]
    assert AdaptConfig(domain="cheetah", horizon_start=3).horizon_end == 3
    assert config.model_buffer_size(6000) == config.retain_rounds * config.rollout_batch * 15


@pytest.mark.parametrize("sets,message", [
    (["retain_rounds=0"], "retain_rounds must be an integer >= 1"),
    (["rollout_batch=-5"], "rollout_batch must be an integer >= 1"),
    (["updates_per_step=0"], "updates_per_step must be an integer >= 1"),
    (["horizon_start=4", "horizon_end=2"], "horizon_end (2) must be >= horizon_start (4)"),
    (["real_ratio=1.5"], "real_ratio must be in [0, 1]"),
])
def test_bad_mbpo_values_exit_2_with_one_line(tmp_path, capsys, sets, message):
    from mrcom_train.cli import main

    with pytest.raises(SystemExit) as info:
        main(["adapt", "--model-free", "--out", str(tmp_path / "run"), *sum((["--set", s] for s in sets), [])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()
