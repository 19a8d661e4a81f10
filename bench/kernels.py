"""Benchmark: fused Triton Gaussian sample + KL against the eager reference (and ``torch.compile`` of it).

Run as ``python bench/kernels.py [--iters 50] [--warmup 10] [--no-compile] [--quick]`` on a CUDA machine; on a
machine without CUDA it prints one line and exits 0.

For rows N in {4096, 65536, 1M} x D in {32, 64} x {float32, bfloat16} it times forward + backward (all five
inputs require grad; ``torch.autograd.grad`` with random ``grad_sample`` / ``grad_kl``) of

1. the fused Triton function (``backend='triton'``),
2. the eager reference composition (``gaussian_sample_kl_reference``),
3. ``torch.compile`` of the reference ('n/a' if compiling fails),

with CUDA events, after warm-up, median of ``--iters`` iterations. The fused kernel's achieved bandwidth uses
the bytes it must move: forward reads 5·N·D and writes N·D + N (kl, float32); backward reads 5·N·D + N·D + N
(grad_kl, float32) and writes 5·N·D, i.e. 16·N·D·itemsize + 8·N bytes in all. It is compared with the copy
bandwidth measured in the same run (a large device-to-device ``copy_``, read + write). Goals: >= 3x speedup
over eager, >= 70 % of copy bandwidth at large sizes. Each row also reports the largest relative difference
between fused and reference outputs/gradients (a correctness check of the GPU path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrcom_core.kernels import gaussian_sample_kl, gaussian_sample_kl_reference  # noqa: E402

MIN_STD = 0.1


def _time_ms(fn, iters: int, warmup: int) -> float:
    """Median milliseconds per call of ``fn`` (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def measure_copy_bandwidth(iters: int, warmup: int) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), with a buffer of up to 1 GiB."""
    free, _total = torch.cuda.mem_get_info()
    nbytes = int(min(1 << 30, free // 8)) // 256 * 256
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), iters, warmup)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def fused_bytes(n: int, d: int, dtype: torch.dtype) -> int:
    e = torch.empty((), dtype=dtype).element_size()
    fwd = 5 * n * d * e + n * d * e + 4 * n
    bwd = 5 * n * d * e + n * d * e + 4 * n + 5 * n * d * e
    return fwd + bwd


def _fused(*args, **kwargs):
    return gaussian_sample_kl(*args, backend="triton", **kwargs)


def _max_rel_err(runner_a, runner_b) -> float:
    """Largest ``max|a - b| / max|b|`` over sample, kl and the five gradients."""
    worst = 0.0
    for a, b in zip(runner_a.outputs(), runner_b.outputs(), strict=True):
        a, b = a.float(), b.float()
        denom = b.abs().max().item() or 1.0
        worst = max(worst, (a - b).abs().max().item() / denom)
    return worst


class _Runner:
    """One forward + backward of ``fn`` on fixed inputs and upstream gradients."""

    def __init__(self, fn, ins, gs, gk):
        self.fn, self.ins, self.gs, self.gk = fn, ins, gs, gk

    def outputs(self):
        sample, kl = self.fn(*self.ins, min_std=MIN_STD, reverse=False)
        grads = torch.autograd.grad((sample, kl), self.ins, (self.gs, self.gk))
        return (sample.detach(), kl.detach(), *grads)

    def step(self):
        self.outputs()


def bench_one(n: int, d: int, dtype: torch.dtype, args, copy_gbs: float) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    ins = [torch.randn(n, d, device="cuda", dtype=dtype, generator=g).requires_grad_(True) for _ in range(5)]
    gs = torch.randn(n, d, device="cuda", dtype=dtype, generator=g)
    gk = torch.randn(n, device="cuda", dtype=torch.float32, generator=g)
    row = {"dtype": str(dtype).replace("torch.", ""), "N": n, "D": d}

    fused = _Runner(_fused, ins, gs, gk)
    eager = _Runner(gaussian_sample_kl_reference, ins, gs, gk)
    row["err"] = _max_rel_err(fused, eager)
    row["fused"] = _time_ms(fused.step, args.iters, args.warmup)
    row["eager"] = _time_ms(eager.step, args.iters, args.warmup)
    row["compiled"] = None
    if not args.no_compile:
        try:
            torch._dynamo.reset()
            compiled = _Runner(torch.compile(gaussian_sample_kl_reference), ins, gs, gk)
            t0 = time.perf_counter()
            compiled.step()
            torch.cuda.synchronize()
            row["compile_s"] = time.perf_counter() - t0  # first call: tracing + compilation
            row["compiled"] = _time_ms(compiled.step, args.iters, args.warmup)
        except Exception as exc:  # noqa: BLE001 - any compile failure just means 'n/a'
            row["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    gbs = fused_bytes(n, d, dtype) / (row["fused"] * 1e-3) / 1e9
    row["gbs"] = gbs
    row["pct"] = 100.0 * gbs / copy_gbs
    return row


def _fmt(x, spec=".3f", suffix=""):
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--quick", action="store_true", help="only N in {4096, 65536}")
    p.add_argument("--sizes", type=str, default=None, help="comma-separated row counts N (overrides --quick)")
    p.add_argument("--dims", type=str, default="32,64", help="comma-separated D values")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench/kernels.py: this benchmark needs a CUDA GPU (torch.cuda.is_available() is False); skipping.")
        return 0

    import triton

    props = torch.cuda.get_device_properties(0)
    copy_gbs = measure_copy_bandwidth(args.iters, args.warmup)
    print(f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
          f"triton {triton.__version__}")
    print(f"measured device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    print(f"forward + backward, median of {args.iters} iters after {args.warmup} warm-up, min_std={MIN_STD}, "
          "reverse=False, all 5 inputs require grad\n")

    sizes = [4096, 65536] if args.quick else [4096, 65536, 1 << 20]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    dims = [int(x) for x in args.dims.split(",")]
    header = ("| dtype | N | D | fused ms | eager ms | compile ms | x eager | x compile | fused GB/s "
              "| % copy BW | max rel err |")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    failures, notes = 0, []
    for dtype in (torch.float32, torch.bfloat16):
        for d in dims:
            for n in sizes:
                try:
                    r = bench_one(n, d, dtype, args, copy_gbs)
                except Exception as exc:  # noqa: BLE001 - report and continue with the other sizes
                    failures += 1
                    print(f"| {str(dtype).replace('torch.', '')} | {n} | {d} | FAILED: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''} | | | | | | | |")
                    traceback.print_exc(file=sys.stderr)
                    torch.cuda.empty_cache()
                    continue
                x_eager = r["eager"] / r["fused"]
                x_comp = None if r["compiled"] is None else r["compiled"] / r["fused"]
                print(f"| {r['dtype']} | {n} | {d} | {_fmt(r['fused'])} | {_fmt(r['eager'])} | "
                      f"{_fmt(r['compiled'])} | {_fmt(x_eager, '.2f', 'x')} | {_fmt(x_comp, '.2f', 'x')} | "
                      f"{r['gbs']:.0f} | {r['pct']:.0f}% | {r['err']:.1e} |", flush=True)
                if "compile_error" in r:
                    notes.append(f"torch.compile n/a for {r['dtype']} N={n} D={d}: {r['compile_error']}")
                elif "compile_s" in r:
                    notes.append(f"torch.compile first call (trace + compile) for {r['dtype']} N={n} D={d}: "
                                 f"{r['compile_s']:.1f} s")
                tol = 1e-4 if dtype == torch.float32 else 2e-2
                if not r["err"] <= tol:
                    failures += 1
                    notes.append(f"MISMATCH fused vs reference for {r['dtype']} N={n} D={d}: max rel err "
                                 f"{r['err']:.2e} > {tol:.0e}")
                torch.cuda.empty_cache()
    print("\ngoals: >= 3x vs eager; >= 70% of the measured copy bandwidth at large N")
    for note in notes:
        print(note)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
