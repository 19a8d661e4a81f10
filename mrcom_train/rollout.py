"""``mrcom rollout``: imagined rollouts of an export through its torch-free runtime from a dataset's prompts,
scored with the open-loop error of :mod:`mrcom_train.training.evaluation` (also used by ``mrcom reproduce``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mrcom_core.errors import UserInputError
from mrcom_core.io.resources import require_memory
from mrcom_export.manifest import ExportError
from mrcom_export.runtime import Runtime

from .datasets.dataset import Dataset
from .datasets.sampler import SequenceSampler
from .training.evaluation import KEY, by_domain, open_loop_error

BY_STEP = "error_by_step"  # runtime_error's per-step errors (a list, step 1 … H)


def prompts_from_dataset(dataset: Dataset, context_len: int, horizon: int, batch: int, seed: int = 0):
    """``B`` prompts (``context_len`` history steps + the next observation) and the batch whose ``H`` real steps
    follow."""
    b = SequenceSampler(dataset, context_len, horizon, batch, seed=seed).sample()
    obs = np.concatenate([b["context_obs"], b["obs"][:, :1]], axis=1)
    return (obs, b["context_action"], b["context_reward"]), b


def runtime_error(export_dir, data, batch: int, horizon: int, seed: int = 0, *, mean_latents: bool = False,
                  bench: bool = False, provider: str | None = None, threads: int | None = None,
                  log: Callable[[str], None] = lambda s: None) -> dict[str, float]:
    """Imagine ``batch`` rollouts of ``horizon`` steps through the export's runtime from prompts of dataset
    ``data`` (default: the one the model trained on) with the real actions; returns the open-loop error
    (and with ``bench`` the throughput). The latents are sampled with seeded noise, or set to their means
    with ``mean_latents`` (a deterministic prediction).

    ``batch``, ``horizon`` (>= 1) and ``seed`` (>= 0) are checked before anything is opened; ``provider``
    must be one this ONNX Runtime offers (one :class:`ExportError` line otherwise), and the log names the
    providers the runtime actually ran on. ``threads``: the runtime's intra-op threads (None: ONNX Runtime's
    default)."""
    for flag, value, minimum in (("--batch", batch, 1), ("--horizon", horizon, 1), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            raise UserInputError(f"{flag} must be >= {minimum}, got {value!r}")
    rt = Runtime(export_dir, seed=seed, providers=[provider] if provider else None, threads=threads)
    source = rt.manifest.get("source")
    data = data or (source.get("data") if isinstance(source, dict) else None)
    if not data:
        raise UserInputError("--data is needed: the export does not say which dataset its model trained on")
    ds = Dataset(data)
    if (ds.obs_dim, ds.act_dim) != (rt.obs_dim, rt.act_dim):
        raise ExportError(f"dataset {data} has obs/action dims {ds.obs_dim}/{ds.act_dim}, the export "
                          f"{rt.obs_dim}/{rt.act_dim}")
    steps = rt.history_len + horizon  # the sampled windows, then what the runtime holds (prompts, one rollout)
    sampled = 4 * batch * steps * (2 * ds.obs_dim + ds.act_dim + 2)
    require_memory(sampled + rt.memory_needed(batch, horizon, rt.history_len),
                   f"{batch} rollouts of {horizon} steps from prompts of {rt.history_len} steps (the export's "
                   f"history_len)", "lower --batch or --horizon")
    if all(e.length < max(horizon, rt.history_len) for e in ds.episodes):
        raise UserInputError(f"no episode of {data} is long enough for prompts of the export's history_len="
                             f"{rt.history_len} steps and --horizon {horizon}")
    prompt, real = prompts_from_dataset(ds, rt.history_len, horizon, batch, seed)
    lat = rt.latent

    def zeros(steps: int) -> dict[str, np.ndarray] | None:  # mean latents: zero noise for every step
        return {k: np.zeros((batch, steps, lat[k]), np.float32) for k in ("u", "h")} if mean_latents else None

    rt.reset(*prompt, noise=zeros(rt.history_len - rt.context_len + 1))  # posterior steps after the first m
    out = rt.rollout(real["action"], horizon, noise=zeros(horizon))
    mean, std = (np.asarray(rt.manifest[k], np.float32) for k in ("obs_mean", "obs_std"))
    pred_n, real_n = (out["obs"] - mean) / std, (real["obs"][:, 1:] - mean) / std
    per_row = open_loop_error(pred_n, real_n, real["obs_mask"])
    domains = [ds.scenarios[s].domain for s in real["scenario"]]
    summary: dict = by_domain(per_row, domains)
    # error at each imagined step h = 1 … H (the error-vs-horizon chart); the key is outside KEY's namespace
    summary[BY_STEP] = [float(np.mean(open_loop_error(pred_n[:, h : h + 1], real_n[:, h : h + 1], real["obs_mask"])))
                        for h in range(horizon)]
    log(f"{batch} rollouts × {horizon} steps from {data} prompts (on {', '.join(rt.providers)}, "
        f"{'mean' if mean_latents else 'sampled'} latents): open-loop error {summary[KEY]:.4f}; "
        f"predicted reward/step {out['reward'].mean():.3f} vs real {real['reward'].mean():.3f}")
    for domain in dict.fromkeys(domains):
        pick = np.array([d == domain for d in domains])
        log(f"  {domain:<8} {pick.sum():>4} rollouts  error {summary[f'{KEY}_{domain}']:.4f}  reward/step "
            f"predicted {out['reward'][pick].mean():.3f} real {real['reward'][pick].mean():.3f}")
    if bench:
        for fused in (False, True):
            rt.reset(*prompt)
            rt.rollout(real["action"], horizon, fused=fused)  # warm-up: session creation, first-run costs
            elapsed = _timed(rt, prompt, real["action"], horizon, fused)
            rate = batch * horizon / elapsed
            log(f"  bench: {'fused' if fused else 'per-step'} {rate:,.0f} samples×steps/s "
                f"({elapsed * 1e3:.2f} ms per {batch}×{horizon} rollout)")
            summary[f"bench_{'fused' if fused else 'step'}"] = rate
    return summary


def _timed(rt: Runtime, prompt, actions, horizon: int, fused: bool, repeats: int = 10) -> float:
    """Median seconds of one ``rollout`` call (``reset`` excluded)."""
    times = []
    for _ in range(repeats):
        rt.reset(*prompt)
        t0 = time.perf_counter()
        rt.rollout(actions, horizon, fused=fused)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
