"""The C++ examples build (CMake) and reproduce the Python runtime's rollout from the same file (with the
ensemble's per-step disagreement where the export has an ensemble)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXPORT_HORIZON as H
from conftest import export_model_for_tests, prompt_for, rollout_inputs

from mrcom_export.bundle import read_bundle, write_bundle
from mrcom_export.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1] / "cpp_examples"
JOBS = str(os.cpu_count() or 2)


def _need(*tools: str) -> None:
    """Skip (one line) where a tool the C++ examples need is missing; fail in CI (CI=true), which must run them."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        why = f"no {', '.join(missing)} on PATH: the C++ examples are not built (on Debian: apt-get install cmake g++)"
        pytest.fail(why) if os.environ.get("CI") == "true" else pytest.skip(why)


def _build(source: Path, build: Path, *defines: str) -> None:
    _need("cmake", "c++")
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *defines],
                   check=True, capture_output=True, text=True)
    r = subprocess.run(["cmake", "--build", str(build), "-j", JOBS], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _case(out, model, work, T=None):
    """Input bundle (a prompt of T steps, noise, actions) in ``work`` and the Python runtime's rollout of it, with
    the ensemble's ``disagreement`` (B, H) before each step where the export has one."""
    B = 6
    prompt = prompt_for(model, B, T=T, seed=4)
    reset_noise, noise, actions = rollout_inputs(model, prompt, B, H, seed=9)
    arrays = {"prompt_obs": prompt[0], "prompt_act": prompt[1], "prompt_rew": prompt[2], "actions": actions,
              **{f"reset_noise_{k}": v for k, v in reset_noise.items()}, **{f"noise_{k}": v for k, v in noise.items()}}
    write_bundle(work / "input.mrcb", arrays)
    rt = Runtime(out)
    rt.reset(*prompt, noise={"u": arrays["reset_noise_u"], "h": arrays["reset_noise_h"]})
    expected = rt.rollout(arrays["actions"], H, fused=False, noise={"u": arrays["noise_u"], "h": arrays["noise_h"]})
    if rt.has_ensemble:  # the same rollout step by step, the ensemble read at each step's state and action first
        rt.reset(*prompt, noise={"u": arrays["reset_noise_u"], "h": arrays["reset_noise_h"]})
        disagreement, obs = [], []
        for t in range(H):
            disagreement.append(rt.uncertainty(actions[:, t])["disagreement"])
            obs.append(rt.step(actions[:, t], noise={"u": arrays["noise_u"][:, t], "h": arrays["noise_h"][:, t]})[0])
        assert np.abs(np.stack(obs, 1) - expected["obs"]).max() <= 1e-5  # the same rollout as the reference
        expected["disagreement"] = np.stack(disagreement, 1)
    return out, work, expected


@pytest.fixture(scope="module")
def case(exported, tmp_path_factory):
    out, model, _ = exported
    return _case(out, model, tmp_path_factory.mktemp("cpp"))


@pytest.fixture(scope="module")
def ort_binary(tmp_path_factory) -> Path:
    """The ONNX Runtime example, built once for this module."""
    _need("cmake", "c++", "apt-get", "dpkg-deb")  # fetch_deps.sh downloads the headers from Debian
    deps = tmp_path_factory.mktemp("ortdeps")
    r = subprocess.run(["bash", str(ROOT / "onnxruntime_rollout" / "fetch_deps.sh"), str(deps), sys.executable],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    build = tmp_path_factory.mktemp("ort-build")
    _build(ROOT / "onnxruntime_rollout", build, f"-DONNXRUNTIME_INCLUDE_DIR={deps / 'include'}",
           f"-DONNXRUNTIME_LIBRARY={deps / 'lib' / 'libonnxruntime.so'}")
    return build / "mrcom_ort_rollout"


@pytest.fixture(scope="module")
def libtorch_binary(tmp_path_factory) -> Path:
    """The LibTorch example, built once for this module."""
    build = tmp_path_factory.mktemp("libtorch-build")
    _build(ROOT / "libtorch_rollout", build, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}")
    return build / "mrcom_libtorch_rollout"


def _run(binary: Path, out: Path, work: Path, *options: str) -> dict:
    """The example's output bundle; its summary line names the mean disagreement iff the bundle holds it."""
    result = work / f"{binary.name}.mrcb"
    run = subprocess.run([str(binary), str(out), str(work / "input.mrcb"), str(result), *options],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "rollouts x 3 steps" in run.stdout and ("(fused)" in run.stdout) == ("--fused" in options)
    bundle = read_bundle(result)
    assert ("mean disagreement" in run.stdout) == ("disagreement" in bundle)
    return bundle


def _check(result: dict, expected: dict, fused: bool = False) -> None:
    """Observations, rewards and (per step, with an ensemble; the fused loop has none) the disagreement."""
    assert result["obs"].shape == expected["obs"].shape and result["reward"].shape == expected["reward"].shape
    assert np.abs(result["obs"] - expected["obs"]).max() <= 1e-4
    assert np.abs(result["reward"] - expected["reward"]).max() <= 1e-4
    assert ("disagreement" in result) == ("disagreement" in expected and not fused)
    if "disagreement" in result:
        assert result["disagreement"].shape == expected["disagreement"].shape == expected["reward"].shape
        assert np.abs(result["disagreement"] - expected["disagreement"]).max() <= 1e-4


def test_bundle_round_trip(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar_row": np.ones(1, np.float32)}
    write_bundle(tmp_path / "x.mrcb", arrays)
    back = read_bundle(tmp_path / "x.mrcb")
    assert back.keys() == arrays.keys() and all(np.array_equal(back[k], arrays[k]) for k in arrays)


@pytest.mark.parametrize("options", [(), ("--fused", "--repeat", "3", "--threads", "1")])
def test_onnxruntime_cpp_example_matches_python(case, ort_binary, options):
    """H `step` calls, or one call of the `rollout` Loop (timed 3 times from the same primed state)."""
    out, work, expected = case
    assert (expected["disagreement"] > 0).all()  # the tiny model's ensemble members part: not a trivial match
    _check(_run(ort_binary, out, work, *options), expected, fused="--fused" in options)


def test_cpp_examples_refuse_an_unknown_option(case, ort_binary):
    out, work, _ = case
    run = subprocess.run([str(ort_binary), str(out), str(work / "input.mrcb"), str(work / "x.mrcb"), "--fast"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "unknown option --fast" in run.stderr


@pytest.mark.parametrize("model_type", ["rssm_ctx", "mamba"])
def test_onnxruntime_cpp_example_runs_the_new_baselines(model_type, ort_binary, tmp_path):
    """The paper's DreamerV3 (context-augmented RSSM) and the MAMBA-style model through the same C++ loop; the
    MAMBA prompt is its whole 16-step history (its GRU state travels in the key/value slots)."""
    from mrcom_core.registry import build_model, model_config
    from mrcom_export.exporter import export_model

    torch.manual_seed(0)
    extra = {"history_len": 16} if model_type == "mamba" else {}
    model = build_model(model_config("tiny", overrides={"model_type": model_type, **extra}, obs_dim=10, act_dim=3,
                                     num_scenarios=2)).eval()
    export_model(model, tmp_path / "export", formats=("onnx",), horizon=H, blocks=False, log=lambda s: None)
    work = tmp_path / "work"
    work.mkdir()
    out, work, expected = _case(tmp_path / "export", model, work, T=model.history_len)
    _check(_run(ort_binary, out, work), expected)


def test_libtorch_cpp_example_matches_python(case, libtorch_binary):
    out, work, expected = case
    for options in ((), ("--fused", "--repeat", "2")):  # H `step.pt` calls; the scripted `rollout.pt` loop
        _check(_run(libtorch_binary, out, work, *options), expected, fused=bool(options))


def test_cpp_examples_without_an_ensemble_write_no_disagreement(ort_binary, libtorch_binary, tmp_path):
    """A model built with ensemble=0 exports no ``ensemble`` graph: both examples write obs and reward only."""
    from mrcom_export.exporter import export_model

    model = export_model_for_tests(ensemble=0, ensemble_elites=0)
    manifest = export_model(model, tmp_path / "export", formats=("onnx", "torchscript"), horizon=H, blocks=False,
                            log=lambda s: None)
    assert manifest["ensemble"] is None and "ensemble" not in manifest["graphs"]
    work = tmp_path / "work"
    work.mkdir()
    out, work, expected = _case(tmp_path / "export", model, work)
    assert "disagreement" not in expected
    for binary in (ort_binary, libtorch_binary):
        result = _run(binary, out, work)
        assert result.keys() == {"obs", "reward"}
        _check(result, expected)
