"""World-model training throughput: streaming context encoder vs re-encoding every step's window.

Run as ``python bench/train.py [--preset small] [--steps N] [--threads T]``. It collects a small random
dataset (hopper, walker, cheetah) into a temp folder, then times ``Trainer.train_step`` (sampling, noise,
forward, backward, Adam) for each context mode on the CPU, and on CUDA when a GPU is present. Prints a
Markdown table of updates/s, the speed-up of streaming over re-encoding (goal ≥ 4× for ``small``) and the model
FLOPs utilization of the streaming step: FLOPs per update (forward + backward, counted by torch's flop counter)
× updates/s ÷ the float32 GEMM peak measured in the same run with the same threads.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
warnings.filterwarnings("ignore")
logging.getLogger("absl").setLevel(logging.ERROR)

import torch  # noqa: E402
from peak import gemm_peak  # noqa: E402  (bench/peak.py)

from mrcom_train.datasets.collect import CollectConfig, collect  # noqa: E402
from mrcom_train.training.config import RunRequest  # noqa: E402
from mrcom_train.training.trainer import Trainer  # noqa: E402


def time_updates(data: Path, run: Path, preset: str, device: str, reencode: bool, steps: int,
                 warmup: int) -> tuple[float, float]:
    """Updates/s of ``Trainer.train_step`` and its FLOPs per update."""
    from torch.utils.flop_counter import FlopCounterMode

    request = RunRequest(preset=preset, model={"ctx_reencode": reencode},
                         train={"steps": steps + warmup + 1, "device": device})
    trainer = Trainer(data, run, request, progress=False, log=lambda s: None)
    for _ in range(warmup):
        trainer.train_step()
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start), float(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per cell")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("# MrCoM training throughput: streaming context vs re-encoding each window\n")
    print(f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"{args.threads} CPU thread(s)" + (f"; GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    with tempfile.TemporaryDirectory(prefix="mrcom-bench-train-") as tmp:
        data = Path(tmp) / "data"
        collect(CollectConfig(scenarios_per_domain=2, episodes_per_scenario=2, episode_length=300), data,
                progress=False, log=lambda s: None)
        trainer = Trainer(data, Path(tmp) / "probe", RunRequest(preset=args.preset), progress=False,
                          log=lambda s: None)
        mc, tc = trainer.model_config, trainer.config
        print(f"- preset {args.preset}: batch {tc.batch_size}, window L={tc.window_len}, context m={mc.context_len}, "
              f"{mc.ctx_layers} encoder layers of width {mc.ctx_width}; {args.steps} timed updates after "
              f"{args.warmup} warm-up\n")
        print("| device | streaming upd/s | GFLOP/update | GEMM peak GFLOP/s | MFU | re-encoding upd/s | speed-up |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for device in devices:
            rates, flops = {}, {}
            for reencode in (False, True):
                run = Path(tmp) / f"run-{device}-{reencode}"
                rates[reencode], flops[reencode] = time_updates(data, run, args.preset, device, reencode, args.steps,
                                                                args.warmup)
            peak = gemm_peak(device)
            print(f"| {device} | {rates[False]:.2f} | {flops[False] / 1e9:.2f} | {peak / 1e9:.0f} | "
                  f"{flops[False] * rates[False] / peak:.0%} | {rates[True]:.2f} | {rates[False] / rates[True]:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
