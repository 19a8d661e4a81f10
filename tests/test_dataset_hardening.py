"""Damaged datasets and misused `mrcom collect`: one `mrcom: error:` line (exit 2), never a traceback, and
nothing on disk changed or silently deleted."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import mrcom_under_file_size_limit

import mrcom_train.datasets.collect as collect_mod
import mrcom_train.datasets.dataset as dataset_mod
from mrcom_core.errors import Interrupted, UserInputError
from mrcom_core.io.files import LOCK_NAME, has_content
from mrcom_core.io.locks import FolderLocked, folder_lock
from mrcom_train.cli import main
from mrcom_train.datasets.collect import CollectConfig, collect
from mrcom_train.datasets.dataset import MANIFEST, Dataset, read_episode

QUIET = dict(progress=False, log=lambda s: None)
SHAPE = dict(domains=("cheetah",), scenarios_per_domain=1, episodes_per_scenario=2, episode_length=20)
CLI_SHAPE = ["--domains", "cheetah", "-n", "1", "-k", "2", "--episode-length", "20", "--no-progress"]
OBS_DIM = 17  # cheetah


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hardening") / "data"
    collect(CollectConfig(**SHAPE), out, **QUIET)
    return out


@pytest.fixture
def data(collected, tmp_path) -> Path:
    """A fresh copy of the tiny collected dataset, free to damage."""
    return Path(shutil.copytree(collected, tmp_path / "data"))


def _obs(root: Path) -> Path:
    return root / "episodes" / "s0000" / "e00000" / "obs.npy"


def _truncate(root):
    raw = _obs(root).read_bytes()
    _obs(root).write_bytes(raw[: len(raw) // 2])


def _flip_byte(root):
    raw = bytearray(_obs(root).read_bytes())
    raw[-7] ^= 0x55  # inside the array data: the header still parses, only the checksum notices
    _obs(root).write_bytes(bytes(raw))


def _object_array(root):
    np.save(_obs(root), np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _wrong_shape(root):
    np.save(_obs(root), np.zeros((20, OBS_DIM), np.float32))  # T rows instead of T + 1


def _float64(root):
    np.save(_obs(root), np.load(_obs(root)).astype(np.float64))


def _not_npy(root):
    _obs(root).write_bytes(b"just some text, not an array\n")


def _stray_folder(root):
    (root / "episodes" / "s0000" / "backup").mkdir()


def _stray_scenario_folder(root):
    (root / "episodes" / "sabc").mkdir()


def _stray_file(root):
    (root / "episodes" / "notes.txt").write_text("x")


CORRUPTIONS = {
    "truncated": (_truncate, "obs.npy is truncated"),
    "flipped byte": (_flip_byte, "checksum mismatch for"),
    "object dtype": (_object_array, "holds Python objects"),
    "wrong shape": (_wrong_shape, f"obs.npy has shape (20, {OBS_DIM}), expected (21, {OBS_DIM})"),
    "float64": (_float64, "holds float64 data, expected float32"),
    "not npy": (_not_npy, "obs.npy is not a readable .npy array"),
    "stray folder": (_stray_folder, "backup does not belong to the dataset"),
    "stray scenario folder": (_stray_scenario_folder, "sabc does not belong to the dataset"),
    "stray file": (_stray_file, "notes.txt does not belong to the dataset"),
}


def _snapshot(root: Path) -> dict:
    """Every path under ``root`` (the lock file aside) with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.name != LOCK_NAME}


def _exits_2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrcom: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_dataset_refuses_a_damaged_episode_naming_the_file(data, name):
    corrupt, message = CORRUPTIONS[name]
    corrupt(data)
    with pytest.raises(UserInputError, match="does not belong" if "stray" in name else "obs.npy") as error:
        Dataset(data)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["object dtype", "truncated", "not npy", "float64"])
def test_read_episode_never_unpickles_and_names_the_file(data, name):
    CORRUPTIONS[name][0](data)
    for mmap in (False, True):
        with pytest.raises(UserInputError, match=str(_obs(data))):
            read_episode(data, 0, 0, mmap=mmap)


def test_unverified_open_still_checks_each_episode_when_read(data):
    _wrong_shape(data)
    ds = Dataset(data, verify=False)
    ds.episode(1)
    with pytest.raises(UserInputError, match="obs.npy has shape"):
        ds.episode(0)


def _edit_manifest(root: Path, edit) -> None:
    path = root / MANIFEST
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


