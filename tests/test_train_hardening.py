"""``mrcom train`` and its checkpoints under hostile input: escaping pointers, damaged files, a second process,
sizes that cannot fit, ill-typed TOML, Ctrl-C, a full disk or a file-size limit, and what a failed run leaves
behind."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import mrcom_under_file_size_limit

from mrcom_core.errors import UserInputError
from mrcom_core.io.files import LOCK_NAME
from mrcom_core.io.locks import FolderLocked, folder_lock
from mrcom_train.cli import main
from mrcom_train.training.checkpoint import latest_checkpoint, load_weights
from mrcom_train.training.config import RunRequest
from mrcom_train.training.trainer import Trainer

QUIET = dict(progress=False, log=lambda s: None)




@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    Trainer(data, out, RunRequest(preset="tiny", train={"steps": 2}), **QUIET).run()
    return out


def _request(steps=2, **train):
    return RunRequest(preset="tiny", train={"steps": steps, **train})


def _cli(capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code, capsys.readouterr().err.strip().splitlines()


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("pointer", [{"step": 2, "dir": "../../../../../etc"}, {"step": 2, "dir": "/etc"},
                                     {"step": 2}, {"step": 2, "dir": 5}])
def test_a_checkpoint_pointer_cannot_leave_the_run_folder(run, tmp_path, pointer):
    copy = _copy(run, tmp_path)
    (copy / "checkpoints" / "latest.json").write_text(json.dumps(pointer))
    with pytest.raises(UserInputError, match="not a file inside|refusing"):
        latest_checkpoint(copy)


def test_a_flipped_weight_byte_is_caught_before_loading(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    path = latest_checkpoint(copy) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: the file still parses, only the digest can tell
    path.write_bytes(bytes(data))
    code, lines = _cli(capsys, "export", str(copy), "--out", str(tmp_path / "exp"), "--no-blocks")
    assert code == 2 and len(lines) == 1 and "checksum mismatch" in lines[0] and "model.safetensors" in lines[0]
    assert not (tmp_path / "exp").exists()


def test_a_missing_checkpoint_file_is_named(run, tmp_path):
    copy = _copy(run, tmp_path)
    (latest_checkpoint(copy) / "rng.safetensors").unlink()
    with pytest.raises(UserInputError, match="rng.safetensors is missing"):
        latest_checkpoint(copy)


def test_weights_that_do_not_fit_name_the_tensor(run, data):
    from mrcom_core.registry import build_model, model_config

    other = build_model(model_config("tiny", overrides={"h_dim": 5}, obs_dim=18, act_dim=6, num_scenarios=1))
    with pytest.raises(UserInputError, match=r"does not fit this model: tensor '[\w.]+' has shape"):
        load_weights(latest_checkpoint(run), other)


def test_a_second_trainer_on_the_same_folder_is_refused_with_the_pid(data, tmp_path):
    with folder_lock(tmp_path / "run", "mrcom train"):
        with pytest.raises(FolderLocked, match=f"in use by `mrcom train` \\(PID {os.getpid()}\\)"):
            Trainer(data, tmp_path / "run", _request(), **QUIET)
    # the holder's folder is left alone, and once it is released the run goes ahead
    assert (tmp_path / "run" / LOCK_NAME).exists()
    Trainer(data, tmp_path / "run", _request(1), **QUIET).run()
    assert latest_checkpoint(tmp_path / "run").name == "step_00000001"


def test_stale_temporary_checkpoints_are_removed_on_the_next_start(run, data, tmp_path):
    copy = _copy(run, tmp_path)
    stale = copy / "checkpoints" / ".tmp-step_00000003-999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    Trainer(data, copy, RunRequest(train={"steps": 3}), resume=True, **QUIET).run()
    assert not stale.exists() and latest_checkpoint(copy).name == "step_00000003"


@pytest.mark.parametrize("sets,field", [(["model.hidden_dim=2000000000"], "model.hidden_dim"),
                                        (["train.batch_size=1000000000"], "train.batch_size")])
def test_sizes_that_cannot_fit_are_refused_up_front(data, tmp_path, capsys, sets, field):
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--no-progress"]
    code, lines = _cli(capsys, *args, *sum((["--set", s] for s in sets), []))
    assert code == 2 and len(lines) == 1 and "memory available" in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("toml,message", [
    ('[train]\ndevice = 5\n', "train.device must be"),
    ('model = 5\n', "model must be a table"),
    ('preset = 5\n', "preset must be a name"),
    ('ablations = 5\n', "ablations must be a list"),
    ('[train]\nseed = -1\n', "train.seed must be an integer >= 0"),
])
def test_ill_typed_toml_values_are_one_line(data, tmp_path, capsys, toml, message):
    (tmp_path / "c.toml").write_text(toml)
    code, lines = _cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                       "--config", str(tmp_path / "c.toml"), "--no-progress")
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_a_toml_ablation_string_is_a_name_not_letters():
    request = RunRequest.from_sources(None, (), None, (), {})
    assert request.ablations == ()
    from mrcom_train.training.config import _ablation_names

    assert _ablation_names("no_d", "c.toml") == ("no_d",)
    assert _ablation_names("no_d, no_ls", "c.toml") == ("no_d", "no_ls")


def test_ctrl_c_says_what_was_kept_and_how_to_resume(data, tmp_path, capsys, monkeypatch):
    real = Trainer.train_step

    def interrupt_at_3(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_3)
    code, lines = _cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                       "--steps", "5", "--set", "train.checkpoint_every=1", "--no-progress")
    assert code == 130 and len(lines) == 1
    assert "update 2" in lines[0] and "--resume" in lines[0] and lines[0].startswith("mrcom: interrupted: ")
    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"


def test_a_failed_fresh_run_leaves_no_folder_to_resume(data, tmp_path, capsys, monkeypatch):
    def fail(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", fail)
    code, lines = _cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                       "--no-progress")
    assert code == 130 and "run folder was removed" in lines[0]
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    Trainer(data, tmp_path / "run", _request(1), **QUIET).run()  # the same command works again, no --resume


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])  # full disk, read-only, foreign folder
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(run, data, tmp_path, capsys, monkeypatch, code):
    import mrcom_train.training.checkpoint as checkpoint

    copy = _copy(run, tmp_path)

    def full(*args, **kwargs):  # tests run as root here, so chmod cannot make a folder unwritable
        raise OSError(code, os.strerror(code), str(copy / "checkpoints"))

    monkeypatch.setattr(checkpoint, "save_file", full)
    status, lines = _cli(capsys, "train", "--data", str(data), "--out", str(copy), "--steps", "3", "--resume",
                       "--no-progress")
    assert status == 2 and len(lines) == 1 and os.strerror(code) in lines[0], lines
    assert latest_checkpoint(copy).name == "step_00000002"
    assert not list((copy / "checkpoints").glob(".tmp-*"))


def test_a_file_size_limit_mid_checkpoint_is_one_line_and_keeps_the_last_checkpoint(run, data, tmp_path):
    copy = _copy(run, tmp_path)
    last = latest_checkpoint(copy)
    model, optimizer = ((last / name).stat().st_size for name in ("model.safetensors", "optimizer.safetensors"))
    assert model < optimizer  # every other file of the run is smaller than the weights
    done = mrcom_under_file_size_limit((model + optimizer) // 2, "train", "--data", str(data), "--out", str(copy),
                                        "--steps", "4", "--resume", "--no-progress", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("mrcom: error: ") and "optimizer.safetensors: File too large" in lines[0], lines
    assert latest_checkpoint(copy).name == "step_00000002"  # still pointed to, every digest verified
    assert not list((copy / "checkpoints").rglob(".tmp-*"))


def test_safetensors_own_full_disk_error_is_one_line_naming_the_file(run, data, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import mrcom_train.training.checkpoint as checkpoint

    copy = _copy(run, tmp_path)

    def full(tensors, filename, *args, **kwargs):  # what safetensors raises when the disk fills up
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    status, lines = _cli(capsys, "train", "--data", str(data), "--out", str(copy), "--steps", "3", "--resume",
                         "--no-progress")
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("mrcom: error: ") and "model.safetensors: No space left on device" in lines[0]
    assert latest_checkpoint(copy).name == "step_00000002"
    assert not list((copy / "checkpoints").rglob(".tmp-*"))

    def bug(tensors, filename, *args, **kwargs):  # not an OS error: a bug, whose traceback must show
        raise SafetensorError("You are trying to save a non contiguous tensor")

    monkeypatch.setattr(checkpoint, "save_file", bug)
    with pytest.raises(SafetensorError, match="non contiguous"):
        checkpoint._save_tensors({}, tmp_path / "x.safetensors")


def test_a_file_size_limit_on_the_tensorboard_log_is_raised_where_the_row_is_logged(tmp_path):
    script = (
        "import errno, resource, sys\n"
        "from mrcom_train.metrics_log import MetricsLog\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))\n"
        "log = MetricsLog(sys.argv[1], ['step', 'loss'])\n"
        "try:\n"
        "    for step in range(100):  # many scalars per row: the event file crosses the limit first\n"
        "        log.write(step, {'loss': 1.0}, {f'train/term{i}': 1.0 for i in range(30)})\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno], e.filename)\n"
        "log.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr  # no traceback from a background thread
    code, name = done.stdout.split()
    assert code == "EFBIG" and name.startswith(str(tmp_path / "tb" / "events.out.tfevents.")), done.stdout


def test_a_second_reproduce_on_the_same_folder_is_refused(tmp_path):
    from mrcom_train.experiments.reproduce import run_reproduction

    with folder_lock(tmp_path / "out", "mrcom reproduce"):
        with pytest.raises(FolderLocked, match=f"PID {os.getpid()}"):
            run_reproduction(1, "smoke", 1, tmp_path / "out", log=lambda s: None)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK_NAME]


def test_a_damaged_metrics_log_is_one_line_and_a_cut_one_resumes(run, data, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    log = copy / "metrics.csv"
    text = log.read_bytes()
    log.write_bytes(text[: len(text) - 7])  # a kill mid-row: resuming drops that row
    Trainer(data, copy, RunRequest(train={"steps": 3}), resume=True, **QUIET).run()
    assert [line.split(",")[0] for line in log.read_text().splitlines()[1:]][-1] == "3"
    log.write_bytes(b"step,loss\n\xff\xfe garbage\n")
    code, lines = _cli(capsys, "train", "--data", str(data), "--out", str(copy), "--steps", "4", "--resume",
                       "--no-progress")
    assert code == 2 and len(lines) == 1 and "metrics.csv" in lines[0], lines


@pytest.mark.parametrize("preset,config,sets,window", [
    (None, None, ["model.overshoot_horizon=1000"], 16),
    ("tiny", None, ["model.overshoot_horizon=9"], 8),
    ("base", None, ["model.model_type=rssm_ctx", "model.overshoot_horizon=33"], 32),
    (None, "mrcom-literal.toml", ["model.overshoot_horizon=12", "train.window_len=10"], 10),
    ("tiny", None, ["model.overshoot_horizon=8"], None),  # the whole window: accepted
    ("tiny", None, [], None),  # the preset's own pair: tiny imagines its 8-step windows of MrCoM's default 15
    ("small", None, ["train.window_len=4"], 4),  # a window asked for below the default horizon (15)
    ("small", None, [], None),
    ("base", None, [], None),
    (None, "mrcom-literal.toml", [], None),
])
def test_an_overshoot_horizon_longer_than_the_window_is_one_line(data, tmp_path, capsys, preset, config, sets,
                                                                 window):
    from pathlib import Path

    from mrcom_train.datasets.dataset import Dataset
    from mrcom_train.training.config import resolve_configs

    config = config and str(Path(__file__).parents[1] / "configs" / config)
    if window is None:  # the presets and the project's configs resolve
        model, train, _ = resolve_configs(RunRequest.from_sources(preset, (), config, tuple(f"{s}" for s in sets),
                                                                  {}), Dataset(data), None)
        assert model.options.overshoot_horizon in (0, 8, 15)
        return
    args = [*(["--preset", preset] if preset else []), *(["--config", config] if config else []),
            *[a for s in sets for a in ("--set", s)]]
    code, lines = _cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1",
                       "--no-progress", *args)
    assert code == 2 and len(lines) == 1, lines
    assert "model.overshoot_horizon=" in lines[0] and f"train.window_len={window}" in lines[0], lines
    assert not (tmp_path / "run").exists()
