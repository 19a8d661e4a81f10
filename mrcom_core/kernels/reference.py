"""Pure-PyTorch reference for the diagonal-Gaussian sample + KL (eager ops, autograd through them).

This is the ground truth that the Triton kernels in :mod:`mrcom_core.kernels.triton_sample_kl` are tested
against, and the implementation used on CPU, in export (ONNX / TorchScript) and wherever Triton is missing.

Math (per element, summed over the last dim for the KL)::

    std   = softplus(raw) + min_std                         (numerically stable torch softplus)
    sample = post_mean + post_std * noise                    (reparameterized posterior sample)
    KL(a || b) = sum_d [ log(std_b / std_a) + (std_a² + (mean_a - mean_b)²) / (2 std_b²) - 1/2 ]

``reverse=False`` gives KL(posterior || prior) (a = posterior, b = prior), ``reverse=True`` KL(prior || posterior).

Dtype policy (identical to the Triton path): the math runs in float32, or float64 when the (promoted) input
dtype is float64; ``sample`` is returned in the promoted input dtype, ``kl`` in the compute dtype (float32, or
float64 for float64 inputs). So bfloat16 / float16 inputs give a bfloat16 / float16 sample and a float32 KL.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = [
    "check_inputs",
    "compute_dtype",
    "gaussian_sample",
    "gaussian_sample_kl_reference",
    "gaussian_std",
]

_INPUT_NAMES = ("prior_mean", "prior_std_raw", "post_mean", "post_std_raw", "noise")


def gaussian_std(std_raw: torch.Tensor, min_std: float = 0.1) -> torch.Tensor:
    """``softplus(std_raw) + min_std`` (torch's softplus is stable: it returns ``x`` above ``x = 20``)."""
    return F.softplus(std_raw) + min_std


def gaussian_sample(mean: torch.Tensor, std_raw: torch.Tensor, noise: torch.Tensor, *,
                    min_std: float = 0.1) -> torch.Tensor:
    """Plain reparameterized sample ``mean + (softplus(std_raw) + min_std) * noise`` with eager torch ops.

    Used for prior samples that need no KL; the dtype follows torch's usual type promotion.
    """
    return mean + gaussian_std(std_raw, min_std) * noise


def check_inputs(*tensors: torch.Tensor) -> torch.dtype:
    """Validate the five inputs of ``gaussian_sample_kl`` and return their promoted floating dtype.

    All five must be floating tensors of one shape ``(..., D)`` (at least 1-d) on one device.
    """
    if len(tensors) != len(_INPUT_NAMES):
        raise TypeError(f"expected {len(_INPUT_NAMES)} tensors, got {len(tensors)}")
    for name, t in zip(_INPUT_NAMES, tensors, strict=True):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    shape, device = tensors[0].shape, tensors[0].device
    if len(shape) < 1:
        raise ValueError("gaussian_sample_kl inputs must have at least one dim (..., D)")
    for name, t in zip(_INPUT_NAMES, tensors, strict=True):
        if t.shape != shape:
            raise ValueError(f"all inputs must have the same shape; prior_mean is {tuple(shape)} "
                             f"but {name} is {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"all inputs must be on one device; prior_mean is on {device} but {name} is on {t.device}")
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in (and the KL is returned in): float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _diag_gaussian_kl(mean_a: torch.Tensor, std_a: torch.Tensor, mean_b: torch.Tensor,
                      std_b: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_a, std_a²) || N(mean_b, std_b²)) summed over the last dim."""
    var_b = std_b * std_b
    per_dim = torch.log(std_b / std_a) + (std_a * std_a + (mean_a - mean_b) ** 2) / (2.0 * var_b) - 0.5
    return per_dim.sum(-1)


def gaussian_sample_kl_reference(prior_mean: torch.Tensor, prior_std_raw: torch.Tensor, post_mean: torch.Tensor,
                                 post_std_raw: torch.Tensor, noise: torch.Tensor, *, min_std: float = 0.1,
                                 reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference of :func:`mrcom_core.kernels.gaussian_sample_kl` (same math, same dtype policy).

    Returns ``(sample, kl)``: ``sample = post_mean + post_std * noise`` with shape ``(..., D)`` in the promoted
    input dtype and the per-row ``kl`` with shape ``(...)`` in float32 (float64 for float64 inputs).
    """
    dtype = check_inputs(prior_mean, prior_std_raw, post_mean, post_std_raw, noise)
    cdt = compute_dtype(dtype)
    p_mean, p_raw, q_mean, q_raw, eps = (t.to(cdt) for t in (prior_mean, prior_std_raw, post_mean, post_std_raw,
                                                            noise))
    p_std = gaussian_std(p_raw, min_std)
    q_std = gaussian_std(q_raw, min_std)
    sample = (q_mean + q_std * eps).to(dtype)
    if reverse:
        kl = _diag_gaussian_kl(p_mean, p_std, q_mean, q_std)
    else:
        kl = _diag_gaussian_kl(q_mean, q_std, p_mean, p_std)
    return sample, kl
