"""No command deletes or overwrites a folder it did not make, whatever flags it is given.

``--force`` replaces only a previous export that holds nothing its manifest does not list; ``--resume``
continues only a folder of the command's own kind; no output may be, contain or lie inside the command's
inputs (the run, its dataset, the export). Each refusal is one ``mrcom: error:`` line, exit 2, and every file
that was there is left byte for byte, with no lock file or folder left behind.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mrcom_core.errors import UserInputError
from mrcom_core.io.outputs import ADAPT_RUN, DATASET, EXPORT, TRAINING_RUN, folder_kind
from mrcom_train.cli import main

ADAPT = ["--model-free", "--split", "t1-a5b20", "--domain", "cheetah", "--env-steps", "40", "--episode-length", "20",
         "--seed", "0", "--set", "learning_starts=20", "--set", "checkpoint_every=20", "--set", "eval_every=40",
         "--set", "eval_episodes=1", "--set", "sac_hidden=16", "--set", "batch_size=16", "--no-progress"]
EXPORT_ARGS = ["--format", "onnx", "--horizon", "2", "--no-blocks"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny dataset, training run (inside a parent folder), export and finished adaptation run, via the CLI."""
    root = tmp_path_factory.mktemp("made")
    main(["collect", "--domains", "cheetah", "-n", "1", "-k", "2", "--episode-length", "30", "--out",
          str(root / "data"), "--no-progress"])
    main(["train", "--data", str(root / "data"), "--out", str(root / "parent" / "run"), "--preset", "tiny",
          "--steps", "2", "--no-progress"])
    main(["export", str(root / "parent" / "run"), "--out", str(root / "export"), *EXPORT_ARGS])
    main(["adapt", *ADAPT, "--out", str(root / "adapt")])
    return root


@pytest.fixture
def copy(made, tmp_path):
    """A private copy of the made folders (the training run's dataset path points at the copy's data)."""
    root = tmp_path / "c"
    shutil.copytree(made, root)
    return root


def _digests(root: Path) -> dict[str, str]:
    """Every path under ``root`` (folders and symlinks too) with the digest of each file."""
    def digest(p: Path) -> str:
        if p.name.endswith(".mrcom.lock"):
            return "lock"  # a lock file a refused command left as it found it may still say who asked last
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"

    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))}


def _refused(capsys, args, *match) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("mrcom: error: ") and "Traceback" not in err, err
    for text in match:
        assert text in lines[0], lines[0]
    return lines[0]


def test_each_folder_is_recognised_by_what_its_command_wrote(made, tmp_path):
    assert folder_kind(made / "data") == DATASET
    assert folder_kind(made / "parent" / "run") == TRAINING_RUN
    assert folder_kind(made / "export") == EXPORT
    assert folder_kind(made / "adapt") == ADAPT_RUN
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text(json.dumps({"preset": "x"}))  # not all of a run's keys
    assert folder_kind(tmp_path / "mine") is None
    assert folder_kind(made) is None and folder_kind(tmp_path / "missing") is None


# ------------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("target,relation", [
    ("parent/run", "is the training run"),
    ("data", "is the dataset of the training run"),
    ("parent", "contains the training run"),
    (".", "contains the training run"),
    ("parent/run/checkpoints", "lies inside the training run"),
    ("data/episodes", "lies inside the dataset"),
])
@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_over_or_into_its_run_or_dataset(made, capsys, target, relation, force):
    before = _digests(made)  # the run records its dataset's path, so these run on the made folders themselves
    out = made / target
    _refused(capsys, ["export", str(made / "parent" / "run"), "--out", str(out), *EXPORT_ARGS,
                      *(["--force"] if force else [])], relation)
    assert _digests(made) == before  # not even a lock file beside or inside


def test_export_force_refuses_a_folder_that_is_not_an_export(copy, capsys):
    before = _digests(copy)
    for other, kind in (("adapt", "adaptation run"), ("mine", None)):
        if other == "mine":
            (copy / "mine").mkdir()
            (copy / "mine" / "notes.txt").write_text("keep me")
            before = _digests(copy)
        _refused(capsys, ["export", str(copy / "parent" / "run"), "--out", str(copy / other), *EXPORT_ARGS,
                          "--force"], f"is {'an ' + kind if kind else 'not an export'}", "nothing was touched")
        assert _digests(copy) == before