MANIFEST_DAMAGE = {
    "a JSON list": (lambda m: [m], "holds a JSON list, not an object"),
    "no stats": (lambda m: {k: v for k, v in m.items() if k != "stats"}, "field 'stats' is missing"),
    "short obs_mean": (lambda m: {**m, "stats": {**m["stats"], "obs_mean": [0.0]}}, "stats.obs_mean must be a list"),
    "obs_dim a string": (lambda m: {**m, "obs_dim": "17"}, "field 'obs_dim' is a str"),
    "scenarios not a list": (lambda m: {**m, "scenarios": {}}, "field 'scenarios' is a dict"),
    "episodes missing": (lambda m: {k: v for k, v in m.items() if k != "episodes"}, "field 'episodes' is missing"),
    "scenario out of range": (lambda m: {**m, "episodes": [{**m["episodes"][0], "scenario": 3}, *m["episodes"][1:]]},
                              "episodes[0]: scenario 3 is out of range"),
    "no checksums": (lambda m: {**m, "episodes": [{k: v for k, v in e.items() if k != "files"}
                                                  for e in m["episodes"]]}, "field 'files' is missing"),
    "length differs": (lambda m: {**m, "episodes": [{**m["episodes"][0], "length": 19}, *m["episodes"][1:]]},
                       "the manifest records 19 steps"),
}


@pytest.mark.parametrize("name", list(MANIFEST_DAMAGE))
def test_dataset_refuses_a_damaged_manifest_naming_the_field(data, name):
    edit, message = MANIFEST_DAMAGE[name]
    _edit_manifest(data, edit)
    with pytest.raises(UserInputError) as error:
        Dataset(data)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_episode_folder_the_manifest_does_not_list_is_refused(data):
    shutil.copytree(data / "episodes" / "s0000" / "e00001", data / "episodes" / "s0000" / "e00007")
    with pytest.raises(UserInputError, match="e00007 is not listed in"):
        Dataset(data)


# ---------------------------------------------------------------------------------------------- CLI
def test_info_verifies_the_dataset(data, capsys):
    main(["info", str(data)])
    assert "2 episodes, 40 steps" in capsys.readouterr().out
    _flip_byte(data)
    assert "checksum mismatch for" in _exits_2(["info", str(data)], capsys)


@pytest.mark.parametrize("name", ["truncated", "flipped byte", "stray scenario folder", "not npy"])
def test_info_exits_2_on_a_damaged_dataset(data, name, capsys):
    corrupt, message = CORRUPTIONS[name]
    corrupt(data)
    assert message in _exits_2(["info", str(data)], capsys)


@pytest.mark.parametrize("name", ["truncated", "flipped byte", "wrong shape", "stray folder", "stray scenario folder"])
def test_collect_resume_over_a_damaged_dataset_stops_and_touches_nothing(data, name, capsys):
    corrupt, message = CORRUPTIONS[name]
    corrupt(data)
    before = _snapshot(data)
    line = _exits_2(["collect", *CLI_SHAPE, "--out", str(data), "--resume"], capsys)
    assert message in line
    if "stray" not in name:  # the damaged episode is named, never deleted on the user's behalf
        assert f"delete {_obs(data).parent} to collect that episode again" in line
    assert _snapshot(data) == before


def test_collect_resume_over_a_damaged_manifest_stops(data, capsys):
    good = json.loads((data / MANIFEST).read_text())
    _edit_manifest(data, lambda m: {**m, "collect_config": [1, 2]})
    assert "field 'collect_config' is a list" in _exits_2(["collect", *CLI_SHAPE, "--out", str(data), "--resume"],
                                                         capsys)
    _edit_manifest(data, lambda m: {**good, "episodes": [{**good["episodes"][0], "scenario": 5}]})
    before = _snapshot(data)
    assert "scenario 5 is out of range" in _exits_2(["collect", *CLI_SHAPE, "--out", str(data), "--resume"], capsys)
    assert _snapshot(data) == before


# ------------------------------------------------------------------------------------ collect checks
def test_a_held_lock_stops_collect_naming_the_holder(tmp_path):
    out = tmp_path / "data"
    with folder_lock(out, "mrcom collect"):
        with pytest.raises(FolderLocked, match=f"PID {os.getpid()}"):
            collect(CollectConfig(**SHAPE), out, **QUIET)
    assert not has_content(out)  # the lock file alone: a fresh collect may start there
    collect(CollectConfig(**SHAPE), out, **QUIET)
    assert len(Dataset(out)) == 2


