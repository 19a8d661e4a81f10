"""The ``mrcom`` command line (click). Errors the user can fix print one line and exit with status 2."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from mrcom_core.errors import Interrupted, UserInputError, os_error_message

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


def _threads_option(command):
    """``--threads N``: the intra-op threads of this process (:mod:`mrcom_train.threads`)."""
    return click.option("--threads", type=int, default=None,
                        help="Threads this process computes with [default: the cores other processes leave free, "
                             "or OMP_NUM_THREADS]; worker processes use one each.")(command)


def _start_threads(threads: int | None) -> int:
    """Choose and set this process's threads; print the choice (the command's first header line)."""
    from .threads import apply_threads, describe

    choice = apply_threads(threads)
    click.echo(describe(choice))
    return choice.threads


def _domains(value: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in value.split(",") if d.strip())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mrcom")
def cli() -> None:
    """MrCoM: one world model for many MuJoCo scenarios — collect data, train, export, roll out."""
    _quiet_third_party()


@cli.command()
@click.option("--split", default="t1-a5b20", show_default=True, help="Named split (see `mrcom splits`).")
@click.option("--range", "range_", default="train", show_default=True,
              help="Which range of the split to draw scenarios from: train, in or ood.")
@click.option("--domains", default=None, help="Comma-separated domains to collect [default: all].")
@click.option("--scenarios-per-domain", "-n", type=int, default=4, show_default=True)
@click.option("--episodes-per-scenario", "-k", type=int, default=4, show_default=True)
@click.option("--episode-length", type=int, default=1000, show_default=True, help="Steps per episode.")
@click.option("--policy", default="random", show_default=True,
              help="Behaviour policy: random, or sac (a SAC agent trained per scenario; its whole replay "
                   "is recorded).")
@click.option("--workers", "-w", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds scenario sampling and episodes.")
@click.option("--alpha", type=float, default=None, help="Override the range's α (torso scale spread, %).")
@click.option("--beta", type=float, default=None, help="Override the range's β (target speed, % of v_max).")
@click.option("--obs-fn", default=None, help="Override the observation function: none, add-g, add-d, msk-r, "
                                             "msk-f.")
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
@_threads_option
def collect(split, range_, domains, scenarios_per_domain, episodes_per_scenario, episode_length, policy,
            workers, seed, alpha, beta, obs_fn, sac_hidden, sac_learning_starts, sac_update_every, sac_chain, out,
            resume, no_progress, threads):
    """Collect a multi-scenario dataset from the split's scenarios into OUT."""
    _start_threads(threads)
    from .datasets.collect import CollectConfig
    from .datasets.collect import collect as run_collect
    from .scenarios import DOMAINS

    config = CollectConfig(split=split, range=range_, domains=_domains(domains) if domains else tuple(DOMAINS),
                           scenarios_per_domain=scenarios_per_domain,
                           episodes_per_scenario=episodes_per_scenario, policy=policy,
                           episode_length=episode_length, seed=seed, alpha=alpha, beta=beta, obs_fn=obs_fn,
                           sac_hidden_dim=sac_hidden, sac_learning_starts=sac_learning_starts,
                           sac_update_every=sac_update_every, sac_chain=sac_chain, workers=workers)
    path = run_collect(config, out, resume=resume, progress=not no_progress, log=click.echo)
    _print_dataset(path)


@cli.command()
@click.option("--data", "-d", required=True, type=click.Path(), help="Dataset folder (from `mrcom collect`).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--preset", default=None, help="Model/training size: tiny, small or base [default: small; on "
                                            "--resume the run's own].")
@click.option("--steps", type=int, default=None, help="Gradient updates in total (a resumed run continues to N).")
@click.option("--batch-size", type=int, default=None, help="Global batch size (split across torchrun ranks).")
@click.option("--device", default=None, help="auto, cpu or cuda [default: auto].")
@click.option("--model", "model_type", default=None,
              help="World model: a registered model_type (`mrcom models` lists them) "
                   "[default: mrcom; on --resume the run's own].")
