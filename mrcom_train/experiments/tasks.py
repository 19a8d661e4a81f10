"""The units of ``mrcom reproduce``, each a function of its arguments that writes its result into the split's
folder and does nothing when that result is there (so a retry or a rerun is safe): collect a dataset, train a
world model, export and measure it, adapt one cell. :mod:`~mrcom_train.experiments.reproduce` puts them in a
graph and an executor (:mod:`mrcom_train.executors`) runs it, locally or on a Ray cluster.

A split's folder: ``data/`` and ``eval-in/``, ``eval-ood/`` (datasets), ``models/METHOD`` (training runs),
``exports/METHOD`` and ``errors/METHOD.json`` (the export and its prediction errors),
``adapt/RANGE/DOMAIN/ARM/sSEED`` (adaptation cells, each with its ``result.json``).
"""

from __future__ import annotations

from pathlib import Path

from mrcom_core.io.files import read_json, write_json_atomic
from mrcom_export.exporter import export_model
from mrcom_export.manifest import ExportError, read_manifest

from ..datasets.collect import CollectConfig, collect
from ..datasets.dataset import is_complete
from ..rl.adapt import AdaptConfig, Adapter
from ..rl.adapt_config import WORLD_MODEL_FIELDS
from ..rollout import runtime_error
from ..training.checkpoint import latest_checkpoint, load_model, read_state
from ..training.config import RunRequest
from ..training.trainer import Trainer
from .budgets import Budget
from .tables import ERROR_HORIZON, ERROR_ROLLOUTS

SAC, SAC_G = "sac", "sac-g"  # the model-free arms: G = 1 update per env step, and the model-based arms' G
MODEL_FREE = (SAC, SAC_G)
ORACLE = "oracle"  # the model-based loop with the target's own simulator imagining (mrcom_train.rl.oracle)
REFERENCE = (*MODEL_FREE, ORACLE)  # the arms without a world model of their own (no data, training or export)
#: adaptation variants of MrCoM's arm, run only when ``--arms`` names them: arm → AdaptConfig overrides (they
#: adapt with MrCoM's export; a refit fine-tunes MrCoM's training run)
VARIANTS = {"mrcom+refit-heads": {"refit": "heads"}, "mrcom+refit-all": {"refit": "all"},
            "mrcom+refit-all+gate": {"refit": "all", "gate": "truncate"},
            "mrcom+reward": {"imagined_reward": "learned"},
            "mrcom+refit-all+reward": {"refit": "all", "imagined_reward": "learned"},
            "mrcom+follow": {"real_ratio_mode": "model_error"}}
#: the layout of a split's ``errors/METHOD.json`` (a file of another version is measured again)
ERRORS_VERSION = 2
QUIET = dict(progress=False, log=lambda s: None)


# ------------------------------------------------------------------------------------------------- data
def dataset_dir(root: Path, which: str) -> Path:
    """``data`` (the training data) or ``eval-in`` / ``eval-ood`` (fresh scenarios for the prediction errors)."""
    return root / which


def collect_data(root: Path, split: str, b: Budget, which: str, workers: int = 1) -> str:
    """Collect (or finish) the split's training data (``which="data"``: the budget's behaviour policies) or an
    evaluation set (``"eval-in"``, ``"eval-ood"``: random behaviour, its own scenarios)."""
    path = dataset_dir(root, which)
    if is_complete(path):
        return which
    if which == "data":
        config = CollectConfig(split=split, domains=b.domains, scenarios_per_domain=b.scenarios_per_domain,
                               episodes_per_scenario=b.episodes_per_scenario, episode_length=b.episode_length,
                               policy=b.behaviour, workers=workers, seed=0, **b.collect)
    else:
        config = CollectConfig(split=split, range=which.removeprefix("eval-"), domains=b.domains,
                               scenarios_per_domain=b.eval_scenarios, episodes_per_scenario=1,
                               episode_length=b.episode_length, policy="random", seed=1, workers=workers)
    collect(config, path, resume=True, **QUIET)
    return which


# --------------------------------------------------------------------------------------- world models
def trained(run: Path, b: Budget) -> bool:
    ckpt = latest_checkpoint(run) if run.exists() else None
    return ckpt is not None and read_state(ckpt)["step"] >= b.train_steps


