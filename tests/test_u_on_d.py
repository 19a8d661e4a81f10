"""``model.u_on_d`` (u's prior and posterior also see d_{t-1}) and the best checkpoint by held-out open-loop error."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import export_model_for_tests as _model
from conftest import make_batch, make_noise, rollout_inputs
from conftest import prompt_for as _prompt

from mrcom_core import steps
from mrcom_core.config import apply_overrides
from mrcom_core.errors import UserInputError
from mrcom_core.models.mrcom import MrCoMOptions
from mrcom_core.registry import build_model, model_config
from mrcom_export.exporter import export_model
from mrcom_export.runtime import Runtime
from mrcom_train.cli import main
from mrcom_train.training.checkpoint import best_checkpoint, latest_checkpoint, load_model, read_state
from mrcom_train.training.config import RunRequest
from mrcom_train.training.evaluation import KEY
from mrcom_train.training.trainer import Trainer

QUIET = dict(progress=False, log=lambda s: None)
DIMS = dict(obs_dim=10, act_dim=3, num_scenarios=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on shared cores they lose a lot to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _in_dims(model):
    return model.u_prior[0].in_features, model.u_post[0].in_features


# ------------------------------------------------------------------------------------------------- the model
def test_the_switch_feeds_d_into_both_u_heads():
    literal = build_model(model_config("tiny", overrides={"u_on_d": False}, **DIMS))
    on = build_model(model_config("tiny", **DIMS))
    C, A, D, O = 16, 3, 16, 10  # tiny: ctx_dim 16, d_dim 16
    assert _in_dims(literal) == (C + A, C + A + O)
    assert _in_dims(on) == (C + A + D, C + A + D + O)
    with_overshoot = build_model(model_config("tiny", overrides={"u_on_d": True, "overshoot_horizon": 3}, **DIMS))
    assert _in_dims(with_overshoot) == _in_dims(on)


def test_training_pass_matches_the_one_step_functions():
    """observe_window (training) and prime/observe_step (imagination, export) read d_{t-1} the same way,
    with d_{-1} the initial zeros."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny", overrides={"u_on_d": True}, **DIMS)).eval()
    batch, noise = make_batch(model.config), make_noise(model)
    with torch.no_grad():
        window = model(batch, noise)
        obs_n = model.normalize(batch["obs"])
        state, _ = steps.prime(model, model.normalize(batch["context_obs"]), batch["context_action"],
                               batch["context_reward"], obs_n[:, 0], noise["u"][:, 0], noise["h"][:, 0])
        prev = torch.cat([batch["context_action"][:, -1:], batch["action"]], 1)
        for j in range(obs_n.shape[1]):
            if j:
                state = model.observe_step(state, window.context[:, j], prev[:, j], obs_n[:, j], noise["u"][:, j],
                                           noise["h"][:, j])
            for got, want in zip(state, window.state, strict=True):
                torch.testing.assert_close(got, want[:, j], atol=1e-5, rtol=1e-5)
        # the u prior of the window is the one-step prior from the posterior d_{j-1}
        d_prev = torch.cat([torch.zeros_like(window.state.d[:, :1]), window.state.d[:, :-1]], 1)
        raw = model.u_prior(model.u_inputs(window.context, prev, d_prev))
        torch.testing.assert_close(raw.chunk(2, -1)[0], window.u_prior.mean)