@click.option("--ablation", "ablations", multiple=True,
              help="Remove a component: no_d, no_context, no_ls, no_lv (repeat or comma-separate).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file with preset, ablations, [model] and [train] tables.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override one config field, e.g. --set model.u_dim=16 --set train.lr=1e-3.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_threads_option
def train(data, out, preset, steps, batch_size, device, model_type, ablations, config_file, sets, resume, no_progress,
          threads):
    """Train a world model (MrCoM by default) on a collected dataset (under torchrun: DistributedDataParallel)."""
    _start_threads(threads)
    from .training.config import RunRequest
    from .training.evaluation import format_errors
    from .training.trainer import Trainer

    names = tuple(a.strip() for item in ablations for a in item.split(",") if a.strip())
    sets = (*sets, f"model.model_type={model_type}") if model_type else sets
    request = RunRequest.from_sources(preset, names, config_file, sets,
                                      {"steps": steps, "batch_size": batch_size, "device": device})
    trainer = Trainer(data, out, request, resume=resume, progress=not no_progress, log=click.echo)
    result = trainer.run()
    if trainer.rank == 0:
        click.echo(f"done: {trainer.step} updates; run folder {out} (checkpoints/, metrics.csv, "
                   f"config.json); TensorBoard: tensorboard --logdir {out}/tb")
        if result:
            click.echo(f"final {trainer.config.eval_horizon}-step open-loop error: {format_errors(result)}")


@cli.command("export")
@click.argument("run", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Export folder.")
@click.option("--format", "fmt", default="onnx", show_default=True, help="onnx, torchscript or all.")
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
@_threads_option
def export_cmd(run, out, fmt, horizon, policy, no_blocks, force, which, threads):
    """Freeze the world model of training run RUN into ONNX/TorchScript graphs plus manifest.json.

    The new export replaces OUT in one step once it is complete and verified (a failed or killed export
    leaves OUT as it was); a second export into the same OUT stops with an error while the first runs."""
    from mrcom_export.exporter import FORMATS, export_model
    from mrcom_export.graphs import PolicyActor

    from .rl.sac import load_actor
    from .training.checkpoint import load_model

    formats = FORMATS if fmt == "all" else (fmt,)
    if fmt != "all" and fmt not in FORMATS:
        raise UserInputError(f"--format: unknown format {fmt!r}; choose onnx, torchscript or all")
    _start_threads(threads)
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
    click.echo(f"exporting {run} ({what}) as {', '.join(formats)} into {out}")
    source = {"run": str(Path(run).resolve()), "step": state["step"], "checkpoint": chosen,
              "data": state["data"]["path"], "policy": str(Path(policy).resolve()) if policy else None}
    export_model(model, out, formats=formats, horizon=horizon, policy=actor, blocks=not no_blocks, source=source,
                 force=force, log=click.echo)
    click.echo(f"wrote {out}/manifest.json; every graph passed the ONNX checker and eager parity")


@cli.command()
@click.argument("export_dir", type=click.Path())
@click.option("--data", "-d", type=click.Path(), default=None,
              help="Dataset to take prompts (and real actions) from [default: the one the model trained on].")
@click.option("--batch", "-b", type=int, default=64, show_default=True, help="Parallel rollouts.")
@click.option("--horizon", "-H", type=int, default=15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--bench", is_flag=True, help="Also time per-step and fused rollouts (samples × steps / s).")
@click.option("--provider", default=None,
              help="ONNX Runtime provider, e.g. CPUExecutionProvider (must be available in this ONNX Runtime).")
@click.option("--mean-latents", is_flag=True, help="Predict with the latents' means instead of sampling them.")
@_threads_option
def rollout(export_dir, data, batch, horizon, seed, bench, provider, mean_latents, threads):
    """Imagine B rollouts from dataset prompts with the real actions; print the error vs the real data."""
    from .rollout import runtime_error

    threads = _start_threads(threads)
    runtime_error(export_dir, data, batch, horizon, seed, mean_latents=mean_latents, bench=bench, provider=provider,
                  threads=threads, log=click.echo)


@cli.command()
@click.option("--model", "export_dir", type=click.Path(), default=None,
              help="Export folder (mrcom export, ONNX) whose world model imagines rollouts.")
@click.option("--model-free", is_flag=True, help="Plain SAC with the same env-step budget (no --model).")
@click.option("--split", default="t1-a5b20", show_default=True)
@click.option("--range", "range_", default="in", show_default=True, help="Evaluation range: in or ood.")
@click.option("--domain", default="hopper", show_default=True)
@click.option("--env-steps", type=int, default=20_000, show_default=True)
@click.option("--episode-length", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the target scenario and the agent.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Any other AdaptConfig field, e.g. --set real_ratio=0.2 --set horizon_end=10.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Run folder: config.json, metrics.csv, tb/, checkpoints/, and when done result.json and "
                   "agent.pt (the final agent, for `mrcom export --policy`).")
@click.option("--run", "train_run", type=click.Path(file_okay=False), default=None,
              help="The training run behind --model, for --set refit=heads|all [default: the one its manifest "
                   "names].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_threads_option
def adapt(export_dir, model_free, split, range_, domain, env_steps, episode_length, seed, sets, out, train_run,
          resume, no_progress, threads):
    """MBPO-style SAC in a target scenario with imagined rollouts from an exported world model."""
    from mrcom_core.config import apply_overrides, parse_assignments

    from .rl.adapt import AdaptConfig, Adapter

    config = AdaptConfig(split=split, range=range_, domain=domain, seed=seed, env_steps=env_steps,
                         episode_length=episode_length, use_model=not model_free)
    config = apply_overrides(config, parse_assignments(sets), "adapt")
    threads = _start_threads(threads)
    with Adapter(config, out, None if model_free else export_dir, resume=resume, progress=not no_progress,
                 log=click.echo, run=train_run, threads=threads) as adapter:
        result = adapter.run()
    click.echo(f"done: normalized return {result['normalized_return']:.1f} after {result['env_steps']} env steps "
               f"({result['imagined']} imagined transitions); run folder {out} (final agent: {out}/agent.pt)")


@cli.command()
@click.option("--table", type=int, required=True, help="The paper's table: 1, 2 or 3.")
@click.option("--budget", default="smoke", show_default=True, help="smoke, small or paper.")
@click.option("--seeds", type=int, default=1, show_default=True, help="Adaptation seeds per cell.")
@click.option("--splits", default="", help="Comma-separated subset of the table's training splits "
                                           "(e.g. t1-a10b50 for Table 1 (c)/(d)).")
@click.option("--ablations", is_flag=True, help="Also train and adapt the four ablations (paper Fig. 3).")
@click.option("--what", type=click.Choice(["all", "error"]), default="all", show_default=True,
              help="all: the whole protocol; error: stop after the prediction-error tables (no RL).")
@click.option("--workers", "-w", type=int, default=1, show_default=True,
              help="Worker processes for collection, world-model training and adaptation cells (one core "
                   "each).")
@click.option("--arms", default="", help="Comma-separated subset of the arms: world models by name (`mrcom "
                                         "models`), sac, sac-g, oracle [default: all].")
@click.option("--domains", default="", help="Comma-separated subset of the budget's domains to adapt on (the world "
                                            "models still learn every one) [default: all].")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="An adaptation setting for every arm, as `mrcom adapt --set` (SAC (G=1) keeps G = 1), e.g. --set "
                   "updates_per_step=20.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@_threads_option
def reproduce(table, budget, seeds, splits, ablations, what, workers, arms, domains, sets, out, threads):
    """Run the paper's protocol for one table; resumable (finished cells are skipped)."""
    from mrcom_core.config import parse_assignments

    _start_threads(threads)

    from .experiments.reproduce import run_reproduction

    chosen = tuple(s.strip() for s in splits.split(",") if s.strip())
    run_reproduction(table, budget, seeds, out, splits=chosen, ablations=ablations, workers=workers, what=what,
                     arms=tuple(a.strip() for a in arms.split(",") if a.strip()), adapt=parse_assignments(sets),
                     domains=tuple(d.strip() for d in domains.split(",") if d.strip()), log=click.echo)
    errors = f"{out}/errors{table}.md (+ per-split errors.csv, error_vs_horizon.png)"
    click.echo(f"done: {errors}" if what == "error" else
               f"done: {out}/table{table}.md (+ per-split table.csv, curves_*.png, prediction_error.png) and {errors}")


@cli.command()
@click.argument("name", required=False)
@click.option("--sample", "-n", type=int, default=0, help="Also draw this many scenarios per domain.")
@click.option("--range", "range_", default="train", show_default=True, help="Range to draw from.")
@click.option("--seed", type=int, default=0, show_default=True)
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
    """List the registered world models (``mrcom train --model NAME``, ``mrcom reproduce``'s methods)."""
    from mrcom_core.registry import MODELS

    for name, cls in MODELS.items():
        summary = (cls.__doc__ or "").strip().split("\n")[0]
        click.echo(f"{name:<8} {cls.label:<10} {summary}")


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
        from .training.trainer import TrainingDiverged

        if not isinstance(e, TrainingDiverged):
            raise
        click.echo(f"mrcom: error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