def test_negative_seed_is_refused(tmp_path, capsys):
    with pytest.raises(UserInputError, match="seed must be an integer >= 0, got -1"):
        CollectConfig(**SHAPE, seed=-1)
    assert "seed must be an integer >= 0" in _exits_2(["collect", *CLI_SHAPE, "--seed", "-1", "--out",
                                                       str(tmp_path / "a")], capsys)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("policy,fix", [("random", "lower --episode-length"),
                                        ("sac", "lower --episode-length or --episodes-per-scenario")])
def test_huge_episode_length_is_refused_before_anything_starts(tmp_path, capsys, policy, fix):
    out = tmp_path / "a"
    line = _exits_2(["collect", "--domains", "cheetah", "-n", "1", "-k", "1", "--episode-length", "1000000000000",
                     "--policy", policy, "--no-progress", "--out", str(out)], capsys)
    assert "collecting episodes of 1000000000000 steps" in line and "needs at least" in line
    assert "of memory available" in line and line.endswith(fix)
    assert not out.exists()


def test_a_failed_fresh_collect_leaves_no_folder(tmp_path, monkeypatch):
    def bad_env(*args, **kwargs):
        raise UserInputError("bad scenario")

    monkeypatch.setattr(collect_mod, "ScenarioEnv", bad_env)
    with pytest.raises(UserInputError, match="bad scenario"):
        collect(CollectConfig(**SHAPE), tmp_path / "a", **QUIET)
    assert not (tmp_path / "a").exists()
    monkeypatch.undo()

    def interrupt(*args, **kwargs):  # Ctrl-C while the first episode is written
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_mod, "write_episode", interrupt)
    with pytest.raises(Interrupted):
        collect(CollectConfig(**SHAPE), tmp_path / "a", **QUIET)
    assert not (tmp_path / "a").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays, emptied
    with pytest.raises(Interrupted):
        collect(CollectConfig(**SHAPE), tmp_path / "mine", **QUIET)
    assert (tmp_path / "mine").is_dir() and not has_content(tmp_path / "mine")
    monkeypatch.undo()
    collect(CollectConfig(**SHAPE), tmp_path / "mine", **QUIET)  # no --resume needed
    assert len(Dataset(tmp_path / "mine")) == 2


def test_a_collect_failing_after_an_episode_keeps_it_and_says_resume(tmp_path, monkeypatch):
    real_write = collect_mod.write_episode
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise UserInputError("out of luck")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(collect_mod, "write_episode", fail_second)
    out = tmp_path / "a"
    with pytest.raises(UserInputError, match=r"out of luck \(1/2 finished episodes are kept in .*continue with "
                                             r"--resume once fixed\)"):
        collect(CollectConfig(**SHAPE), out, **QUIET)
    assert (out / "episodes" / "s0000" / "e00000").is_dir()
    monkeypatch.undo()
    collect(CollectConfig(**SHAPE), out, resume=True, **QUIET)
    assert len(Dataset(out)) == 2


# ------------------------------------------------------------------------------ a full disk, a size limit
LONG = dict(domains=("cheetah",), scenarios_per_domain=2, episodes_per_scenario=2, episode_length=100)
CLI_LONG = ["--domains", "cheetah", "-n", "2", "-k", "2", "--episode-length", "100", "--no-progress"]


