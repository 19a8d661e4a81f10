"""The open-loop prediction error, one metric with one naming scheme, measured two ways: in eager PyTorch
during training (:meth:`Trainer.evaluate <mrcom_train.training.trainer.Trainer.evaluate>`) and through an
export's runtime (:func:`mrcom_train.rollout.runtime_error`, behind ``mrcom rollout`` and ``mrcom reproduce``).

From the posterior at a window's first step, the model imagines H steps with the real actions, its
context fed with its own predictions; the error of a rollout is the MSE of normalized observations over
the scenario's real dims, averaged over steps. Results are ``{"open_loop_error": mean,
"open_loop_error_<domain>": mean per domain}``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

KEY = "open_loop_error"


def open_loop_error(pred_n: np.ndarray, real_n: np.ndarray, obs_mask: np.ndarray) -> np.ndarray:
    """Per-rollout error (B,): squared error of normalized predictions ``pred_n`` vs ``real_n`` (B, H, D) over
    the real dims (``obs_mask`` (B, D)), averaged over dims and steps."""
    mask = np.asarray(obs_mask, np.float64)[:, None, :]
    err = np.square(np.asarray(pred_n, np.float64) - np.asarray(real_n, np.float64)) * mask
    return err.sum((1, 2)) / np.maximum(mask.sum((1, 2)) * pred_n.shape[1], 1)


def by_domain(per_row: np.ndarray, domains: Sequence[str]) -> dict[str, float]:
    """``{"open_loop_error": mean, "open_loop_error_<domain>": mean, …}`` (domains in order of appearance)."""
    out = {KEY: float(np.mean(per_row))}
    names = np.asarray(domains)
    for domain in dict.fromkeys(domains):
        out[f"{KEY}_{domain}"] = float(per_row[names == domain].mean())
    return out


def format_errors(result: dict[str, float]) -> str:
    """``0.1234 (hopper 0.2, walker 0.1, …)``."""
    parts = [f"{k.removeprefix(KEY + '_')} {v:.4f}" for k, v in result.items() if k.startswith(KEY + "_")]
    return f"{result[KEY]:.4f}" + (f" ({', '.join(parts)})" if parts else "")


def recorded_errors(run_dir: str | Path) -> list[tuple[int, dict[str, float]]]:
    """Every evaluation a training run's ``metrics.csv`` holds: ``[(step, {"open_loop_error": …, per domain}), …]``
    in order (empty without the file)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(KEY)]
    return [(int(r["step"]), {k: float(v) for k, v in r.items() if k.startswith(KEY) and v}) for r in rows]
