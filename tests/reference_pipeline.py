"""A tiny collect → train → export → rollout run on CPU whose numbers are committed as a reference.

``python tests/reference_pipeline.py`` (re)writes ``tests/fixtures/reference.json``; ``test_reference.py`` runs
the same pipeline and checks it reproduces those numbers to float tolerance, so a refactor that changes
behaviour on fixed seeds fails. The committed file was written by the code before the "one place per
concept" refactor (commit d0a52a2 holds that version of this script). Since then the exports leave out the
building-block graphs (``blocks=False``), which no recorded number comes from. Rewritten once on purpose
(the protocol change): the target-speed reward's margin became a field of the split (``max(v_i, 0.1 v_max)``) and hopper
got a smooth standing term, which changes every recorded reward and what is learned from it; the numbers
that depend on observations only moved by float rounding (e.g. the RSSM's reconstruction terms). Rewritten
again on purpose when the reward head began to regress standardized rewards (``model.reward_scale="unit"``):
the reward terms, what training learns from them, and every imagined reward moved; and again when every
built-in model got its ensemble heads (built before the class's own layers, they draw from the seeded generator
first, so every initial weight moved).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

REFERENCE = Path(__file__).parent / "fixtures" / "reference.json"
QUIET = dict(progress=False, log=lambda s: None)
TRAIN_STEPS = 6
MODELS = {  # name → model overrides
    "mrcom": {},  # MrCoM's defaults: u_on_d, 15-step overshooting
    "mrcom_literal": {"u_on_d": False, "overshoot_horizon": 0},
    "rssm": {"model_type": "rssm"},
    "cadm": {"model_type": "cadm"},
}
LOSS_KEYS = ("loss", "var", "kl_u", "kl_h", "recon", "reward", "s", "value_i", "value", "v", "overshoot")


def run_pipeline(root: Path) -> dict:
    import numpy as np

    from mrcom_export.exporter import export_model
    from mrcom_export.runtime import Runtime
    from mrcom_train.datasets.collect import CollectConfig, collect
    from mrcom_train.datasets.dataset import Dataset
    from mrcom_train.rollout import prompts_from_dataset, runtime_error
    from mrcom_train.training.checkpoint import load_model
    from mrcom_train.training.config import RunRequest
    from mrcom_train.training.trainer import Trainer

    data = root / "data"
    collect(CollectConfig(split="t1-a5b20", domains=("hopper", "cheetah"), scenarios_per_domain=1,
                          episodes_per_scenario=2, episode_length=40, policy="random", seed=0), data, **QUIET)
    ds = Dataset(data)
    out: dict = {"dataset": {"obs_mean": ds.obs_mean.tolist(), "obs_std": ds.obs_std.tolist(),
                             "returns": [e.ret for e in ds.episodes]}}
    for name, overrides in MODELS.items():
        run = root / name
        result = Trainer(data, run, RunRequest(preset="tiny", model=overrides, train={
            "steps": TRAIN_STEPS, "log_every": 1, "eval_every": TRAIN_STEPS, "checkpoint_every": TRAIN_STEPS}),
            **QUIET).run()
        with open(run / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("loss")]
        losses = {k: [float(r[k]) for r in rows] for k in LOSS_KEYS if rows and rows[0].get(k)}
        entry = {"losses": losses, "eval": sorted(result.values())}
        if name != "mrcom_literal":
            model, _ = load_model(run)
            export = root / f"export-{name}"
            export_model(model, export, formats=("onnx",), horizon=3, blocks=False, source={"data": str(data)},
                         log=lambda s: None)
            entry["rollout_error"] = {kind: runtime_error(export, data, 8, 3, 0, mean_latents=kind == "mean")[
                "open_loop_error"] for kind in ("mean", "sampled")}
            rt = Runtime(export, seed=3)
            prompt, real = prompts_from_dataset(ds, rt.context_len, 3, 4, seed=1)
            rt.reset(*prompt)
            roll = rt.rollout(real["action"], 3)
            entry["runtime"] = {"obs": np.round(roll["obs"][:, :, :3], 6).tolist(),
                                "reward": np.round(roll["reward"], 6).tolist()}
        out[name] = entry
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        numbers = run_pipeline(Path(tmp))
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(numbers, indent=1) + "\n")
    print(f"wrote {REFERENCE}", file=sys.stderr)