def _collect_first(out: Path, n: int, monkeypatch) -> None:
    """Collect LONG into ``out`` but stop after its first ``n`` episodes (kept for --resume)."""
    real_write, calls = collect_mod.write_episode, []

    def stop_after_n(*args, **kwargs):
        calls.append(args)
        if len(calls) > n:
            raise UserInputError("stopped")
        return real_write(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(collect_mod, "write_episode", stop_after_n)
        with pytest.raises(UserInputError, match="stopped"):
            collect(CollectConfig(**LONG), out, **QUIET)


@pytest.mark.parametrize("resume", [False, True])
def test_a_file_size_limit_mid_collect_is_one_line_and_keeps_finished_episodes(tmp_path, monkeypatch, capsys,
                                                                              resume):
    out = tmp_path / "data"
    # obs.npy is an episode's largest file: the limit lets the manifest (< 5 kB) and the other files through
    obs_bytes = 128 + (LONG["episode_length"] + 1) * OBS_DIM * 4
    if resume:
        _collect_first(out, 1, monkeypatch)
        assert _obs(out).stat().st_size == obs_bytes
    before = _snapshot(out) if resume else {}
    done = mrcom_under_file_size_limit(obs_bytes - 1, "collect", *CLI_LONG, "--out", str(out),
                                        *(["--resume"] if resume else []), cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("mrcom: error: ") and "obs.npy: File too large" in lines[0], lines
    if not resume:  # nothing was finished: nothing is left
        assert not out.exists()
        return
    after = _snapshot(out)  # the finished episode is untouched; no half-written one is left
    assert {k: v for k, v in after.items() if k.startswith("episodes/s0000/e00000")} == \
        {k: v for k, v in before.items() if k.startswith("episodes/s0000/e00000")}
    assert not [k for k in after if ".tmp-" in k], after.keys()
    collect(CollectConfig(**LONG), out, resume=True, **QUIET)  # with room again, --resume finishes it
    capsys.readouterr()
    main(["info", str(out)])
    assert "4 episodes, 400 steps" in capsys.readouterr().out


def test_a_full_disk_mid_episode_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a"
    opened = []

    class FullDisk:  # the file system's answer once the disk is full: ENOSPC, naming no file
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_fills_up(path, *args, **kwargs):  # the first episode's three files fit, then the disk is full
        opened.append(path)
        f = open(path, *args, **kwargs)
        return f if len(opened) <= 3 else FullDisk(f)

    monkeypatch.setattr(dataset_mod, "open", open_fills_up, raising=False)
    line = _exits_2(["collect", *CLI_SHAPE, "--out", str(out)], capsys)
    assert f"{opened[3]}: No space left on device" in line and opened[3].name == "obs.npy"
    assert not opened[3].parent.exists()  # the half-written episode folder is gone
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "episodes" / "s0000").iterdir()) == ["e00000"]
    collect(CollectConfig(**SHAPE), out, resume=True, **QUIET)
    assert len(Dataset(out)) == 2


# ------------------------------------------------------------------------------------- symbolic links
def _link_episode(root: Path, target: Path) -> Path:
    """Replace episode e00000 of scenario 0 with a symbolic link to a copy of it at ``target``."""
    folder = root / "episodes" / "s0000" / "e00000"
    shutil.copytree(folder, target)
    shutil.rmtree(folder)
    folder.symlink_to(target, target_is_directory=True)
    return folder


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_a_symlinked_episode_folder_is_refused(data, tmp_path, capsys, where):
    target = (tmp_path if where == "outside" else data) / "copies" / "e00000"
    link = _link_episode(data, target)
    with pytest.raises(UserInputError, match=f"^{link} is a symbolic link") as error:
        Dataset(data)
    assert "\n" not in str(error.value)
    line = _exits_2(["info", str(data)], capsys)
    assert f"{link} is a symbolic link" in line
    before = _snapshot(data)  # a resumed collection stops there too, and touches nothing
    assert f"{link} is a symbolic link" in _exits_2(["collect", *CLI_SHAPE, "--out", str(data), "--resume"], capsys)
    assert _snapshot(data) == before and link.is_symlink() and (target / "obs.npy").is_file()


def test_a_symlinked_scenario_folder_or_episodes_folder_is_refused(data, tmp_path, capsys):
    scenario = data / "episodes" / "s0000"
    shutil.move(scenario, tmp_path / "s0000")
    scenario.symlink_to(tmp_path / "s0000", target_is_directory=True)
    assert f"{scenario} is a symbolic link" in _exits_2(["info", str(data)], capsys)
    scenario.unlink()
    shutil.move(tmp_path / "s0000", scenario)
    shutil.move(data / "episodes", tmp_path / "episodes")
    (data / "episodes").symlink_to(tmp_path / "episodes", target_is_directory=True)
    with pytest.raises(UserInputError, match=f"^{data / 'episodes'} is a symbolic link"):
        Dataset(data)


def test_a_symlinked_episode_file_is_refused_as_a_link(data, tmp_path):
    obs = _obs(data)
    shutil.move(obs, tmp_path / "obs.npy")
    obs.symlink_to(tmp_path / "obs.npy")
    with pytest.raises(UserInputError, match=f"^{obs} is a symbolic link"):
        Dataset(data)
    with pytest.raises(UserInputError, match=f"^{obs} is a symbolic link"):
        read_episode(data, 0, 0)