def test_it_trains_with_finite_gradients_and_falling_loss():
    torch.manual_seed(0)
    model = build_model(model_config("tiny", overrides={"u_on_d": True, "overshoot_horizon": 2}, **DIMS))
    batch, noise = make_batch(model.config), make_noise(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model.loss(model(batch, noise), batch, noise)
        opt.zero_grad()
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(out["loss"].item())
    assert "overshoot" in out  # composes with the overshooting loss
    d_cols = model.u_prior[0].weight.grad[:, 16 + 3:]  # the d_{t-1} columns of u's prior get gradient
    assert d_cols.abs().sum() > 0
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_with_no_d_it_is_a_no_op():
    torch.manual_seed(0)
    plain = build_model(model_config("tiny", ("no_d",), **DIMS))
    both = build_model(model_config("tiny", ("no_d",), {"u_on_d": True}, **DIMS))
    assert both.config.options.u_on_d and both.config.options.no_d and not both.u_on_d
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert {k: v.shape for k, v in both.state_dict().items()} == shapes
    both.load_state_dict(plain.state_dict())
    batch, noise = make_batch(plain.config), make_noise(plain)
    a, b = plain.loss(plain(batch, noise), batch, noise), both.loss(both(batch, noise), batch, noise)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_values_are_refused():
    with pytest.raises(UserInputError, match=r"model.u_on_d: cannot read 'maybe' as bool"):
        model_config("tiny", overrides={"u_on_d": "maybe"})
    with pytest.raises(UserInputError, match=r"model.u_on_d must be true or false, got 1"):
        model_config("tiny", overrides={"u_on_d": 1})  # e.g. "u_on_d = 1" in a TOML file
    with pytest.raises(UserInputError, match=r"model.u_on_d must be true or false, got 1"):
        MrCoMOptions(u_on_d=1)
    assert apply_overrides(model_config("tiny"), {"u_on_d": "false"}).options.u_on_d is False


def test_each_class_builds_with_its_own_defaults_and_user_values_win():
    """MrCoM's defaults (u on d, 15-step overshooting) are its options', so the baselines keep theirs (the
    RSSMs no overshooting, CaDM no such option) and a user's value (or the literal preset file) overrides them."""
    from pathlib import Path

    mrcom = model_config("tiny", **DIMS)
    assert (mrcom.options.u_on_d, mrcom.options.overshoot_horizon) == (True, 15)
    for name in ("rssm_ctx", "rssm", "mamba"):
        cfg = model_config("tiny", overrides={"model_type": name}, **DIMS)
        assert cfg.options.overshoot_horizon == 0 and "u_on_d" not in cfg.to_dict()
    assert "overshoot_horizon" not in model_config("tiny", overrides={"model_type": "cadm"}, **DIMS).to_dict()
    assert model_config("tiny", overrides={"overshoot_horizon": "4"}, **DIMS).options.overshoot_horizon == 4
    literal_file = Path(__file__).parents[1] / "configs" / "mrcom-literal.toml"
    request = RunRequest.from_sources(None, (), str(literal_file), (), {})
    literal = model_config("tiny", overrides=request.model, **DIMS)
    assert (literal.options.u_on_d, literal.options.overshoot_horizon) == (False, 0)


# ----------------------------------------------------------------------------------------------------- export
def test_exports_with_parity_and_the_runtime_matches_eager(tmp_path):
    model = _model(u_on_d=True)
    H, B, c = 3, 5, model.config
    manifest = export_model(model, tmp_path, formats=("onnx",), blocks=False, horizon=H, log=lambda s: None)
    for name, errors in manifest["parity"].items():
        assert {"onnx@1", "onnx@7", "onnx@256"} <= set(errors) and max(errors.values()) <= 1e-4 * H, name
    prompt = _prompt(model, B)
    reset_noise, noise, actions = rollout_inputs(model, prompt, B, H)

    obs, act, rew = (torch.from_numpy(x) for x in prompt)
    m, T = c.context_len, act.shape[1]
    with torch.no_grad():  # eager: prime, observe the rest of the prompt, then the open-loop rollout
        obs_n = model.normalize(obs)
        state, cache = steps.prime(model, obs_n[:, :m], act[:, :m], rew[:, :m], obs_n[:, m],
                                   *(torch.from_numpy(reset_noise[x][:, 0]) for x in ("u", "h")))
        for k in range(m + 1, T + 1):
            state, cache = steps.observe(model, state, cache, obs_n[:, k - 1], act[:, k - 1], rew[:, k - 1],
                                         obs_n[:, k], *(torch.from_numpy(reset_noise[x][:, k - m]) for x in "uh"))
        eager = steps.rollout(model, state, cache, obs_n[:, T], H, torch.from_numpy(actions),
                              *(torch.from_numpy(noise[x]) for x in "uh"))
    want_obs, want_rew = model.denormalize(eager.obs).numpy(), eager.reward.numpy()
    std = model.obs_std.numpy()
    for fused in (False, True):
        rt = Runtime(tmp_path)
        rt.reset(*prompt, noise=reset_noise)
        got = rt.rollout(actions, H, fused=fused, noise=noise)
        assert np.abs((got["obs"] - want_obs) / std).max() <= 1e-4
        assert np.abs(got["reward"] - want_rew).max() <= 1e-4


# ------------------------------------------------------------------------------------------ best checkpoint


def _scripted(monkeypatch, errors: dict[int, float], seen: dict[int, dict]):
    """``Trainer.evaluate`` returning ``errors[step]`` and keeping a copy of the weights it saw."""
    def evaluate(self):
        seen[self.step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {KEY: errors[self.step]}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def _same(model, weights):
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def _request(steps):
    return RunRequest(preset="tiny", model={"u_on_d": True},
                      train={"steps": steps, "eval_every": 2, "checkpoint_every": 2, "batch_size": 4})


def test_best_checkpoint_is_exported_latest_on_request_and_resume_continues_from_latest(
        data, tmp_path, monkeypatch, capsys):
    run, seen = tmp_path / "run", {}
    _scripted(monkeypatch, {0: 0.01, 2: 0.5, 4: 0.3, 6: 0.6, 8: 0.8}, seen)  # step 0 (no update) never counts
    trainer = Trainer(data, run, _request(8), **QUIET)
    assert trainer.model.u_on_d
    trainer.run()
    assert best_checkpoint(run).name == "step_00000004" and latest_checkpoint(run).name == "step_00000008"
    state = read_state(latest_checkpoint(run))
    assert (state["best_step"], state["best_error"]) == (4, 0.3)
    assert read_state(best_checkpoint(run))["best_error"] == 0.3
    assert not list((run / "checkpoints" / "best").glob("*.safetensors"))  # a folder per snapshot, as usual

    best, best_state = load_model(run)
    assert best_state["step"] == 4 and best_state["checkpoint"] == "best" and _same(best, seen[4])
    latest, latest_state = load_model(run, "latest")
    assert latest_state["step"] == 8 and latest_state["checkpoint"] == "latest" and _same(latest, seen[8])

    exported = []
    monkeypatch.setattr("mrcom_export.exporter.export_model", lambda model, out, **kw: exported.append(kw["source"]))
    main(["export", str(run), "--out", str(tmp_path / "e1")])
    assert "(best checkpoint: step 4, held-out open-loop error 0.3000)" in capsys.readouterr().out
    main(["export", str(run), "--out", str(tmp_path / "e2"), "--checkpoint", "latest"])
    assert "(latest checkpoint: step 8; the best is step 4" in capsys.readouterr().out
    assert [(s["step"], s["checkpoint"]) for s in exported] == [(4, "best"), (8, "latest")]

    stale = run / "checkpoints" / "best" / ".tmp-step_00000099-999999"
    stale.mkdir()
    _scripted(monkeypatch, {10: 0.4, 12: 0.2}, seen)
    resumed = Trainer(data, run, RunRequest(train={"steps": 12}), resume=True, **QUIET)
    assert not stale.exists()
    assert resumed.step == 8 and _same(resumed.model, seen[8])  # latest, not best
    assert (resumed.best_step, resumed.best_error) == (4, 0.3)
    resumed.run()
    assert best_checkpoint(run).name == "step_00000012"  # 0.4 at step 10 was not a new best; 0.2 at 12 was
    assert [p.name for p in (run / "checkpoints" / "best").iterdir() if p.is_dir()] == ["step_00000012"]


def test_export_falls_back_to_latest_and_refuses_a_damaged_best(data, tmp_path, monkeypatch, capsys):
    run, seen = tmp_path / "run", {}
    _scripted(monkeypatch, {0: 1.0, 2: 0.5}, seen)
    Trainer(data, run, _request(2), **QUIET).run()
    monkeypatch.setattr("mrcom_export.exporter.export_model", lambda model, out, **kw: None)
    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "best")  # a run from before best checkpoints
    main(["export", str(copy), "--out", str(tmp_path / "e")])
    assert "(latest checkpoint: step 2; the best is step 2" in capsys.readouterr().out
    (best_checkpoint(run) / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as info:
        main(["export", str(run), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("mrcom: error: ") and "best" in err[0]
    main(["export", str(run), "--out", str(tmp_path / "e"), "--checkpoint", "latest"])
    with pytest.raises(SystemExit) as info:
        main(["export", str(run), "--out", str(tmp_path / "e"), "--checkpoint", "newest"])
    assert info.value.code == 2


def test_bad_switch_value_on_the_command_line_exits_2_with_one_line(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--steps", "1",
              "--set", "model.u_on_d=maybe", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == ["mrcom: error: model.u_on_d: cannot read 'maybe' as bool"]
    assert not (tmp_path / "run").exists()
    cfg = json.loads(json.dumps(model_config("tiny", overrides={"u_on_d": "true"}, **DIMS).to_dict()))
    assert cfg["u_on_d"] is True
