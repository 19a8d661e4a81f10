"""``mrcom reproduce``: the paper's protocol end to end, written as tables and plots (§5).

For each training split of a table: collect the training data (merged hopper + walker + cheetah), train
every world model once (MrCoM, the baselines, optionally the ablations), export each, measure their
15-step open-loop prediction error on fresh in-distribution and out-of-distribution data, then adapt SAC
on each domain, range and seed with each model's rollouts (plus model-free SAC), and write the tables in
the paper's layout. Every stage writes its result into ``OUT`` and is skipped when found there, so a
killed run resumes where it stopped.

Budgets (one table, per split): ``smoke`` checks the pipeline in minutes (tiny everything, random
behaviour data); ``small`` fits a few hours on a 2-core CPU; ``paper`` is the paper's scale, for a GPU.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from mrcom_core.errors import UserInputError, check_int
from mrcom_core.io.files import read_json, write_json_atomic
from mrcom_core.io.locks import folder_lock
from mrcom_core.io.outputs import a, folder_kind
from mrcom_core.registry import MODELS, model_class
from mrcom_export.exporter import export_model
from mrcom_export.manifest import ExportError, read_manifest

from ..datasets.collect import CollectConfig, collect
from ..datasets.dataset import is_complete
from ..rl.adapt import AdaptConfig, Adapter
from ..rl.adapt_checkpoint import check_config
from ..rl.adapt_config import WORLD_MODEL_FIELDS
from ..rl.scoring import FLOORS, floor_scores
from ..rollout import runtime_error
from ..training.checkpoint import latest_checkpoint, load_model, read_state
from ..training.config import RunRequest
from ..training.trainer import Trainer
from ..workers import WorkerPool
from .budgets import BUDGETS, Budget, customized
from .error_tables import write_error_summary, write_error_tables
from .tables import ABLATED, ERROR_HORIZON, ERROR_ROLLOUTS, LITERAL, write_outputs, write_summary

TABLE_SPLITS = {1: ("t1-a5b20", "t1-a10b50"), 2: ("t2-a5", "t2-a10"),
                3: ("t3-add-g", "t3-add-d", "t3-msk-r", "t3-msk-f")}
SAC, SAC_G = "sac", "sac-g"  # the model-free arms: G = 1 update per env step, and the model-based arms' G
MODEL_FREE = (SAC, SAC_G)
ORACLE = "oracle"  # the model-based loop with the target's own simulator imagining (mrcom_train.rl.oracle)
REFERENCE = (*MODEL_FREE, ORACLE)  # the arms without a world model of their own (no data, training or export)
#: adaptation variants of MrCoM's arm, run only when ``--arms`` names them: arm → AdaptConfig overrides (they
#: adapt with MrCoM's export; a refit fine-tunes MrCoM's training run)
VARIANTS = {"mrcom+refit-heads": {"refit": "heads"}, "mrcom+refit-all": {"refit": "all"},
            "mrcom+refit-all+gate": {"refit": "all", "gate": "truncate"},
            "mrcom+follow": {"real_ratio_mode": "model_error"}}
VARIANT_LABELS = {"mrcom+refit-heads": "Ours + refit (heads)", "mrcom+refit-all": "Ours + refit (all)",
                  "mrcom+refit-all+gate": "Ours + refit (all) + ensemble gate",
                  "mrcom+follow": "Ours + real ratio follows"}
WHAT = ("all", "error")  # what to run: the whole protocol, or only the prediction errors (no RL)


def model_methods(ablations: bool = False) -> dict[str, tuple[dict, tuple[str, ...]]]:
    """Method name → (model overrides, ablations): every registered world model (by registry name), plus,
    when asked, MrCoM's ablations (``w/o d`` …) and MrCoM as eq. 6 reads literally (``literal``: no
    ``u_on_d``, no overshooting; see :class:`~mrcom_core.models.mrcom.MrCoMOptions`)."""
    methods = {name: ({"model_type": name}, ()) for name in MODELS}
    if ablations:
        methods |= {f"{ABLATED}{a.removeprefix('no_')}": ({}, (a,)) for a in model_class("mrcom").ablations}
        methods[LITERAL] = ({"u_on_d": False, "overshoot_horizon": 0}, ())
    return methods


def label(method: str) -> str:
    """A method's column title: the model class's label (``Ours``, ``DreamerV3`` …)."""
    if method == SAC:
        return "SAC (G=1)"
    if method == SAC_G:
        return "SAC (same G)"
    if method == LITERAL:
        return "Ours (eq. 6 literal)"
    if method == ORACLE:
        return "Oracle model"
    if method in VARIANT_LABELS:
        return VARIANT_LABELS[method]
    return MODELS[method].label if method in MODELS else method


def _done(path: Path) -> bool:
    return path.is_file()


def _exported(export: Path) -> bool:
    """Whether ``export`` holds an export this mrcom reads (one of an older format version is exported again)."""
    try:
        read_manifest(export, verify=False)
    except ExportError:
        return False
    return True


#: the layout of a split's ``errors/METHOD.json`` (a file of another version is measured again)
ERRORS_VERSION = 2


def _measured(err_file: Path) -> bool:
    """Whether ``err_file`` holds the open-loop errors in this version's layout."""
    return err_file.is_file() and read_json(err_file, "prediction-error file").get("version") == ERRORS_VERSION


