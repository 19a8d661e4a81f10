"""Every subcommand under every ``MUJOCO_GL`` a headless server may have set (the suite otherwise runs with
``disable``). With ``egl``, Mesa loads its own LLVM when dm_control is imported and a later ``import triton``
(which PyTorch does by itself when an optimizer is built) segfaulted: a CPU-only run must never import
Triton. A GL backend that cannot load at all must give one clear line, not a traceback."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _env(gl: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "MRCOM_KERNELS", "TRITON_INTERPRET")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    if gl is not None:
        env["MUJOCO_GL"] = gl
    return env


def _mrcom(gl: str | None, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrcom_train.cli", *map(str, args)], env=_env(gl),
                          capture_output=True, text=True, timeout=600)


def _gl_loads(gl: str) -> bool:
    """Whether dm_control starts at all with this backend on this machine (EGL needs Mesa's libEGL)."""
    return subprocess.run([sys.executable, "-c", "import dm_control.suite"], env=_env(gl),
                          capture_output=True, timeout=120).returncode == 0


def _ok_or_one_clear_line(r: subprocess.CompletedProcess, gl: str | None, loads: bool) -> None:
    assert r.returncode not in (-11, 139), f"segfault under MUJOCO_GL={gl}: {r.stderr[-2000:]}"
    if loads:
        assert r.returncode == 0, r.stderr[-3000:]
    else:
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and f"MUJOCO_GL={gl}" in lines[0], r.stderr[-3000:]


def test_every_subcommand_runs_under_egl(tmp_path):
    loads = _gl_loads("egl")
    data, run, exp = tmp_path / "data", tmp_path / "run", tmp_path / "export"
    # SAC behaviour policies in two worker processes: each builds an Adam optimizer after dm_control loaded EGL
    steps = [
        ("collect", "--domains", "hopper,cheetah", "-n", "1", "-k", "1", "--episode-length", "30", "--policy", "sac",
         "--sac-learning-starts", "10", "--sac-hidden", "16", "--workers", "2", "--out", data, "--no-progress"),
        ("info", data),
        ("splits", "t1-a5b20", "-n", "1"),
        ("models",),
        ("train", "--data", data, "--out", run, "--preset", "tiny", "--steps", "2", "--no-progress"),
        ("export", run, "--out", exp, "--horizon", "1", "--no-blocks", "--policy", data / "sac" / "s0000.pt"),
        ("rollout", exp, "--batch", "4", "--horizon", "1"),
        ("adapt", "--model", exp, "--domain", "hopper", "--env-steps", "40", "--episode-length", "20",
         "--set", "learning_starts=20", "--set", "model_rollout_every=10", "--set", "rollout_batch=4",
         "--set", "eval_every=40", "--set", "eval_episodes=1", "--set", "sac_hidden=16", "--set", "batch_size=8",
         "--out", tmp_path / "adapt", "--no-progress"),
        ("reproduce", "--table", "1", "--splits", "t2-a5", "--out", tmp_path / "repro"),  # bad input: exit 2
    ]
    for args in steps:
        r = _mrcom("egl", *args)
        if args[0] == "reproduce":
            assert r.returncode == 2 and "not part of table 1" in r.stderr, r.stderr[-3000:]
            continue
        _ok_or_one_clear_line(r, "egl", loads)
        if not loads:
            break


@pytest.mark.parametrize("gl", ["osmesa", None])
def test_train_and_splits_under_osmesa_or_unset(gl, tmp_path):
    data = tmp_path / "data"
    r = _mrcom("disable", "collect", "--domains", "hopper", "-n", "1", "-k", "1", "--episode-length", "20",
               "--out", data, "--no-progress")
    assert r.returncode == 0, r.stderr
    loads = True if gl is None else _gl_loads(gl)
    _ok_or_one_clear_line(_mrcom(gl, "splits"), gl, loads)
    _ok_or_one_clear_line(_mrcom(gl, "train", "--data", data, "--out", tmp_path / "run", "--preset", "tiny",
                                 "--steps", "1", "--no-progress"), gl, loads)


def test_triton_is_never_imported_on_a_cpu_only_run_under_egl():
    code = ("import sys, torch\n"
            "import mrcom_train.scenarios\n"  # settles Triton, then loads dm_control (and EGL)
            "torch.optim.Adam(torch.nn.Linear(2, 2).parameters())\n"  # imports torch._dynamo
            "print(sys.modules.get('triton', 'absent'))\n")
    r = subprocess.run([sys.executable, "-c", code], env=_env("egl"), capture_output=True, text=True, timeout=300)
    if not _gl_loads("egl"):
        pytest.skip("EGL does not load on this machine")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine imports Triton on purpose")
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr[-2000:]
