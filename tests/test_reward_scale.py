"""The reward head's target scale (``model.reward_scale``): standardized by the training data's statistics,
kept with the weights and applied inside the exported graphs, so every consumer sees rewards in the data's units."""

import json

import numpy as np
import pytest
import torch
from conftest import make_batch
from safetensors.torch import save_file

from mrcom_core.errors import UserInputError
from mrcom_core.losses import reward_nll
from mrcom_core.registry import build_model, model_config
from mrcom_train.datasets.dataset import Dataset
from mrcom_train.training.checkpoint import load_model
from mrcom_train.training.config import RunRequest
from mrcom_train.training.trainer import Trainer

QUIET = dict(progress=False, log=lambda s: None)
DIMS = dict(obs_dim=10, act_dim=3, num_scenarios=2)




def test_every_model_defaults_to_unit_scaled_rewards():
    for model_type in ("mrcom", "rssm_ctx", "rssm", "cadm", "mamba"):
        assert model_config("tiny", overrides={"model_type": model_type}, **DIMS).reward_scale == "unit"
    with pytest.raises(UserInputError, match="model.reward_scale must be one of raw, unit, got 'log'"):
        model_config("tiny", overrides={"reward_scale": "log"}, **DIMS)


@pytest.mark.parametrize("model_type", ["mrcom", "rssm", "cadm"])
def test_the_head_learns_standardized_rewards_and_predicts_in_the_datas_units(model_type):
    cfg = model_config("tiny", overrides={"model_type": model_type}, **DIMS)
    torch.manual_seed(0)
    unit = build_model(cfg, reward_stats=(0.3, 0.05)).eval()
    raw = build_model(model_config("tiny", overrides={"model_type": model_type, "reward_scale": "raw"}, **DIMS),
                      reward_stats=(0.3, 0.05))
    raw.load_state_dict({**unit.state_dict(), "reward_mean": torch.zeros(1), "reward_std": torch.ones(1)})
    assert float(raw.reward_mean) == 0 and float(raw.reward_std) == 1  # raw ignores the statistics it is given
    batch = make_batch(cfg)
    state = unit.initial_state(4)
    action = batch["action"][:, 0]
    head = raw.reward(state, action)  # identical weights, no scale: the head's own output
    torch.testing.assert_close(unit.reward(state, action), head * 0.05 + 0.3)
    # the likelihood compares head and target in the head's scale: a reward 0.05 off the truth costs 0.5 there
    states = unit.initial_state(4)
    states = type(states)(*(x[:, None].expand(-1, 6, -1) for x in states))
    target = {**batch, "reward": unit.reward(states, batch["action"]).detach() + 0.05}
    torch.testing.assert_close(reward_nll(unit, states, target), torch.full((4, 6), 0.5))
    torch.testing.assert_close(reward_nll(raw, states, {**target, "reward": raw.reward(states, batch["action"])
                                                        .detach() + 0.05}), torch.full((4, 6), 0.00125))


def test_training_takes_the_datasets_reward_statistics_and_exports_keep_them(data, tmp_path):
    rewards = np.concatenate([Dataset(data).episode(i)["reward"] for i in range(2)]).astype(np.float64)
    mean, std = Dataset(data).reward_stats()
    assert mean == pytest.approx(rewards.mean()) and std == pytest.approx(rewards.std())
    Trainer(data, tmp_path / "run", RunRequest(preset="tiny", train={"steps": 2, "eval_every": 1000}), **QUIET).run()
    model, _ = load_model(tmp_path / "run")
    assert float(model.reward_mean) == pytest.approx(mean) and float(model.reward_std) == pytest.approx(std)
    from mrcom_export.exporter import export_model
    from mrcom_export.runtime import Runtime

    export_model(model, tmp_path / "export", formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["reward_mean"] == pytest.approx(mean) and manifest["reward_std"] == pytest.approx(std)
    Runtime(tmp_path / "export")  # the manifest with its new fields opens


def test_weights_without_the_reward_scale_are_refused(tmp_path):
    from mrcom_train.training.checkpoint import load_weights

    raw = build_model(model_config("tiny", overrides={"reward_scale": "raw"}, **DIMS))
    old = {k: v for k, v in raw.state_dict().items() if k not in ("reward_mean", "reward_std")}
    save_file(old, str(tmp_path / "model.safetensors"))  # as written before the scale was kept with the weights
    with pytest.raises(UserInputError, match="tensor 'reward_mean' is missing"):
        load_weights(tmp_path, build_model(model_config("tiny", **DIMS)))