def test_export_force_refuses_an_export_holding_a_file_it_did_not_write(copy, capsys):
    (copy / "export" / "notes.txt").write_text("keep me")
    before = _digests(copy)
    _refused(capsys, ["export", str(copy / "parent" / "run"), "--out", str(copy / "export"), *EXPORT_ARGS, "--force"],
             "holds 'notes.txt'", "would delete it")
    assert _digests(copy) == before


def test_export_force_replaces_a_previous_export(copy, capsys):
    old = json.loads((copy / "export" / "manifest.json").read_text())
    main(["export", str(copy / "parent" / "run"), "--out", str(copy / "export"), "--format", "all", "--horizon", "3",
          "--no-blocks", "--force"])
    new = json.loads((copy / "export" / "manifest.json").read_text())
    assert old["formats"] == ["onnx"] and new["formats"] == ["onnx", "torchscript"] and new["rollout_horizon"] == 3


# ------------------------------------------------------------------------------------------ train, adapt …
def test_train_never_writes_into_its_dataset(copy, capsys):
    before = _digests(copy)
    for out, relation in ((copy / "data", "is the dataset"), (copy / "data" / "run", "lies inside the dataset"),
                          (copy, "contains the dataset")):
        for resume in ([], ["--resume"]):
            _refused(capsys, ["train", "--data", str(copy / "data"), "--out", str(out), "--preset", "tiny",
                              "--steps", "1", "--no-progress", *resume], relation)
            assert _digests(copy) == before


@pytest.mark.parametrize("other,kind", [("export", "an export"), ("adapt", "an adaptation run"),
                                        ("data2", "a dataset"), ("mine", "not a training run")])
def test_resume_continues_only_a_folder_of_its_own_kind(copy, capsys, other, kind):
    if other == "data2":
        shutil.copytree(copy / "data", copy / "data2")
    if other == "mine":
        (copy / "mine").mkdir()
        (copy / "mine" / "metrics.csv").write_text("my own numbers\n")
    before = _digests(copy)
    _refused(capsys, ["train", "--data", str(copy / "data"), "--out", str(copy / other), "--preset", "tiny",
                      "--steps", "3", "--resume", "--no-progress"], f"is {kind}", "--resume only continues")
    assert _digests(copy) == before


def test_adapt_resume_refuses_a_training_run_and_an_output_inside_its_export(made, copy, capsys):
    before = _digests(copy)
    _refused(capsys, ["adapt", *ADAPT, "--out", str(copy / "parent" / "run"), "--resume"],
             "is a training run", "--resume only continues an adaptation run")
    from mrcom_train.rl.adapt import AdaptConfig, Adapter

    config = AdaptConfig(split="t1-a5b20", domain="cheetah", env_steps=40, episode_length=20, learning_starts=20,
                         sac_hidden=16, batch_size=16, use_model=True)
    for out in (copy / "export", copy / "export" / "adapt"):
        with pytest.raises(UserInputError, match="the export"):
            Adapter(config, out, copy / "export", resume=True, progress=False)
    assert _digests(copy) == before


def test_collect_and_reproduce_refuse_folders_of_another_kind(copy, capsys):
    before = _digests(copy)
    _refused(capsys, ["collect", "--domains", "cheetah", "-n", "1", "-k", "2", "--episode-length", "30", "--out",
                      str(copy / "parent" / "run"), "--resume", "--no-progress"], "is a training run")
    _refused(capsys, ["reproduce", "--table", "1", "--out", str(copy / "export")], "is an export")
    assert _digests(copy) == before


def test_a_failed_run_empties_a_folder_it_found_empty_but_keeps_the_folder(copy, capsys, monkeypatch):
    from mrcom_train.training.trainer import Trainer

    (copy / "empty").mkdir()

    def fail(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", fail)
    with pytest.raises(SystemExit):
        main(["train", "--data", str(copy / "data"), "--out", str(copy / "empty"), "--preset", "tiny", "--steps", "1",
              "--no-progress"])
    assert (copy / "empty").is_dir()
    assert [p.name for p in (copy / "empty").iterdir() if not p.name.endswith(".lock")] == []
