"""Learning curves of one run, drawn from its ``metrics.csv`` when ``mrcom train`` or ``mrcom adapt`` ends
(``mrcom reproduce`` draws its own, per table).

* :func:`plot_training`: ``RUN/curves.png``, the training loss and the held-out open-loop error (overall and
  per domain) against updates;
* :func:`plot_adaptation`: ``RUN/curves.png``, the evaluation return against env steps with the target's floors
  (``result.json``) as dashed lines, and, for a model arm, the model's one-step reward error on the agent's own
  transitions beside the mean |reward|.

Both return the file, or None when the log has nothing to draw yet.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mrcom_core.io.files import atomic_path


def _columns(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """``{column: [(step, value), …]}`` of the run's metrics.csv (empty cells skipped)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    step_key = next(iter(rows[0]))
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != step_key and value not in ("", None):
                try:
                    out.setdefault(key, []).append((float(row[step_key]), float(value)))
                except ValueError:
                    continue
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(run_dir: str | Path) -> Path | None:
    """``RUN/curves.png`` of a training run (see the module docstring)."""
    run_dir = Path(run_dir)
    cols = _columns(run_dir)
    errors = {k: v for k, v in cols.items() if k.startswith("open_loop_error")}
    if not errors and "loss" not in cols:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if "loss" in cols:
        left.plot(*zip(*cols["loss"], strict=True), lw=1)
    left.set(xlabel="update", ylabel="training loss", title="loss")
    for key, points in errors.items():
        label = key.removeprefix("open_loop_error").lstrip("_") or "all"
        right.plot(*zip(*points, strict=True), marker="o", ms=3, lw=2 if label == "all" else 1, label=label)
    right.set(xlabel="update", ylabel="open-loop error", title="held-out open-loop error")
    if errors:
        right.legend(fontsize=8)
    return _save(fig, run_dir / "curves.png")


def plot_adaptation(run_dir: str | Path) -> Path | None:
    """``RUN/curves.png`` of an adaptation run (see the module docstring)."""
    run_dir = Path(run_dir)
    cols = _columns(run_dir)
    if "normalized_return" not in cols:
        return None
    plt = _pyplot()
    model_error = "reward_mae" in cols
    fig, axes = plt.subplots(1, 2 if model_error else 1, figsize=(10 if model_error else 5.5, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.plot(*zip(*cols["normalized_return"], strict=True), marker="o", ms=3, label="agent")
    result = run_dir / "result.json"
    floors = json.loads(result.read_text()).get("floors", {}) if result.is_file() else {}
    for (name, value), style in zip(sorted(floors.items()), (":", "--"), strict=False):
        ax.axhline(value, color="grey", ls=style, lw=1, label=f"{name}-action floor" if name == "zero" else
                   f"{name} floor")
    ax.set(xlabel="env steps", ylabel="normalized return", title="evaluation return")
    ax.legend(fontsize=8)
    if model_error:
        ax = axes[0][1]
        ax.plot(*zip(*cols["reward_mae"], strict=True), marker="o", ms=3, label="model's reward MAE")
        if "reward_real_mean" in cols:
            ax.plot(*zip(*cols["reward_real_mean"], strict=True), ls="--", label="mean |reward|")
        ax.set(xlabel="env steps", ylabel="reward", title="one-step reward error on the agent's transitions")
        ax.legend(fontsize=8)
    return _save(fig, run_dir / "curves.png")
