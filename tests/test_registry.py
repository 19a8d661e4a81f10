"""Adding a model = one class + one registry entry: a throw-away model defined here trains, exports (with the
parity checks), rolls out through the runtime and joins ``mrcom reproduce``'s methods, without any other file
knowing about it."""

import csv
from typing import NamedTuple

import numpy as np
import pytest
import torch

from mrcom_core.base import BaseWorldModel, Gaussian, LatentSizes, LatentState
from mrcom_core.errors import UserInputError
from mrcom_core.kernels import gaussian_sample
from mrcom_core.layers import mlp
from mrcom_core.losses import OvershootOptions, masked_sq_error, reward_nll
from mrcom_core.registry import MODELS, build_model, model_config, register_model, unregister_model

QUIET = dict(progress=False, log=lambda s: None)


class DriftWindow(NamedTuple):
    obs: torch.Tensor
    mean: torch.Tensor


def drift_loss(model, window: DriftWindow, batch, noise):
    recon = 0.5 * masked_sq_error(window.mean, window.obs[:, 1:], batch["obs_mask"]).mean()
    obs = window.obs[:, :-1]
    empty = obs.new_zeros(*obs.shape[:2], 0)
    reward = reward_nll(model, LatentState(obs, empty, empty), batch).mean()
    drift = window.mean.abs().mean().detach()  # a term no built-in model logs: it must still reach metrics.csv
    return {"loss": recon + reward, "recon": recon, "reward": reward, "drift_size": drift}


class Drift(BaseWorldModel):
    """A context-free observation-space model: ``o_t = o_{t-1} + f(o_{t-1}, a_{t-1}) + σ·ε``."""

    label = "Drift"
    loss = drift_loss

    @classmethod
    def latent_sizes(cls, config):
        return LatentSizes(u=config.obs_dim, d=0, h=0, context=0)

    def __init__(self, config, **stats):
        super().__init__(config, **stats)
        self.f = mlp(config.obs_dim + config.act_dim, 2 * config.obs_dim, config.hidden_dim, 1)
        self.reward_head = mlp(config.obs_dim + config.act_dim, 1, config.hidden_dim, 1)

    def _next(self, obs_n, action):
        delta = Gaussian.split(self.f(torch.cat([obs_n, action], -1)))
        return Gaussian(obs_n + delta.mean, delta.std_raw)

    def decode(self, state):
        return state.u

    def observe_step(self, state, context, prev_action, obs_n, noise_u, noise_h):
        return LatentState(obs_n, state.d, state.h)

    def imagine_step(self, state, context, prev_action, noise_u, noise_h):
        p = self._next(state.u, prev_action)
        return LatentState(gaussian_sample(p.mean, p.std_raw, noise_u, min_std=0.01), state.d, state.h)

    def observe_window(self, batch, noise):
        obs = self.normalize(batch["obs"])
        return DriftWindow(obs, self._next(obs[:, :-1], batch["action"]).mean)


@pytest.fixture
def drift():
    register_model("drift", Drift)
    yield Drift
    unregister_model("drift")


def test_a_registered_model_trains_exports_and_rolls_out(drift, tmp_path):
    from mrcom_export.exporter import export_model
    from mrcom_export.runtime import Runtime
    from mrcom_train.datasets.collect import CollectConfig, collect
    from mrcom_train.experiments.reproduce import label, model_methods
    from mrcom_train.rollout import runtime_error
    from mrcom_train.training.checkpoint import load_model
    from mrcom_train.training.config import RunRequest
    from mrcom_train.training.trainer import Trainer

    data = collect(CollectConfig(domains=("hopper",), scenarios_per_domain=1, episodes_per_scenario=2,
                                 episode_length=30), tmp_path / "data", **QUIET)
    trainer = Trainer(data, tmp_path / "run", RunRequest(preset="tiny", model={"model_type": "drift"}, train={
        "steps": 30, "log_every": 1, "eval_every": 30, "checkpoint_every": 30}), **QUIET)
    assert type(trainer.model) is Drift
    first = trainer.train_step()["loss"]
    result = trainer.run()
    assert trainer.step == 30 and np.isfinite(result["open_loop_error"])
    assert trainer.train_step()["loss"] < first  # it learned
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        logged = [row for row in csv.DictReader(f) if row["drift_size"]]
    # every update run() logged (the first one, taken by hand above, was not)
    assert [int(row["step"]) for row in logged] == list(range(2, 31))
    assert all(np.isfinite(float(row["drift_size"])) for row in logged)
    model, _ = load_model(tmp_path / "run")
    assert type(model) is Drift
    manifest = export_model(model, tmp_path / "export", formats=("onnx",), horizon=2, blocks=False,
                            source={"data": str(data)}, log=lambda s: None)
    assert manifest["model_type"] == "drift" and manifest["latent"] == {"u": model.config.obs_dim, "d": 0, "h": 0}
    rt = Runtime(tmp_path / "export")
    B, m = 3, model.config.context_len
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((B, m + 1, model.config.obs_dim)).astype(np.float32)
    rt.reset(obs, np.zeros((B, m, model.config.act_dim), np.float32), np.zeros((B, m), np.float32))
    out = rt.rollout(np.zeros((B, 2, model.config.act_dim), np.float32))
    assert out["obs"].shape == (B, 2, model.config.obs_dim) and np.isfinite(out["obs"]).all()
    assert np.isfinite(runtime_error(tmp_path / "export", data, 4, 2, mean_latents=True)["open_loop_error"])
    assert "drift" in model_methods() and label("drift") == "Drift"


def test_registry_rejects_what_it_cannot_build(drift):
    assert "drift" in MODELS and isinstance(build_model(model_config("tiny", overrides={"model_type": "drift"})),
                                            Drift)
    with pytest.raises(ValueError, match="already registered as 'drift'"):
        register_model("drift", type("Other", (Drift,), {}))
    with pytest.raises(TypeError, match="not a BaseWorldModel"):
        register_model("nope", dict)
    with pytest.raises(UserInputError, match=r"model.no_d applies to mrcom, not drift"):
        model_config("tiny", ["no_d"], {"model_type": "drift"})
    # the message names the registered models whose options have the field, the registered one included
    register_model("drift_os", type("DriftOS", (Drift,), {"Options": OvershootOptions}))
    try:
        honoured_by = r"model.overshoot_horizon applies to mrcom, rssm_ctx, rssm, mamba, drift_os, not drift"
        with pytest.raises(UserInputError, match=honoured_by):
            model_config("tiny", overrides={"model_type": "drift", "overshoot_horizon": 3})
    finally:
        unregister_model("drift_os")
    unregister_model("drift")
    with pytest.raises(UserInputError, match="model.model_type must be one of"):
        model_config("tiny", overrides={"model_type": "drift"})


def test_reproduce_ablation_rows_include_the_literal_reading():
    from mrcom_core.registry import model_config
    from mrcom_train.experiments.reproduce import LITERAL, label, model_methods

    plain, full = model_methods(), model_methods(ablations=True)
    assert LITERAL not in plain and {"w/o d", "w/o context", "w/o ls", "w/o lv", LITERAL} <= set(full)
    overrides, ablations = full[LITERAL]
    cfg = model_config("tiny", ablations, overrides, obs_dim=4, act_dim=2, num_scenarios=2)
    assert (cfg.model_type, cfg.options.u_on_d, cfg.options.overshoot_horizon) == ("mrcom", False, 0)
    assert label(LITERAL) == "Ours (eq. 6 literal)"
