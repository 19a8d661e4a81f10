"""The ``mrcom adapt`` and ``mrcom reproduce`` commands (registered on the ``mrcom`` group by :mod:`.cli`)."""

from __future__ import annotations

import click

from .cli_options import BUDGET_NAMES, RANGES, DomainChoice, start_threads, threads_option


@click.command()
@click.option("--model", "export_dir", type=click.Path(), default=None,
              help="Export folder (mrcom export, ONNX) whose world model imagines rollouts.")
@click.option("--model-free", is_flag=True, help="Plain SAC with the same env-step budget (no --model).")
@click.option("--split", default="t1-a5b20", show_default=True, help="Named split (see `mrcom splits`).")
@click.option("--range", "range_", type=click.Choice(RANGES), default="in", show_default=True,
              help="The range of the split the target scenario is drawn from.")
@click.option("--domain", type=DomainChoice(), default="hopper", show_default=True,
              help="The target scenario's domain.")
@click.option("--env-steps", type=int, default=20_000, show_default=True, help="Real env steps in the target.")
@click.option("--episode-length", type=int, default=1000, show_default=True, help="Steps per real episode.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the target scenario and the agent.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Any other AdaptConfig field, e.g. --set real_ratio=0.2 --set horizon_end=10.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Run folder: config.json, metrics.csv, tb/, checkpoints/, and when done result.json and "
                   "agent.pt (the final agent, for `mrcom export --policy`).")
@click.option("--run", "train_run", type=click.Path(file_okay=False), default=None,
              help="The training run behind --model, for --set refit=heads|all [default: the one its manifest "
                   "names].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="An adaptation run's config.json (or a JSON object of AdaptConfig fields): its settings, under "
                   "the flags and --set given here.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@threads_option
@click.pass_context
def adapt(ctx, export_dir, model_free, split, range_, domain, env_steps, episode_length, seed, sets, out, train_run,
          config_file, resume, no_progress, threads):
    """MBPO-style SAC in a target scenario with imagined rollouts from an exported world model."""
    from mrcom_core.config import apply_overrides, parse_assignments

    from .plots import plot_adaptation
    from .rl.adapt import AdaptConfig, Adapter
    from .rl.adapt_config import read_adapt_config

    params = {"split": "split", "range": "range_", "domain": "domain", "seed": "seed", "env_steps": "env_steps",
              "episode_length": "episode_length", "use_model": "model_free"}  # AdaptConfig field → flag
    flags = {**{field: ctx.params[param] for field, param in params.items()}, "use_model": not model_free}
    given = {f for f, p in params.items() if ctx.get_parameter_source(p) is click.core.ParameterSource.COMMANDLINE}
    saved = read_adapt_config(config_file) if config_file else {}
    # a --config file's settings replace the flags' defaults; flags given on the command line and --set win
    config = AdaptConfig(**{f: v for f, v in flags.items() if f in given or f not in saved})
    config = apply_overrides(config, {f: v for f, v in saved.items() if f not in given}, "adapt")
    config = apply_overrides(config, parse_assignments(sets), "adapt")
    model_free = not config.use_model
    threads = start_threads(threads)
    with Adapter(config, out, None if model_free else export_dir, resume=resume, progress=not no_progress,
                 log=click.echo, run=train_run, threads=threads) as adapter:
        result = adapter.run()
    click.echo(f"done: normalized return {result['normalized_return']:.1f} after {result['env_steps']} env steps "
               f"({result['imagined']} imagined transitions); run folder {out} (final agent: {out}/agent.pt)")
    if plot_adaptation(out):
        click.echo(f"learning curves: {out}/curves.png")


@click.command()
@click.option("--table", type=click.Choice(["1", "2", "3"]), required=True, help="The paper's table.")
@click.option("--budget", type=click.Choice(BUDGET_NAMES), default="smoke", show_default=True,
              help="How much data, training and adaptation (docs/results.md says what each costs).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Adaptation seeds per cell.")
@click.option("--splits", default="", help="Comma-separated subset of the table's training splits "
                                           "(e.g. t1-a10b50 for Table 1 (c)/(d)).")
@click.option("--ablations", is_flag=True, help="Also train and adapt MrCoM's four ablations and its literal-eq.-6 "
                                            "variant (five more models; paper Fig. 3).")
@click.option("--what", type=click.Choice(["all", "error"]), default="all", show_default=True,
              help="all: the whole protocol; error: stop after the prediction-error tables (no RL).")
@click.option("--workers", "-w", type=int, default=1, show_default=True,
              help="Tasks at a time (collection, world-model training, adaptation cells; one core each): local "
                   "worker processes, or the CPUs of the Ray instance --executor ray starts.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the tasks run: local processes, or Ray (pip install '.[cluster]'; every node must see "
                   "--out at the same path).")
@click.option("--ray-address", default=None, help="Join this Ray cluster (auto: the one this machine is part of) "
                                                  "instead of starting a local Ray instance.")
@click.option("--no-progress", is_flag=True, help="No progress bar over the adaptation cells.")
@click.option("--arms", default="", help="Comma-separated subset of the arms: world models by name (`mrcom "
                                         "models`), sac, sac-g, oracle [default: all].")
@click.option("--domains", default="", help="Comma-separated subset of the budget's domains to adapt on (the world "
                                            "models still learn every one) [default: all].")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="An adaptation setting for every arm, as `mrcom adapt --set` (SAC (G=1) keeps G = 1), e.g. --set "
                   "updates_per_step=20.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Reproduction folder (data, models, exports, adaptation cells, tables); resumable.")
@threads_option
def reproduce(table, budget, seeds, splits, ablations, what, workers, executor, ray_address, no_progress, arms,
              domains, sets, out, threads):
    """Run the paper's protocol for one table; resumable (finished cells are skipped)."""
    from mrcom_core.config import parse_assignments

    start_threads(threads)

    from .experiments.reproduce import run_reproduction

    chosen = tuple(s.strip() for s in splits.split(",") if s.strip())
    run_reproduction(int(table), budget, seeds, out, splits=chosen, ablations=ablations, workers=workers, what=what,
                     arms=tuple(a.strip() for a in arms.split(",") if a.strip()), adapt=parse_assignments(sets),
                     domains=tuple(d.strip() for d in domains.split(",") if d.strip()), executor=executor,
                     ray_address=ray_address, progress=not no_progress, log=click.echo)
    errors = f"{out}/errors{table}.md (+ per-split errors.csv, error_vs_horizon.png)"
    click.echo(f"done: {errors}" if what == "error" else
               f"done: {out}/table{table}.md (+ per-split table.csv, curves_*.png, prediction_error.png) and {errors}")
