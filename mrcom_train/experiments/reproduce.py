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
from mrcom_core.io.files import read_json
from mrcom_core.io.locks import folder_lock
from mrcom_core.io.outputs import a, folder_kind
from mrcom_core.registry import MODELS, model_class

from ..datasets.dataset import is_complete
from ..executors import Task, make_executor
from ..rl.adapt_checkpoint import check_config
from ..rl.scoring import FLOORS, floor_scores
from .budgets import BUDGETS, Budget, customized
from .error_tables import write_error_summary, write_error_tables
from .tables import ABLATED, LITERAL, write_outputs, write_summary
from .tasks import (
    ORACLE,
    REFERENCE,
    SAC,
    SAC_G,
    VARIANTS,
    cell_config,
    cell_dir,
    cell_model,
    collect_data,
    export_and_measure,
    exported,
    measured,
    run_cell,
    train_model,
    trained,
)

TABLE_SPLITS = {1: ("t1-a5b20", "t1-a10b50"), 2: ("t2-a5", "t2-a10"),
                3: ("t3-add-g", "t3-add-d", "t3-msk-r", "t3-msk-f")}
VARIANT_LABELS = {"mrcom+refit-heads": "Ours + refit (heads)", "mrcom+refit-all": "Ours + refit (all)",
                  "mrcom+refit-all+gate": "Ours + refit (all) + ensemble gate",
                  "mrcom+reward": "Ours + learned reward",
                  "mrcom+refit-all+reward": "Ours + refit (all) + learned reward",
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


def run_reproduction(table: int, budget_name: str, seeds: int, out: str | Path, *, splits: tuple[str, ...] = (),
                     ablations: bool = False, workers: int = 1, what: str = "all", arms: tuple[str, ...] = (),
                     adapt: dict | None = None, domains: tuple[str, ...] = (), executor: str = "local",
                     ray_address: str | None = None, progress: bool = False,
                     log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the protocol; returns ``{split: {range: {domain: {method: [scores]}}}}`` (empty with
    ``what="error"``, which stops after the prediction errors: no adaptation). ``arms``: only these methods
    (world models by registry name, ablations with ``ablations``, :data:`REFERENCE`'s ``sac``, ``sac-g``,
    ``oracle``, and MrCoM's adaptation :data:`VARIANTS`, which only run when named; default all but those);
    with no world model among them nothing is collected, trained or exported. ``adapt`` and ``domains``
    customize the budget's adaptation (:func:`~mrcom_train.experiments.budgets.customized`). ``executor``:
    ``local`` (``workers`` processes) or ``ray`` (a local Ray instance of ``workers`` CPUs, or the cluster at
    ``ray_address``; :mod:`mrcom_train.executors`). Tasks that fail are reported and the others go on; then
    :class:`TasksFailed` is raised (a rerun retries them)."""
    runner = make_executor(executor, workers, ray_address)
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
                cell_config(split, "in", domain, method, 0, b)
    out = Path(out)
    _not_another_kind(out)  # before a lock file is made in it
    with folder_lock(out, "mrcom reproduce"):
        _not_another_kind(out)
        return _reproduce(table, b, budget_name, seeds, out, chosen, methods, cell_arms, runner, what, log, progress)


def _not_another_kind(out: Path) -> None:
    """Refuse an ``out`` that another command made (a dataset, run or export): reproduce writes its own tree
    (SPLIT/data, models, exports, cells) and summaries into it."""
    kind = folder_kind(out)
    if kind is not None:
        raise UserInputError(f"output folder {out} is {a(kind)}, not a reproduction; choose another folder")


def _reproduce(table: int, b: Budget, budget_name: str, seeds: int, out: Path, chosen, methods: dict,
               arms: list[str], executor, what: str, log: Callable[[str], None], progress: bool) -> dict:
    """The protocol for the ``chosen`` splits as one graph of tasks run by ``executor``: ``methods`` are the world
    models to train and measure, ``arms`` the adaptation cells' methods. Then the tables, from the files."""
    cells = {split: [(rng_name, domain, method, seed) for seed in range(seeds) for rng_name in ("in", "ood")
                     for domain in b.cell_domains for method in arms]  # seed-major: early cells cover all
             for split in chosen} if what == "all" else {}
    for split, split_cells in cells.items():  # a finished cell counts only if it ran with this run's settings
        for c in split_cells:
            if (cell_dir(out / split, *c) / "result.json").is_file():
                check_config(cell_dir(out / split, *c), cell_config(split, *c, b))
    graph = [t for split in chosen for t in _split_tasks(out / split, split, b, methods, cells.get(split, []),
                                                          executor)]
    failures = _run(graph, executor, log, progress)
    results: dict = {}
    for split in chosen:
        root = out / split
        if any(key.startswith(f"{split}/") for key in failures):
            continue  # its tables wait for the rerun that finishes it
        errors = {m: read_json(root / "errors" / f"{m}.json", "prediction-error file") for m in methods}
        if methods:
            write_error_tables(root, split, errors, list(methods), label)
        if what == "all":
            results[split] = _tables(root, split, cells[split], errors, arms, b)
    # the summaries cover every split of the table found under ``out``, so runs of one split at a time add up
    write_error_summary(out, table, budget_name, _present(out, table, "errors.md"))
    if what == "all":
        write_summary(out, table, budget_name, results, _present(out, table, "table.md"), asdict(b))
    if failures:
        first = next(iter(failures.items()))
        raise TasksFailed(f"{len(failures)} of {len(graph)} tasks failed (the first: {first[0]}: {first[1]}); the "
                          f"others are done and kept: run the same command again to retry")
    return results


class TasksFailed(RuntimeError):
    """Some tasks of a reproduction failed (each was reported as it failed); the rest are done and kept."""


def _split_tasks(root: Path, split: str, b: Budget, methods: dict, cells: list[tuple], executor) -> list[Task]:
    """The tasks of one split that are not done yet, with their dependencies (data → models → exports →
    cells); a task whose result exists is left out, and one that finds its result on a retry returns at once."""
    workers = executor.workers  # processes a collection may start itself (1 under Ray, which places every CPU)
    one = None if executor.in_process else 1  # torch threads of a cell: one per task when tasks run side by side
    tasks: list[Task] = []
    datasets = ("data", "eval-in", "eval-ood") if methods else ()
    for which in datasets:
        if not is_complete(root / which):
            tasks.append(Task(f"{split}/{which}", collect_data, (root, split, b, which, workers),
                              label=f"[{split}] collected {which}"))
    have = {t.key for t in tasks}
    deps = lambda *keys: tuple(k for k in keys if k in have)  # noqa: E731 - only the tasks still to do
    for method in methods:
        if not trained(root / "models" / method, b):
            tasks.append(Task(f"{split}/train/{method}", train_model, (root, method, *methods[method], b),
                              deps(f"{split}/data"), label=f"[{split}] trained {method}", gpu=True))
            have.add(tasks[-1].key)
        if not (exported(root / "exports" / method) and measured(root / "errors" / f"{method}.json")):
            tasks.append(Task(f"{split}/measure/{method}", export_and_measure, (root, method, b),
                              deps(f"{split}/train/{method}", f"{split}/eval-in", f"{split}/eval-ood"),
                              label=f"[{split}] exported and measured {method}"))
            have.add(tasks[-1].key)
    for rng_name, domain, method, seed in cells:
        if (cell_dir(root, rng_name, domain, method, seed) / "result.json").is_file():
            continue
        model = cell_model(method)
        needs = deps(f"{split}/measure/{model}", f"{split}/train/{model}") if model else ()
        tasks.append(Task(f"{split}/adapt/{rng_name}/{domain}/{method}/s{seed}", run_cell,
                          (root, split, rng_name, domain, method, seed, b, one), needs,
                          label=f"[{split}] adapted {method} on {domain} ({rng_name}, seed {seed})"))
    return tasks


def _run(graph: list[Task], executor, log: Callable[[str], None], progress: bool) -> dict[str, str]:
    """Run the graph, one line per finished or failed task and a bar over the adaptation cells (with the
    failures counted); returns the failures."""
    if not graph:
        return {}
    from tqdm import tqdm

    cells = [t for t in graph if t.fn is run_cell]
    how = "in this process" if executor.in_process else f"on {executor.describe()}"
    log(f"{len(graph)} tasks to do ({len(cells)} adaptation cells), {how}")
    bar = tqdm(total=len(cells), unit="cell", disable=not progress or not cells, dynamic_ncols=True)
    failed = 0

    def on_done(task: Task, result, error: str | None) -> None:
        nonlocal failed
        if error is not None:
            failed += 1
            line = f"{task.key} FAILED: {error}"
        elif task.fn is run_cell:
            line = f"{task.label}: normalized return {result:.1f}"
        else:
            line = task.label
        (bar.write if not bar.disable else log)(line)
        if task.fn is run_cell:
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)

    try:
        return executor.run(graph, on_done).failures
    finally:
        bar.close()


def _tables(root: Path, split: str, cells: list[tuple], errors: dict, arms: list[str], b: Budget) -> dict:
    """Read every cell of the split (and its floors) and write its tables; returns ``{range: {domain: {method:
    [scores]}}}``."""
    results: dict = {}
    curves: dict = {}
    floors: dict = {}
    for rng_name, domain, method, seed in sorted(cells, key=lambda c: c[3]):
        score, curve, floor = _read_cell(cell_dir(root, rng_name, domain, method, seed))
        results.setdefault(rng_name, {}).setdefault(domain, {}).setdefault(method, []).append(score)
        curves.setdefault((rng_name, domain, method), []).append(curve)
        per_seed = floors.setdefault((rng_name, domain), {})
        if seed not in per_seed:  # every method's cell of this seed has the same target scenario
            config = cell_config(split, rng_name, domain, SAC, seed, b)
            per_seed[seed] = floor or floor_scores(config.target(), config.eval_episodes, seed)
    per_floor = {key: {name: [per[s][name] for s in sorted(per)] for name in FLOORS} for key, per in floors.items()}
    write_outputs(root, split, results, per_floor, errors, curves, arms, label, (*REFERENCE, *VARIANTS))
    return results


def _present(out: Path, table: int, name: str) -> tuple[str, ...]:
    """The table's splits (in the paper's order) whose ``out/SPLIT/name`` exists."""
    return tuple(s for s in TABLE_SPLITS[table] if (out / s / name).is_file())


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
