import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mrcom_core.errors import UserInputError
from mrcom_train.datasets.collect import CollectConfig, collect
from mrcom_train.training.checkpoint import latest_checkpoint, read_state
from mrcom_train.training.config import RunRequest
from mrcom_train.training.trainer import Trainer, TrainingDiverged

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    collect(CollectConfig(scenarios_per_domain=1, episodes_per_scenario=3, episode_length=60), out, **QUIET)
    return out


def _request(steps, **train):
    return RunRequest(preset="tiny", train={"steps": steps, "eval_every": 1000, "checkpoint_every": 1000, **train})


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_runs_logs_and_checkpoints(data, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(data, run, _request(20, eval_every=10, checkpoint_every=10, log_every=5), **QUIET)
    result = trainer.run()
    assert set(result) == {"open_loop_error", "open_loop_error_hopper", "open_loop_error_walker",
                           "open_loop_error_cheetah", "elite_error"}  # the model's ensemble: its elites' error
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 1 + 4 + 2  # header, eval@0, 4 logs, 2 evals
    header = lines[0].split(",")
    assert header[:2] == ["step", "loss"] and len(set(header)) == len(header)
    assert {*trainer.train_step(), *result} <= set(header)  # every term an update logs, every evaluation's
    assert list((run / "tb").glob("events.out.tfevents.*"))
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_00000020"
    # everything loads without unpickling: safetensors + JSON
    weights = load_file(str(ckpt / "model.safetensors"))
    assert "obs_mean" in weights and "encoder.embed.weight" in weights
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 20 and state["model_config"]["u_dim"] == 4 and state["preset"] == "tiny"
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 20


def test_resume_continues_exactly(data, tmp_path):
    straight = Trainer(data, tmp_path / "a", _request(12), **QUIET)
    straight.run()
    first = Trainer(data, tmp_path / "b", _request(6), **QUIET)
    first.run()
    second = Trainer(data, tmp_path / "b", RunRequest(train={"steps": 12}), resume=True, **QUIET)
    assert second.step == 6
    second.run()
    a, b = _params(straight.model), _params(second.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) and torch.equal(sa[k]["step"], sb[k]["step"])


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    trainer = Trainer(data, tmp_path / "run", _request(10, checkpoint_every=4), **QUIET)
    real_loss = type(trainer.model).loss
    calls = {"n": 0}

    def poisoned(self, window, batch, noise):
        calls["n"] += 1
        out = real_loss(self, window, batch, noise)
        if calls["n"] == 7:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(type(trainer.model), "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 7: the loss became nan; the last good checkpoint \(step 4\)"):
        trainer.run()
    ckpt = latest_checkpoint(tmp_path / "run")
    assert read_state(ckpt)["step"] == 4
    assert all(torch.isfinite(v).all() for v in load_file(str(ckpt / "model.safetensors")).values())


def test_ablation_and_config_file_reach_the_model(data, tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('preset = "tiny"\nablations = ["no_d"]\n[model]\nu_dim = 3\n[train]\nsteps = 2\n')
    request = RunRequest.from_sources(None, ("no_lv",), str(cfg), ("model.h_dim=5",), {"batch_size": 4})
    trainer = Trainer(data, tmp_path / "run", request, **QUIET)
    c = trainer.model_config
    # CLI ablations replace the file's
    assert (c.options.no_lv, c.options.no_d, c.u_dim, c.h_dim) == (True, False, 3, 5)
    assert trainer.config.batch_size == 4 and trainer.config.steps == 2
    assert trainer.model.value_heads is None
    trainer.run()


def test_resume_refuses_another_model_config(data, tmp_path):
    Trainer(data, tmp_path / "run", _request(2), **QUIET).run()
    with pytest.raises(UserInputError, match="model.u_dim=4, this run asks for 6"):
        Trainer(data, tmp_path / "run", RunRequest(model={"u_dim": 6}), resume=True, **QUIET)
    with pytest.raises(UserInputError, match="not empty; pass --resume"):
        Trainer(data, tmp_path / "run", _request(2), **QUIET)


def test_ddp_two_gloo_processes_match_one_process_on_the_same_batch(data, tmp_path):
    # The key bias of attention has a mathematically zero gradient (softmax ignores a shift shared by all
    # keys); Adam would turn its float-rounding noise into ±lr steps, so eps is raised above that noise.
    args = ["train", "--data", str(data), "--preset", "tiny", "--steps", "4", "--batch-size", "8",
            "--set", "train.eval_every=1000", "--set", "train.adam_eps=1e-6", "--no-progress"]
    single = subprocess.run([sys.executable, "-m", "mrcom_train.cli", *args, "--out", str(tmp_path / "one")],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "mrcom_train.cli", *args, "--out", str(tmp_path / "two")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    one = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    two = load_file(str(latest_checkpoint(tmp_path / "two") / "model.safetensors"))
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4)


def _mrcom(*args):
    return subprocess.run([sys.executable, "-m", "mrcom_train.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["--data", "{tmp}/none"], "manifest.json is missing"),
    (["--data", "{tmp}/old"], "format version 0"),
    (["--preset", "huge"], "Invalid value for '--preset': 'huge'"),
    (["--ablation", "no_x"], "unknown ablation 'no_x'"),
    (["--set", "model.u_dim=lots"], "model.u_dim: cannot read 'lots'"),
    (["--set", "u_dim=3"], "expected model.FIELD=VALUE"),
    (["--config", "{tmp}/missing.toml"], "missing.toml not found"),
    (["--device", "tpu"], "train.device must be auto, cpu or cuda"),
    (["--resume", "--out", "{tmp}/ckpt", "--set", "model.h_dim=9"], "model.h_dim=4, this run asks for 9"),
])
def test_bad_train_input_exits_2_with_one_line(data, tmp_path, args, message):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"format": "mrcom-dataset", "version": 0}))
    if "{tmp}/ckpt" in args:
        Trainer(data, tmp_path / "ckpt", _request(1), **QUIET).run()
    full = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--steps", "1"]
    full += [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "--resume":
        full.remove("--preset")
        full.remove("tiny")
    r = _mrcom(*full)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrcom: error: ") and message in lines[0], r.stderr


def test_train_export_rollout_through_the_cli(data, tmp_path, capsys):
    from mrcom_train.cli import main

    run, exp = tmp_path / "run", tmp_path / "export"
    main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "2", "--no-progress"])
    main(["export", str(run), "--out", str(exp), "--format", "all", "--horizon", "2"])
    main(["rollout", str(exp), "--batch", "4", "--horizon", "2", "--bench"])
    out = capsys.readouterr().out
    assert "every graph passed the ONNX checker and eager parity" in out
    assert "4 rollouts × 2 steps" in out and "bench: fused" in out
    manifest = json.loads((exp / "manifest.json").read_text())
    assert manifest["source"]["step"] == 2 and manifest["formats"] == ["onnx", "torchscript"]


