"""Refits during adaptation: the world model behind an export keeps learning on the target's real episodes
(with pretraining data rehearsed), is re-exported and swapped in; a resumed run refits exactly as an
uninterrupted one."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import collect_train_export, kill_adapter_at

from mrcom_core.errors import UserInputError
from mrcom_train.rl.adapt import AdaptConfig, Adapter
from mrcom_train.rl.refit import Refitter
from mrcom_train.scenarios import ScenarioEnv, UnifiedSpace

QUIET = dict(progress=False, log=lambda s: None)
REFIT = dict(split="t1-a10b50", range="ood", domain="cheetah", env_steps=300, episode_length=100,
             learning_starts=100, model_rollout_every=50, rollout_batch=16, updates_per_step=1, sac_hidden=32,
             batch_size=32, eval_every=100, eval_episodes=1, checkpoint_every=100, seed=2, refit="all",
             refit_every=100, refit_steps=20, refit_lr=1e-3)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny cheetah dataset, a 20-update training run on it and its export (whose manifest names the run)."""
    return collect_train_export(tmp_path_factory.mktemp("refit"), episode_length=120, steps=20)


def _target_episodes(refitter: Refitter, n: int = 2, length: int = 100):
    spec = AdaptConfig(**{**REFIT, "episode_length": length}).target()
    c = refitter.model.config
    env = ScenarioEnv(spec, UnifiedSpace(c.obs_dim, c.act_dim))
    rng, episodes = np.random.default_rng(0), []
    for e in range(n):
        obs, _ = env.reset(seed=e)
        ep = {"obs": [obs], "action": [], "reward": []}
        for _ in range(length):
            action = np.zeros(c.act_dim, np.float32)
            action[: spec.act_dim] = rng.uniform(-1, 1, spec.act_dim)
            obs, reward, *_ = env.step(action)
            ep["obs"].append(obs), ep["action"].append(action), ep["reward"].append(reward)
        episodes.append({k: np.asarray(v, np.float32) for k, v in ep.items()})
    return episodes, env.obs_mask, env.action_mask


@pytest.mark.parametrize("mode", ["heads", "all"])
def test_a_refit_lowers_the_held_out_loss_and_trains_only_its_parameters(pretrained, mode):
    refitter = Refitter(pretrained / "run", mode, rehearsal=0.5, lr=1e-3, seed=0)
    before = {k: v.clone() for k, v in refitter.model.state_dict().items()}
    episodes, obs_mask, action_mask = _target_episodes(refitter)
    out = refitter.refit(episodes, obs_mask, action_mask, steps=40)
    assert out["updates"] > 0 and out["held_out_after"] < out["held_out_before"]
    changed = {k.split(".", 1)[0] for k, v in refitter.model.state_dict().items() if not torch.equal(v, before[k])}
    if mode == "heads":  # the heads, and the ensemble's elites chosen again on the target's held-out data
        assert changed and changed <= {*refitter.model.refit_heads, "elites"}
    else:
        assert {"decoder", "reward_head"} < changed and len(changed) > len(refitter.model.refit_heads)
    short = refitter.refit([{k: v[:5] for k, v in episodes[0].items()}], obs_mask, action_mask, steps=5)
    assert short["updates"] == 0 and np.isnan(short["held_out_before"])  # too short for a window: nothing done


def test_adaptation_refits_swaps_the_runtime_and_resumes_exactly(pretrained, tmp_path):
    config = AdaptConfig(**REFIT)
    straight = Adapter(config, tmp_path / "straight", pretrained / "export", **QUIET)
    result = straight.run()
    assert straight.refits == 3 and straight.imagined_env.runtime.root == tmp_path / "straight" / "model"
    rows = [line.split(",") for line in (tmp_path / "straight" / "metrics.csv").read_text().splitlines()]
    header = rows[0]
    refits = [dict(zip(header, r, strict=True)) for r in rows[1:] if r[header.index("refit_updates")]]
    assert [int(r["env_steps"]) for r in refits] == [100, 200, 300]
    assert all(float(r["held_out_after"]) <= float(r["held_out_before"]) for r in refits)
    assert all(r["reward_mae_before"] and r["reward_mae_after"] for r in refits)

    kill_adapter_at(Adapter(config, tmp_path / "resumed", pretrained / "export", **QUIET), 200)
    latest = json.loads((tmp_path / "resumed" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 100
    assert (tmp_path / "resumed" / "checkpoints" / latest["dir"] / "refit.safetensors").is_file()
    resumed = Adapter(config, tmp_path / "resumed", pretrained / "export", resume=True, **QUIET)
    assert resumed.refits == 1 and resumed.imagined_env.runtime.root == tmp_path / "resumed" / "model"
    assert resumed.run() == result


def test_refit_options_and_a_missing_run_are_one_line(pretrained, tmp_path):
    for fields, message in (({"refit": "sometimes"}, "refit must be one of none, heads, all"),
                            ({"use_model": False}, "refit needs a world model"),
                            ({"imagination": "oracle"}, "refit needs a world model"),
                            ({"refit_rehearsal": 1.0}, r"refit_rehearsal must be in \[0, 1\)")):
        with pytest.raises(UserInputError, match=message):
            AdaptConfig(**{**REFIT, **fields})
    export = tmp_path / "export"
    shutil.copytree(pretrained / "export", export)
    from conftest import write_manifest

    manifest = json.loads((export / "manifest.json").read_text())
    write_manifest(export, {**manifest, "source": {}})
    with pytest.raises(UserInputError, match="manifest names none: pass --run RUN"):
        Adapter(AdaptConfig(**REFIT), tmp_path / "a", export, **QUIET)
    with pytest.raises(UserInputError, match="is not there"):
        Adapter(AdaptConfig(**REFIT), tmp_path / "a", export, run=tmp_path / "nowhere", **QUIET)
    with pytest.raises(UserInputError, match="lies inside the training run"):
        Adapter(AdaptConfig(**REFIT), pretrained / "run" / "adapt", export, run=pretrained / "run", **QUIET)
    assert not (pretrained / "run" / "adapt").exists()
