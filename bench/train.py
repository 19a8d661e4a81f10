"""World-model training throughput and model FLOPs utilization (MFU): the training pass's variants in one run.

Run as ``python bench/train.py [--preset small] [--steps 4] [--rounds 5] [--threads T] [--data PATH]``. It
collects a small random dataset (hopper, walker, cheetah) into a temp folder (or reads ``--data``), builds one
MrCoM :class:`~mrcom_train.training.trainer.Trainer` and times ``Trainer.train_step`` (sampling, noise,
forward, backward, Adam) in interleaved rounds (median per round), so machine noise hits every column alike:

* **now** — the training step (with ``train.overlap_overshoot``: on a CPU with 2+ threads the overshooting
  term runs in a second thread beside the other terms);
* **one stream** — the same pass with the overlap off (every term in one stream on all threads);
* **re-encoding** — the context encoder run over every step's window instead of streaming once.

FLOPs per update (forward + backward) are counted by torch's flop counter; MFU = FLOPs × updates/s ÷ the
float32 GEMM peak measured in the same run with the same threads. Also prints updates per CPU-second of the
process, which stays meaningful when other processes share the machine. On CUDA (when present) the same
columns are timed on the GPU.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402


def flops_per_update(trainer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    return float(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=4, help="updates per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per column (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--data", type=Path, help="an existing dataset (default: collect a small random one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from peak import gemm_peak  # bench/peak.py

    from mrcom_train.datasets.collect import CollectConfig, collect
    from mrcom_train.training.config import RunRequest
    from mrcom_train.training.trainer import Trainer

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("# MrCoM training throughput: the overlapped overshooting term and the streaming context\n")
    print(f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"{args.threads} CPU thread(s)" + (f"; GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    with tempfile.TemporaryDirectory(prefix="mrcom-bench-train-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            collect(CollectConfig(scenarios_per_domain=2, episodes_per_scenario=2, episode_length=300), data,
                    progress=False, log=lambda s: None)
        rows = []
        for device in devices:
            steps = args.steps * args.rounds + args.warmup + 10
            trainers = {name: Trainer(data, Path(tmp) / f"{device}-{name}",
                                      RunRequest(preset=args.preset, model={"ctx_reencode": name == "re-encoding"},
                                                 train={"steps": steps, "device": device,
                                                        "overlap_overshoot": name != "one stream"}),
                                      progress=False, log=lambda s: None)
                        for name in ("streaming", "one stream", "re-encoding")}
            columns = {"now": trainers["streaming"], "one stream": trainers["one stream"],
                       "re-encoding": trainers["re-encoding"]}
            for trainer in columns.values():
                for _ in range(args.warmup):
                    trainer.train_step()
            flops = flops_per_update(trainers["one stream"])  # the flop counter sees only its own thread
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            wall: dict[str, list[float]] = {n: [] for n in columns}
            cpu: dict[str, list[float]] = {n: [] for n in columns}
            for _ in range(args.rounds):
                for name, trainer in columns.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(args.steps):
                        trainer.train_step()
                    sync()
                    wall[name].append(args.steps / (time.perf_counter() - t0))
                    cpu[name].append(args.steps / (time.process_time() - c0))
            rate = {n: float(np.median(v)) for n, v in wall.items()}
            per_cpu = {n: float(np.median(v)) for n, v in cpu.items()}
            rows.append((device, rate, per_cpu, flops, gemm_peak(device)))
        mc, tc = trainers["streaming"].model_config, trainers["streaming"].config
        print(f"- preset {args.preset}: batch {tc.batch_size}, window L={tc.window_len}, context m={mc.context_len}, "
              f"{mc.ctx_layers} encoder layers of width {mc.ctx_width}; {args.rounds} interleaved rounds of "
              f"{args.steps} updates per column after {args.warmup} warm-up\n")
        print("| device | now upd/s | one stream upd/s | now / one stream | now upd/CPU-s | one stream upd/CPU-s "
              "| GFLOP/update | GEMM peak GFLOP/s | MFU now | MFU one stream | re-encoding upd/s "
              "| streaming / re-encoding |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for device, rate, per_cpu, flops, peak in rows:
            print(f"| {device} | {rate['now']:.2f} | {rate['one stream']:.2f} | "
                  f"{rate['now'] / rate['one stream']:.2f}× | "
                  f"{per_cpu['now']:.2f} | {per_cpu['one stream']:.2f} | {flops / 1e9:.2f} | {peak / 1e9:.0f} | "
                  f"{flops * rate['now'] / peak:.0%} | {flops * rate['one stream'] / peak:.0%} | "
                  f"{rate['re-encoding']:.2f} | {rate['now'] / rate['re-encoding']:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
