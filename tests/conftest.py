import logging
import os
import warnings

import pytest

os.environ.setdefault("MUJOCO_GL", "disable")  # no rendering in tests; silences glfw's display warning
if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per test worker: two 2-thread pools on 2 cores collapse
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
warnings.filterwarnings("ignore", module="glfw")
logging.getLogger("absl").setLevel(logging.ERROR)


def make_batch(cfg, batch=4, window=6, seed=0):
    """A random training batch in the sampler's layout for a model config (torch tensors); the context holds the
    model's history (m steps, more for a recurrent-history model)."""
    import torch

    from mrcom_core.registry import history_steps

    g = torch.Generator().manual_seed(seed)
    B, L, M, D, A = batch, window, history_steps(cfg), cfg.obs_dim, cfg.act_dim
    obs_mask = torch.ones(B, D)
    obs_mask[0, D - 2 :] = 0  # the first row is a scenario with padded dims
    return {
        "context_obs": torch.randn(B, M, D, generator=g) * obs_mask[:, None],
        "context_action": torch.rand(B, M, A, generator=g) * 2 - 1,
        "context_reward": torch.rand(B, M, generator=g),
        "obs": torch.randn(B, L + 1, D, generator=g) * obs_mask[:, None],
        "action": torch.rand(B, L, A, generator=g) * 2 - 1,
        "reward": torch.rand(B, L, generator=g),
        "obs_mask": obs_mask,
        "action_mask": torch.ones(B, A),
        "scenario": torch.arange(B) % cfg.num_scenarios,
    }


def make_noise(model, batch=4, window=6, seed=1):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in model.noise_shapes(batch, window).items()}


EXPORT_HORIZON = 3


def export_model_for_tests(**overrides):
    """A tiny world model with random weights and non-trivial observation statistics."""
    import torch

    from mrcom_core.registry import build_model, model_config

    torch.manual_seed(0)
    cfg = model_config("tiny", overrides=overrides, obs_dim=10, act_dim=3, num_scenarios=2)
    g = torch.Generator().manual_seed(1)
    return build_model(cfg, obs_mean=torch.randn(10, generator=g), obs_std=torch.rand(10, generator=g) + 0.5).eval()


def collect_train_export(root, episode_length: int, steps: int):
    """Through the CLI, into ``root``: a tiny cheetah dataset (one scenario, two episodes of ``episode_length``
    steps) in ``data``, a ``tiny`` training run of ``steps`` updates on it in ``run`` and its ONNX runtime
    graphs in ``export`` (whose manifest names the run). Returns ``root``."""
    from mrcom_train.cli import main

    main(["collect", "--domains", "cheetah", "-n", "1", "-k", "2", "--episode-length", str(episode_length), "--out",
          str(root / "data"), "--no-progress"])
    main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny", "--steps",
          str(steps), "--no-progress"])
    main(["export", str(root / "run"), "--out", str(root / "export"), "--horizon", "2", "--no-blocks"])
    return root


def mrcom_under_file_size_limit(limit: int, *args: str, cwd):
    """``mrcom ARGS`` in a child process that may not write a file past ``limit`` bytes (``ulimit -f``): Python
    ignores SIGXFSZ, so the write that crosses the limit fails with EFBIG, as a full disk fails with ENOSPC.
    Returns the ``subprocess.CompletedProcess``."""
    import os
    import resource
    import subprocess
    import sys

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "mrcom_train.cli", *args], preexec_fn=limit_file_size, cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "disable"}, timeout=300)


def kill_adapter_at(adapter, step: int) -> None:
    """Run ``adapter`` (a fresh :class:`~mrcom_train.rl.adapt.Adapter`) until its first evaluation at env step
    ``step`` or later, where a Ctrl-C stops it (its last checkpoint is what a resume continues from)."""
    original = type(adapter).evaluate

    def evaluate():
        if adapter.step >= step:
            raise KeyboardInterrupt
        return original(adapter)

    adapter.evaluate = evaluate
    with pytest.raises(KeyboardInterrupt):
        adapter.run()


def write_manifest(folder, manifest: dict) -> None:
    """Write an edited export manifest with its ``manifest_sha256`` recomputed, as anyone may (the edit is then
    not tampering but a manifest whose fields must still agree with the graphs)."""
    import json
    from pathlib import Path

    from mrcom_export.manifest import SELF_DIGEST, manifest_digest

    (Path(folder) / "manifest.json").write_text(json.dumps({**manifest, SELF_DIGEST: manifest_digest(manifest)}))


def prompt_for(model, B=4, T=None, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    c = model.config
    T = T or c.context_len + 3
    obs = rng.standard_normal((B, T + 1, c.obs_dim)).astype(np.float32)
    act = np.tanh(rng.standard_normal((B, T, c.act_dim))).astype(np.float32)
    rew = rng.random((B, T)).astype(np.float32)
    return obs, act, rew


def rollout_inputs(model, prompt, B, H, seed=3):
    """Seeded inputs for a runtime-vs-eager rollout from ``prompt``: posterior noise for the prompt's observed
    steps, latent noise for H imagined steps, and H actions (numpy float32)."""
    import numpy as np

    c, s = model.config, model.sizes
    rng = np.random.default_rng(seed)
    n_obs = prompt[1].shape[1] - c.context_len + 1
    reset_noise = {"u": rng.standard_normal((B, n_obs, s.u), np.float32),
                   "h": rng.standard_normal((B, n_obs, s.h), np.float32)}
    noise = {"u": rng.standard_normal((B, H, s.u), np.float32), "h": rng.standard_normal((B, H, s.h), np.float32)}
    actions = np.tanh(rng.standard_normal((B, H, c.act_dim))).astype(np.float32)
    return reset_noise, noise, actions


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A tiny collected dataset (one cheetah scenario, two episodes of 40 steps); a test file that needs another
    defines its own ``data`` fixture, which takes precedence."""
    from mrcom_train.datasets.collect import CollectConfig, collect

    out = tmp_path_factory.mktemp("data") / "ds"
    collect(CollectConfig(domains=("cheetah",), scenarios_per_domain=1, episodes_per_scenario=2, episode_length=40),
            out, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """One ONNX + TorchScript export (with a SAC policy) shared by the export and C++ tests."""
    from mrcom_export import graphs as G
    from mrcom_export.exporter import export_model
    from mrcom_train.agents.sac import SAC, SACConfig

    out = tmp_path_factory.mktemp("export") / "exp"
    model = export_model_for_tests()
    actor = SAC(8, 2, SACConfig(hidden_dim=16, hidden_layers=1), seed=0).actor
    manifest = export_model(model, out, formats=("onnx", "torchscript"), horizon=EXPORT_HORIZON,
                            policy=G.PolicyActor(actor, 8, 2, 3), log=lambda s: None)
    return out, model, manifest


@pytest.fixture(scope="session")
def unified_export(tmp_path_factory):
    """A tiny world model over the unified hopper/walker/cheetah spaces (24 obs, 6 action dims), exported to
    ONNX with horizon 2: the model the adaptation tests imagine with."""
    import torch

    from mrcom_core.registry import build_model, model_config
    from mrcom_export.exporter import export_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("unified-export")
    model = build_model(model_config("tiny", obs_dim=24, act_dim=6, num_scenarios=3)).eval()
    export_model(model, out, formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    return out
