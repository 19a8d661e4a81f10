"""World-model training throughput and model FLOPs utilization (MFU), before/after in one run.

Run as ``python bench/train.py [--preset small] [--steps 4] [--rounds 5] [--threads T] [--data PATH]``. It
collects a small random dataset (hopper, walker, cheetah) into a temp folder (or reads ``--data``), builds one
MrCoM :class:`~mrcom_train.training.trainer.Trainer` and times ``Trainer.train_step`` (sampling, noise,
forward, backward, Adam) in interleaved rounds (median per round), so machine noise hits every column alike:

* **now** — today's training step (with ``train.overlap_overshoot``: on a CPU with 2+ threads the overshooting
  term runs in a second thread beside the other terms);
* **one stream** — today's pass with the overlap off (every term in one stream on all threads);
* **before** — :func:`per_step_window`, a frozen copy of ``MrCoM.observe_window`` as it was earlier
  (u and h priors and their fused sample+KL evaluated inside the per-step posterior loop; same losses bit for
  bit, a test checks it);
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
import types
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
warnings.filterwarnings("ignore")
logging.getLogger("absl").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrcom_core.base import Gaussian, LatentState  # noqa: E402
from mrcom_core.kernels import gaussian_sample_kl  # noqa: E402
from mrcom_core.losses import MrCoMWindow  # noqa: E402


def per_step_window(self, batch: dict[str, torch.Tensor], noise: dict[str, torch.Tensor]) -> MrCoMWindow:
    """``MrCoM.observe_window`` as it was (frozen copy, the bench's "before" column): the priors of u and
    h and their fused sample+KL run inside the per-step loop with the posteriors."""
    c = self.config
    obs_n = self.normalize(batch["obs"])
    B, T1, _ = obs_n.shape
    context = self.window_context(batch)
    prev_action = torch.cat([batch["context_action"][:, -1:], batch["action"]], dim=1)
    reverse = c.kl_direction == "prior_post"
    if not self.u_on_d:
        p = Gaussian.split(self.u_prior(torch.cat([context, prev_action], -1)))
        q = Gaussian.split(self.u_post(torch.cat([context, prev_action, obs_n], -1)))
        u, kl_u = gaussian_sample_kl(p.mean, p.std_raw, q.mean, q.std_raw, noise["u"], min_std=c.min_std,
                                     reverse=reverse)
    state = self.initial_state(B, obs_n.device)
    ds, hs, kls, h_priors, u_steps = [], [], [], [], []
    for j in range(T1):
        if self.u_on_d:
            pj = Gaussian.split(self.u_prior(self.u_inputs(context[:, j], prev_action[:, j], state.d)))
            qj = Gaussian.split(self.u_post(self.u_inputs(context[:, j], prev_action[:, j], state.d, obs_n[:, j])))
            uj, kl_uj = gaussian_sample_kl(pj.mean, pj.std_raw, qj.mean, qj.std_raw, noise["u"][:, j],
                                           min_std=c.min_std, reverse=reverse)
            u_steps.append((uj, kl_uj, pj, qj))
        else:
            uj = u[:, j]
        d = self.deterministic(state.d, uj, prev_action[:, j])
        hp = Gaussian.split(self.h_prior(torch.cat([context[:, j], state.h], -1)))
        hq = Gaussian.split(self.h_post(torch.cat([context[:, j], state.h, obs_n[:, j]], -1)))
        h, kl_h = gaussian_sample_kl(hp.mean, hp.std_raw, hq.mean, hq.std_raw, noise["h"][:, j],
                                     min_std=c.min_std, reverse=reverse)
        ds.append(d)
        hs.append(h)
        kls.append(kl_h)
        h_priors.append(hp)
        state = LatentState(uj, d, h)
    if self.u_on_d:
        us, kl_us, ps, qs = zip(*u_steps, strict=True)
        u, kl_u = torch.stack(us, 1), torch.stack(kl_us, 1)
        p, q = (Gaussian(*(torch.stack(x, 1) for x in zip(*g, strict=True))) for g in (ps, qs))
    posterior = LatentState(u, torch.stack(ds, 1), torch.stack(hs, 1))
    h_prior = Gaussian(*(torch.stack(x, 1) for x in zip(*h_priors, strict=True)))
    return MrCoMWindow(posterior, context, prev_action, p, q, h_prior, kl_u, torch.stack(kls, 1))


def use_pass(model, which: str) -> None:
    """Switch ``model`` to the ``now`` or ``before`` training pass (an instance attribute shadows the class
    method; deleting it restores today's)."""
    if which == "before":
        model.observe_window = types.MethodType(per_step_window, model)
    elif "observe_window" in vars(model):
        del model.observe_window


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
    print("# MrCoM training throughput: today's pass vs before, streaming context vs re-encoding\n")
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
            columns = {"now": (trainers["streaming"], "now"), "one stream": (trainers["one stream"], "now"),
                       "before": (trainers["one stream"], "before"), "re-encoding": (trainers["re-encoding"], "now")}
            for trainer, which in columns.values():
                use_pass(trainer.model, which)
                for _ in range(args.warmup):
                    trainer.train_step()
            use_pass(trainers["one stream"].model, "now")
            flops = flops_per_update(trainers["one stream"])  # the flop counter sees only its own thread
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            wall: dict[str, list[float]] = {n: [] for n in columns}
            cpu: dict[str, list[float]] = {n: [] for n in columns}
            for _ in range(args.rounds):
                for name, (trainer, which) in columns.items():
                    use_pass(trainer.model, which)
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
        print("| device | now upd/s | one stream upd/s | before upd/s | now / before | now upd/CPU-s "
              "| before upd/CPU-s | GFLOP/update | GEMM peak GFLOP/s | MFU now | MFU before | re-encoding upd/s "
              "| streaming / re-encoding |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for device, rate, per_cpu, flops, peak in rows:
            print(f"| {device} | {rate['now']:.2f} | {rate['one stream']:.2f} | {rate['before']:.2f} | "
                  f"{rate['now'] / rate['before']:.2f}× | "
                  f"{per_cpu['now']:.2f} | {per_cpu['before']:.2f} | {flops / 1e9:.2f} | {peak / 1e9:.0f} | "
                  f"{flops * rate['now'] / peak:.0%} | {flops * rate['before'] / peak:.0%} | "
                  f"{rate['re-encoding']:.2f} | {rate['now'] / rate['re-encoding']:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