def test_mean_latent_rollout_error_matches_the_eager_open_loop_error(data, tmp_path):
    """The runtime's deterministic (mean-latent) error is the trainer's eval metric on the same windows;
    sampled latents add noise on top of it."""
    import numpy as np

    from mrcom_core.steps import open_loop_predictions
    from mrcom_export.exporter import export_model
    from mrcom_train.datasets.dataset import Dataset
    from mrcom_train.datasets.sampler import SequenceSampler
    from mrcom_train.rollout import runtime_error
    from mrcom_train.training.checkpoint import load_model
    from mrcom_train.training.evaluation import open_loop_error

    run, exp = tmp_path / "run", tmp_path / "export"
    Trainer(data, run, _request(30), **QUIET).run()
    model, _ = load_model(run)
    export_model(model, exp, formats=("onnx",), horizon=4, blocks=False, log=lambda s: None)
    B, H = 16, 4
    batch = SequenceSampler(Dataset(data), model.config.context_len, H, B, seed=3).sample()
    with torch.no_grad():
        pred = open_loop_predictions(model.eval(), {k: torch.from_numpy(np.ascontiguousarray(v))
                                                    for k, v in batch.items()}, H)
        real = model.normalize(torch.from_numpy(batch["obs"][:, 1:]))
    eager = open_loop_error(pred.numpy(), real.numpy(), batch["obs_mask"])
    mean = runtime_error(exp, data, B, H, 3, mean_latents=True)
    sampled = runtime_error(exp, data, B, H, 3)
    assert mean["open_loop_error"] == pytest.approx(float(eager.mean()), rel=1e-4, abs=1e-5)
    by_step = mean["error_by_step"]  # the error-vs-horizon curve: one value per step, averaging to the error
    assert len(by_step) == H and float(np.mean(by_step)) == pytest.approx(mean["open_loop_error"], rel=1e-6)
    assert sampled["open_loop_error"] != pytest.approx(mean["open_loop_error"], rel=1e-3)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("model_type", ["mrcom", "rssm_ctx"])