def run_reproduction(table: int, budget_name: str, seeds: int, out: str | Path, *, splits: tuple[str, ...] = (),
                     ablations: bool = False, workers: int = 1, what: str = "all", arms: tuple[str, ...] = (),
                     adapt: dict | None = None, domains: tuple[str, ...] = (),
                     log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the protocol; returns ``{split: {range: {domain: {method: [scores]}}}}`` (empty with
    ``what="error"``, which stops after the prediction errors: no adaptation). ``arms``: only these methods
    (world models by registry name, ablations with ``ablations``, :data:`REFERENCE`'s ``sac``, ``sac-g``,
    ``oracle``, and MrCoM's adaptation :data:`VARIANTS`, which only run when named; default all but those);
    with no world model among them nothing is collected, trained or exported. ``adapt`` and ``domains``
    customize the budget's adaptation (:func:`~mrcom_train.experiments.budgets.customized`)."""
    if what not in WHAT:
        raise UserInputError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    if table not in TABLE_SPLITS:
        raise UserInputError(f"unknown table {table}; choose one of {', '.join(map(str, TABLE_SPLITS))}")
    if budget_name not in BUDGETS:
        raise UserInputError(f"unknown budget {budget_name!r}; choose one of {', '.join(BUDGETS)}")
    check_int("--seeds", seeds)
    chosen = splits or TABLE_SPLITS[table]
    for s in chosen:
        if s not in TABLE_SPLITS[table]:
            raise UserInputError(f"split {s!r} is not part of table {table} ({', '.join(TABLE_SPLITS[table])})")
    methods = model_methods(ablations)
    known = [*methods, *REFERENCE, *VARIANTS]
    unknown = [a for a in arms if a not in known]
    if unknown:
        raise UserInputError(f"--arms: unknown arm {unknown[0]!r}; choose from {', '.join(known)}")
    variants = tuple(v for v in VARIANTS if v in arms)
    if arms:  # a variant needs MrCoM's model (trained and measured; its own arm only when named too)
        methods = {m: v for m, v in methods.items() if m in arms or (m == "mrcom" and variants)}
    cell_arms = [*(m for m in methods if not arms or m in arms), *(a for a in REFERENCE if not arms or a in arms),
                 *variants]
    if what == "error" and not methods:
        raise UserInputError("--what error measures world models, and --arms names none")
    b = customized(BUDGETS[budget_name], adapt, domains)
    for split in chosen:  # every arm's adaptation config, before any work (a bad setting is one line now, not later)
        for method in cell_arms:
            for domain in b.cell_domains:
                _cell_config(split, "in", domain, method, 0, b)
    out = Path(out)
    _not_another_kind(out)  # before a lock file is made in it
    with folder_lock(out, "mrcom reproduce"):
        _not_another_kind(out)
        return _reproduce(table, b, budget_name, seeds, out, chosen, methods, cell_arms, workers, what, log)


def _not_another_kind(out: Path) -> None:
    """Refuse an ``out`` that another command made (a dataset, run or export): reproduce writes its own tree
    (SPLIT/data, models, exports, cells) and summaries into it."""
    kind = folder_kind(out)
    if kind is not None:
        raise UserInputError(f"output folder {out} is {a(kind)}, not a reproduction; choose another folder")


def _reproduce(table: int, b: Budget, budget_name: str, seeds: int, out: Path, chosen, methods: dict,
               arms: list[str], workers: int, what: str, log: Callable[[str], None]) -> dict:
    """The protocol for the ``chosen`` splits: ``methods`` are the world models to train and measure, ``arms``
    the adaptation cells' methods."""
    results: dict = {}
    for split in chosen:
        root = out / split
        errors = _world_models(root, split, b, methods, workers, log) if methods else {}
        if what == "error":
            continue
        cells = [(rng_name, domain, method, seed) for seed in range(seeds) for rng_name in ("in", "ood")
                 for domain in b.cell_domains for method in arms]  # seed-major: early cells cover all
        done = [c for c in cells if _done(_cell_dir(root, *c) / "result.json")]
        for c in done:  # a finished cell counts only if it ran with this run's settings
            check_config(_cell_dir(root, *c), _cell_config(split, *c, b))
        _run_cells(root, split, [c for c in cells if c not in done], b, workers, log)
        curves: dict = {}
        floors: dict = {}
        for rng_name, domain, method, seed in sorted(cells, key=lambda c: c[3]):
            score, curve, floor = _read_cell(_cell_dir(root, rng_name, domain, method, seed))
            results.setdefault(split, {}).setdefault(rng_name, {}).setdefault(domain, {}).setdefault(
                method, []).append(score)
            curves.setdefault((rng_name, domain, method), []).append(curve)
            per_seed = floors.setdefault((rng_name, domain), {})
            if seed not in per_seed:  # every method's cell of this seed has the same target scenario
                config = _cell_config(split, rng_name, domain, SAC, seed, b)
                per_seed[seed] = floor or floor_scores(config.target(), config.eval_episodes, seed)
        per_floor = {key: {name: [per[s][name] for s in sorted(per)] for name in FLOORS} for key, per in floors.items()}
        write_outputs(root, split, results[split], per_floor, errors, curves, arms, label, (*REFERENCE, *VARIANTS))
    # the summaries cover every split of the table found under ``out``, so runs of one split at a time add up
    write_error_summary(out, table, budget_name, _present(out, table, "errors.md"))
    if what == "all":
        write_summary(out, table, budget_name, results, _present(out, table, "table.md"), asdict(b))
    return results


def _world_models(root: Path, split: str, b: Budget, methods: dict, workers: int,
                  log: Callable[[str], None]) -> dict:
    """The world models' part of a split: collect its training and evaluation data, train, export and measure
    every method's model (each step skipped when done); returns ``{method: prediction errors}``."""
    quiet = dict(progress=False, log=lambda s: None)
    data = root / "data"
    if not is_complete(data):
        log(f"[{split}] collecting training data ({b.behaviour} behaviour policies)")
        collect(CollectConfig(split=split, domains=b.domains, scenarios_per_domain=b.scenarios_per_domain,
                              episodes_per_scenario=b.episodes_per_scenario, episode_length=b.episode_length,
                              policy=b.behaviour, workers=workers, seed=0, **b.collect), data, resume=True,
                **quiet)
    evals = {}
    for rng_name in ("in", "ood"):
        path = root / f"eval-{rng_name}"
        if not is_complete(path):
            collect(CollectConfig(split=split, range=rng_name, domains=b.domains,
                                  scenarios_per_domain=b.eval_scenarios,
                                  episodes_per_scenario=1, episode_length=b.episode_length, policy="random",
                                  seed=1, workers=workers), path, resume=True, **quiet)
        evals[rng_name] = path
    errors: dict = {}
    _train_models(root, split, [m for m in methods if not _trained(root / "models" / m, b)], methods, b,
                  workers, log)
    for method in methods:
        run, export = root / "models" / method, root / "exports" / method
        if not _exported(export):
            log(f"[{split}] exporting {method}")
            model, state = load_model(run)
            export_model(model, export, formats=("onnx",), horizon=b.export_horizon, blocks=False, force=True,
                         source={"run": str(run.resolve()), "step": state["step"], "data": str(data.resolve())},
                         log=lambda s: None)
        err_file = root / "errors" / f"{method}.json"
        if not _measured(err_file):
            per = {"version": ERRORS_VERSION, **{
                kind: {r: runtime_error(export, evals[r], ERROR_ROLLOUTS, ERROR_HORIZON, 0, mean_latents=kind == "mean")
                       for r in evals} for kind in ("mean", "sampled")}}
            err_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(err_file, per)
        errors[method] = read_json(err_file, "prediction-error file")
    write_error_tables(root, split, errors, list(methods), label)
    return errors


def _present(out: Path, table: int, name: str) -> tuple[str, ...]:
    """The table's splits (in the paper's order) whose ``out/SPLIT/name`` exists."""
    return tuple(s for s in TABLE_SPLITS[table] if (out / s / name).is_file())


def _trained(run: Path, b: Budget) -> bool:
    ckpt = latest_checkpoint(run) if run.exists() else None
    return ckpt is not None and read_state(ckpt)["step"] >= b.train_steps


def _train_model(root: Path, method: str, overrides: dict, abl: tuple[str, ...], b: Budget) -> str:
    """Train (or resume) one method's world model on the split's data into ``root/models/METHOD``."""
    Trainer(root / "data", root / "models" / method, RunRequest(preset=b.preset, ablations=abl, model=overrides,
                                                               train={"steps": b.train_steps}),
            resume=True, progress=False, log=lambda s: None).run()
    return method


def _train_model_in_worker(args: tuple) -> str:
    return _train_model(*args)


def _train_models(root: Path, split: str, pending: list[str], methods: dict, b: Budget, workers: int,
                  log: Callable[[str], None]) -> None:
    """Train the pending methods' models, ``workers`` at a time in spawned one-thread processes (on 2 cores two
    one-thread trainings do ~1.6× the work of one two-thread training; two two-thread ones collapse)."""
    if workers <= 1 or len(pending) <= 1:
        for method in pending:
            log(f"[{split}] training {method}")
            _train_model(root, method, *methods[method], b)
        return
    log(f"[{split}] training {len(pending)} models, {workers} at a time: {', '.join(pending)}")
    with WorkerPool(workers, _cell_worker_init) as pool:
        pool.run(_train_model_in_worker, [(root, m, *methods[m], b) for m in pending],
                 on_result=lambda args, method: log(f"[{split}] trained {method}"))


def _cell_dir(root: Path, rng_name: str, domain: str, method: str, seed: int) -> Path:
    return root / "adapt" / rng_name / domain / method.replace("/", "").replace(" ", "_") / f"s{seed}"


def _cell_config(split: str, rng_name: str, domain: str, method: str, seed: int, b: Budget) -> AdaptConfig:
    steps = b.reference_env_steps if method == SAC and b.reference_env_steps else b.adapt_env_steps
    return AdaptConfig(split=split, range=rng_name, domain=domain, seed=seed, env_steps=steps,
                       episode_length=b.adapt_episode_length, eval_every=b.eval_every or max(1, steps // 4),
                       checkpoint_every=max(b.adapt_episode_length, steps // 10),
                       **{**{k: v for k, v in b.adapt.items()
                             if method not in REFERENCE or k not in WORLD_MODEL_FIELDS},
                          "use_model": method not in MODEL_FREE,
                          **({"updates_per_step": 1} if method == SAC else {}),
                          **({"imagination": "oracle"} if method == ORACLE else {}), **VARIANTS.get(method, {})})


def _run_cell(root: Path, split: str, rng_name: str, domain: str, method: str, seed: int, b: Budget,
              threads: int | None = None) -> float:
    """One adaptation run into its cell folder (resuming a killed one from its last checkpoint); returns
    its final normalized return."""
    config = _cell_config(split, rng_name, domain, method, seed, b)
    model = "mrcom" if method in VARIANTS else method
    export = None if method in REFERENCE else root / "exports" / model
    return Adapter(config, _cell_dir(root, rng_name, domain, method, seed), export, resume=True, progress=False,
                   log=lambda s: None, threads=threads, run=root / "models" / model).run()["normalized_return"]


def _cell_worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # W adapters (or trainers) on W cores must not fight over intra-op threads


def _run_cell_in_worker(args: tuple) -> float:
    return _run_cell(*args, threads=1)


def _run_cells(root: Path, split: str, pending: list[tuple], b: Budget, workers: int,
               log: Callable[[str], None]) -> None:
    """Run the pending ``(range, domain, method, seed)`` cells, ``workers`` at a time in spawned processes."""
    if not pending:
        return
    name = "{2} on {1} ({0}, seed {3})".format
    if workers <= 1 or len(pending) == 1:
        for i, cell in enumerate(pending):
            log(f"[{split}] adapting {name(*cell)} [{i + 1}/{len(pending)}]")
            _run_cell(root, split, *cell, b)
        return
    log(f"[{split}] adapting {len(pending)} cells, {workers} at a time")
    finished = 0

    def report(args: tuple, score: float) -> None:
        nonlocal finished
        finished += 1
        log(f"[{split}] adapted {name(*args[2:6])}: normalized return {score:.1f} [{finished}/{len(pending)}]")

    with WorkerPool(workers, _cell_worker_init) as pool:
        pool.run(_run_cell_in_worker, [(root, split, *cell, b) for cell in pending], on_result=report)


def _read_cell(cell: Path) -> tuple[float, list[tuple[int, float]], dict | None]:
    """A finished cell's final score, learning curve and floors (None in results written before floors)."""
    result = read_json(cell / "result.json", "adaptation result")
    score = result.get("normalized_return")
    if not isinstance(score, int | float):
        raise UserInputError(f"{cell / 'result.json'} has no normalized_return; delete it to run the cell again")
    with open(cell / "metrics.csv") as f:
        curve = [(int(r["env_steps"]), float(r["normalized_return"])) for r in csv.DictReader(f)
                 if r["normalized_return"]]  # rows of refits and real-ratio rounds have none
    floors = result.get("floors")
    return score, curve, floors if isinstance(floors, dict) and set(FLOORS) <= set(floors) else None
