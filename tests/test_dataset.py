import json
from pathlib import Path

import numpy as np
import pytest

from mrcom_core.errors import UserInputError
from mrcom_train.datasets.dataset import (
    MANIFEST,
    VERSION,
    Dataset,
    DatasetWriter,
    is_complete,
    observation_stats,
    read_episode,
    write_episode,
)
from mrcom_train.datasets.sampler import SequenceSampler
from mrcom_train.scenarios import ScenarioSpec, UnifiedSpace


def _marked_episode(scenario, episode, T, obs_dim, act_dim, real_obs, real_act):
    """Values encode (scenario, episode, step) so a test can tell where every sampled row came from."""
    t = np.arange(T + 1, dtype=np.float32)
    obs = np.zeros((T + 1, obs_dim), np.float32)
    obs[:, :real_obs] = (1000 * scenario + 100 * episode + t)[:, None]
    act = np.zeros((T, act_dim), np.float32)
    act[:, :real_act] = t[:T, None]
    reward = t[:T] / 1000
    return obs, act, reward


SPECS = [ScenarioSpec("hopper", seed=1), ScenarioSpec("walker", seed=2), ScenarioSpec("cheetah", seed=3)]


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    space = UnifiedSpace.of(SPECS)
    lengths = {0: [30, 40], 1: [35], 2: [30, 30, 30]}
    writer = DatasetWriter(tmp_path, SPECS, space, {"split": "test"})
    writer.save()
    assert not is_complete(tmp_path)
    for sid, eps in lengths.items():
        for ep, T in enumerate(eps):
            obs, act, rew = _marked_episode(sid, ep, T, space.obs_dim, space.act_dim, SPECS[sid].obs_dim,
                                            SPECS[sid].act_dim)
            write_episode(tmp_path, sid, ep, obs, act, rew)
            writer.add(sid, ep, T, float(rew.sum()))
    writer.finalize()
    assert is_complete(tmp_path)
    return tmp_path


