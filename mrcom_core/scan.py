"""The time loop of every training pass: :func:`scan` runs one step function over a window, as DreamerV3's
``static_scan`` runs ``obs_step``, and :func:`stack_steps` stacks what the steps returned.

A model's posterior pass over a window (``observe_window``) is a scan of its posterior step; what feeds
nothing inside the loop (priors, KL terms) runs over the whole window afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def stack_steps(steps: list[Any], dim: int = 1) -> Any:
    """Per-step outputs — tensors, or tuples and NamedTuples of them, nested — stacked along ``dim`` (one step's
    ``(B, ·)`` becomes ``(B, T, ·)`` for ``dim=1``), keeping the NamedTuple types."""
    first = steps[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(steps, dim)
    fields = [stack_steps([s[i] for s in steps], dim) for i in range(len(first))]
    return type(first)(*fields) if hasattr(first, "_fields") else tuple(fields)


def scan(step: Callable[..., tuple[Any, Any]], state: Any, *sequences: torch.Tensor) -> tuple[Any, Any]:
    """``state, out_j = step(state, x_j, y_j, …)`` for every step j of ``sequences`` (each ``(B, T, ·)``, read
    along dim 1); returns the last state and the outputs stacked to ``(B, T, ·)`` (:func:`stack_steps`)."""
    if not sequences:
        raise ValueError("scan: give at least one sequence to step over")
    outputs = []
    for inputs in zip(*(s.unbind(1) for s in sequences), strict=True):
        state, out = step(state, *inputs)
        outputs.append(out)
    return state, stack_steps(outputs)


def shifted(initial: Any, steps: Any) -> Any:
    """The value before each step: ``initial`` (``(B, ·)``) then ``steps`` (``(B, T, ·)``) without its last,
    for a tensor or a NamedTuple of them (the previous state of every window step)."""
    if isinstance(steps, torch.Tensor):
        return torch.cat([initial[:, None], steps[:, :-1]], dim=1)
    return type(steps)(*(shifted(i, s) for i, s in zip(initial, steps, strict=True)))  # a NamedTuple
