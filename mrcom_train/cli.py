"""The ``mrcom`` command line (click). Errors the user can fix print one line and exit with status 2."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from mrcom_core.errors import Interrupted, UserInputError, os_error_message

from .cli_adapt import adapt, reproduce
from .cli_options import (
    EXPORT_FORMATS,
    OBS_FUNCTIONS,
    POLICIES,
    PRESETS,
    RANGES,
    start_threads,
    threads_option,
)

# What a Ctrl-C keeps, per resumable command (train and collect say it themselves, with what they kept).
_RESUME_HINTS = {
    "adapt": "the last checkpoint is kept; continue with the same command plus --resume",
    "reproduce": "finished stages and cells are kept; run the same command again to continue",
}


def _quiet_third_party() -> None:
    # dm_control imports glfw, which warns when there is no display; we never render.
    os.environ.setdefault("MUJOCO_GL", "disable")
    warnings.filterwarnings("ignore", module="glfw")
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)


def _domains(value: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in value.split(",") if d.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             invoke_without_command=True)
@click.version_option(package_name="mrcom")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """MrCoM: one world model for many MuJoCo scenarios — collect data, train, export, roll out, adapt."""
    _quiet_third_party()
    if ctx.invoked_subcommand is None:  # plain `mrcom`: the overview, not a usage error
        click.echo(ctx.get_help())


@cli.command()
@click.option("--split", default="t1-a5b20", show_default=True, help="Named split (see `mrcom splits`).")
@click.option("--range", "range_", type=click.Choice(RANGES), default="train", show_default=True,
              help="Which range of the split to draw scenarios from.")
@click.option("--domains", default=None, help="Comma-separated domains to collect [default: all].")
@click.option("--scenarios-per-domain", "-n", type=int, default=4, show_default=True,
              help="Scenarios drawn per domain.")
@click.option("--episodes-per-scenario", "-k", type=int, default=4, show_default=True,
              help="Episodes recorded per scenario.")
@click.option("--episode-length", type=int, default=1000, show_default=True, help="Steps per episode.")
@click.option("--policy", type=click.Choice(POLICIES), default="random", show_default=True,
              help="Behaviour policy: random actions, or a SAC agent trained per scenario (its whole replay is "
                   "recorded).")
@click.option("--workers", "-w", type=int, default=1, show_default=True,
              help="Worker processes (with --executor ray: the CPUs of the Ray instance it starts).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local processes, or scenario chains as Ray tasks (every node must see --out at the same path).")
@click.option("--ray-address", default=None, help="Join this Ray cluster (auto: this machine's) instead of starting "
                                                  "a local Ray instance.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds scenario sampling and episodes.")
@click.option("--alpha", type=float, default=None, help="Override the range's α (torso scale spread, %).")
@click.option("--beta", type=float, default=None, help="Override the range's β (target speed, % of v_max).")
@click.option("--obs-fn", type=click.Choice(OBS_FUNCTIONS), default=None,
              help="Override the range's observation function.")
@click.option("--sac-hidden", type=int, default=256, show_default=True, help="SAC hidden layer width.")
@click.option("--sac-learning-starts", type=int, default=1000, show_default=True,
              help="Random-action steps before SAC updates begin, per scenario.")
@click.option("--sac-update-every", type=int, default=1, show_default=True,
              help="One SAC gradient update every this many env steps.")
@click.option("--sac-chain", type=int, default=1, show_default=True,
              help="Warm-start chains: each domain's scenarios run in chains of this many, each SAC starting "
                   "from the previous scenario's final agent (1 = every scenario from scratch).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output dataset folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted collection in --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@threads_option
def collect(split, range_, domains, scenarios_per_domain, episodes_per_scenario, episode_length, policy,
            workers, executor, ray_address, seed, alpha, beta, obs_fn, sac_hidden, sac_learning_starts,
            sac_update_every, sac_chain, out, resume, no_progress, threads):
    """Collect a multi-scenario dataset from the split's scenarios into OUT."""
    from .datasets.collect import CollectConfig
    from .datasets.collect import collect as run_collect
    from .scenarios import DOMAINS

    start_threads(threads)
    config = CollectConfig(split=split, range=range_, domains=_domains(domains) if domains else tuple(DOMAINS),
                           scenarios_per_domain=scenarios_per_domain,
                           episodes_per_scenario=episodes_per_scenario, policy=policy,
                           episode_length=episode_length, seed=seed, alpha=alpha, beta=beta, obs_fn=obs_fn,
                           sac_hidden_dim=sac_hidden, sac_learning_starts=sac_learning_starts,
                           sac_update_every=sac_update_every, sac_chain=sac_chain, workers=workers)
    from .executors import make_executor

    runner = make_executor(executor, workers, ray_address)
    path = run_collect(config, out, resume=resume, progress=not no_progress, log=click.echo,
                       executor=runner if runner.name == "ray" else None)
    _print_dataset(path)


