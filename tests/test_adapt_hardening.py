"""`mrcom adapt` against crashes, damaged files, a second process and bad numbers (issue "Hardening").

Model-free runs with 50-step episodes keep every test to a few seconds: checkpoints at env steps 100 and
200, the final one at 300.
"""

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcom_core.errors import UserInputError
from mrcom_core.io.files import LOCK_NAME, sha256
from mrcom_core.io.locks import FolderLocked, folder_lock
from mrcom_train.agents.sac import SAC, SACConfig, load_actor, parameter_counts
from mrcom_train.rl.adapt import AdaptConfig, Adapter

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}
QUIET = dict(progress=False, log=lambda s: None)
TINY = AdaptConfig(split="t1-a5b20", domain="cheetah", env_steps=300, episode_length=50, learning_starts=100,
                   eval_every=150, eval_episodes=1, sac_hidden=32, batch_size=32, seed=3, use_model=False,
                   checkpoint_every=100, rollout_batch=10, retain_rounds=1, updates_per_step=1)


def _actor(adapter: Adapter) -> dict:
    return {k: v.clone() for k, v in adapter.agent.actor.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _latest(run: Path) -> Path:
    return run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["dir"]


def _resign(folder: Path) -> None:
    """Record the current digests of ``folder``'s files, as if they had been written that way (so the loaders'
    own checks, not the checksums, meet the damage)."""
    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text())
        state["files"] = {name: sha256(folder / name) for name in state["files"]}
        state_file.write_text(json.dumps(state))
    except ValueError:
        pass  # a damaged state.json stays damaged
    pointer = folder.parent / "latest.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "state_sha256": sha256(state_file)}))


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def _interrupt_at(adapter: Adapter, monkeypatch, n: int) -> None:
    real_step, count = adapter.env.step, {"n": 0}

    def step(action):
        count["n"] += 1
        if count["n"] == n:
            raise KeyboardInterrupt
        return real_step(action)

    monkeypatch.setattr(adapter.env, "step", step)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: (folder, result, final actor weights)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    adapter = Adapter(TINY, run, **QUIET)
    result = adapter.run()
    return run, result, _actor(adapter)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A run stopped by Ctrl-C at env step 230 (latest checkpoint: step 200); tests work on copies."""
    run = tmp_path_factory.mktemp("killed") / "run"
    adapter = Adapter(TINY, run, **QUIET)
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_at(adapter, mp, 230)
        with pytest.raises(KeyboardInterrupt):
            adapter.run()
    return run


@pytest.fixture
def copy(killed, tmp_path):
    return Path(shutil.copytree(killed, tmp_path / "run"))


# ------------------------------------------------------------------------------ cause: torn checkpoints
def test_a_crash_between_checkpoint_files_cannot_desync_a_resume(straight, tmp_path, monkeypatch):
    # The old layout replaced agent.pt, then buffers.npz, then state.json in place: a crash after agent.pt
    # left the step-200 agent with the step-100 state, and --resume continued from that mix.
    run = tmp_path / "run"
    real_savez, seen = np.savez, []

    def savez(file, **arrays):
        seen.append((Path(file).parent / "agent.pt").is_file())
        if len(seen) == 2:  # the checkpoint at step 200, after its agent.pt was written
            raise KeyboardInterrupt
        return real_savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(KeyboardInterrupt):
        Adapter(TINY, run, **QUIET).run()
    monkeypatch.undo()
    assert seen == [True, True]
    assert _latest(run).name == "step_00000100"
    assert not list((run / "checkpoints").glob(".tmp-*")) and not (run / "checkpoints" / "step_00000200").exists()
    with folder_lock(run, "test"):  # Ctrl-C released the lock
        pass
    resumed = Adapter(TINY, run, resume=True, **QUIET)
    assert resumed.step == 100
    assert resumed.run() == straight[1]
    assert _same(_actor(resumed), straight[2])


def test_resume_continues_exactly_and_checkpoints_are_checksummed(straight, copy):
    state = json.loads((_latest(copy) / "state.json").read_text())
    assert state["format"] == "mrcom-adapt-checkpoint" and set(state["files"]) == {"agent.pt", "buffers.npz"}
    resumed = Adapter(TINY, copy, resume=True, **QUIET)
    assert resumed.step == 200
    assert resumed.run() == straight[1] and _same(_actor(resumed), straight[2])


# ------------------------------------------------------------------------------ cause: damaged files
@pytest.mark.parametrize("name", ["agent.pt", "buffers.npz"])
def test_a_flipped_byte_is_one_line(copy, name):
    _flip(_latest(copy) / name, 1000)
    for _ in range(2):  # the failed constructor released the lock: the same message again, not FolderLocked
        with pytest.raises(UserInputError, match=f"checksum mismatch for .*{name}") as e:
            Adapter(TINY, copy, resume=True, **QUIET)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name,damage,message", [
    ("buffers.npz", "truncate", "cannot read .*buffers.npz: not replay buffers of this run"),
    ("buffers.npz", "pickle", "cannot read .*buffers.npz: not replay buffers of this run"),
    ("agent.pt", "truncate", "cannot read .*agent.pt: not a PyTorch checkpoint saved by mrcom"),
    ("agent.pt", "pickle", "cannot read .*agent.pt: not a PyTorch checkpoint saved by mrcom"),
])
def test_damaged_files_are_one_line_even_with_matching_checksums(copy, name, damage, message):
    path = _latest(copy) / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a pickle is never loaded: no code from a checkpoint runs
        path.write_bytes(pickle.dumps({"agent": os.getcwd}))
    _resign(path.parent)
    with pytest.raises(UserInputError, match=message) as e:
        Adapter(TINY, copy, resume=True, **QUIET)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value) and "allow_pickle" not in str(e.value)


@pytest.mark.parametrize("signed,message", [(False, "checksum mismatch for .*state.json"),
                                            (True, "state.json is not valid JSON")])
def test_an_invalid_state_json_is_one_line(copy, signed, message):
    (_latest(copy) / "state.json").write_text('{"format": "mrcom-adapt-checkpoint", "step": 2')
    if signed:
        _resign(_latest(copy))
    with pytest.raises(UserInputError, match=message):
        Adapter(TINY, copy, resume=True, **QUIET)


def test_a_pointer_out_of_the_run_folder_is_refused(copy):
    pointer = copy / "checkpoints" / "latest.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "dir": "../../etc"}))
    with pytest.raises(UserInputError, match=r"names '\.\./\.\./etc'.*refusing to read it"):
        Adapter(TINY, copy, resume=True, **QUIET)


@pytest.mark.parametrize("damage,message", [("missing", "adapt run config .*config.json is missing"),
                                            ("garbage", "config.json is not valid JSON")])
def test_a_missing_or_invalid_config_json_is_one_line(copy, damage, message):
    if damage == "missing":
        (copy / "config.json").unlink()
    else:
        (copy / "config.json").write_text("{oops")
    with pytest.raises(UserInputError, match=message):
        Adapter(TINY, copy, resume=True, **QUIET)


def test_leftovers_of_a_killed_writer_are_removed_on_resume(copy):
    stale = [copy / "checkpoints" / ".tmp-step_00000300-99999", copy / ".tmp-99999.metrics.csv",
             copy / "checkpoints" / "step_00000300"]  # published but never pointed to
    stale[0].mkdir()
    stale[1].write_text("half")
    shutil.copytree(_latest(copy), stale[2])
    adapter = Adapter(TINY, copy, resume=True, **QUIET)
    adapter.close()
    assert adapter.step == 200 and not any(p.exists() for p in stale)


# ------------------------------------------------------------------------------ cause: edited, re-signed fields
def _edit(run: Path, state: dict | None = None, rename: str | None = None, agent_steps: int | None = None,
          arrays=None) -> Path:
    """Edit the latest checkpoint of ``run`` and record every digest again (allowed: a user can): ``state``
    fields into state.json (its step into latest.json too), the folder renamed, agent.pt's env_steps, the
    arrays of buffers.npz changed by ``arrays(dict)``. Returns the checkpoint folder."""
    folder = _latest(run)
    pointer = folder.parent / "latest.json"
    if rename:
        folder = folder.rename(folder.parent / rename)
    saved = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**saved, **(state or {})}))
    if agent_steps is not None:
        agent = torch.load(folder / "agent.pt", weights_only=True)
        torch.save({**agent, "env_steps": agent_steps}, folder / "agent.pt")
    if arrays is not None:
        with np.load(folder / "buffers.npz") as f:
            data = dict(f)
        arrays(data)
        np.savez(folder / "buffers.npz", **data)
    step = json.loads((folder / "state.json").read_text())["step"]
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "dir": folder.name, "step": step}))
    _resign(folder)
    return folder


def _pad_real(data: dict) -> None:
    for key in ("obs", "action", "reward", "next_obs", "terminated"):
        value = data[f"real_{key}"]
        data[f"real_{key}"] = np.concatenate([value, np.zeros((100, *value.shape[1:]), value.dtype)])


def _extra_episode(data: dict) -> None:
    data.update({f"ep4_{k}": data[f"ep0_{k}"] for k in ("obs", "action", "reward")})


def _cut_episode(data: dict) -> None:
    data["ep0_obs"] = data["ep0_obs"][:-1]


def _set(key: str, value):
    return lambda data: data.__setitem__(key, np.array(value, np.int64))


S200 = "step_00000200"


@pytest.mark.parametrize("edit,message", [
    (dict(state={"env_steps": 1000}), r"state.json: env_steps 1000 disagrees with the checkpoint's step 200"),
    (dict(state={"env_steps": 10**12}), r"state.json: env_steps 1000000000000 disagrees with the checkpoint's step"),
    (dict(state={"env_steps": 100}), r"state.json: env_steps 100 disagrees with the checkpoint's step 200"),
    (dict(state={"env_steps": -5}), r"state.json: env_steps -5 disagrees with the checkpoint's step 200"),
    (dict(state={"imagined": -3}), r"state.json: imagined -3 is not 0"),
    (dict(state={"imagined": 7}), r"state.json: imagined 7 is not 0"),  # a model-free run imagines nothing
    (dict(state={"episodes": 5}), r"state.json: episodes 5 disagrees with env_steps 200"),
    (dict(state={"episodes": 2}), r"state.json: episodes 2 disagrees with env_steps 200"),
    (dict(state={"episodes": -1}), r"state.json: episodes -1 disagrees with env_steps 200"),
    (dict(state={"step": 100, "env_steps": 100}), rf"state.json: step 100 is not the step of its folder {S200}"),
    (dict(state={"step": 10**12, "env_steps": 10**12}), rf"state.json: step 1000000000000 is not the step of its "
                                                        rf"folder {S200}"),
    (dict(state={"step": 175, "env_steps": 175}, rename="step_00000175"),
     r"state.json: env_steps 175 is not a multiple of the episode length 50"),
    (dict(state={"step": 300, "env_steps": 300, "episodes": 6}, rename="step_00000300"),
     r"state.json: env_steps 300 is not between 1 and 299"),
    (dict(state={"step": 150, "env_steps": 150, "episodes": 3}, rename="step_00000150"),
     r"agent.pt: env_steps 200 disagrees with .*state.json's env_steps 150"),
    (dict(state={"step": 150, "env_steps": 150, "episodes": 3}, rename="step_00000150", agent_steps=150),
     r"state.json: episodes 3 disagrees with .*buffers.npz, which holds 4 real episodes"),
    (dict(arrays=_extra_episode), r"state.json: episodes 4 disagrees with .*buffers.npz, which holds 5 real"),
    (dict(arrays=_cut_episode), r"buffers.npz: ep0_obs is float32 of shape \(50, 17\), expected float32 of shape "
                                r"\(51, 17\)"),
    (dict(arrays=_set("real_ptr_size", [250, 250])),
     r"state.json: env_steps 200 disagrees with .*buffers.npz, whose real replay buffer holds 250 transitions"),
    (dict(arrays=_set("real_ptr_size", [-1, 200])), r"buffers.npz: real_ptr_size \(-1, 200\) is no position"),
    (dict(arrays=_set("real_ptr_size", [200, 301])), r"buffers.npz: real_ptr_size \(200, 301\) is no position"),
    (dict(arrays=_pad_real), r"buffers.npz: the real replay buffer has 400 slots, not the run's env_steps 300"),
    (dict(arrays=_set("model_ptr_size", [0, 1])), r"buffers.npz: the model replay buffer \(1 of 1 slots\) is not"),
], ids=["steps-above", "steps-huge", "steps-below", "steps-negative", "imagined-negative", "imagined-model-free",
        "episodes-more", "episodes-fewer", "episodes-negative", "step-lowered", "step-huge", "step-mid-episode",
        "step-final", "agent-steps", "buffer-episodes", "extra-episode", "cut-episode", "real-size", "real-ptr",
        "real-overfull", "real-capacity", "model-size"])
def test_edited_and_re_signed_checkpoint_fields_are_one_line(copy, edit, message):
    folder = _edit(copy, **edit)
    for _ in range(2):  # nothing was taken apart: the same message again
        with pytest.raises(UserInputError, match=message) as e:
            Adapter(TINY, copy, resume=True, **QUIET)
        assert "\n" not in str(e.value) and "restore the run folder from a backup" in str(e.value)
    assert folder.is_dir() and (folder / "agent.pt").is_file()  # the checkpoint is kept for the user to repair


def test_a_re_signed_state_json_with_consistent_fields_still_resumes(straight, copy):
    _edit(copy, state={"episodes": 4})  # rewritten as it was, every digest recorded again
    resumed = Adapter(TINY, copy, resume=True, **QUIET)
    assert resumed.step == 200 and resumed.run() == straight[1]


@pytest.mark.parametrize("edit,message", [
    ({"env_steps": 299}, r"state.json: env_steps 299 disagrees with the checkpoint's step 300"),
    ({"imagined": 5}, r"state.json: imagined 5 is not 0"),
    ({"result": "env_steps"}, r"state.json: the result's env_steps 299 disagrees with env_steps 300"),
    ({"result": "imagined"}, r"state.json: the result's imagined 299 disagrees with imagined 0"),
])
def test_an_edited_final_checkpoint_is_one_line(straight, tmp_path, edit, message):
    run = Path(shutil.copytree(straight[0], tmp_path / "run"))
    state = json.loads((_latest(run) / "state.json").read_text())
    if "result" in edit:
        edit = {"result": {**state["result"], edit["result"]: 299}}
    _edit(run, state=edit)
    with pytest.raises(UserInputError, match=message) as e:
        Adapter(TINY, run, resume=True, **QUIET)
    assert "\n" not in str(e.value)


def test_an_edited_step_is_one_line_on_the_command_line(copy):
    _edit(copy, state={"env_steps": 1000})  # this one finished "after 1000 env steps" with a KeyError traceback
    sets = [a for k in ("learning_starts", "eval_every", "eval_episodes", "sac_hidden", "batch_size",
                        "checkpoint_every", "rollout_batch", "retain_rounds", "updates_per_step")
            for a in ("--set", f"{k}={getattr(TINY, k)}")]
    r = subprocess.run([sys.executable, "-m", "mrcom_train.cli", "adapt", "--model-free", "--out", str(copy),
                        "--resume", "--no-progress", "--domain", "cheetah", "--env-steps", "300", "--episode-length",
                        "50", "--seed", "3", *sets], capture_output=True, text=True, env=ENV, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "state.json: env_steps 1000 disagrees" in lines[0], r.stderr


# ------------------------------------------------------------------------------ cause: finished runs
def test_a_finished_run_rewrites_a_missing_result_and_refuses_a_different_one(straight, tmp_path):
    run = Path(shutil.copytree(straight[0], tmp_path / "run"))
    (run / "result.json").unlink()
    (run / "agent.pt").unlink()
    with Adapter(TINY, run, resume=True, **QUIET) as adapter:
        assert adapter.run() == straight[1]
    assert json.loads((run / "result.json").read_text()) == straight[1]
    assert _same(dict(load_actor(run / "agent.pt").state_dict()), straight[2])
    (run / "result.json").write_text(json.dumps({**straight[1], "normalized_return": 99.0}))
    with pytest.raises(UserInputError, match="result.json differs from the result in the final checkpoint"):
        Adapter(TINY, run, resume=True, **QUIET)
    (run / "result.json").write_text("{")
    with pytest.raises(UserInputError, match="result.json is not valid JSON"):
        Adapter(TINY, run, resume=True, **QUIET)


# ------------------------------------------------------------------------------ cause: two processes
def test_the_run_folder_is_locked_while_adapting(tmp_path, monkeypatch):
    run = tmp_path / "run"
    with folder_lock(run, "mrcom adapt"):
        with pytest.raises(FolderLocked, match=rf"`mrcom adapt` \(PID {os.getpid()}\)"):
            Adapter(TINY, run, **QUIET)
    adapter = Adapter(TINY, run, **QUIET)  # the lock file alone is no content: no --resume needed
    with pytest.raises(FolderLocked):  # held from the constructor on…
        Adapter(TINY, run, resume=True, **QUIET)
    _interrupt_at(adapter, monkeypatch, 120)
    with pytest.raises(KeyboardInterrupt):
        adapter.run()
    with folder_lock(run, "test"):  # …and released by a Ctrl-C
        pass
    assert (run / LOCK_NAME).exists()
    with pytest.raises(UserInputError, match="not empty; pass --resume"):
        Adapter(TINY, run, **QUIET)
    with Adapter(TINY, run, resume=True, **QUIET) as adapter:
        assert adapter.step == 100
    with folder_lock(run, "test"):  # released by close()
        pass


# ------------------------------------------------------------------------------ cause: bad numbers
def test_a_negative_seed_or_a_non_integer_is_refused():
    with pytest.raises(UserInputError, match="seed must be an integer >= 0, got -1"):
        AdaptConfig(seed=-1)
    with pytest.raises(UserInputError, match="seed must be an integer <= "):
        AdaptConfig(seed=2**40)
    with pytest.raises(UserInputError, match="env_steps must be an integer >= 1, got 2.5"):
        AdaptConfig(env_steps=2.5)
    with pytest.raises(UserInputError, match="real_ratio must be a finite number"):
        AdaptConfig(real_ratio=float("nan"))


def test_replay_buffers_larger_than_memory_are_refused_up_front(tmp_path):
    config = AdaptConfig(**{**TINY.__dict__, "env_steps": 10_000_000_000_000})
    with pytest.raises(UserInputError, match=r"needs at least .* of memory available; lower env_steps"):
        Adapter(config, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value", [("sac_hidden", 10**9), ("batch_size", 10**12)])
def test_networks_and_batches_larger_than_memory_are_refused_before_any_env_step(tmp_path, monkeypatch, field,
                                                                                 value):
    import mrcom_train.rl.adapt as adapt

    def no_env(*args, **kwargs):
        raise AssertionError("an env was built before the memory check")

    monkeypatch.setattr(adapt, "ScenarioEnv", no_env)
    with pytest.raises(UserInputError, match=rf"at {field}={value}, .* needs at least .* of memory available; "
                                             rf"lower {field}$") as e:
        Adapter(AdaptConfig(**{**TINY.__dict__, field: value}), tmp_path / "run", **QUIET)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_the_memory_estimate_counts_the_real_networks_and_passes_ordinary_configs():
    for hidden, layers in ((32, 2), (7, 1), (5, 3)):
        agent = SAC(17, 6, SACConfig(hidden_dim=hidden, hidden_layers=layers))
        assert parameter_counts(17, 6, hidden, layers) == tuple(
            sum(p.numel() for p in net.parameters()) for net in (agent.actor, agent.critic))
    for config in (AdaptConfig(), AdaptConfig(use_model=False), AdaptConfig(domain="walker"), TINY):
        nbytes, what, fix = config.memory_request(24, 6)  # the unified spaces: the largest dims there are
        assert nbytes < 256 * 2**20 and what.startswith(f"adapting for {config.env_steps} env steps"), what
    parts = {fix: nbytes for nbytes, _, fix in AdaptConfig().memory_parts(24, 6)}
    assert set(parts) == {"env_steps (--env-steps), rollout_batch or retain_rounds", "sac_hidden", "batch_size",
                          "rollout_batch"}
    bigger = {fix: nbytes for nbytes, _, fix in AdaptConfig(sac_hidden=512, batch_size=512).memory_parts(24, 6)}
    assert bigger["sac_hidden"] > 3.5 * parts["sac_hidden"] and bigger["batch_size"] > 2 * parts["batch_size"]


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["--env-steps", "10000000000000"], "lower env_steps (--env-steps)"),
    (["--set", "sac_hidden=1000000000"], "the SAC networks at sac_hidden=1000000000"),
    (["--set", "batch_size=1000000000000"], "a SAC update at batch_size=1000000000000"),
])
def test_adapt_cli_refuses_bad_numbers_in_one_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "mrcom_train.cli", "adapt", "--model-free", "--out",
                        str(tmp_path / "run"), *args], capture_output=True, text=True, env=ENV, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr


# ------------------------------------------------------------------------------ cause: garbage --policy
class _Foreign:
    pass


@pytest.mark.parametrize("kind", ["random", "zip", "foreign pickle"])
def test_a_garbage_policy_file_is_one_line_without_unsafe_advice(tmp_path, kind):
    path = tmp_path / "policy.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.txt", "hello")
    else:  # a real torch.save file whose pickle needs a class: PyTorch advises weights_only=False
        torch.save({"agent": _Foreign()}, path)
    with pytest.raises(UserInputError) as e:
        load_actor(path)
    assert str(e.value) == f"cannot read policy checkpoint {path}: not a PyTorch checkpoint saved by mrcom"
    with pytest.raises(UserInputError, match="not found"):
        load_actor(tmp_path / "none.pt")
    good = tmp_path / "good.pt"
    torch.save({"agent": SAC(5, 2).state_dict()}, good)
    assert load_actor(good).obs_dim == 5


def test_a_model_free_run_resumes_whatever_its_imagination_settings_but_a_model_run_does_not(tmp_path):
    """The resume check compares the fields a run reads: a model-free run never reads the imagination settings, so
    a budget that changes them (say the real ratio of the model arms) still resumes its finished SAC cells."""
    from mrcom_train.rl.adapt_checkpoint import check_config
    from mrcom_train.rl.adapt_config import IMAGINATION_FIELDS

    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(TINY)))
    changed = dataclasses.replace(TINY, real_ratio=0.5, rollout_batch=99, refit_every=7)
    check_config(tmp_path, changed)
    assert set(TINY.unused_fields()) == set(IMAGINATION_FIELDS) and "real_ratio" in IMAGINATION_FIELDS
    with pytest.raises(UserInputError, match="ran with batch_size=32, now 64"):  # a field SAC reads
        check_config(tmp_path, dataclasses.replace(TINY, batch_size=64))
    model = dataclasses.replace(TINY, use_model=True)
    assert model.unused_fields() == ()
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(model)))
    with pytest.raises(UserInputError, match="ran with real_ratio=0.05, now 0.5"):
        check_config(tmp_path, dataclasses.replace(model, real_ratio=0.5))


def test_a_checkpoint_of_an_older_format_is_refused_in_one_line(copy):
    _edit(copy, {"version": 1})
    with pytest.raises(UserInputError, match="format version 1; this mrcom reads version 2"):
        Adapter(TINY, copy, resume=True, **QUIET)
