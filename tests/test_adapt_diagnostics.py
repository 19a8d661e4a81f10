"""Diagnostics of `mrcom adapt` that tell the world model's reward error from its dynamics error: the model's
one-step error on the target's real transitions (logged at every evaluation), and ``imagined_reward="true"``
(imagined transitions scored by the target's own reward function, :func:`reward_from_obs`)."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import kill_adapter_at

from mrcom_core.errors import UserInputError
from mrcom_train.rl.adapt import DIAGNOSTICS, AdaptConfig, Adapter
from mrcom_train.rl.diagnostics import ENSEMBLE_DIAGNOSTICS
from mrcom_train.rl.gate import GATE_FIELDS
from mrcom_train.scenarios import ScenarioEnv, ScenarioSpec
from mrcom_train.scenarios.obs_reward import com_x_velocity, reward_from_obs

QUIET = dict(progress=False, log=lambda s: None)
TINY = dict(split="t1-a5b20", domain="walker", env_steps=200, episode_length=50, learning_starts=100,
            model_rollout_every=50, rollout_batch=16, horizon_end=2, eval_every=100, eval_episodes=1, sac_hidden=32,
            batch_size=32, seed=3, updates_per_step=1, checkpoint_every=100)
# A sine gait per domain that moves forward (~0.5 m/s for 300 steps from reset(seed=1)): (frequency, phase sign).
GAITS = {"walker": (0.03, -1), "cheetah": (0.1, 1)}


# ------------------------------------------------------------------------------------- reward_from_obs
@pytest.mark.parametrize("domain", ["walker", "cheetah"])
@pytest.mark.parametrize("policy", ["random", "gait"])
def test_reward_from_obs_is_the_environments_reward(domain, policy):
    # The split's own target (torso scaled, a target speed drawn), its target speed moved to the gait's pace so
    # the speed term varies over its whole range.
    spec = AdaptConfig(split="t1-a10b50", domain=domain, seed=0, episode_length=300).target()
    assert spec.target_speed is not None and spec.obs_fn == "none" and spec.length_scale != 1
    spec = replace(spec, target_speed=0.5, speed_margin=0.5)
    env = ScenarioEnv(spec)
    env.reset(seed=1)
    rng, (freq, sign) = np.random.default_rng(0), GAITS[domain]
    obs, real, speed = [], [], []
    for t in range(300):
        action = (rng.uniform(-1, 1, spec.act_dim) if policy == "random"
                  else np.sin(2 * np.pi * freq * t + sign * np.arange(spec.act_dim) * np.pi / 3))
        o, r, *_ = env.step(action.astype(np.float32))
        obs.append(o), real.append(r), speed.append(env.physics.named.data.sensordata["torso_subtreelinvel"][0])
    obs, real, speed = np.array(obs), np.array(real), np.array(speed)
    assert real.std() > 0.02 and speed.std() > 0.05  # a non-trivial reward to match (measured: >= 0.025, 0.088)
    if policy == "gait":
        assert speed[100:].mean() > 0.3
    # Exact up to float32 observations: measured max |Δ| ≈ 1e-7 (reward and COM speed), the only error being
    # the observation's rounding to float32. (The root's x velocity in place of the COM's was 0.13 off on average.)
    np.testing.assert_allclose(com_x_velocity(spec, obs.astype(np.float64)), speed, atol=1e-5)
    predicted = reward_from_obs(spec, obs)
    assert predicted.shape == real.shape and predicted.dtype == np.float32
    assert np.abs(predicted - real).mean() < 1e-6 and np.abs(predicted - real).max() < 1e-5
    assert np.corrcoef(predicted, real)[0, 1] > 0.99999
    # padded dims are ignored; a leading batch shape is kept
    padded = np.concatenate([obs, np.full((len(obs), 7), 9.0, np.float32)], 1)
    np.testing.assert_array_equal(reward_from_obs(spec, padded.reshape(30, 10, -1)), predicted.reshape(30, 10))


@pytest.mark.parametrize("spec,message", [
    (ScenarioSpec("hopper", target_speed=1.0), "the hopper domain is not supported"),
    (ScenarioSpec("walker"), "no target speed"),
    (ScenarioSpec("cheetah", target_speed=1.0, obs_fn="msk-f"), "observation function is 'msk-f'"),
])
def test_reward_from_obs_refuses_what_it_cannot_score(spec, message):
    with pytest.raises(UserInputError, match=f"imagined_reward=true needs .*{message}"):
        reward_from_obs(spec, np.zeros((2, 24)))


@pytest.mark.parametrize("sets,message", [
    (["imagined_reward=maybe"], "imagined_reward must be one of model, learned, true, got 'maybe'"),
    (["imagined_reward=true"], "imagined_reward=true needs the target's reward computable from its observation: "
                               "the hopper domain"),  # the CLI's default domain
    (["imagined_reward=true", "split=t3-add-g", "domain=cheetah"], "observation function is 'add-g'"),
])
def test_bad_imagined_reward_exits_2_before_the_run(tmp_path, capsys, sets, message):
    from mrcom_train.cli import main

    with pytest.raises(SystemExit) as info:  # --model is not even opened: the config is checked first
        main(["adapt", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "run"),
              *sum((["--set", s] for s in sets), [])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()
    assert AdaptConfig(domain="cheetah", imagined_reward="true").imagined_reward == "true"


# --------------------------------------------------------------------------------------- in adaptation
def test_model_error_and_the_gate_are_logged(unified_export, tmp_path):
    adapter = Adapter(AdaptConfig(**TINY, gate="truncate"), tmp_path / "run", unified_export, **QUIET)
    result = adapter.run()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert list(rows[0]) == ["env_steps", "normalized_return", "imagined", *DIAGNOSTICS, *ENSEMBLE_DIAGNOSTICS,
                             "wall_s", "imagined_per_s", *GATE_FIELDS]  # the model has an ensemble, and a gate
    rounds = [r for r in rows if r["gate_kept"]]  # every imagination round
    assert rounds
    assert all(0 < float(r["gate_kept"]) <= 1 and float(r["disagreement"]) > 0 for r in rounds)
    rows = [r for r in rows if r["normalized_return"]]  # the evaluations
    assert [r["env_steps"] for r in rows] == ["0", "100", "200"]
    assert all(rows[0][k] == "" for k in DIAGNOSTICS)  # no real transition yet
    for row in rows[1:]:
        values = {k: float(row[k]) for k in DIAGNOSTICS}
        assert all(np.isfinite(v) and v >= 0 for v in values.values()), values
        assert float(row["real_disagreement"]) > 0 and -1 <= float(row["disagreement_error_corr"]) <= 1
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert {k: saved[k] for k in DIAGNOSTICS} == {k: float(rows[-1][k]) for k in DIAGNOSTICS} == {
        k: result[k] for k in DIAGNOSTICS}


def test_model_error_draws_from_its_own_stream(unified_export, tmp_path):
    adapter = Adapter(AdaptConfig(**TINY), tmp_path / "run", unified_export, **QUIET)
    assert all(np.isnan(v) for v in adapter.model_error().values())  # no episode yet
    episode = {"obs": [adapter.env.reset(seed=0)[0]], "action": [], "reward": []}
    for _ in range(50):
        action = adapter._pad(adapter.rng.uniform(-1, 1, adapter.spec.act_dim))
        obs, reward, *_ = adapter.env.step(action)
        episode["obs"].append(obs), episode["action"].append(action), episode["reward"].append(reward)
    adapter.episodes.append({k: np.asarray(v, np.float32) for k, v in episode.items()})
    runtime = adapter.imagined_env.runtime
    before = adapter.rng.bit_generator.state, runtime.rng.bit_generator.state
    first = adapter.model_error()
    assert all(np.isfinite(v) for v in first.values()) and first["reward_real_mean"] > 0
    assert (adapter.rng.bit_generator.state, runtime.rng.bit_generator.state) == before
    assert adapter.model_error() == first  # seeded by (seed, env step): the same at a resume
    adapter.close()


def test_true_imagined_reward_scores_the_model_buffer_with_reward_from_obs(unified_export, tmp_path):
    adapter = Adapter(AdaptConfig(**{**TINY, "env_steps": 150, "eval_every": 150, "imagined_reward": "true"}),
                      tmp_path / "run", unified_export, **QUIET)
    result = adapter.run()
    data, n = adapter.model.state_dict(), len(adapter.model)
    assert n > 0 and data["next_obs"].shape[1] == adapter.spec.obs_dim  # stored without the padded dims
    np.testing.assert_array_equal(data["reward"][:n], reward_from_obs(adapter.spec, data["next_obs"][:n]))
    assert all(np.isfinite(result[k]) for k in DIAGNOSTICS)


def test_a_run_logged_before_the_diagnostics_resumes(unified_export, tmp_path):
    # A run folder written before this change: metrics.csv without the diagnostic columns, config.json without
    # imagined_reward. It resumes, its old rows kept (empty diagnostic cells), and logs the new columns onwards.
    run = tmp_path / "run"
    adapter = Adapter(AdaptConfig(**TINY), run, unified_export, **QUIET)
    real_step, count = adapter.env.step, {"n": 0}

    def dies_at_170(action):
        count["n"] += 1
        if count["n"] == 170:
            raise KeyboardInterrupt
        return real_step(action)

    adapter.env.step = dies_at_170
    with pytest.raises(KeyboardInterrupt):
        adapter.run()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    old = ["env_steps", "normalized_return", "imagined", "wall_s", "imagined_per_s"]
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    config = json.loads((run / "config.json").read_text())
    del config["imagined_reward"]
    (run / "config.json").write_text(json.dumps(config))
    resumed = Adapter(AdaptConfig(**TINY), run, unified_export, resume=True, **QUIET)
    assert resumed.step == 100  # the checkpoint at the episode end at step 100
    resumed.run()
    after = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["normalized_return"]]
    assert [r["env_steps"] for r in after] == ["0", "100", "200"]
    before = [r for r in rows if r["normalized_return"]]
    assert after[1]["normalized_return"] == before[1]["normalized_return"] and after[1]["reward_mae"] == ""
    assert np.isfinite(float(after[2]["reward_mae"]))
    with pytest.raises(UserInputError, match="ran with imagined_reward='model', now 'true'"):
        Adapter(AdaptConfig(**{**TINY, "imagined_reward": "true"}), run, unified_export, resume=True, **QUIET)


# ------------------------------------------------------------------------------ a real ratio that follows the model
def test_the_adaptive_ratio_falls_from_its_ceiling_to_its_floor_with_the_error():
    from mrcom_train.rl.adapt_config import adaptive_real_ratio
    from mrcom_train.rl.diagnostics import relative_error

    ratios = [adaptive_real_ratio(e, 0.05, 0.5) for e in (5.0, 1.0, 0.5, 0.1, 0.0)]
    assert ratios[0] == ratios[1] == 0.5 and ratios[-1] == 0.05 and ratios == sorted(ratios, reverse=True)
    assert ratios[2] == pytest.approx(0.275)
    assert relative_error({"reward_mae": 0.2, "reward_real_mean": 0.1, "obs_nmse": 0.3}) == pytest.approx(2.0)
    assert relative_error({"reward_mae": 0.0, "reward_real_mean": 0.0, "obs_nmse": 0.3}) == pytest.approx(0.3)
    assert np.isnan(relative_error(dict.fromkeys(DIAGNOSTICS, np.nan)))


ADAPTIVE = dict(TINY, split="t1-a10b50", imagination="oracle", real_ratio_mode="model_error", real_ratio=0.1,
                real_ratio_max=0.6, env_steps=250)


def test_the_real_ratio_follows_a_synthetic_model_error(tmp_path, monkeypatch):
    from mrcom_train.rl import diagnostics

    errors = iter([2.0, 0.5, 0.0, 0.0])  # the recent error each imagination round reports
    real = diagnostics.model_error
    monkeypatch.setattr(diagnostics, "model_error", lambda adapter, last=None: (
        real(adapter) if last is None else {"reward_mae": next(errors), "reward_real_mean": 1.0, "obs_nmse": 0.0}))
    adapter = Adapter(AdaptConfig(**ADAPTIVE), tmp_path / "run", **QUIET)
    assert adapter.real_ratio == 0.6  # the ceiling until the first measurement
    sizes = []
    sample = adapter.real.sample
    adapter.real.sample = lambda n, rng: sizes.append(n) or sample(n, rng)
    adapter.run()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["real_ratio"]]
    assert [int(r["env_steps"]) for r in rows] == [100, 150, 200, 250]
    assert [float(r["real_ratio"]) for r in rows] == pytest.approx([0.6, 0.35, 0.1, 0.1])
    assert [float(r["recent_error"]) for r in rows] == pytest.approx([2.0, 0.5, 0.0, 0.0])
    assert set(sizes) == {19, 11, 3}  # updates start with the first round: 60%, then 35%, then 10% of 32 real


def test_the_oracle_s_recent_error_is_zero_so_its_ratio_falls_to_the_floor_and_resumes(tmp_path):
    config = AdaptConfig(**ADAPTIVE)
    straight = Adapter(config, tmp_path / "straight", **QUIET)
    result = straight.run()
    assert straight.real_ratio == 0.1
    with open(tmp_path / "straight" / "metrics.csv") as f:
        assert [float(r["recent_error"]) for r in csv.DictReader(f) if r["recent_error"]] == [0.0] * 4
    kill_adapter_at(Adapter(config, tmp_path / "resumed", **QUIET), 200)
    latest = json.loads((tmp_path / "resumed" / "checkpoints" / "latest.json").read_text())
    state = json.loads((tmp_path / "resumed" / "checkpoints" / latest["dir"] / "state.json").read_text())
    assert state["real_ratio"] == 0.1
    assert Adapter(config, tmp_path / "resumed", resume=True, **QUIET).run() == result


@pytest.mark.parametrize("fields,message", [
    ({"real_ratio_mode": "auto"}, "real_ratio_mode must be one of fixed, model_error"),
    ({"real_ratio_mode": "model_error", "real_ratio": 0.6, "real_ratio_max": 0.5},
     r"real_ratio_max \(0.5\) must be >="),
    ({"real_ratio_max": 1.5}, r"real_ratio_max must be in \[0, 1\]"),
])
def test_bad_real_ratio_settings_are_one_line(fields, message):
    with pytest.raises(UserInputError, match=message):
        AdaptConfig(**{**TINY, **fields})
