"""What ``mrcom reproduce --what error`` writes: the paper's generalization claim measured without RL.

Per split, ``errors.md`` / ``errors.csv``: the open-loop prediction error of every trained world model (and
ablation) over :data:`~.tables.ERROR_HORIZON` imagined steps from real prompts of scenarios never trained on,
in and out of distribution, with the latents at their means and sampled, per domain; and
``error_vs_horizon.png``: the error at each imagined step, one line per model. ``errors<N>.md`` collects
every split of a table.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from ..rollout import BY_STEP
from ..scenarios import DOMAINS, get_split
from ..training.evaluation import KEY
from .tables import ERROR_HORIZON, ERROR_ROLLOUTS

KINDS = (("mean", "latents at their means"), ("sampled", "latents sampled"))


def write_error_tables(root: Path, split: str, errors: dict, methods: list[str], label: Callable[[str], str]) -> None:
    """``root/errors.md``, ``errors.csv`` and ``error_vs_horizon.png`` from ``errors[method][kind][range]``
    (:func:`~mrcom_train.rollout.runtime_error`'s summaries)."""
    s = get_split(split)
    first = errors[methods[0]]["mean"]["in"]
    domains = [d for d in DOMAINS if f"{KEY}_{d}" in first]
    lines = [f"Train {s.train.describe()}; evaluate in-distribution {s.evaluate['in'].describe()}, "
             f"out-of-distribution {s.evaluate['ood'].describe()}. {ERROR_ROLLOUTS} rollouts of {ERROR_HORIZON} "
             "steps per range from real prompts of unseen scenarios with the real actions; normalized MSE over "
             "the real dims, averaged over the steps; lower is better; **bold**: the lowest of the column.\n"]
    rows = [["split", "kind", "range", "domain", "method", "error"]]
    for kind, how in KINDS:
        lines.append(f"#### {ERROR_HORIZON}-step open-loop prediction error, {how}\n")
        columns = [(r, d) for r in ("in", "ood") for d in [*domains, None]]
        lines.append("| model | " + " | ".join(f"{'All' if d is None else d.capitalize()} ({r})"
                                             for r, d in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        best = {c: min(errors[m][kind][c[0]].get(_key(c[1]), float("inf")) for m in methods) for c in columns}
        for m in methods:
            cells = []
            for r, d in columns:
                value = errors[m][kind][r].get(_key(d), float("nan"))
                cells.append(f"**{value:.3f}**" if value == best[(r, d)] else f"{value:.3f}")
                rows.append([split, kind, r, d or "all", m, f"{value:.5f}"])
            lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        lines.append("")
    (root / "errors.md").write_text("\n".join(lines) + "\n")
    with open(root / "errors.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    _chart(root, errors, methods, label)


def _key(domain: str | None) -> str:
    return KEY if domain is None else f"{KEY}_{domain}"


def _chart(root: Path, errors: dict, methods: list[str], label: Callable[[str], str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4), squeeze=False)
    panels = [(kind, r) for kind, _ in KINDS for r in ("in", "ood")]
    for ax, (kind, r) in zip(axes[0], panels, strict=True):
        for m in methods:
            curve = errors[m][kind][r].get(BY_STEP)
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, marker=".", label=label(m))
        ax.set_title(f"{r}, {'mean' if kind == 'mean' else 'sampled'} latents")
        ax.set_xlabel("imagined step")
        ax.set_ylabel("prediction error")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "error_vs_horizon.png", dpi=100)
    plt.close(fig)


def write_error_summary(out: Path, table: int, budget: str, splits: tuple[str, ...]) -> None:
    """``out/errors<N>.md``: every split's error tables."""
    parts = [f"# Table {table}: prediction errors — budget {budget}\n"]
    for split in splits:
        parts.append(f"## {split}\n")
        parts.append((out / split / "errors.md").read_text())
    (out / f"errors{table}.md").write_text("\n".join(parts))
