"""``imagined_reward="learned"``: the target's reward model fitted on its real transitions
(:mod:`mrcom_train.rl.reward_model`), what it scores, and its place in checkpoints."""

import csv

import numpy as np
import pytest
import torch
from conftest import kill_adapter_at

from mrcom_core.errors import UserInputError
from mrcom_train.agents.sac import ReplayBuffer
from mrcom_train.rl.adapt import AdaptConfig, Adapter
from mrcom_train.rl.adapt_checkpoint import REWARD_FILE
from mrcom_train.rl.reward_model import RewardModel

QUIET = dict(progress=False, log=lambda s: None)
TINY = dict(split="t1-a5b20", domain="cheetah", env_steps=300, episode_length=50, learning_starts=100,
            model_rollout_every=50, rollout_batch=16, horizon_end=2, eval_every=150, eval_episodes=1, sac_hidden=32,
            batch_size=32, seed=3, updates_per_step=1, checkpoint_every=100, imagined_reward="learned",
            reward_steps=20)


def _speed_task(n: int, seed: int) -> ReplayBuffer:
    """Transitions whose reward is a tent function of one next-observation dim (a speed-tracking reward)."""
    rng = np.random.default_rng(seed)
    obs, action, next_obs = rng.normal(size=(n, 5)), rng.uniform(-1, 1, (n, 2)), rng.normal(size=(n, 5)) * 3
    reward = np.clip(1 - np.abs(next_obs[:, 2] - 2.0) / 2.0, 0, 1)
    buffer = ReplayBuffer(5, 2, n)
    buffer.add_batch(obs, action, reward, next_obs, np.zeros(n))
    return buffer


def test_fitting_on_real_transitions_learns_their_reward():
    train, held_out = _speed_task(2000, 0), _speed_task(500, 1).state_dict()
    model = RewardModel(5, 2, seed=0)

    def error() -> float:
        pred = model(held_out["obs"], held_out["action"], held_out["next_obs"])
        assert pred.dtype == np.float32 and pred.shape == (500,)
        return float(np.mean(np.abs(pred - held_out["reward"])))

    before = error()
    model.fit(train, 400, np.random.default_rng(0))
    after = error()
    assert model.updates == 400
    constant = float(np.mean(np.abs(held_out["reward"] - np.median(train.state_dict()["reward"]))))  # knows no input
    assert after < 0.3 * before and after < 0.5 * constant, (before, after, constant)
    # inputs wider than the model's dims (a unified space's padding) are read up to its own dims
    padded = {k: np.pad(held_out[k], ((0, 0), (0, 3))) for k in ("obs", "action", "next_obs")}
    np.testing.assert_array_equal(model(padded["obs"], padded["action"], padded["next_obs"]),
                                  model(held_out["obs"], held_out["action"], held_out["next_obs"]))
    assert np.isnan(RewardModel(5, 2).fit(ReplayBuffer(5, 2, 4), 10, np.random.default_rng(0)))


def test_a_restored_reward_model_fits_on_as_the_original():
    buffer, a, b = _speed_task(300, 0), RewardModel(5, 2, seed=1), RewardModel(5, 2, seed=2)
    a.fit(buffer, 20, np.random.default_rng(0))
    b.load_state_dict(a.state_dict())
    a.fit(buffer, 10, np.random.default_rng(5))
    b.fit(buffer, 10, np.random.default_rng(5))
    for (name, x), y in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="standardization of shape"):
        RewardModel(4, 2).load_state_dict(a.state_dict())


def test_the_learned_reward_scores_the_model_buffer(unified_export, tmp_path):
    adapter = Adapter(AdaptConfig(**{**TINY, "env_steps": 200}), tmp_path / "run", unified_export, **QUIET)
    result = adapter.run()
    rounds = (200 - 100) // 50 + 1  # a round at every multiple of 50 from learning_starts on
    assert adapter.reward_model.updates == rounds * 20
    data, n = adapter.model.state_dict(), len(adapter.model)
    assert n > 0
    # the last round's transitions carry the model's reward as fitted before that round (the last fit)
    last = slice(n - 16 * 2, n) if n >= 32 else slice(0, n)
    np.testing.assert_allclose(data["reward"][last],
                               adapter.reward_model(data["obs"][last], data["action"][last],
                                                    data["next_obs"][last]), atol=1e-6)
    assert np.isfinite(result["reward_mae"])


def test_a_run_with_a_learned_reward_resumes_exactly(unified_export, tmp_path):
    config = AdaptConfig(**TINY)
    straight = Adapter(config, tmp_path / "a", unified_export, **QUIET)
    straight.run()
    kill_adapter_at(Adapter(config, tmp_path / "b", unified_export, **QUIET), 300)  # its last checkpoint: 200
    assert (tmp_path / "b" / "checkpoints" / "step_00000200" / REWARD_FILE).is_file()
    resumed = Adapter(config, tmp_path / "b", unified_export, resume=True, **QUIET)
    assert resumed.reward_model.updates == straight.reward_model.updates - 2 * 20  # rounds at 250 and 300 to go
    resumed.run()
    for (name, a), b in zip(straight.agent.actor.state_dict().items(), resumed.agent.actor.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name

    def untimed(run):
        return [{k: v for k, v in row.items() if k not in ("wall_s", "imagined_per_s")}
                for row in csv.DictReader((tmp_path / run / "metrics.csv").read_text().splitlines())]

    assert untimed("a") == untimed("b")


def test_a_missing_reward_model_in_a_checkpoint_is_one_line(unified_export, tmp_path):
    config = AdaptConfig(**TINY)
    kill_adapter_at(Adapter(config, tmp_path / "b", unified_export, **QUIET), 300)
    (tmp_path / "b" / "checkpoints" / "step_00000200" / REWARD_FILE).unlink()
    with pytest.raises(UserInputError) as error:
        Adapter(config, tmp_path / "b", unified_export, resume=True, **QUIET)
    assert "\n" not in str(error.value) and REWARD_FILE in str(error.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"reward_lr": 0}, "reward_lr must be in (0, 1], got 0"),
    ({"reward_lr": "fast"}, "reward_lr must be"),
    ({"reward_steps": 0}, "reward_steps must be an integer >= 1, got 0"),
    ({"imagined_reward": "learnt"}, "imagined_reward must be one of model, learned, true, got 'learnt'"),
])
def test_bad_reward_model_settings_are_one_line(fields, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        AdaptConfig(**{**TINY, **fields})
