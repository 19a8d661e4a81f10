"""Fused kernels for the world model: diagonal-Gaussian reparameterized sample + KL.

Math. For the prior ``p`` and the posterior ``q`` (each a diagonal Gaussian over the last dim D)::

    std      = softplus(std_raw) + min_std
    sample   = post_mean + post_std * noise                      (reparameterized posterior sample)
    KL(a||b) = sum_d [ log(std_b/std_a) + (std_a² + (mean_a - mean_b)²) / (2 std_b²) - 1/2 ]

:func:`gaussian_sample_kl` returns ``(sample, kl)`` with ``kl = KL(q||p)`` (``reverse=False``, the variational
bound's direction) or ``KL(p||q)`` (``reverse=True``), one value per row.

Backends. ``'triton'`` (:mod:`.triton_sample_kl`) runs one fused kernel per direction: the forward reads the
five inputs once and writes ``sample`` and ``kl``; the backward reads them (plus the two incoming gradients)
once and writes all five input gradients, recomputing softplus/sigmoid in registers (only the inputs are
saved). The eager ``'reference'`` (:mod:`.reference`) launches ~10 kernels per direction, each reading and
writing full ``(N, D)`` tensors, so the fused path moves several times fewer bytes; it is memory-bound.

Dtype policy (both backends): the math runs in float32 (float64 for float64 inputs); ``sample`` comes back in
the (promoted) input dtype, ``kl`` in float32 (float64 for float64 inputs). bfloat16/float16 inputs therefore
give a bfloat16/float16 sample and a float32 KL.

Dispatch (:func:`resolve_backend`). The explicit ``backend`` argument wins; otherwise the environment variable
``MRCOM_KERNELS`` (``auto`` | ``triton`` | ``reference``, default ``auto``) decides.

* ``auto``: ``'triton'`` when the tensor is on CUDA and Triton imports, else ``'reference'``;
* ``reference``: always the eager reference;
* ``triton``: the fused kernels; on CPU tensors only with ``TRITON_INTERPRET=1`` in the environment (the Triton
  interpreter then runs them on CPU; it must be set before Triton builds the kernels, i.e. before
  :mod:`.triton_sample_kl` is first imported), otherwise ``UserInputError``. Without Triton installed it raises
  ``RuntimeError``.

Triton is imported lazily, so ``import mrcom_core.kernels`` works where it is missing (e.g. macOS).

Triton and OpenGL (:func:`settle_triton_import`). Triton bundles its own LLVM; Mesa's EGL and OSMesa
(``MUJOCO_GL=egl`` / ``osmesa``, usual on headless servers) load another LLVM when dm_control is imported, and
importing Triton after that segfaults. PyTorch imports Triton on its own too (``torch._dynamo``, e.g. when an
optimizer is built) whenever it is installed. So ``mrcom_train`` calls :func:`settle_triton_import` when it is
imported, before anything can load a GL library: a process that will run the CUDA kernels imports Triton
right then; any other process, under a GL backend that loads LLVM, makes ``import triton`` fail (for PyTorch
too, which then does without it), so a CPU-only run never imports it.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

from ..errors import UserInputError
from .reference import check_inputs, gaussian_sample, gaussian_sample_kl_reference, gaussian_std

__all__ = [
    "BACKENDS",
    "gaussian_sample",
    "gaussian_sample_kl",
    "gaussian_sample_kl_reference",
    "gaussian_std",
    "resolve_backend",
    "settle_triton_import",
    "triton_available",
]

#: Accepted values of ``MRCOM_KERNELS`` / the ``backend`` argument.
BACKENDS = ("auto", "triton", "reference")

_ENV_VAR = "MRCOM_KERNELS"
_TRUTHY = frozenset({"1", "true", "yes", "on", "y"})


@functools.cache
def triton_available() -> bool:
    """Whether ``import triton`` works here (cached)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install failing at import time
        return False
    return True


#: ``MUJOCO_GL`` values whose GL library loads Mesa's LLVM, which clashes with Triton's.
GL_BACKENDS_WITH_LLVM = ("egl", "osmesa")


