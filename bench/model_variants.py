"""The four readings of MrCoM's transition, trained on one dataset with one budget, measured at 1/5/15 steps.

    literal      eq. 6 as printed: u_t's prior and posterior have no recurrent input
    +d           model.u_on_d: u_t's prior and posterior also read d_{t-1} (eq. 15, §5.3)
    +overshoot   model.overshoot_horizon=15: a multi-step loss on imagined observations (not in the paper)
    both         the two together

Every variant trains on the same dataset (collected here from ``--split``'s training range with SAC
behaviour policies) for the same number of updates; its best checkpoint (lowest held-out 15-step error) is
scored on fresh data of the split's ``in`` and ``ood`` ranges: the open-loop error (normalized MSE over real
dims, averaged over the first H imagined steps, latents at their means) at H = 1, 5 and 15, the project's
one metric (:mod:`mrcom_train.training.evaluation`). Prints a markdown table; every stage is resumable, so
rerunning the same command continues where a killed run stopped.

    python bench/model_variants.py --out runs/variants            # ~1 h on 2 cores at the defaults
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mrcom_core.io.files import write_json_atomic
from mrcom_core.steps import open_loop_predictions
from mrcom_train.datasets.collect import CollectConfig, collect
from mrcom_train.datasets.dataset import Dataset, is_complete
from mrcom_train.datasets.sampler import SequenceSampler
from mrcom_train.training.checkpoint import latest_checkpoint, load_model, read_state
from mrcom_train.training.config import RunRequest
from mrcom_train.training.evaluation import by_domain, open_loop_error
from mrcom_train.training.trainer import Trainer

VARIANTS = {"literal": {"u_on_d": False, "overshoot_horizon": 0}, "+d": {"u_on_d": True, "overshoot_horizon": 0},
            "+overshoot": {"u_on_d": False, "overshoot_horizon": 15}, "both": {"u_on_d": True, "overshoot_horizon": 15}}
HORIZONS = (1, 5, 15)


def errors_by_horizon(model, data: Path, windows: int, seed: int = 0) -> dict[int, dict[str, float]]:
    """``{H: {"open_loop_error": …, "open_loop_error_<domain>": …}}`` from one 15-step rollout per window."""
    ds = Dataset(data)
    sampler = SequenceSampler(ds, model.history_len, max(HORIZONS), windows, seed=seed)
    batch = sampler.sample()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    with torch.no_grad():
        pred = open_loop_predictions(model, tensors, max(HORIZONS)).numpy()
        real = model.normalize(tensors["obs"][:, 1:]).numpy()
    domains = [ds.scenarios[s].domain for s in batch["scenario"]]
    return {h: by_domain(open_loop_error(pred[:, :h], real[:, :h], batch["obs_mask"]), domains) for h in HORIZONS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/variants"))
    p.add_argument("--split", default="t1-a10b50")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=1500, help="training updates per variant")
    p.add_argument("--scenarios", type=int, default=2, help="training scenarios per domain")
    p.add_argument("--episodes", type=int, default=5, help="episodes per training scenario")
    p.add_argument("--windows", type=int, default=512, help="held-out windows scored per range")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    quiet = dict(progress=False, log=lambda s: None)
    start = time.perf_counter()
    data = args.out / "data"
    if not is_complete(data):
        print(f"collecting {args.split} training data ({args.scenarios} scenarios per domain, SAC behaviour)")
        config = CollectConfig(split=args.split, scenarios_per_domain=args.scenarios,
                               episodes_per_scenario=args.episodes, policy="sac", sac_update_every=2,
                               workers=args.workers)
        collect(config, data, resume=True, **quiet)
    evals = {}
    for rng in ("in", "ood"):
        evals[rng] = args.out / f"eval-{rng}"
        if not is_complete(evals[rng]):
            collect(CollectConfig(split=args.split, range=rng, scenarios_per_domain=2, episodes_per_scenario=1,
                                  policy="random", seed=1, workers=args.workers), evals[rng], resume=True, **quiet)
    rows = {}
    for name, overrides in VARIANTS.items():
        run = args.out / "runs" / name.replace("+", "plus-")
        ckpt = latest_checkpoint(run) if run.exists() else None
        if ckpt is None or read_state(ckpt)["step"] < args.steps:
            print(f"training {name} ({args.steps} updates)")
            t0 = time.perf_counter()
            Trainer(data, run, RunRequest(preset=args.preset, model=overrides, train={"steps": args.steps}),
                    resume=True, **quiet).run()
            print(f"  {time.perf_counter() - t0:.0f} s")
        scored = run / "variant_errors.json"
        if not scored.is_file():
            model, state = load_model(run)
            measured = {rng: {str(h): e for h, e in errors_by_horizon(model, path, args.windows).items()}
                        for rng, path in evals.items()}
            write_json_atomic(scored, {"step": state["step"], "checkpoint": state.get("checkpoint"), **measured})
        rows[name] = json.loads(scored.read_text())
    print(f"\n# MrCoM transition variants: {args.split}, {args.preset} preset, {args.steps} updates, best checkpoint\n")
    print(f"- {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{args.windows} held-out windows per range; this invocation took {time.perf_counter() - start:.0f} s\n")
    print("| variant | best step | " + " | ".join(f"{rng} H={h}" for rng in ("in", "ood") for h in HORIZONS) + " |")
    print("|---|---:|" + "---:|" * (2 * len(HORIZONS)))
    for name, row in rows.items():
        cells = [f"{row[rng][str(h)]['open_loop_error']:.3f}" for rng in ("in", "ood") for h in HORIZONS]
        print(f"| {name} | {row['step']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
