"""Fused Triton kernels for the diagonal-Gaussian reparameterized sample + KL, and their autograd Function.

Why fused: the eager composition (two softplus, two adds of ``min_std``, the sample's mul-add, a log, a
division, squares, the reduction, ... and about as many kernels again in the backward) launches ~10 kernels
per direction, each reading and writing full ``(N, D)`` tensors. Here the forward is ONE pass that reads the
five inputs once and writes ``sample`` (N, D) and ``kl`` (N,); the backward is ONE pass that reads the five
inputs plus ``grad_sample`` / ``grad_kl`` and writes the five input gradients. Nothing but the inputs is saved
for the backward: softplus, sigmoid, the stds and the KL terms are recomputed in registers.

Layout: leading dims are flattened to rows, giving ``(N, D)`` with D small (4-128). One program handles a
``BLOCK_N x BLOCK_D`` tile (``BLOCK_D = next_power_of_2(D)``, columns masked); the per-row KL is a ``tl.sum``
over the column axis. Inputs only need a unit stride along D: each one gets its own row stride, so the
``raw.chunk(2, -1)`` views the world model passes are read in place (anything else is made contiguous).

Dtypes: loads are cast to float32 (float64 when the inputs are float64, so gradcheck works); ``sample`` and
the gradients are stored in the input dtype, ``kl`` in float32 (float64 for float64 inputs). float16 and
bfloat16 inputs are meant for the GPU. ``min_std`` is a runtime fp32 scalar argument (so float64 results
agree with the reference to ~1e-9, not to the last bit); ``reverse`` is a ``tl.constexpr``.

Importing this module imports Triton. With ``TRITON_INTERPRET=1`` in the environment *when this module is
first imported*, ``triton.jit`` yields interpreted kernels that run on CPU tensors (slowly; for tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["GaussianSampleKL", "KERNELS_INTERPRETED", "MAX_D", "gaussian_sample_kl_triton"]

#: Largest D one program tile takes (a whole row must fit in registers); use the reference beyond it.
MAX_D = 8192

_TILE_ELEMS = 2048  # elements per program: 8 per thread per tensor at 8 warps


@triton.jit
def _softplus_sigmoid(x):
    """Stable ``softplus(x) = max(x, 0) + log1p(exp(-|x|))`` and its derivative ``sigmoid(x)``.

    log1p(e) is computed as ``log(u) * e / (u - 1)`` with ``u = 1 + e`` (exact to a few ulps, and ``e`` where
    ``u`` rounds to 1), so tiny softplus values keep their relative precision without libdevice's log1p.
    """
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    is_one = u == 1.0
    log1p_e = tl.where(is_one, e, tl.log(u) * (e / tl.where(is_one, 1.0, u - 1.0)))
    sp = tl.maximum(x, 0.0) + log1p_e
    sig = tl.where(x >= 0.0, 1.0 / u, e / u)
    return sp, sig


@triton.jit
def _sample_kl_fwd_kernel(
    pm_ptr, pr_ptr, qm_ptr, qr_ptr, eps_ptr,  # inputs: prior mean/raw, posterior mean/raw, noise
    sample_ptr, kl_ptr,  # outputs: (N, D) contiguous, (N,)
    N, min_std,
    s_pm, s_pr, s_qm, s_qr, s_eps,  # row strides of the inputs (unit column stride)
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    REVERSE: tl.constexpr, FP64: tl.constexpr,
):
    cdt = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols[None, :] < D)
    r2 = rows[:, None]
    c2 = cols[None, :]

    pm = tl.load(pm_ptr + r2 * s_pm + c2, mask=mask, other=0.0).to(cdt)
    pr = tl.load(pr_ptr + r2 * s_pr + c2, mask=mask, other=0.0).to(cdt)
    qm = tl.load(qm_ptr + r2 * s_qm + c2, mask=mask, other=0.0).to(cdt)
    qr = tl.load(qr_ptr + r2 * s_qr + c2, mask=mask, other=0.0).to(cdt)
    eps = tl.load(eps_ptr + r2 * s_eps + c2, mask=mask, other=0.0).to(cdt)

    p_sp, _p_sig = _softplus_sigmoid(pr)
    q_sp, _q_sig = _softplus_sigmoid(qr)
    ps = p_sp + min_std
    qs = q_sp + min_std

    sample = qm + qs * eps
    tl.store(sample_ptr + r2 * D + c2, sample.to(sample_ptr.dtype.element_ty), mask=mask)

    if REVERSE:  # KL(prior || posterior)
        ma, sa, mb, sb = pm, ps, qm, qs
    else:  # KL(posterior || prior)
        ma, sa, mb, sb = qm, qs, pm, ps
    diff = ma - mb
    inv_vb = 1.0 / (sb * sb)
    term = tl.log(sb / sa) + 0.5 * (sa * sa + diff * diff) * inv_vb - 0.5
    term = tl.where(mask, term, 0.0)  # padded columns/rows would add log(1)+... != 0
    kl = tl.sum(term, axis=1)
    tl.store(kl_ptr + rows, kl.to(kl_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _sample_kl_bwd_kernel(
    pm_ptr, pr_ptr, qm_ptr, qr_ptr, eps_ptr,  # saved inputs
    gs_ptr, gk_ptr,  # grad_sample (N, D) with row stride s_gs, grad_kl (N,) contiguous
    dpm_ptr, dpr_ptr, dqm_ptr, dqr_ptr, deps_ptr,  # outputs: (N, D) contiguous
    N, min_std,
    s_pm, s_pr, s_qm, s_qr, s_eps, s_gs,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    REVERSE: tl.constexpr, FP64: tl.constexpr,
    HAS_GS: tl.constexpr, HAS_GK: tl.constexpr,
    NEED_DP: tl.constexpr, NEED_DQ: tl.constexpr, NEED_DEPS: tl.constexpr,  # which gradients to write
):
    cdt = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols[None, :] < D)
    r2 = rows[:, None]
    c2 = cols[None, :]
    out = r2 * D + c2

    pm = tl.load(pm_ptr + r2 * s_pm + c2, mask=mask, other=0.0).to(cdt)
    pr = tl.load(pr_ptr + r2 * s_pr + c2, mask=mask, other=0.0).to(cdt)
    qm = tl.load(qm_ptr + r2 * s_qm + c2, mask=mask, other=0.0).to(cdt)
    qr = tl.load(qr_ptr + r2 * s_qr + c2, mask=mask, other=0.0).to(cdt)

    p_sp, p_sig = _softplus_sigmoid(pr)
    q_sp, q_sig = _softplus_sigmoid(qr)
    ps = p_sp + min_std
    qs = q_sp + min_std

    d_pm = tl.zeros([BLOCK_N, BLOCK_D], dtype=cdt)
    d_ps = tl.zeros([BLOCK_N, BLOCK_D], dtype=cdt)
    d_qm = tl.zeros([BLOCK_N, BLOCK_D], dtype=cdt)
    d_qs = tl.zeros([BLOCK_N, BLOCK_D], dtype=cdt)

    if HAS_GS:  # sample = qm + qs * eps
        eps = tl.load(eps_ptr + r2 * s_eps + c2, mask=mask, other=0.0).to(cdt)
        gs = tl.load(gs_ptr + r2 * s_gs + c2, mask=mask, other=0.0).to(cdt)
        d_qm = d_qm + gs
        d_qs = d_qs + gs * eps
        if NEED_DEPS:
            tl.store(deps_ptr + out, (gs * qs).to(deps_ptr.dtype.element_ty), mask=mask)
    else:
        if NEED_DEPS:
            tl.store(deps_ptr + out, tl.zeros([BLOCK_N, BLOCK_D], dtype=cdt).to(deps_ptr.dtype.element_ty),
                     mask=mask)

    if HAS_GK:  # kl = sum_d log(sb/sa) + (sa² + (ma-mb)²) / (2 sb²) - 1/2
        gk = tl.load(gk_ptr + rows, mask=row_ok, other=0.0).to(cdt)[:, None]
        if REVERSE:
            ma, sa, mb, sb = pm, ps, qm, qs
        else:
            ma, sa, mb, sb = qm, qs, pm, ps
        diff = ma - mb
        inv_vb = 1.0 / (sb * sb)
        g_ma = gk * diff * inv_vb  # d/d mb = -g_ma
        g_sa = gk * (sa * inv_vb - 1.0 / sa)
        g_sb = gk * (1.0 - (sa * sa + diff * diff) * inv_vb) / sb
        if REVERSE:
            d_pm = d_pm + g_ma
            d_ps = d_ps + g_sa
            d_qm = d_qm - g_ma
            d_qs = d_qs + g_sb
        else:
            d_qm = d_qm + g_ma
            d_qs = d_qs + g_sa
            d_pm = d_pm - g_ma
            d_ps = d_ps + g_sb

    # d std / d raw = sigmoid(raw)
    if NEED_DP:
        tl.store(dpm_ptr + out, d_pm.to(dpm_ptr.dtype.element_ty), mask=mask)
        tl.store(dpr_ptr + out, (d_ps * p_sig).to(dpr_ptr.dtype.element_ty), mask=mask)
    if NEED_DQ:
        tl.store(dqm_ptr + out, d_qm.to(dqm_ptr.dtype.element_ty), mask=mask)
        tl.store(dqr_ptr + out, (d_qs * q_sig).to(dqr_ptr.dtype.element_ty), mask=mask)


#: True when the kernels above were built by the Triton interpreter (``TRITON_INTERPRET=1`` at import time).
KERNELS_INTERPRETED: bool = type(_sample_kl_fwd_kernel).__name__ == "InterpretedFunction"


def _as_rows(t: torch.Tensor, d: int) -> torch.Tensor:
    """``t`` as an ``(N, d)`` view with unit column stride (no copy when possible), else a contiguous copy."""
    if t.dim() >= 1 and t.stride(-1) == 1:
        try:
            return t.view(-1, d)
        except RuntimeError:  # leading dims not flattenable without a copy
            pass
    return t.contiguous().view(-1, d)


def _launch_config(n: int, d: int) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(d)
    block_n = max(1, min(_TILE_ELEMS // block_d, triton.next_power_of_2(n)))
    num_warps = 8 if block_n * block_d >= 2048 else 4
    return block_n, block_d, num_warps


class GaussianSampleKL(torch.autograd.Function):
    """``(sample, kl) = GaussianSampleKL.apply(prior_mean, prior_std_raw, post_mean, post_std_raw, noise,
    min_std, reverse)``; the five tensors share one shape ``(..., D)`` and one dtype and device.

    Saves only the five inputs; the backward recomputes everything else in one kernel. Double backward is not
    supported (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, prior_mean, prior_std_raw, post_mean, post_std_raw, noise, min_std, reverse):
        inputs = (prior_mean, prior_std_raw, post_mean, post_std_raw, noise)
        shape = post_mean.shape
        d = shape[-1]
        lead = shape[:-1]
        dtype = post_mean.dtype
        if any(t.dtype != dtype for t in inputs):
            raise TypeError("GaussianSampleKL needs all five inputs in one dtype")
        if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(f"GaussianSampleKL does not support {dtype}")
        if d > MAX_D:
            raise ValueError(f"GaussianSampleKL handles D <= {MAX_D}, got D = {d}; use the reference backend")
        kl_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        ctx.set_materialize_grads(False)
        ctx.min_std = float(min_std)
        ctx.reverse = bool(reverse)
        ctx.save_for_backward(*inputs)

        n = lead.numel()
        sample = torch.empty(shape, dtype=dtype, device=post_mean.device)
        kl = torch.empty(lead, dtype=kl_dtype, device=post_mean.device)
        if n == 0 or d == 0:
            kl.zero_()  # empty batch (nothing to write) or D == 0 (empty sum)
            return sample, kl
        rows = [_as_rows(t, d) for t in inputs]
        block_n, block_d, num_warps = _launch_config(n, d)
        grid = (triton.cdiv(n, block_n),)
        _sample_kl_fwd_kernel[grid](
            *rows, sample, kl, n, ctx.min_std, *(r.stride(0) for r in rows),
            D=d, BLOCK_N=block_n, BLOCK_D=block_d, REVERSE=ctx.reverse, FP64=dtype == torch.float64,
            num_warps=num_warps,
        )
        return sample, kl

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sample, grad_kl):
        inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if grad_sample is None and grad_kl is None:
            return (None,) * 7
        shape = inputs[0].shape
        d = shape[-1]
        n = shape[:-1].numel()
        # gradients are written in pairs (prior mean+raw, posterior mean+raw) and for the noise on its own, only
        # where some input of the group needs one (e.g. no prior writes for KL(q || sg(p)))
        need_dp, need_dq, need_deps = needs[0] or needs[1], needs[2] or needs[3], bool(needs[4])
        want = (need_dp, need_dp, need_dq, need_dq, need_deps)
        bufs = [torch.empty(shape, dtype=t.dtype, device=t.device) if w else None
                for w, t in zip(want, inputs, strict=True)]
        if n == 0 or d == 0:
            for b in bufs:
                if b is not None:
                    b.zero_()
        else:
            rows = [_as_rows(t, d) for t in inputs]
            gs = _as_rows(grad_sample, d) if grad_sample is not None else rows[0]
            gk = grad_kl.contiguous().view(-1) if grad_kl is not None else rows[0]
            block_n, block_d, num_warps = _launch_config(n, d)
            grid = (triton.cdiv(n, block_n),)
            dummy = rows[0]  # never written: its store is compiled out
            _sample_kl_bwd_kernel[grid](
                *rows, gs, gk, *(b if b is not None else dummy for b in bufs),
                n, ctx.min_std, *(r.stride(0) for r in rows), gs.stride(0),
                D=d, BLOCK_N=block_n, BLOCK_D=block_d, REVERSE=ctx.reverse,
                FP64=inputs[0].dtype == torch.float64,
                HAS_GS=grad_sample is not None, HAS_GK=grad_kl is not None,
                NEED_DP=need_dp, NEED_DQ=need_dq, NEED_DEPS=need_deps, num_warps=num_warps,
            )
        return (*(b if need else None for b, need in zip(bufs, needs[:5], strict=True)), None, None)


def gaussian_sample_kl_triton(prior_mean: torch.Tensor, prior_std_raw: torch.Tensor, post_mean: torch.Tensor,
                              post_std_raw: torch.Tensor, noise: torch.Tensor, *, min_std: float = 0.1,
                              reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton ``(sample, kl)``; inputs of mixed floating dtypes are promoted first (autograd casts back).

    CPU tensors are accepted only when these kernels were built by the interpreter (``TRITON_INTERPRET=1``
    set before this module was first imported).
    """
    from .reference import check_inputs

    dtype = check_inputs(prior_mean, prior_std_raw, post_mean, post_std_raw, noise)
    if not post_mean.is_cuda and not KERNELS_INTERPRETED:
        raise ValueError("the Triton kernels run on CPU tensors only under the Triton interpreter, and "
                         "mrcom_core.kernels.triton_sample_kl was imported without TRITON_INTERPRET=1; set "
                         "TRITON_INTERPRET=1 before anything imports it, or use backend='reference'")
    ins = [t if t.dtype == dtype else t.to(dtype) for t in (prior_mean, prior_std_raw, post_mean, post_std_raw,
                                                            noise)]
    return GaussianSampleKL.apply(*ins, float(min_std), bool(reverse))
