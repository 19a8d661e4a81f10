"""Hardening of the export side: an export folder is trusted only as far as its manifest's checksums reach and
never beyond its own folder; an export is published whole or not at all, by one process at a time; every
runtime input (providers, batch, horizon, noise, a policy's actions) is checked before ONNX Runtime sees it,
each failure one ExportError line naming what to fix."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import EXPORT_HORIZON as H
from conftest import collect_train_export, write_manifest
from conftest import export_model_for_tests as _model
from conftest import prompt_for as _prompt

from mrcom_core.io.files import sha256
from mrcom_core.io.locks import FolderLocked, folder_lock
from mrcom_export import exporter
from mrcom_export import graphs as G
from mrcom_export.exporter import export_model
from mrcom_export.manifest import ExportError, read_manifest
from mrcom_export.runtime import Runtime

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}
QUIET = dict(formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)


def _copy(exported, tmp_path) -> tuple[Path, dict]:
    """A private copy of the shared export (never corrupt the fixture itself) and its manifest."""
    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def _write(copy: Path, manifest: dict) -> None:
    write_manifest(copy, manifest)  # with its own digest recomputed: the checks below must not rely on it


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(call, match: str) -> str:
    with pytest.raises(ExportError, match=match) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------- manifest: what is trusted
@pytest.mark.parametrize("verify", [True, False])
def test_a_graph_no_checksum_covers_is_refused(exported, tmp_path, verify):
    copy, manifest = _copy(exported, tmp_path)
    with open(copy / "step.onnx", "ab") as f:  # the weights change and the checksum entry is dropped
        f.write(b"\0")
    del manifest["files"]["step.onnx"]
    _write(copy, manifest)
    _refused(lambda: Runtime(copy, verify=verify), "graph file step.onnx is not covered by the manifest's checksums")


@pytest.mark.parametrize("verify", [True, False])
def test_a_graph_path_outside_the_folder_is_refused(exported, tmp_path, verify):
    copy, manifest = _copy(exported, tmp_path)
    shutil.copy(copy / "step.onnx", tmp_path / "outside.onnx")  # a loadable graph, with its right digest
    manifest["graphs"]["step"]["onnx"] = "../outside.onnx"
    manifest["files"]["../outside.onnx"] = sha256(tmp_path / "outside.onnx")
    _write(copy, manifest)
    _refused(lambda: Runtime(copy, verify=verify), r"'\.\./outside\.onnx', which is not a file inside")


@pytest.mark.skipif(not Path("/etc/passwd").is_file(), reason="needs /etc/passwd")
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("verify", [True, False])
def test_a_files_entry_outside_the_folder_is_refused_even_with_the_right_digest(exported, tmp_path, absolute,
                                                                                verify):
    copy, manifest = _copy(exported, tmp_path)
    name = "/etc/passwd" if absolute else os.path.relpath("/etc/passwd", copy)  # ../../…/etc/passwd
    manifest["files"][name] = sha256("/etc/passwd")
    _write(copy, manifest)
    _refused(lambda: read_manifest(copy, verify=verify), "not a file inside")


@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("files"), "field 'files' is missing"),
    (lambda m: m.pop("latent"), "field 'latent' is missing"),
    (lambda m: m["latent"].update(u="4"), "'latent': field 'u' is a str, expected int"),
    (lambda m: m.update(context_reward=1), "field 'context_reward' is a int, expected bool"),
    (lambda m: m.update(rollout_horizon=0), "field 'rollout_horizon' is 0, expected >= 1"),
    (lambda m: m["graphs"].update(step="step.onnx"), "graph 'step' is a str"),
    (lambda m: m["graphs"]["step"].pop("onnx"), "graph 'step' has no onnx file name"),
    (lambda m: m["files"].update({"step.onnx": "abc"}), "'step.onnx' is not a SHA-256"),
    (lambda m: m.update(obs_std=[1.0]), "field 'obs_std' must hold obs_dim=10 finite numbers"),
    (lambda m: m.update(policy={"obs_dim": 8}), "'policy': field 'act_dim' is missing"),
])
def test_a_damaged_manifest_is_one_line_naming_the_field(exported, tmp_path, change, message):
    copy, manifest = _copy(exported, tmp_path)
    change(manifest)
    _write(copy, manifest)
    text = _refused(lambda: Runtime(copy), message)
    assert str(copy / "manifest.json") in text


def test_an_unloadable_graph_is_an_export_error(exported, tmp_path):
    copy, manifest = _copy(exported, tmp_path)
    (copy / "prime.onnx").write_bytes(b"not an ONNX model at all")
    manifest["files"]["prime.onnx"] = sha256(copy / "prime.onnx")  # the checksum was rewritten too
    _write(copy, manifest)
    _refused(lambda: Runtime(copy), r"prime\.onnx is not a loadable ONNX graph: ")
    shutil.copy(exported[0] / "prime.onnx", copy / "prime.onnx")
    (copy / "step.onnx").write_bytes(b"\x08garbage")
    rt = Runtime(copy, verify=False)  # no checksums: the session is the first to see the file
    rt.reset(*_prompt(exported[1], 2))
    _refused(lambda: rt.step(np.zeros((2, 3), np.float32)), r"step\.onnx is not a loadable ONNX graph: ")


# ------------------------------------------------------------------------------- exporting: whole or nothing
def test_export_refuses_a_non_empty_folder_unless_forced(exported, tmp_path):
    out = tmp_path / "exp"
    shutil.copytree(exported[0], out)
    before = _snapshot(out)
    model = _model()
    _refused(lambda: export_model(model, out, **QUIET), f"export folder {out} is not empty; pass --force")
    assert _snapshot(out) == before
    (tmp_path / ".tmp-exp-424242").mkdir()  # what a killed export of this folder left behind
    (tmp_path / ".tmp-exp-424242" / "step.onnx").write_bytes(b"half")
    (tmp_path / ".tmp-exp-keep-1").mkdir()  # another folder's (exp-keep) export in progress: not ours
    manifest = export_model(model, out, force=True, **QUIET)
    assert manifest["rollout_horizon"] == 2 and read_manifest(out)["files"] == manifest["files"]
    assert {p.name for p in out.iterdir()} == {"manifest.json", *manifest["files"]}  # nothing of the old one
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")) == [".tmp-exp-keep-1"]
    rt = Runtime(out)  # the manifest's relative names still hold after the swap
    rt.reset(*_prompt(model, 2))
    assert rt.rollout(np.zeros((2, 2, 3), np.float32))["obs"].shape == (2, 2, 10)


def test_a_failed_export_leaves_the_previous_export_untouched(exported, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    shutil.copytree(exported[0], out)
    before = _snapshot(out)
    written = []

    def crash_on_second_graph(module, inputs, spec):
        name = next(n for n, g in G.GRAPHS.items() if g.spec == spec)
        written.append(name)
        if len(written) == 2:
            raise RuntimeError("simulated crash while exporting")
        return onnx.load(str(exported[0] / f"{name}.onnx"))  # the same model's graph: passes checker and parity

    monkeypatch.setattr(exporter, "_export_onnx", crash_on_second_graph)
    _refused(lambda: export_model(_model(), out, force=True, **QUIET), "graph 'observe' failed: simulated crash")
    assert written == ["prime", "observe"]
    assert _snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    Runtime(out)


def test_a_second_export_into_a_locked_folder_names_the_holder(tmp_path):
    out = tmp_path / "exp"
    with folder_lock(out, "mrcom export", beside=True):
        with pytest.raises(FolderLocked, match=f"in use by `mrcom export` \\(PID {os.getpid()}\\)"):
            export_model(_model(), out, **QUIET)
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    _refused(lambda: export_model(_model(), tmp_path / "file", **QUIET), "is a file, not a folder")


# ------------------------------------------------------------------------------- runtime inputs
def test_an_unavailable_provider_is_refused_before_any_session(exported, capfd):
    out, _, _ = exported
    text = _refused(lambda: Runtime(out, providers=["TPUExecutionProvider"]),
                    "provider 'TPUExecutionProvider' is not available here; available: .*CPUExecutionProvider")
    assert "TPUExecutionProvider" in text and capfd.readouterr().err == ""  # no ONNX Runtime banner
    rt = Runtime(out, providers=["CPUExecutionProvider"])
    assert rt.providers == rt.session("step").get_providers() == ["CPUExecutionProvider"] and rt.device == "cpu"
    assert Runtime(out).providers == Runtime(out).session("prime").get_providers()


@pytest.mark.parametrize("batch", [-3, 0, 2.5, True, "2"])
def test_reset_refuses_a_batch_that_is_not_a_positive_integer(exported, batch):
    out, model, _ = exported
    obs, act, rew = _prompt(model, 1)
    rt = Runtime(out)
    _refused(lambda: rt.reset(obs[0], act[0], rew[0], batch=batch), f"batch must be an integer >= 1, got {batch!r}")
    assert rt.reset(obs[0], act[0], rew[0], batch=np.int64(2)).shape == (2, 10)


def test_wrong_shape_or_nan_noise_is_refused_in_reset_step_and_rollout(exported):
    out, model, _ = exported
    B, lat = 2, Runtime(out).latent
    obs, act, rew = _prompt(model, B)
    n = act.shape[1] - model.config.context_len + 1
    rt = Runtime(out)

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    def nans(*shape):
        return np.full(shape, np.nan, np.float32)

    good = {"u": zeros(B, n, lat["u"]), "h": zeros(B, n, lat["h"])}
    _refused(lambda: rt.reset(obs, act, rew, noise={**good, "u": good["u"][:, :1]}),
             rf"noise\['u'\] must have shape \(2, {n}, 4\), got \(2, 1, 4\)")
    _refused(lambda: rt.reset(obs, act, rew, noise={**good, "h": nans(B, n, lat["h"])}), r"noise\['h'\] contains NaN")
    _refused(lambda: rt.reset(obs, act, rew, noise={**good, "U": good["u"]}), r"unknown key\(s\) \['U'\]")
    rt.reset(obs, act, rew, noise=good)
    a = zeros(B, 3)
    _refused(lambda: rt.step(a, {"u": zeros(B, 5), "h": zeros(B, lat["h"])}), r"noise\['u'\] must have shape \(2, 4\)")
    _refused(lambda: rt.step(a, {"u": nans(B, lat["u"])}), r"noise\['u'\] contains NaN")
    actions = zeros(B, H, 3)
    for fused in (True, False):
        _refused(lambda fused=fused: rt.rollout(actions, H, fused=fused, noise={"u": zeros(B, H + 1, lat["u"])}),
                 rf"noise\['u'\] must have shape \(2, {H}, 4\)")
        _refused(lambda fused=fused: rt.rollout(actions, H, fused=fused, noise={"h": nans(B, H, lat["h"])}),
                 r"noise\['h'\] contains NaN")
    _refused(lambda: rt.rollout("exported", noise={"action": zeros(B, H, 3)}),
             rf"noise\['action'\] must have shape \(2, {H}, 2\)")
    _refused(lambda: rt.rollout("exported", noise={"action": nans(B, H, 2)}), r"noise\['action'\] contains NaN")
    _refused(lambda: rt.rollout(actions, noise={"action": zeros(B, H, 2)}), r"unknown key\(s\) \['action'\]")
    out_obs = rt.rollout(actions, noise={"u": zeros(B, H, lat["u"])})["obs"]  # a subset of keys is fine
    assert out_obs.shape == (B, H, 10) and np.isfinite(out_obs).all()


@pytest.mark.parametrize("horizon", [0, -1, 2.5, True])
def test_rollout_refuses_a_horizon_that_is_not_a_positive_integer(exported, horizon):
    out, model, _ = exported
    rt = Runtime(out)
    rt.reset(*_prompt(model, 2))
    _refused(lambda: rt.rollout(lambda o: np.zeros((2, 3), np.float32), horizon),
             f"horizon must be an integer >= 1, got {horizon!r}")


def test_a_callable_policy_s_actions_are_checked(exported):
    out, model, _ = exported
    rt = Runtime(out)
    rt.reset(*_prompt(model, 2))
    _refused(lambda: rt.rollout(lambda o: np.zeros((2, 4)), 2),
             r"the actions the policy returned at step 0 must have shape \(2, 3\), got \(2, 4\)")
    _refused(lambda: rt.rollout(lambda o: np.full((2, 3), np.nan), 2), "returned at step 0 contains NaN")


@pytest.mark.parametrize("args,message", [
    (["--provider", "TPUExecutionProvider"], "provider 'TPUExecutionProvider' is not available here; available: "),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_rollout_cli_bad_runtime_input_exit_2(exported, args, message):
    r = subprocess.run([sys.executable, "-m", "mrcom_train.cli", "rollout", str(exported[0]), *args],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


# ------------------------------------------------------------------------- manifest fields against the graphs
@pytest.mark.parametrize("field,value", [("context_len", 9), ("history_len", 10**12), ("obs_dim", 11)])
def test_a_manifest_edited_without_its_digest_is_tampering(exported, tmp_path, field, value):
    copy, manifest = _copy(exported, tmp_path)
    (copy / "manifest.json").write_text(json.dumps({**manifest, field: value}))  # manifest_sha256 left as it was
    _refused(lambda: Runtime(copy), "its fields changed after the export was written")
    _refused(lambda: read_manifest(copy), "manifest_sha256 does not match")


@pytest.mark.parametrize("edit,message", [
    (lambda m: {**m, "context_len": m["context_len"] - 1},
     r"graph '(prime|context_full)' input 'obs' .* field 'context_len'"),
    (lambda m: {**m, "latent": {**m["latent"], "u": m["latent"]["u"] + 1}}, r"'u' .* field 'latent\.u'"),
    (lambda m: {**m, "act_dim": 4}, r"'action' has shape \['batch', 8, 3\], .* field 'act_dim'"),
    (lambda m: {**m, "kv_shape": [1, "batch", 2, 8, 9]}, r"'keys' .* field 'kv_shape'"),
    (lambda m: {**m, "kv_shape": [1, 2, 8, 8]}, r"field 'kv_shape' is \[1, 2, 8, 8\]"),
    (lambda m: {**m, "history_len": 2}, r"field 'history_len' is 2, expected >= context_len=8"),
    (lambda m: {k: v for k, v in m.items() if k != "history_len"}, "field 'history_len' is missing"),
])
@pytest.mark.parametrize("verify", [True, False])
def test_manifest_fields_that_disagree_with_the_graphs_are_one_line(exported, tmp_path, edit, message, verify):
    copy, manifest = _copy(exported, tmp_path)
    _write(copy, edit(manifest))  # its own digest recomputed, as anyone may
    _refused(lambda: Runtime(copy, verify=verify), message)


def test_graphs_swapped_between_names_are_refused_when_opened(exported, tmp_path):
    copy, manifest = _copy(exported, tmp_path)
    graphs = manifest["graphs"]
    graphs["step"]["onnx"], graphs["observe"]["onnx"] = graphs["observe"]["onnx"], graphs["step"]["onnx"]
    _write(copy, manifest)
    rt = Runtime(copy)
    _refused(lambda: rt.reset(*_prompt(exported[1], 2)), r"observe\.onnx\b.*does not match manifest graph 'step'|"
                                                         r"step\.onnx does not match manifest graph 'observe'")


def test_another_model_s_graphs_under_this_manifest_are_refused(exported, tmp_path):
    copy, manifest = _copy(exported, tmp_path)
    other = tmp_path / "other"
    export_model(_model(u_dim=6), other, **QUIET)  # same obs/action dims, another latent size
    for name in ("prime", "step"):
        shutil.copy(other / f"{name}.onnx", copy / f"{name}.onnx")
        manifest["files"][f"{name}.onnx"] = sha256(copy / f"{name}.onnx")
    _write(copy, manifest)
    _refused(lambda: Runtime(copy), r"prime\.onnx does not match manifest graph 'prime': .*'noise_u'.* \['batch', 6\]"
                                    r".*manifest says float32 \['batch', 4\]")


# ------------------------------------------------------------------------- runtime API: types and sizes
@pytest.mark.parametrize("path", [123, None, 1.5, b"x"])
def test_the_runtime_refuses_an_export_dir_that_is_not_a_path(path):
    _refused(lambda: Runtime(path), "export_dir must be a path")


def test_complex_or_non_numeric_inputs_are_refused_not_truncated(exported):
    from mrcom_export.vector_env import ImaginedVectorEnv

    out, model, _ = exported
    obs, act, rew = _prompt(model, 2)
    rt = Runtime(out)
    _refused(lambda: rt.reset(obs.astype(np.complex64), act, rew), "prompt_obs must be a real float array .*complex")
    _refused(lambda: rt.reset(obs, [["a"] * 3] * 2, rew), "prompt_act must be a real float array")
    rt.reset(obs, act, rew)
    complex_actions = np.zeros((2, 3), np.complex128) + 1j
    _refused(lambda: rt.step(complex_actions), "actions must be a real float array .*complex128")
    _refused(lambda: rt.rollout(np.zeros((2, H, 3), np.complex64)), "actions must be a real float array")
    _refused(lambda: rt.rollout(lambda o: complex_actions, 2), "returned at step 0 must be a real float array")
    env = ImaginedVectorEnv(Runtime(out), 2, prompts=(obs, act, rew), horizon=H)
    env.reset(seed=0)
    _refused(lambda: env.step(complex_actions), "actions must be a real float array")
    assert rt.step(np.ones((2, 3), bool))[0].shape == (2, 10)  # booleans and integers are real numbers


def test_batches_and_horizons_that_cannot_fit_are_refused_before_allocating(exported):
    out, model, _ = exported
    obs, act, rew = _prompt(model, 1)
    rt = Runtime(out)
    _refused(lambda: rt.reset(obs[0], act[0], rew[0], batch=10**12), r"1000000000000 rollouts from prompts of \d+ "
                                                                     r"steps needs at least .* lower batch")
    rt.reset(obs[0], act[0], rew[0], batch=2)
    _refused(lambda: rt.rollout(lambda o: np.zeros((2, 3)), 10**12), "of 1000000000000 steps needs at least .* "
                                                                      "lower batch or horizon")
    assert rt.memory_needed(2, 5) < rt.memory_needed(2, 50) < rt.memory_needed(20, 50)


def test_an_export_horizon_whose_parity_checks_cannot_fit_is_refused(tmp_path):
    _refused(lambda: export_model(_model(), tmp_path / "exp", **{**QUIET, "horizon": 10**9}),
             r"parity checks of a 1000000000-step rollout needs at least .* lower --horizon")
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------- the same through the CLI
@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """A tiny dataset (episodes of 30 steps), a 1-update training run and its ONNX export, via the CLI."""
    return collect_train_export(tmp_path_factory.mktemp("cli"), episode_length=30, steps=1)


def _cli_refused(capsys, args, *match) -> None:
    from mrcom_train.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("mrcom: error: "), err
    for text in match:
        assert text in lines[0], lines[0]


def test_cli_sizes_that_cannot_fit_are_one_line(cli_export, capsys):
    export, run = cli_export / "export", cli_export / "run"
    _cli_refused(capsys, ["rollout", str(export), "--batch", "1000000000"], "1000000000 rollouts of 15 steps",
                 "lower --batch or --horizon")
    _cli_refused(capsys, ["rollout", str(export), "--horizon", "1000000000000"], "lower --batch or --horizon")
    _cli_refused(capsys, ["export", str(run), "--out", str(cli_export / "new"), "--horizon", "1000000000"],
                 "lower --horizon")
    assert not (cli_export / "new").exists()


@pytest.mark.parametrize("history,message", [(10**12, "prompts of 1000000000000 steps (the export's history_len)"),
                                             (500, "for prompts of the export's history_len=500 steps")])
def test_a_history_len_the_data_cannot_serve_names_history_len(cli_export, tmp_path, capsys, history, message):
    copy = tmp_path / "export"
    shutil.copytree(cli_export / "export", copy)
    write_manifest(copy, {**json.loads((copy / "manifest.json").read_text()), "history_len": history})
    _cli_refused(capsys, ["rollout", str(copy), "--batch", "2"], message)