def test_overlapped_overshooting_term_gives_the_sequential_update(data, tmp_path, two_threads, model_type):
    """``train.overlap_overshoot``: the overshooting term's forward and backward in a second thread beside the
    rest give the same logged terms and gradients as the one-stream step (to float rounding), run to run
    the same bits, and leave the thread count as it was."""
    model = {"model_type": model_type, "overshoot_horizon": 4}
    runs = {name: Trainer(data, tmp_path / name, RunRequest(preset="tiny", model=model, train={
        "steps": 3, "eval_every": 1000, "checkpoint_every": 1000, "overlap_overshoot": name != "sequential"}),
        **QUIET) for name in ("sequential", "overlapped", "again")}
    assert [t._overlapped() for t in runs.values()] == [False, True, True]
    logs = {name: t.train_step() for name, t in runs.items()}
    assert torch.get_num_threads() == 2
    assert set(logs["sequential"]) == set(logs["overlapped"]) and "overshoot" in logs["sequential"]
    for k, v in logs["sequential"].items():
        assert logs["overlapped"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    grads = {name: [p.grad for p in t.model.parameters()] for name, t in runs.items()}
    assert all(g is not None for g in grads["overlapped"])
    for seq, ovl in zip(grads["sequential"], grads["overlapped"], strict=True):
        torch.testing.assert_close(ovl, seq, rtol=1e-4, atol=1e-6)
    for _ in range(2):
        runs["overlapped"].train_step(), runs["again"].train_step()
    a, b = (_params(runs[name].model) for name in ("overlapped", "again"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic: the parts' gradients add in a fixed order


def test_an_error_in_the_overlapped_overshooting_thread_reaches_the_caller(data, tmp_path, two_threads, monkeypatch):
    trainer = Trainer(data, tmp_path / "run", _request(2, overlap_overshoot=True), **QUIET)
    assert trainer._overlapped()

    def broken(*args):
        raise RuntimeError("overshoot broke")

    monkeypatch.setattr("mrcom_train.training.trainer.loss_overshoot", broken)
    with pytest.raises(RuntimeError, match="overshoot broke"):
        trainer.train_step()
    assert torch.get_num_threads() == 2


def test_overlap_is_on_in_the_small_preset_only_and_validated():
    from mrcom_train.training.config import TRAIN_PRESETS, TrainConfig

    presets = ("tiny", "small", "base")
    assert [TrainConfig(**TRAIN_PRESETS[p]).overlap_overshoot for p in presets] == [False, True, False]
    with pytest.raises(UserInputError, match="train.overlap_overshoot must be true or false, got 1"):
        TrainConfig(overlap_overshoot=1)
