import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mrcom_train.datasets.collect as collect_mod
from mrcom_core.errors import Interrupted, UserInputError
from mrcom_train.cli import main
from mrcom_train.datasets.collect import CollectConfig, collect
from mrcom_train.datasets.dataset import Dataset
from mrcom_train.datasets.sampler import SequenceSampler

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}


def _mrcom(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mrcom_train.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def _same_episodes(a, b):
    da, db = Dataset(a), Dataset(b)
    assert [(e.scenario, e.index, e.length) for e in da.episodes] == [(e.scenario, e.index, e.length)
                                                                      for e in db.episodes]
    for i in range(len(da)):
        for k in ("obs", "action", "reward"):
            np.testing.assert_array_equal(da.episode(i)[k], db.episode(i)[k])


def test_tiny_collect_through_the_cli(tmp_path, capsys):
    out = tmp_path / "data"
    main(["collect", "--split", "t3-add-d", "-n", "1", "-k", "2", "--episode-length", "40", "--no-progress",
          "--out", str(out)])
    printed = capsys.readouterr().out
    assert "3 scenarios, 6 episodes, 240 steps" in printed
    ds = Dataset(out)
    assert ds.obs_dim == 24 + 3 and ds.act_dim == 6  # walker's 24 dims + ceil(2.4) add-d noise dims
    assert ds.manifest["split"] == "t3-add-d" and ds.manifest["policy"] == "random"
    assert [s.obs_fn for s in ds.scenarios] == ["add-d"] * 3
    assert np.isfinite(ds.obs_mean).all() and (ds.obs_std > 0).all()
    batch = SequenceSampler(ds, 8, 4, 4).sample()
    assert batch["obs"].shape == (4, 5, 27)
    hopper = ds.episode(0)
    assert np.all(hopper["action"][:, 4:] == 0)  # padded action dims stay zero
    assert np.all(np.abs(hopper["action"]) <= 1)


def test_workers_give_the_same_dataset_as_one_process(tmp_path):
    cfg = dict(domains=("hopper", "cheetah"), scenarios_per_domain=2, episodes_per_scenario=2, episode_length=50)
    collect(CollectConfig(**cfg, workers=1), tmp_path / "one", progress=False, log=lambda s: None)
    collect(CollectConfig(**cfg, workers=2), tmp_path / "two", progress=False, log=lambda s: None)
    _same_episodes(tmp_path / "one", tmp_path / "two")


def test_collection_resumes_after_a_kill(tmp_path):
    args = ["collect", "-n", "2", "-k", "6", "--episode-length", "1000", "-w", "2", "--no-progress"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mrcom_train.cli", *args, "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("episodes/s*/e*"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("episodes/s*/e*")))
    assert 3 <= done_before < 36, "the collection should be killed part-way"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False

    r = _mrcom(*args, "--out", str(out))
    assert r.returncode == 2 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _mrcom(*args, "--out", str(out), "--resume", timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{done_before}/36 episodes already there" in r.stdout

    main([*args, "-w", "1", "--out", str(tmp_path / "straight")])
    _same_episodes(out, tmp_path / "straight")


def test_sac_collection_records_its_replay_and_resumes_mid_scenario(tmp_path, monkeypatch):
    cfg = CollectConfig(domains=("cheetah",), scenarios_per_domain=1, episodes_per_scenario=3, episode_length=60,
                        policy="sac", sac_hidden_dim=32, sac_batch_size=32, sac_learning_starts=50)
    quiet = dict(progress=False, log=lambda s: None)
    collect(cfg, tmp_path / "straight", **quiet)

    real_write = collect_mod.write_episode
    calls = {"n": 0}

    def write_then_die(*a, **k):
        if calls["n"] == 2:  # die while the third episode is being written
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(*a, **k)

    monkeypatch.setattr(collect_mod, "write_episode", write_then_die)
    with pytest.raises(Interrupted):
        collect(cfg, tmp_path / "resumed", **quiet)
    assert (tmp_path / "resumed" / "sac" / "s0000.pt").exists()
    assert not (tmp_path / "resumed" / "episodes" / "s0000" / "e00002").exists()
    monkeypatch.setattr(collect_mod, "write_episode", real_write)
    collect(cfg, tmp_path / "resumed", resume=True, **quiet)
    _same_episodes(tmp_path / "straight", tmp_path / "resumed")  # SAC state and replay restored exactly

    ds = Dataset(tmp_path / "straight")
    assert ds.manifest["policy"] == "sac" and len(ds) == 3
    first = ds.episode(0)["action"]
    # the first 50 steps are uniform random warm-up, later ones come from the (learning) SAC actor
    assert np.abs(first[:50, :6]).mean() == pytest.approx(0.5, abs=0.12)


def test_sac_chains_warm_start_each_scenario_from_the_previous_agent(tmp_path, monkeypatch):
    """With sac_chain, scenario k of a domain starts from scenario k-1's final agent and acts with it from
    the first step (no random warm-up); a chain killed in its second scenario resumes to the same data."""
    import torch

    cfg = CollectConfig(domains=("cheetah", "hopper"), scenarios_per_domain=2, episodes_per_scenario=2,
                        episode_length=40, policy="sac", sac_hidden_dim=16, sac_batch_size=16,
                        sac_learning_starts=30, sac_chain=2)
    assert cfg.chains(cfg.scenarios()) == [[0, 1], [2, 3]]  # one chain per domain
    quiet = dict(progress=False, log=lambda s: None)
    loaded = []
    real_warm = collect_mod._sac_warm_start
    monkeypatch.setattr(collect_mod, "_sac_warm_start", lambda root, unit: loaded.append(
        (unit.scenario, unit.warm_from)) or real_warm(root, unit))
    collect(cfg, tmp_path / "straight", **quiet)
    assert sorted(loaded) == [(1, 0), (3, 2)]
    ds = Dataset(tmp_path / "straight")
    first_of = {e.scenario: i for i, e in reversed(list(enumerate(ds.episodes)))}
    cold, warm = ds.episode(first_of[0])["action"][:30, :6], ds.episode(first_of[1])["action"][:30, :6]
    assert np.abs(cold).mean() == pytest.approx(0.5, abs=0.12)  # uniform random warm-up
    assert np.abs(warm).mean() != pytest.approx(np.abs(cold).mean(), abs=1e-3)  # the inherited actor acts
    final0 = torch.load(tmp_path / "straight" / "sac" / "s0000.pt", weights_only=True)["agent"]
    start1 = {}
    monkeypatch.setattr(collect_mod, "_sac_warm_start", lambda root, unit: start1.setdefault(
        unit.scenario, real_warm(root, unit)))
    real_write = collect_mod.write_episode

    def die_in_scenario_1(root, scenario, ep, *a, **k):
        if scenario == 1 and ep == 1:
            raise KeyboardInterrupt
        return real_write(root, scenario, ep, *a, **k)

    monkeypatch.setattr(collect_mod, "write_episode", die_in_scenario_1)
    with pytest.raises(Interrupted):
        collect(CollectConfig(**{**cfg.to_dict(), "domains": cfg.domains}), tmp_path / "resumed", **quiet)
    monkeypatch.setattr(collect_mod, "write_episode", real_write)
    collect(cfg, tmp_path / "resumed", resume=True, **quiet)
    _same_episodes(tmp_path / "straight", tmp_path / "resumed")
    assert all(torch.equal(final0[k], v) for k, v in start1[1].items() if isinstance(v, torch.Tensor))


def test_sac_chain_is_checked():
    with pytest.raises(UserInputError, match="sac_chain must be an integer >= 1"):
        CollectConfig(policy="sac", sac_chain=0)
    with pytest.raises(UserInputError, match="sac_chain: warm-start chains .* need policy='sac'"):
        CollectConfig(sac_chain=2)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = CollectConfig(domains=("hopper",), scenarios_per_domain=1, episodes_per_scenario=1, episode_length=10)
    collect(cfg, tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(UserInputError, match="episode_length=10"):
        collect(CollectConfig(domains=("hopper",), scenarios_per_domain=1, episodes_per_scenario=1,
                              episode_length=20), tmp_path, resume=True, progress=False)
    # a finished collection resumes as a no-op; more workers are fine
    collect(CollectConfig(domains=("hopper",), scenarios_per_domain=1, episodes_per_scenario=1, episode_length=10,
                          workers=2), tmp_path, resume=True, progress=False, log=lambda s: None)


@pytest.mark.parametrize("args,message", [
    (["collect", "--split", "t7", "--out", "{tmp}/a"], "unknown split 't7'"),
    (["collect", "--domains", "hopper,ant", "--out", "{tmp}/a"], "unknown domain 'ant'"),
    (["collect", "--alpha", "-5", "--out", "{tmp}/a"], "alpha must be in [0, 100)"),
    (["collect", "--beta", "150", "--out", "{tmp}/a"], "beta must be in [0, 100]"),
    (["collect", "--workers", "0", "--out", "{tmp}/a"], "workers must be an integer >= 1"),
    (["collect", "--policy", "ppo", "--out", "{tmp}/a"], "'ppo' is not one of 'random', 'sac'"),
    (["collect", "--policy", "sac", "--sac-chain", "0", "--out", "{tmp}/a"], "sac_chain must be an integer >= 1"),
    (["collect", "--obs-fn", "blur", "--out", "{tmp}/a"], "Invalid value for '--obs-fn': 'blur'"),
    (["collect", "--out", "{tmp}/full"], "is not empty; pass --resume"),
    (["collect", "--out", "{tmp}/empty", "--resume", "-n", "1"], None),
    (["collect", "--out", "{tmp}/full", "--resume"], "--resume only continues a dataset"),
    (["info", "{tmp}/nowhere"], "manifest.json is missing"),
    (["info", "{tmp}/old"], "format version 0"),
    (["collect", "-n", "many", "--out", "{tmp}/a"], "'many' is not a valid integer"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "stray.txt").write_text("x")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"format": "mrcom-dataset", "version": 0}))
    if message is None:  # --resume into an empty folder simply starts: use a tiny collection to prove it
        args = [*args, "-k", "1", "--episode-length", "5", "--domains", "hopper"]
    r = _mrcom(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    if message is None:
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrcom: error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
