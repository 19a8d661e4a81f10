"""Every file the project writes, damaged three ways, read back through the command that uses it.

For each dataset, training-checkpoint, export and adaptation-checkpoint file: truncate it, flip one byte, or
replace it with garbage; then run the ``mrcom`` command that reads it. Each must exit with status 2 and one
``mrcom: error:`` line (no traceback), and leave every file it found exactly as it was.
"""

import hashlib
import shutil
from pathlib import Path

import pytest

from mrcom_core.io.files import LOCK_NAME
from mrcom_train.cli import main

STEPS = 2  # training updates: the checkpoint folder is step_00000002
HORIZON = 2
ADAPT = ["--model-free", "--split", "t1-a5b20", "--domain", "cheetah", "--env-steps", "60", "--episode-length", "20",
         "--seed", "0", "--set", "learning_starts=20", "--set", "checkpoint_every=20", "--set", "eval_every=60",
         "--set", "eval_episodes=1", "--set", "sac_hidden=16", "--set", "batch_size=16", "--set",
         "updates_per_step=1", "--no-progress"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One tiny dataset, training run, export and half-finished adaptation run, made through the CLI."""
    from mrcom_train.rl.adapt import Adapter

    root = tmp_path_factory.mktemp("pristine")
    main(["collect", "--domains", "cheetah", "-n", "1", "-k", "2", "--episode-length", "40", "--out",
          str(root / "data"), "--no-progress"])
    main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny", "--steps", str(STEPS),
          "--no-progress"])
    main(["export", str(root / "run"), "--out", str(root / "export"), "--format", "all", "--horizon", str(HORIZON),
          "--no-blocks"])
    # an adaptation run stopped after its first checkpoint (env step 20 or 40), so every checkpoint file exists
    original = Adapter.evaluate
    calls = []

    def stop_after_first_checkpoint(self):
        calls.append(self.step)
        if self.step >= 40:
            raise KeyboardInterrupt
        return original(self)

    Adapter.evaluate = stop_after_first_checkpoint
    try:
        with pytest.raises(SystemExit):
            main(["adapt", *ADAPT, "--out", str(root / "adapt"), "--set", "eval_every=40"])
    finally:
        Adapter.evaluate = original
    return root


def _files(kind: str) -> list[str]:
    ckpt = f"checkpoints/step_{STEPS:08d}"
    return {
        "data": ["manifest.json", "episodes/s0000/e00000/obs.npy", "episodes/s0000/e00001/action.npy",
                 "episodes/s0000/e00000/reward.npy"],
        "run": [f"{ckpt}/model.safetensors", f"{ckpt}/optimizer.safetensors", f"{ckpt}/rng.safetensors",
                f"{ckpt}/state.json", "checkpoints/latest.json"],
        "export": ["manifest.json", *(f"{g}.{ext}" for g in ("prime", "observe", "step", "rollout")
                                      for ext in ("onnx", "pt"))],
        "adapt": ["checkpoints/latest.json", "config.json", "CKPT/agent.pt", "CKPT/buffers.npz", "CKPT/state.json"],
    }[kind]


def _commands(kind: str, root: Path, out: Path) -> list[list[str]]:
    data, run, export = root / "data", root / "run", root / "export"
    return {
        "data": [["info", str(data)],
                 ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "1",
                  "--no-progress"],
                 ["collect", "--domains", "cheetah", "-n", "1", "-k", "2", "--episode-length", "40", "--out",
                  str(data), "--resume", "--no-progress"]],
        "run": [["train", "--data", str(data), "--out", str(run), "--steps", str(STEPS + 1), "--resume",
                 "--no-progress"],
                ["export", str(run), "--out", str(out), "--no-blocks"]],
        "export": [["rollout", str(export), "--data", str(data), "--batch", "2", "--horizon", str(HORIZON)]],
        "adapt": [["adapt", *ADAPT, "--out", str(root / "adapt"), "--set", "eval_every=40", "--resume"]],
    }[kind]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    else:
        path.write_bytes(b"not what mrcom wrote \x00\xff" * 8)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(LOCK_NAME)}


CASES = [(kind, name, how) for kind in ("data", "run", "export", "adapt") for name in _files(kind)
         for how in ("truncate", "flip", "garbage")]


@pytest.mark.parametrize("kind,name,how", CASES, ids=[f"{k}:{n.split('/')[-1]}:{h}" for k, n, h in CASES])
def test_a_damaged_file_is_one_error_line_and_nothing_changes(pristine, tmp_path, capsys, kind, name, how):
    root = tmp_path / "copy"
    shutil.copytree(pristine, root)
    if "CKPT" in name:
        latest = root / "adapt" / "checkpoints" / "latest.json"
        name = name.replace("CKPT", f"checkpoints/{__import__('json').loads(latest.read_text())['dir']}")
    _damage(root / kind / name, how)
    before = _digests(root)
    for command in _commands(kind, root, tmp_path / "new"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert exit_info.value.code == 2, (command, err)
        assert len(lines) == 1 and lines[0].startswith("mrcom: error: "), (command, err)
        assert "Traceback" not in err
        assert _digests(root) == before, f"{command[0]} changed files after damage to {name}"
        assert not (tmp_path / "new").exists(), f"{command[0]} left a new folder behind"
