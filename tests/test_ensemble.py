"""The world model's ensemble of one-step heads: training on bootstraps of detached latents, elites chosen on
held-out data, the exported ``ensemble`` graph, the runtime and vector env that report the disagreement, and
the adaptation's gate that acts on it."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_batch, make_noise

from mrcom_core import ensemble
from mrcom_core.errors import UserInputError
from mrcom_core.registry import build_model, model_config
from mrcom_train.agents.sac import ReplayBuffer
from mrcom_train.rl import gate
from mrcom_train.rl.adapt_config import AdaptConfig

DIMS = dict(obs_dim=10, act_dim=3, num_scenarios=2)


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(model_config("tiny", overrides=overrides, **DIMS))


def test_heads_are_independent_members_with_one_output_each():
    heads = ensemble.EnsembleHeads(4, 7, 3, 16, 2)
    x = torch.randn(5, 6, 7)
    out = heads(x)
    assert out.shape == (5, 6, 4, 3) and torch.isfinite(out).all()
    assert not torch.allclose(out[..., 0, :], out[..., 1, :])  # members are initialized apart
    # member k is an MLP of its own: changing member 1's weights leaves member 0's output alone
    with torch.no_grad():
        heads.out.weight[1] += 1.0
    torch.testing.assert_close(heads(x)[..., 0, :], out[..., 0, :])


@pytest.mark.parametrize("model_type", ["mrcom", "rssm", "cadm"])
def test_the_ensemble_term_trains_the_heads_only(model_type):
    model = _model(model_type=model_type)
    batch, noise = make_batch(model.config), make_noise(model)
    parts = model.loss(model(batch, noise), batch, noise)
    assert torch.isfinite(parts["ensemble"]) and parts["ensemble"] > 0
    model.zero_grad()
    parts["ensemble"].backward()
    touched = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum()}
    assert touched == {"ensemble_heads"}


def test_bootstrap_weights_count_each_window_twice_or_not_at_all_per_member():
    w = ensemble.bootstrap_weights(torch.randn(4000, 5, generator=torch.Generator().manual_seed(0)))
    assert set(w.unique().tolist()) == {0.0, 2.0} and abs(float(w.mean()) - 1) < 0.05
    assert not torch.equal(w[:, 0], w[:, 1])  # every member its own bootstrap


def test_disagreement_is_zero_where_the_elites_agree_and_ignores_the_others():
    obs = torch.zeros(3, 4, 2)
    reward = torch.zeros(3, 4)
    obs[:, 3] = 10.0  # member 3 is far off
    everyone, elites = torch.ones(4), torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert torch.all(ensemble.disagreement(obs, reward, elites) == 0)
    assert torch.all(ensemble.disagreement(obs, reward, everyone) > 1)
    # two members at ±1 on every one of the 3 outputs: std 1 on each, rms 1
    two = torch.stack([torch.ones(2), -torch.ones(2)])[None]
    torch.testing.assert_close(ensemble.disagreement(two, torch.tensor([[1.0, -1.0]]), torch.ones(2)),
                               torch.ones(1))


def test_elites_are_the_members_with_the_lowest_held_out_error():
    torch.testing.assert_close(ensemble.choose_elites(torch.tensor([0.3, 0.1, 0.5, 0.2]), 2),
                               torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert ensemble.choose_elites(torch.tensor([0.3, 0.1]), 0).tolist() == [1.0, 1.0]
    model = _model()
    batch = make_batch(model.config)
    errors = ensemble.held_out_errors(model, batch)
    assert errors.shape == (5,) and torch.isfinite(errors).all()
    mean = ensemble.update_elites(model, errors)
    assert model.elites.sum() == 4 and model.elites[errors.argmax()] == 0
    assert mean == pytest.approx(float(errors[model.elites.bool()].mean()))
    worst = torch.tensor([0.1, 0.2, 0.3, 0.4, float("nan")])  # a diverged member is never an elite nor counted
    assert ensemble.update_elites(model, worst) == pytest.approx(0.25) and model.elites.tolist() == [1, 1, 1, 1, 0]


def test_ensemble_switches_are_validated_with_the_field_named():
    with pytest.raises(UserInputError, match=r"model.ensemble_elites \(6\) must be at most model.ensemble \(5\)"):
        model_config("tiny", overrides={"ensemble_elites": 6}, **DIMS)
    with pytest.raises(UserInputError, match="model.ensemble must be an integer >= 0"):
        model_config("tiny", overrides={"ensemble": -1}, **DIMS)
    assert _model(ensemble=0, ensemble_elites=0).ensemble_heads is None
    # a smaller ensemble alone keeps the elites it can; one member (or elite) is refused: it has no disagreement
    assert model_config("tiny", overrides={"ensemble": "3"}, **DIMS).ensemble_elites == 3
    assert model_config("tiny", overrides={"ensemble": 0}, **DIMS).ensemble_elites == 0
    for overrides in ({"ensemble": 1}, {"ensemble_elites": 1}):
        with pytest.raises(UserInputError, match="must be 0 or >= 2"):
            model_config("tiny", overrides=overrides, **DIMS)


def test_the_exported_graph_the_runtime_and_the_vector_env_report_every_head(tmp_path):
    from mrcom_export.exporter import export_model
    from mrcom_export.graphs import Ensemble
    from mrcom_export.runtime import Runtime
    from mrcom_export.vector_env import ImaginedVectorEnv

    model = _model().eval()
    model.elites.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]))
    export_model(model, tmp_path / "e", formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["ensemble"] == {"members": 5, "elites": [1.0, 0.0, 1.0, 1.0, 1.0]}
    rt = Runtime(tmp_path / "e")
    rng = np.random.default_rng(0)
    B, T = 4, 8
    prompts = (rng.standard_normal((B, T + 1, 10)).astype(np.float32),
               rng.uniform(-1, 1, (B, T, 3)).astype(np.float32), rng.random((B, T)).astype(np.float32))
    rt.reset(*prompts)
    action = rng.uniform(-1, 1, (B, 3)).astype(np.float32)
    got = rt.uncertainty(action)
    u, d, h = np.split(rt.latent_state, np.cumsum([rt.latent["u"], rt.latent["d"]]), axis=1)
    with torch.no_grad():
        eager = Ensemble(model)(*(torch.from_numpy(x) for x in (u, d, h, action)))
    for name, want in zip(("obs", "reward", "disagreement"), eager, strict=True):
        assert got[name].shape == tuple(want.shape)
        np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-4, atol=1e-5)
    env = ImaginedVectorEnv(rt, B, prompts=prompts, horizon=1)
    env.reset(seed=0)
    info = env.step(action)[4]
    assert info["disagreement"].shape == (B,) and np.all(info["disagreement"] > 0)
    env = ImaginedVectorEnv(rt, B, prompts=prompts, horizon=1, uncertainty=False)  # the ensemble graph skipped
    env.reset(seed=0)
    assert "disagreement" not in env.step(action)[4]

    plain = _model(ensemble=0, ensemble_elites=0).eval()
    export_model(plain, tmp_path / "p", formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    rt = Runtime(tmp_path / "p")
    rt.reset(*prompts)
    assert not rt.has_ensemble and json.loads((tmp_path / "p" / "manifest.json").read_text())["ensemble"] is None
    with pytest.raises(UserInputError, match="has no ensemble"):
        rt.uncertainty(action)
    env = ImaginedVectorEnv(rt, B, prompts=prompts, horizon=1)
    env.reset(seed=0)
    assert "disagreement" not in env.step(action)[4]
    with pytest.raises(UserInputError, match="uncertainty=True needs a model exported with ensemble heads"):
        ImaginedVectorEnv(rt, B, uncertainty=True)


# ------------------------------------------------------------------------------------------------ the gate
class _ScriptedEnv:
    """An imagined env whose transitions carry the given disagreement per step (B rollouts, H steps)."""

    def __init__(self, disagreement: np.ndarray):
        self.u, self.horizon, self.t = disagreement, 0, 0

    def reset(self, options=None):
        self.t = 0
        return np.zeros((self.u.shape[0], 2), np.float32), {}

    def step(self, action):
        B = self.u.shape[0]
        obs = np.full((B, 2), self.t + 1, np.float32)
        obs[:, 1] = np.arange(B)  # which rollout
        out = obs, np.ones(B, np.float32), np.zeros(B, bool), np.full(B, self.t + 1 >= self.horizon), \
            {"disagreement": self.u[:, self.t]}
        self.t += 1
        return out


def _adapter(disagreement, **cfg):
    B, H = disagreement.shape
    config = SimpleNamespace(**{"retain_rounds": 1, "rollout_batch": B, "gate": "none", "gate_percentile": 95.0,
                                "gate_penalty": 1.0, **cfg})
    return SimpleNamespace(
        cfg=config, model=ReplayBuffer(2, 1, B * H), imagined_env=_ScriptedEnv(disagreement),
        rng=np.random.default_rng(0), spec=SimpleNamespace(obs_dim=2, act_dim=1), imagined=0, imagine_seconds=0.0,
        _starts=lambda rng, n: [None] * n, _start=lambda picks: {},
        _act=lambda obs: np.zeros((len(obs), 1), np.float32), _imagined_reward=lambda obs, action, reward, nxt: reward)


def test_truncation_drops_the_most_uncertain_rollouts_from_where_they_exceed_the_threshold():
    B, H = 100, 3
    u = np.tile(np.linspace(0, 1, B)[:, None], (1, H))  # rollout b's disagreement is b / 99 at every step
    u[10, 1] = 5.0  # rollout 10 turns uncertain at its second step
    adapter = _adapter(u, gate="truncate", gate_percentile=90.0)
    added, fields = gate.imagine_round(adapter, H)
    threshold = np.percentile(u[:, 0], 90.0)
    first_kept = np.flatnonzero(u[:, 0] <= threshold)
    assert len(first_kept) == 90  # the 10 most uncertain never enter the buffer
    kept = {(int(t), int(b)) for t, b in adapter.model._data["next_obs"][: len(adapter.model)]}
    rollouts = {b for _, b in kept}
    assert rollouts == set(first_kept.tolist())
    assert (2, 10) not in kept and (3, 10) not in kept and (1, 10) in kept  # cut from its uncertain step on
    assert added == 90 * 3 - 2 == len(adapter.model)
    assert fields["gate_kept"] == pytest.approx(added / (100 + 90 + 89))  # of what the rollouts still running made
    third = first_kept[first_kept != 10]
    assert fields["disagreement"] == pytest.approx(np.mean(np.concatenate([u[:, 0], u[first_kept, 1], u[third, 2]])))


def test_the_penalty_subtracts_the_disagreement_and_none_only_measures():
    u = np.array([[0.5], [2.0]])
    adapter = _adapter(u, gate="penalty", gate_penalty=0.4)
    added, fields = gate.imagine_round(adapter, 1)
    assert added == 2 and fields["gate_kept"] == 1.0
    np.testing.assert_allclose(np.sort(adapter.model._data["reward"][:2]), [1 - 0.8, 1 - 0.2], rtol=1e-6)
    adapter = _adapter(u)
    added, fields = gate.imagine_round(adapter, 1)
    assert added == 2 and np.all(adapter.model._data["reward"][:2] == 1)
    assert fields["disagreement"] == pytest.approx(1.25)


def test_bad_gate_options_are_refused_with_the_field_named():
    with pytest.raises(UserInputError, match="gate must be one of none, truncate, penalty"):
        AdaptConfig(gate="maybe")
    with pytest.raises(UserInputError, match="gate_percentile must be in"):
        AdaptConfig(gate="truncate", gate_percentile=0)
    with pytest.raises(UserInputError, match="gate needs a world model"):
        AdaptConfig(gate="truncate", use_model=False)


@pytest.mark.parametrize("sets,message", [
    (["gate=maybe"], "gate must be one of none, truncate, penalty, got 'maybe'"),
    (["gate=truncate", "gate_percentile=120"], "gate_percentile must be in (0, 100], got 120.0"),
    (["gate=penalty", "gate_penalty=-1"], "gate_penalty must be a finite number >= 0"),
    (["gate=truncate"], "gate=truncate needs a world model with an ensemble"),
])
def test_bad_gate_options_exit_2_with_one_line(tmp_path, capsys, sets, message):
    from mrcom_export.exporter import export_model
    from mrcom_train.cli import main

    plain = build_model(model_config("tiny", overrides={"ensemble": 0, "ensemble_elites": 0}, obs_dim=24, act_dim=6,
                                     num_scenarios=1)).eval()
    export_model(plain, tmp_path / "export", formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    with pytest.raises(SystemExit) as info:
        main(["adapt", "--model", str(tmp_path / "export"), "--out", str(tmp_path / "run"), "--env-steps", "10",
              "--no-progress", *sum((["--set", s] for s in sets), [])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()