def test_write_read_round_trip_memory_mapped(tiny_dataset):
    ds = Dataset(tiny_dataset)
    assert (ds.obs_dim, ds.act_dim) == (24, 6)
    assert len(ds) == 6 and ds.num_steps == 30 + 40 + 35 + 90
    ep = ds.episode(1)
    assert isinstance(ep["obs"], np.memmap) and ep["obs"].shape == (41, 24) and ep["obs"].dtype == np.float32
    assert ep["action"].shape == (40, 6) and ep["reward"].shape == (40,)
    assert ds.obs_masks.shape == (3, 24) and ds.obs_masks[0].sum() == 15 and ds.obs_masks[1].sum() == 24
    assert ds.action_masks[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert [s.domain for s in ds.scenarios] == ["hopper", "walker", "cheetah"]
    assert ds.manifest["split"] == "test" and ds.manifest["num_steps"] == ds.num_steps
    (tiny_dataset / MANIFEST).unlink()
    reopened = DatasetWriter(tiny_dataset, SPECS, UnifiedSpace.of(SPECS), {}, episodes_per_scenario=3)
    assert reopened.records[(2, 2)]["length"] == 30 and len(reopened.records) == 6  # disk is the truth
    assert reopened.records[(1, 0)]["files"] == ds.manifest["episodes"][2]["files"]  # recomputed from the files
    with pytest.raises(UserInputError, match="e00002 is not part of this collection"):
        DatasetWriter(tiny_dataset, SPECS, UnifiedSpace.of(SPECS), {}, episodes_per_scenario=2)


def test_write_is_atomic_and_leftovers_are_cleaned(tmp_path):
    tmp = tmp_path / "episodes" / "s0000" / ".tmp-e00001-999"
    tmp.mkdir(parents=True)
    (tmp / "obs.npy").write_bytes(b"partial")
    writer = DatasetWriter(tmp_path, SPECS[:1], UnifiedSpace.of(SPECS[:1]), {})
    assert writer.records == {} and not tmp.exists()  # a half-written episode is never seen, and is removed
    write_episode(tmp_path, 0, 1, np.zeros((3, 2)), np.zeros((2, 1)), np.zeros(2))
    assert sorted(read_episode(tmp_path, 0, 1)) == ["action", "obs", "reward"]
    assert not list((tmp_path / "episodes" / "s0000").glob(".tmp-*"))
    with pytest.raises(ValueError, match="episode arrays"):
        write_episode(tmp_path, 0, 2, np.zeros((3, 2)), np.zeros((3, 1)), np.zeros(2))
    with pytest.raises(UserInputError, match="no episode e00002"):
        read_episode(tmp_path, 0, 2)


def test_observation_stats_ignore_padded_dims():
    a = np.array([[1.0, 10.0], [3.0, 10.0]])
    b = np.array([[5.0, 0.0], [7.0, 0.0]])  # second dim is padding for this scenario
    mean, std = observation_stats([(a, np.array([1, 1])), (b, np.array([1, 0]))], 2)
    np.testing.assert_allclose(mean, [4.0, 10.0])
    np.testing.assert_allclose(std, [np.sqrt(5.0), 1.0])  # constant dim gets std 1


def test_sampler_shapes_and_dtypes(tiny_dataset):
    ds = Dataset(tiny_dataset)
    batch = SequenceSampler(ds, context_len=8, window_len=5, batch_size=16, seed=0).sample()
    expect = {"context_obs": (16, 8, 24), "context_action": (16, 8, 6), "context_reward": (16, 8),
              "obs": (16, 6, 24), "action": (16, 5, 6), "reward": (16, 5), "obs_mask": (16, 24),
              "action_mask": (16, 6), "scenario": (16,), "start": (16,), "prompt_len": (16,)}
    assert {k: v.shape for k, v in batch.items()} == expect
    for k, v in batch.items():
        assert v.dtype == (np.int64 if k in ("scenario", "start", "prompt_len") else np.float32), k


def test_sampler_windows_and_contexts_come_from_the_right_steps(tiny_dataset):
    ds = Dataset(tiny_dataset)
    m, L = 8, 5
    sampler = SequenceSampler(ds, context_len=m, window_len=L, batch_size=256, seed=1)
    batch = sampler.sample()
    assert (batch["prompt_len"] > 0).any() and (batch["prompt_len"] == 0).any()
    for b in range(256):
        sid, t, p = batch["scenario"][b], batch["start"][b], batch["prompt_len"][b]
        window = batch["obs"][b, :, 0]
        ep = int(window[0] - 1000 * sid - t) // 100
        np.testing.assert_array_equal(window, 1000 * sid + 100 * ep + t + np.arange(L + 1))
        np.testing.assert_array_equal(batch["action"][b, :, 0], t + np.arange(L))
        assert p == max(m - t, 0)
        ctx = batch["context_obs"][b, :, 0]
        # the real part of the context is the m - p steps right before the window, in order
        np.testing.assert_array_equal(ctx[p:], 1000 * sid + 100 * ep + np.arange(t - (m - p), t))
        np.testing.assert_array_equal(batch["context_action"][b, p:, 0], np.arange(t - (m - p), t))
        if p:
            # the prompt part: consecutive steps of another episode of the same scenario, ending the prompt
            prompt = ctx[:p]
            assert np.all(prompt // 1000 == sid)
            assert np.all(np.diff(prompt) == 1)
            other = int(prompt[0] - 1000 * sid) // 100
            if len(ds.episodes_of(int(sid))) > 1:
                assert other != ep
        real_obs = int(ds.obs_masks[sid].sum())
        assert batch["obs_mask"][b].sum() == real_obs and np.all(batch["obs"][b, :, real_obs:] == 0)


def test_sampler_is_seeded_and_respects_episode_subsets(tiny_dataset):
    ds = Dataset(tiny_dataset)
    a = SequenceSampler(ds, 4, 3, 32, seed=5).sample()
    b = SequenceSampler(ds, 4, 3, 32, seed=5).sample()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    train, held = ds.holdout(0.34, seed=0)
    assert set(train).isdisjoint(held) and sorted(train + held) == list(range(len(ds)))
    assert {ds.episodes[i].scenario for i in train} == {0, 1, 2}  # every scenario keeps a train episode
    only = SequenceSampler(ds, 4, 3, 64, episodes=held, seed=0).sample()
    assert set(only["scenario"].tolist()) <= {ds.episodes[i].scenario for i in held}


def test_sampler_rejects_bad_sizes(tiny_dataset):
    ds = Dataset(tiny_dataset)
    with pytest.raises(UserInputError, match="window_len"):
        SequenceSampler(ds, 4, 0, 8)
    with pytest.raises(UserInputError, match="long enough"):
        SequenceSampler(ds, 4, 500, 8)
    with pytest.raises(UserInputError, match="batch_size"):
        SequenceSampler(ds, 4, 3, 0)


def test_dataset_rejects_missing_foreign_or_incomplete_manifests(tiny_dataset, tmp_path):
    with pytest.raises(UserInputError, match="manifest.json is missing"):
        Dataset(tmp_path / "nowhere")
    path = tiny_dataset / MANIFEST
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, "version": VERSION + 1}))
    with pytest.raises(UserInputError, match="version"):
        Dataset(tiny_dataset)
    path.write_text(json.dumps({**good, "format": "something-else"}))
    with pytest.raises(UserInputError, match="not an MrCoM dataset"):
        Dataset(tiny_dataset)
    path.write_text(json.dumps({**good, "complete": False}))
    with pytest.raises(UserInputError, match="incomplete"):
        Dataset(tiny_dataset)
    path.write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        Dataset(tiny_dataset)