def train_model(root: Path, method: str, overrides: dict, abl: tuple[str, ...], b: Budget) -> str:
    """Train (or resume) one method's world model on the split's data into ``root/models/METHOD``."""
    run = root / "models" / method
    if not trained(run, b):
        Trainer(root / "data", run, RunRequest(preset=b.preset, ablations=abl, model=overrides,
                                               train={"steps": b.train_steps}), resume=True, **QUIET).run()
    return method


def exported(export: Path) -> bool:
    """Whether ``export`` holds an export this mrcom reads (one of an older format version is exported again)."""
    try:
        read_manifest(export, verify=False)
    except ExportError:
        return False
    return True


def measured(err_file: Path) -> bool:
    """Whether ``err_file`` holds the open-loop errors in this version's layout."""
    return err_file.is_file() and read_json(err_file, "prediction-error file").get("version") == ERRORS_VERSION


def export_and_measure(root: Path, method: str, b: Budget) -> str:
    """Export the method's best checkpoint (ONNX) and measure its open-loop prediction errors on the split's
    evaluation sets into ``errors/METHOD.json`` (mean and sampled latents, in and out of distribution)."""
    run, export = root / "models" / method, root / "exports" / method
    if not exported(export):
        model, state = load_model(run)
        export_model(model, export, formats=("onnx",), horizon=b.export_horizon, blocks=False, force=True,
                     source={"run": str(run.resolve()), "step": state["step"], "data": str((root / "data").resolve())},
                     log=lambda s: None)
    err_file = root / "errors" / f"{method}.json"
    if not measured(err_file):
        evals = {r: dataset_dir(root, f"eval-{r}") for r in ("in", "ood")}
        per = {"version": ERRORS_VERSION, **{
            kind: {r: runtime_error(export, evals[r], ERROR_ROLLOUTS, ERROR_HORIZON, 0, mean_latents=kind == "mean")
                   for r in evals} for kind in ("mean", "sampled")}}
        err_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(err_file, per)
    return method


# ----------------------------------------------------------------------------------------- adaptation
def cell_dir(root: Path, rng_name: str, domain: str, method: str, seed: int) -> Path:
    return root / "adapt" / rng_name / domain / method.replace("/", "").replace(" ", "_") / f"s{seed}"


def cell_config(split: str, rng_name: str, domain: str, method: str, seed: int, b: Budget) -> AdaptConfig:
    """The adaptation config of one cell: the budget's settings, with each arm's own (G = 1 for SAC, the oracle's
    imagination, a variant's overrides)."""
    steps = b.reference_env_steps if method == SAC and b.reference_env_steps else b.adapt_env_steps
    return AdaptConfig(split=split, range=rng_name, domain=domain, seed=seed, env_steps=steps,
                       episode_length=b.adapt_episode_length, eval_every=b.eval_every or max(1, steps // 4),
                       checkpoint_every=max(b.adapt_episode_length, steps // 10),
                       **{**{k: v for k, v in b.adapt.items()
                             if method not in REFERENCE or k not in WORLD_MODEL_FIELDS},
                          "use_model": method not in MODEL_FREE,
                          **({"updates_per_step": 1} if method == SAC else {}),
                          **({"imagination": "oracle"} if method == ORACLE else {}), **VARIANTS.get(method, {})})


def cell_model(method: str) -> str | None:
    """The world model a cell's arm adapts with (None for the arms without one)."""
    return None if method in REFERENCE else "mrcom" if method in VARIANTS else method


def run_cell(root: Path, split: str, rng_name: str, domain: str, method: str, seed: int, b: Budget,
             threads: int | None = None) -> float:
    """One adaptation run into its cell folder (resuming a killed one from its last checkpoint; a finished one is
    read back); returns its final normalized return."""
    cell = cell_dir(root, rng_name, domain, method, seed)
    if (cell / "result.json").is_file():
        return read_json(cell / "result.json", "adaptation result")["normalized_return"]
    config = cell_config(split, rng_name, domain, method, seed, b)
    model = cell_model(method)
    export = None if model is None else root / "exports" / model
    run = root / "models" / ("mrcom" if method in VARIANTS else method)  # the run a refit fine-tunes
    return Adapter(config, cell, export, resume=True, progress=False, log=lambda s: None, threads=threads,
                   run=run).run()["normalized_return"]