def settle_triton_import() -> str:
    """Decide once per process, before anything can load a GL library, whether Triton is imported.

    Imports it now when this process will run the fused kernels (``MRCOM_KERNELS=triton``, or ``auto`` with a
    CUDA GPU); otherwise, when ``MUJOCO_GL`` selects a GL backend that loads LLVM, blocks ``import triton``
    (``sys.modules["triton"] = None``) so that neither this package nor PyTorch loads it later. Returns
    ``"imported"``, ``"blocked"`` or ``"untouched"`` (no GL clash possible: Triton stays lazily importable).
    """
    if "triton" in sys.modules:
        return "blocked" if sys.modules["triton"] is None else "imported"
    name = os.environ.get(_ENV_VAR, "auto").strip().lower() or "auto"
    wanted = name == "triton" or (name == "auto" and torch.cuda.is_available())
    if wanted and triton_available():
        return "imported"
    if os.environ.get("MUJOCO_GL", "").strip().lower() in GL_BACKENDS_WITH_LLVM:
        sys.modules["triton"] = None
        triton_available.cache_clear()
        return "blocked"
    return "untouched"


def _interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


def resolve_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """Return ``'triton'`` or ``'reference'`` for inputs like ``tensor`` (see the module docstring's rules).

    ``backend`` (if not None) overrides the ``MRCOM_KERNELS`` environment variable. Raises
    :class:`~mrcom_core.errors.UserInputError` (a ``ValueError``) for an unknown name, or for ``'triton'`` on a CPU
    tensor without ``TRITON_INTERPRET=1``; ``RuntimeError`` for
    ``'triton'`` where Triton is not installed.
    """
    source = "backend" if backend is not None else _ENV_VAR
    name = backend if backend is not None else os.environ.get(_ENV_VAR, "auto")
    name = str(name).strip().lower() or "auto"
    if name not in BACKENDS:
        raise UserInputError(f"unknown kernel backend {name!r} (from {source}); expected one of {', '.join(BACKENDS)}")
    if name == "reference":
        return "reference"
    if name == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "reference"
    # forced triton
    if not triton_available():
        raise RuntimeError(f"kernel backend 'triton' was requested (from {source}) but triton is not installed "
                           "or failed to import; use backend='reference' or MRCOM_KERNELS=reference")
    if not tensor.is_cuda and not _interpret_enabled():
        raise UserInputError(f"kernel backend 'triton' was requested (from {source}) for a {tensor.device.type} "
                             "tensor: set TRITON_INTERPRET=1 to run the Triton kernels on CPU in the interpreter, or "
                             "use backend='reference' / MRCOM_KERNELS=reference")
    return "triton"


def gaussian_sample_kl(prior_mean: torch.Tensor, prior_std_raw: torch.Tensor, post_mean: torch.Tensor,
                       post_std_raw: torch.Tensor, noise: torch.Tensor, *, min_std: float = 0.1,
                       reverse: bool = False, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterized posterior sample and per-row KL of two diagonal Gaussians, fused on GPU.

    ``std = softplus(raw) + min_std`` for prior and posterior; ``sample = post_mean + post_std * noise``;
    ``kl`` = KL summed over the last dim: KL(q||p) (posterior||prior) when ``reverse=False``, KL(p||q) when
    ``True``. All five inputs have the same shape ``(..., D)``; returns ``sample`` ``(..., D)`` in the promoted
    input dtype and ``kl`` ``(...)`` in float32 (float64 for float64 inputs). Differentiable w.r.t. all five
    inputs. ``backend`` picks the implementation (see :func:`resolve_backend`).
    """
    check_inputs(prior_mean, prior_std_raw, post_mean, post_std_raw, noise)
    if resolve_backend(post_mean, backend) == "triton":
        from .triton_sample_kl import gaussian_sample_kl_triton

        return gaussian_sample_kl_triton(prior_mean, prior_std_raw, post_mean, post_std_raw, noise,
                                         min_std=min_std, reverse=reverse)
    return gaussian_sample_kl_reference(prior_mean, prior_std_raw, post_mean, post_std_raw, noise,
                                        min_std=min_std, reverse=reverse)