@cli.command()
@click.option("--data", "-d", required=True, type=click.Path(), help="Dataset folder (from `mrcom collect`).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help="Model/training size [default: small; on --resume the run's own].")
@click.option("--steps", type=int, default=None, help="Gradient updates in total (a resumed run continues to N).")
@click.option("--batch-size", type=int, default=None, help="Global batch size (split across torchrun ranks).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: auto].")
@click.option("--model", "model_type", default=None,
              help="World model: a registered model_type (`mrcom models` lists them) "
                   "[default: mrcom; on --resume the run's own].")
@click.option("--ablation", "ablations", multiple=True,
              help="Remove a component: no_d, no_context, no_ls, no_lv (repeat or comma-separate).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file with preset, ablations, [model] and [train] tables, or a run's config.json (its "
                   "settings on this --data).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override one config field, e.g. --set model.u_dim=16 --set train.lr=1e-3.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@threads_option
def train(data, out, preset, steps, batch_size, device, model_type, ablations, config_file, sets, resume, no_progress,
          threads):
    """Train a world model (MrCoM by default) on a collected dataset (under torchrun: DistributedDataParallel)."""
    from .plots import plot_training
    from .training.config import RunRequest
    from .training.evaluation import format_errors, recorded_errors
    from .training.trainer import Trainer

    start_threads(threads)
    names = tuple(a.strip() for item in ablations for a in item.split(",") if a.strip())
    sets = (*sets, f"model.model_type={model_type}") if model_type else sets
    request = RunRequest.from_sources(preset, names, config_file, sets,
                                      {"steps": steps, "batch_size": batch_size, "device": device})
    trainer = Trainer(data, out, request, resume=resume, progress=not no_progress, log=click.echo)
    trainer.run()
    if trainer.rank == 0:
        click.echo(f"done: {trainer.step} updates; run folder {out} (checkpoints/, metrics.csv, "
                   f"config.json); TensorBoard: tensorboard --logdir {out}/tb")
        evaluations = recorded_errors(out)
        if evaluations:
            (first, before), (last, after) = evaluations[0], evaluations[-1]
            click.echo(f"{trainer.config.eval_horizon}-step open-loop error: step {first} {format_errors(before)} → "
                       f"step {last} {format_errors(after)}")
        if plot_training(out):
            click.echo(f"learning curves: {out}/curves.png")


@cli.command("export")
@click.argument("run", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Export folder.")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="onnx", show_default=True,
              help="Graph format(s) to write.")
@click.option("--horizon", type=int, default=15, show_default=True,
              help="The runtime's default rollout horizon and the one the parity checks use (the rollout graphs "
                   "loop over any horizon).")
@click.option("--policy", type=click.Path(dir_okay=False), default=None,
              help="A SAC agent checkpoint (e.g. DATA/sac/s0000.pt) to export and fuse into policy rollouts.")
@click.option("--no-blocks", is_flag=True,
              help="Only the graphs the runtime runs (prime, observe, step, rollout): leave out the building blocks "
                   "(context_full, context_step, imagine, reward) that hand-written loops use.")
@click.option("--force", is_flag=True, help="Replace a non-empty export folder.")
@click.option("--checkpoint", "which", type=click.Choice(["best", "latest"]), default="best", show_default=True,
              help="best: the checkpoint with the lowest held-out open-loop error (the latest when the run has no "
                   "best one); latest: the last checkpoint.")
@threads_option
def export_cmd(run, out, fmt, horizon, policy, no_blocks, force, which, threads):
    """Freeze the world model of training run RUN into ONNX/TorchScript graphs plus manifest.json.

    The new export replaces OUT in one step once it is complete and verified (a failed or killed export
    leaves OUT as it was); a second export into the same OUT stops with an error while the first runs."""
    from mrcom_export.exporter import FORMATS, export_model
    from mrcom_export.graphs import PolicyActor

    from .agents.sac import load_actor
    from .training.checkpoint import load_model

    formats = FORMATS if fmt == "all" else (fmt,)
    if fmt != "all" and fmt not in FORMATS:
        raise UserInputError(f"--format: unknown format {fmt!r}; choose onnx, torchscript or all")
    start_threads(threads)
    model, state = load_model(run, which)
    actor = None
    if policy:
        net = load_actor(policy)
        if net.obs_dim > model.config.obs_dim or net.act_dim > model.config.act_dim:
            raise UserInputError(f"policy {policy} has obs/action dims {net.obs_dim}/{net.act_dim}, more than the "
                                 f"model's {model.config.obs_dim}/{model.config.act_dim}")
        actor = PolicyActor(net, net.obs_dim, net.act_dim, model.config.act_dim)
    chosen = state["checkpoint"]
    if chosen == "best":
        what = f"best checkpoint: step {state['step']}, held-out open-loop error {state['best_error']:.4f}"
    elif state.get("best_step") is not None:
        what = (f"latest checkpoint: step {state['step']}; the best is step {state['best_step']}, held-out "
                f"open-loop error {state['best_error']:.4f}")
    else:
        what = f"latest checkpoint: step {state['step']}; the run has no best checkpoint"
    pending = [f"exporting {run} ({what}) as {', '.join(formats)} into {out}"]

    def log(line: str) -> None:  # the header once the folder is claimed: a refused folder prints only its error
        while pending:
            click.echo(pending.pop())
        click.echo(line)

    source = {"run": str(Path(run).resolve()), "step": state["step"], "checkpoint": chosen,
              "data": state["data"]["path"], "policy": str(Path(policy).resolve()) if policy else None}
    export_model(model, out, formats=formats, horizon=horizon, policy=actor, blocks=not no_blocks, source=source,
                 force=force, log=log)
    while pending:  # an export that logged nothing still names what it exported
        click.echo(pending.pop())
    click.echo(f"wrote {out}/manifest.json; every graph passed the ONNX checker and eager parity")


@cli.command()
@click.argument("export_dir", type=click.Path())
@click.option("--data", "-d", type=click.Path(), default=None,
              help="Dataset to take prompts (and real actions) from [default: the one the model trained on].")
@click.option("--batch", "-b", type=int, default=64, show_default=True, help="Parallel rollouts.")
@click.option("--horizon", "-H", type=int, default=15, show_default=True, help="Imagined steps per rollout.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the prompts and the latent noise.")
@click.option("--bench", is_flag=True, help="Also time per-step and fused rollouts (samples × steps / s).")
@click.option("--provider", default=None,
              help="ONNX Runtime provider, e.g. CPUExecutionProvider (must be available in this ONNX Runtime).")
@click.option("--mean-latents", is_flag=True, help="Predict with the latents' means instead of sampling them.")
@threads_option
def rollout(export_dir, data, batch, horizon, seed, bench, provider, mean_latents, threads):
    """Imagine B rollouts from dataset prompts with the real actions; print the error vs the real data."""
    from .rollout import runtime_error

    threads = start_threads(threads)
    runtime_error(export_dir, data, batch, horizon, seed, mean_latents=mean_latents, bench=bench, provider=provider,
                  threads=threads, log=click.echo)


@cli.command()
@click.argument("name", required=False)
@click.option("--sample", "-n", type=int, default=0, help="Also draw this many scenarios per domain.")
@click.option("--range", "range_", type=click.Choice(RANGES), default="train", show_default=True,
              help="Range to draw from.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the sample.")
def splits(name, sample, range_, seed):
    """List the named splits, or show one (and a sample of its scenarios)."""
    from .scenarios import DOMAINS, SPLITS, get_split, sample_scenarios

    chosen = [get_split(name)] if name else list(SPLITS.values())
    for split in chosen:
        click.echo(f"{split.name:<11} {split.description}")
        click.echo(f"{'':<11} train: {split.train.describe()}")
        for key, rng in split.evaluate.items():
            click.echo(f"{'':<11} {key + ':':<6} {rng.describe()}")
    if name and sample:
        for spec in sample_scenarios(chosen[0].range(range_), tuple(DOMAINS), sample, seed):
            click.echo(f"  {spec.describe()}")


@cli.command()
@click.argument("path", type=click.Path())
def info(path):
    """Summarize the dataset at PATH after checking it (manifest, episode files and their checksums)."""
    _print_dataset(path)


@cli.command()
def models():
    """List the registered world models (the names `mrcom train --model` and `mrcom reproduce --arms` take)."""
    from mrcom_core.registry import MODELS

    from .config_reference import plain

    rows = [(name, cls.label, plain((cls.__doc__ or "").strip().split("\n")[0])) for name, cls in MODELS.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    click.echo(f"{'name':<{widths[0]}}  {'label':<{widths[1]}}  summary")
    for name, label, summary in rows:
        click.echo(f"{name:<{widths[0]}}  {label:<{widths[1]}}  {summary}")


cli.add_command(adapt)
cli.add_command(reproduce)


def _print_dataset(path) -> None:
    from .datasets.dataset import Dataset, describe

    for line in describe(Dataset(path)):  # Dataset checks the manifest, the episode folders and every file
        click.echo(line)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mrcom`` script: one-line errors with exit code 2 for bad input (including a full
    disk or a read-only folder), 1 for a diverged training run and 130 for Ctrl-C (saying what was kept)."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in args if not a.startswith("-")), "")
    try:
        cli.main(args=args, prog_name="mrcom", standalone_mode=False)
    except UserInputError as e:
        click.echo(f"mrcom: error: {e}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"mrcom: error: {e.format_message()}", err=True)
        sys.exit(2)
    except Interrupted as e:
        click.echo(f"mrcom: interrupted: {e}", err=True)
        sys.exit(130)
    except (click.exceptions.Abort, KeyboardInterrupt):
        hint = _RESUME_HINTS.get(command)
        click.echo(f"mrcom: interrupted{': ' + hint if hint else ''}", err=True)
        sys.exit(130)
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise
        click.echo(f"mrcom: error: {message}", err=True)
        sys.exit(2)
    except RuntimeError as e:
        from .experiments.reproduce import TasksFailed
        from .training.trainer import TrainingDiverged

        if not isinstance(e, TrainingDiverged | TasksFailed):
            raise
        click.echo(f"mrcom: error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
