"""The pieces the ``mrcom`` commands share: the fixed choices of their options and ``--threads``."""

from __future__ import annotations

import click

# The fixed choices of the options, spelled here so that `mrcom --help` needs no heavy import;
# tests/test_cli.py checks each against the library's own list.
RANGES = ("train", "in", "ood")
POLICIES = ("random", "sac")
OBS_FUNCTIONS = ("none", "add-g", "add-d", "msk-r", "msk-f")
PRESETS = ("tiny", "small", "base")
EXPORT_FORMATS = ("onnx", "torchscript", "all")
BUDGET_NAMES = ("smoke", "small", "long", "paper")


class DomainChoice(click.Choice):
    """A choice among the registered domains (:data:`~mrcom_train.scenarios.domains.DOMAINS`), read when the
    option is first shown or parsed, so that a domain registered at run time is one and `mrcom --help` still
    imports no simulator."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from .scenarios.domains import DOMAINS

        return tuple(DOMAINS)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it; the registry decides
        pass


def threads_option(command):
    """``--threads N``: the intra-op threads of this process (:mod:`mrcom_train.threads`)."""
    return click.option("--threads", type=int, default=None,
                        help="Threads this process computes with [default: the cores other processes leave free, "
                             "or OMP_NUM_THREADS]; worker processes use one each.")(command)


def start_threads(threads: int | None) -> int:
    """Choose and set this process's threads; print the choice (the command's first header line)."""
    from .threads import apply_threads, describe

    choice = apply_threads(threads)
    click.echo(describe(choice))
    return choice.threads
