"""``mrcom rollout``: imagined rollouts through the export runtime from a dataset's prompts."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mrcom_export.manifest import ExportError
from mrcom_export.runtime import Runtime

from .dataset import Dataset
from .errors import UserInputError
from .sampler import SequenceSampler


def prompts_from_dataset(dataset: Dataset, context_len: int, horizon: int, batch: int, seed: int = 0):
    """``B`` prompts (m context steps + the next observation) and the ``H`` real steps that follow."""
    b = SequenceSampler(dataset, context_len, horizon, batch, seed=seed).sample()
    obs = np.concatenate([b["context_obs"], b["obs"][:, :1]], axis=1)
    return (obs, b["context_action"], b["context_reward"]), b


def run_rollout(export_dir, data, batch: int, horizon: int, seed: int, bench: bool, provider: str | None,
                log: Callable[[str], None], mean_latents: bool = False) -> dict:
    """Imagine ``batch`` rollouts of ``horizon`` steps from prompts of ``data`` with the real actions and
    return the open-loop error (overall and per domain; plus throughput with ``bench``). The latents are
    sampled with seeded noise, or set to their means with ``mean_latents`` (a deterministic prediction)."""
    if batch < 1:
        raise UserInputError(f"--batch must be >= 1, got {batch}")
    if horizon < 1:
        raise UserInputError(f"--horizon must be >= 1, got {horizon}")
    rt = Runtime(export_dir, seed=seed, providers=[provider] if provider else None)
    data = data or rt.manifest["source"].get("data")
    if not data:
        raise UserInputError("--data is needed: the export does not say which dataset its model trained on")
    ds = Dataset(data)
    if (ds.obs_dim, ds.act_dim) != (rt.obs_dim, rt.act_dim):
        raise ExportError(f"dataset {data} has obs/action dims {ds.obs_dim}/{ds.act_dim}, the export "
                          f"{rt.obs_dim}/{rt.act_dim}")
    prompt, real = prompts_from_dataset(ds, rt.context_len, horizon, batch, seed)
    lat = rt.latent

    def zeros(steps: int) -> dict[str, np.ndarray] | None:  # mean latents: zero noise for every step
        return {k: np.zeros((batch, steps, lat[k]), np.float32) for k in ("u", "h")} if mean_latents else None

    rt.reset(*prompt, noise=zeros(1))  # the prompt holds exactly m steps: one posterior step
    out = rt.rollout(real["action"], horizon, noise=zeros(horizon))
    std = np.asarray(rt.manifest["obs_std"], np.float32)
    err = np.square((out["obs"] - real["obs"][:, 1:]) / std) * real["obs_mask"][:, None]
    per_row = err.sum((1, 2)) / (real["obs_mask"].sum(1) * horizon)
    domains = [ds.scenarios[s].domain for s in real["scenario"]]
    log(f"{batch} rollouts × {horizon} steps from {data} prompts ({rt.providers[0]}, "
        f"{'mean' if mean_latents else 'sampled'} latents): open-loop error "
        f"{per_row.mean():.4f}; predicted reward/step {out['reward'].mean():.3f} vs real {real['reward'].mean():.3f}")
    summary = {"open_loop_error": float(per_row.mean())}
    for domain in dict.fromkeys(domains):
        pick = np.array([d == domain for d in domains])
        summary[domain] = float(per_row[pick].mean())
        log(f"  {domain:<8} {pick.sum():>4} rollouts  error {per_row[pick].mean():.4f}  reward/step predicted "
            f"{out['reward'][pick].mean():.3f} real {real['reward'][pick].mean():.3f}")
    if bench:
        for fused in (False, True) if horizon == rt.horizon else (False,):
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
