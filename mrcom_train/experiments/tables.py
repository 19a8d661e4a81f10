"""What ``mrcom reproduce`` writes for a table: per split ``table.md`` / ``table.csv`` (normalized returns,
mean ± std over seeds, with the two floors of each row, and the open-loop prediction errors), learning
curves with the floors as dashed lines and a prediction-error chart; with the ablations, the paper's Figure 3
(``ablations.md`` / ``ablations.png``); and ``table<N>.md`` for all splits.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..rl.scoring import FLOOR_LABELS, FLOORS, summarize
from ..scenarios import DOMAINS, get_split
from ..training.evaluation import KEY

ERROR_ROLLOUTS, ERROR_HORIZON = 512, 15  # open-loop prediction error: imagined rollouts per (method, range), steps


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated env step of a learning ``curve`` (``(env steps, return)`` pairs, in order) whose return
    is at least ``target``; None when it never gets there."""
    return next((step for step, value in curve if value >= target), None)


def efficiency_table(curves: dict, domains: list[str], methods: list[str], label: Callable[[str], str],
                     reference: str) -> list[str]:
    """Markdown lines of the sample-efficiency measure: per target (range, domain, seed), the env steps each arm
    needs to reach the ``reference`` arm's (SAC G=1's) final return, and the ratio reference steps / arm steps
    (> 1: fewer real steps than the reference; "—": not reached in the arm's run). Read off the learning
    curves, so only as fine as their evaluation interval."""
    others = [m for m in methods if m != reference]
    lines = [f"#### Env steps to reach {label(reference)}'s final return (its own steps / the arm's: > 1 is "
             f"fewer real steps)\n",
             "| target | return | " + " | ".join([label(reference), *(label(m) for m in others)]) + " |",
             "|---|---:|" + "---:|" * (1 + len(others))]
    for rng_name in ("in", "ood"):
        for domain in domains:
            for seed, curve in enumerate(curves.get((rng_name, domain, reference), [])):
                if not curve:
                    continue
                goal = curve[-1][1]
                own = steps_to_reach(curve, goal)
                cells = [f"{own:,}"]
                for m in others:
                    runs = curves.get((rng_name, domain, m), [])
                    steps = steps_to_reach(runs[seed], goal) if seed < len(runs) else None
                    cells.append("—" if steps is None else f"{steps:,} ({own / max(steps, 1):.2f}×)")
                lines.append(f"| {domain} {rng_name} s{seed} | {goal:.1f} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def write_outputs(root: Path, split: str, scores: dict, floors: dict, errors: dict, curves: dict, methods: list[str],
                  label: Callable[[str], str], model_free: tuple[str, ...], reference: str = "sac") -> None:
    """Write ``root/table.md``, ``table.csv`` and the plots of one split. ``scores[range][domain][method]`` and
    ``floors[(range, domain)][floor]`` are per-seed lists; ``errors[method][kind][range]`` the open-loop
    errors; ``curves[(range, domain, method)]`` per-seed learning curves; ``model_free`` names the arms
    without a world model (no prediction errors: with only those, no error tables or chart); with the
    ``reference`` arm (SAC G=1) among ``methods``, the table ends with :func:`efficiency_table`."""
    s = get_split(split)
    domains = [d for d in DOMAINS if d in scores["in"]]  # a budget may leave a domain out
    lines = []
    csv_rows = [["split", "range", "domain", "method", "mean", "std", "seeds"]]
    for rng_name in ("in", "ood"):
        lines.append(f"#### Train {s.train.describe()} · evaluate {s.evaluate[rng_name].describe()} "
                     f"({'in-distribution' if rng_name == 'in' else 'out-of-distribution'})\n")
        lines.append("| | " + " | ".join(label(m) for m in methods) + " | "
                     + " | ".join(f"_{FLOOR_LABELS[f]}_" for f in FLOORS) + " |")
        lines.append("|---|" + "---:|" * (len(methods) + len(FLOORS)))
        for domain in domains:
            cells = []
            for m in methods:
                values = scores[rng_name][domain][m]
                cells.append(summarize(values))
                csv_rows.append([split, rng_name, domain, m, f"{np.mean(values):.2f}", f"{np.std(values):.2f}",
                                 len(values)])
            for f in FLOORS:
                values = floors[(rng_name, domain)][f]
                cells.append(f"_{summarize(values)}_")
                csv_rows.append([split, rng_name, domain, f"floor:{f}", f"{np.mean(values):.2f}",
                                 f"{np.std(values):.2f}", len(values)])
            lines.append(f"| {domain.capitalize()} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("_Floors_: the same target scenarios and evaluation episodes, scored by a policy that always "
                 "outputs zero and one that draws uniform random actions. A cell above both has learned "
                 "something.\n")
    if reference in methods:
        lines += efficiency_table(curves, domains, methods, label, reference)
    model_methods = [m for m in methods if m not in model_free]
    for kind, how in (("mean", "latents at their means"), ("sampled", "latents sampled")) if model_methods else ():
        lines.append(f"#### {ERROR_HORIZON}-step open-loop prediction error, {how} ({ERROR_ROLLOUTS} "
                     "rollouts; normalized MSE over real dims; lower is better)\n")
        lines.append("| | " + " | ".join(f"{label(m)} in / OOD" for m in model_methods) + " |")
        lines.append("|---|" + "---:|" * len(model_methods))
        for domain in [*domains, None]:
            key = KEY if domain is None else f"{KEY}_{domain}"
            cells = [f"{errors[m][kind]['in'].get(key, float('nan')):.3f} / "
                     f"{errors[m][kind]['ood'].get(key, float('nan')):.3f}" for m in model_methods]
            lines.append(f"| {'All' if domain is None else domain.capitalize()} | " + " | ".join(cells) + " |")
        lines.append("")
    (root / "table.md").write_text("\n".join(lines) + "\n")
    with open(root / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    _plots(root, domains, curves, floors, errors, methods, model_methods, label)
    figure = [m for m in methods if m in FIGURE3_VARIANTS or m.startswith(ABLATED)]
    if any(m.startswith(ABLATED) for m in figure):
        _ablation_outputs(root, domains, scores, floors, figure, label)


ABLATED = "w/o "  # prefix of the ablations' method names (``w/o d`` …)
LITERAL = "literal"  # MrCoM with eq. 6 read literally (a row of the ablation outputs)
FIGURE3_VARIANTS = ("mrcom", LITERAL)  # shown with the ablations in the Figure 3 outputs


def _ablation_outputs(root: Path, domains: list[str], scores: dict, floors: dict, methods: list[str],
                      label: Callable[[str], str]) -> None:
    """The paper's Figure 3 for one split: ``ablations.md`` (MrCoM, its ablations and variants, normalized
    return mean ± std over seeds per range and domain, with the floors) and ``ablations.png`` (grouped bars
    with the seeds' std and the floors as dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(r, d) for r in ("in", "ood") for d in domains]
    lines = ["| | " + " | ".join(label(m) for m in methods) + " | "
             + " | ".join(f"_{FLOOR_LABELS[f]}_" for f in FLOORS) + " |",
             "|---|" + "---:|" * (len(methods) + len(FLOORS))]
    for r, d in rows:
        cells = [summarize(scores[r][d][m]) for m in methods] + [f"_{summarize(floors[(r, d)][f])}_" for f in FLOORS]
        lines.append(f"| {d.capitalize()} ({r}) | " + " | ".join(cells) + " |")
    (root / "ablations.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(2.4 * len(rows) + 3, 3.4))
    width = 0.8 / len(methods)
    x = np.arange(len(rows))
    for i, m in enumerate(methods):
        values = [scores[r][d][m] for r, d in rows]
        ax.bar(x + i * width, [np.mean(v) for v in values], width, yerr=[np.std(v) for v in values], capsize=2,
               label=label(m))
    for f, style in zip(FLOORS, ("--", ":"), strict=True):
        for j, (r, d) in enumerate(rows):
            ax.hlines(float(np.mean(floors[(r, d)][f])), x[j] - width / 2, x[j] + 0.8 - width / 2, colors="grey",
                      linestyles=style, linewidth=1, label=f"floor: {FLOOR_LABELS[f]}" if j == 0 else None)
    ax.set_xticks(x + 0.4 - width / 2, [f"{d} ({r})" for r, d in rows], fontsize=8)
    ax.set_ylabel("normalized return")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(root / "ablations.png", dpi=100)
    plt.close(fig)


def _plots(root: Path, domains: list[str], curves: dict, floors: dict, errors: dict, methods: list[str],
           model_methods: list[str], label: Callable[[str], str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for rng_name in ("in", "ood"):
        fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), squeeze=False)
        for ax, domain in zip(axes[0], domains, strict=True):
            for m in methods:
                runs = curves.get((rng_name, domain, m), [])
                if not runs:
                    continue
                steps = [x for x, _ in runs[0]]
                values = np.array([[v for _, v in r] for r in runs if len(r) == len(steps)])
                ax.plot(steps, values.mean(0), label=label(m))
                if len(values) > 1:
                    ax.fill_between(steps, values.mean(0) - values.std(0), values.mean(0) + values.std(0), alpha=0.2)
            for f, style in zip(FLOORS, ("--", ":"), strict=True):
                ax.axhline(float(np.mean(floors[(rng_name, domain)][f])), color="grey", linestyle=style, linewidth=1,
                           label=f"floor: {FLOOR_LABELS[f]}")
            ax.set_title(f"{domain} ({rng_name})")
            ax.set_xlabel("env steps")
            ax.set_ylabel("normalized return")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(root / f"curves_{rng_name}.png", dpi=100)
        plt.close(fig)
    if not model_methods:  # only arms without a world model: no prediction errors
        return
    fig, ax = plt.subplots(figsize=(1.6 * len(model_methods) + 2, 3.2))
    x = np.arange(len(model_methods))
    for i, rng_name in enumerate(("in", "ood")):
        ax.bar(x + 0.38 * i, [errors[m]["mean"][rng_name][KEY] for m in model_methods], 0.38,
               label=rng_name)
    ax.set_xticks(x + 0.19, [label(m) for m in model_methods], fontsize=8)
    ax.set_ylabel("open-loop error (mean latents)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "prediction_error.png", dpi=100)
    plt.close(fig)


def write_summary(out: Path, table: int, budget: str, results: dict, splits: tuple[str, ...], settings: dict) -> None:
    """``out/table<N>.md`` (every split's table) and ``out/config.json`` (what ran)."""
    parts = [f"# Table {table} — budget {budget}\n"]
    for split in splits:
        parts.append(f"## {split}\n")
        parts.append((out / split / "table.md").read_text())
    (out / f"table{table}.md").write_text("\n".join(parts))
    (out / "config.json").write_text(json.dumps({"table": table, "budget": budget, "splits": list(splits),
                                                 "budget_settings": settings}, indent=1))

