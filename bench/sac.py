"""SAC update throughput and model FLOP utilization: today's ``SAC.update`` against the frozen original.

Run as ``python bench/sac.py [--configs 256x2:256,128x2:128,64x2:256] [--threads 1] [--rounds 7]``.
For each config (``HIDDENxLAYERS:BATCH``) it builds :class:`LegacySAC` (a frozen copy of the update as it was
before its rewrite: single-tensor Adam, two separate critic MLPs, a Python Polyak loop, ``requires_grad``
toggling, six ``.item()`` host syncs) and the current :class:`~mrcom_train.agents.sac.SAC` from the same seed,
feeds both the same batches and times them in interleaved rounds (median), so machine noise hits both;
it reports wall-clock updates/s and updates per CPU-second of the process (robust when the machine is shared).
FLOPs per update are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one whole update
(forward and backward of critic, actor and temperature); utilization = FLOPs × updates/s ÷ the measured
float32 GEMM peak (2048² matmul) on the same thread count. The table also shows how far the two agents'
parameters drift apart after the warm-up updates (float rounding only).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrcom_train.agents.sac import SAC, Actor, SACConfig, mlp


class LegacyTwinQ(nn.Module):
    """The original twin critic: two ``nn.Sequential`` MLPs, evaluated one after the other."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, hidden_layers: int):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden_dim, hidden_layers)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden_dim, hidden_layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)])


class LegacySAC:
    """Frozen copy of ``SAC`` construction, ``update`` and ``state_dict`` before the rewrite (do not optimize)."""

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig, seed: int = 0):
        self.obs_dim, self.act_dim, self.config = obs_dim, act_dim, config
        self.device = torch.device("cpu")
        c = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(obs_dim, act_dim, c.hidden_dim, c.hidden_layers)
            self.critic = LegacyTwinQ(obs_dim, act_dim, c.hidden_dim, c.hidden_layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(c.init_alpha), requires_grad=True)
        self.target_entropy = float(-act_dim if c.target_entropy is None else c.target_entropy)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=c.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=c.alpha_lr)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    def update(self, batch: dict[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        obs, action, next_obs = (self._tensor(batch[k]) for k in ("obs", "action", "next_obs"))
        reward = self._tensor(batch["reward"]).reshape(-1)
        not_done = 1.0 - self._tensor(batch["terminated"]).reshape(-1)
        alpha = self.log_alpha.exp().detach()

        with torch.no_grad():
            next_action, next_logp = self.actor.sample(next_obs, self.generator)
            next_q = self.critic_target(next_obs, next_action).min(0).values - alpha * next_logp
            target_q = reward + self.config.gamma * not_done * next_q
        q = self.critic(obs, action)
        critic_loss = F.mse_loss(q, target_q.expand_as(q), reduction="none").mean(1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        self.critic.requires_grad_(False)
        new_action, logp = self.actor.sample(obs, self.generator)
        actor_loss = (alpha * logp - self.critic(obs, new_action).min(0).values).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p_targ, p in zip(self.critic_target.parameters(), self.critic.parameters(), strict=True):
                p_targ.lerp_(p, self.config.tau)
        return {
            "critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "alpha": self.alpha,
            "alpha_loss": alpha_loss.item(), "entropy": -logp.mean().item(), "q_mean": q.mean().item(),
        }

    def state_dict(self) -> dict:
        return {
            "architecture": {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden_dim": self.config.hidden_dim,
                             "hidden_layers": self.config.hidden_layers},
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(), "generator": self.generator.get_state(),
        }


def agent_params(agent) -> list[torch.Tensor]:
    """Actor, critic (as ``(2, …)`` stacks, Q1 first), target critic and log α, in one comparable layout."""
    def critic(module) -> list[torch.Tensor]:
        if isinstance(module, LegacyTwinQ):
            return [torch.stack([a, b]) for a, b in zip(module.q1.parameters(), module.q2.parameters(), strict=True)]
        return list(module.parameters())

    return [p.detach() for p in [*agent.actor.parameters(), *critic(agent.critic), *critic(agent.critic_target),
                                 agent.log_alpha]]


def max_param_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(agent_params(a), agent_params(b), strict=True))


def random_batch(rng: np.random.Generator, n: int, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    return {
        "obs": rng.standard_normal((n, obs_dim), np.float32),
        "action": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "reward": rng.standard_normal(n, np.float32),
        "next_obs": rng.standard_normal((n, obs_dim), np.float32),
        "terminated": (rng.random(n) < 0.05).astype(np.float32),
    }


def flops_per_update(agent, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        agent.update(batch)
    return float(counter.get_total_flops())


def parse_configs(text: str) -> list[tuple[int, int, int]]:
    out = []
    for item in text.split(","):
        shape, batch = item.split(":")
        hidden, layers = shape.split("x")
        out.append((int(hidden), int(layers), int(batch)))
    return out


def bench_config(hidden: int, layers: int, batch: int, args) -> dict[str, float]:
    cfg = SACConfig(hidden_dim=hidden, hidden_layers=layers, batch_size=batch)
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, batch, args.obs_dim, args.act_dim) for _ in range(16)]
    agents = {"before": LegacySAC(args.obs_dim, args.act_dim, cfg, seed=0),
              "after": SAC(args.obs_dim, args.act_dim, cfg, seed=0)}
    for i in range(args.warmup):  # identical inputs: the parameters may differ only by float rounding
        for agent in agents.values():
            agent.update(batches[i % len(batches)])
    result = {"diff": max_param_diff(agents["before"], agents["after"])}
    for name, agent in agents.items():
        result[f"flops_{name}"] = flops_per_update(agent, batches[0])
    rates: dict[str, list[float]] = {name: [] for name in agents}
    cpu_rates: dict[str, list[float]] = {name: [] for name in agents}
    for r in range(args.rounds):  # interleaved, alternating which goes first
        for name in (list(agents) if r % 2 == 0 else list(agents)[::-1]):
            agent = agents[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.updates):
                agent.update(batches[i % len(batches)])
            rates[name].append(args.updates / (time.perf_counter() - t0))
            cpu_rates[name].append(args.updates / (time.process_time() - c0))
    result.update({name: float(np.median(v)) for name, v in rates.items()})
    result.update({f"cpu_{name}": float(np.median(v)) for name, v in cpu_rates.items()})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="256x2:256,128x2:128,128x2:256,64x2:256",
                        help="comma-separated HIDDENxLAYERS:BATCH")
    parser.add_argument("--obs-dim", type=int, default=24, help="observation size (the unified space's)")
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--updates", type=int, default=40, help="timed updates per round and agent")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates on identical batches first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--budget", type=int, default=200_000, help="updates to cost out (20k env steps × G=10)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from peak import gemm_peak  # bench/peak.py (imported here: tests load this file for LegacySAC alone)

    peak = gemm_peak()
    print("# MrCoM SAC update: frozen original (before) vs today's SAC.update (after)\n")
    print(f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__} with "
          f"{args.threads} thread(s); float32 GEMM peak {peak / 1e9:.1f} GFLOP/s (2048² matmul, same threads)")
    print(f"- obs {args.obs_dim}, act {args.act_dim}; median of {args.rounds} interleaved rounds of {args.updates} "
          f"updates after {args.warmup} warm-up updates on identical batches\n")
    print("| hidden × layers | batch | MFLOP/update | before upd/s | after upd/s | speed-up | after upd/CPU-s "
          f"| speed-up (CPU) | before MFU | after MFU | {args.budget // 1000}k updates (after) | max abs param diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for hidden, layers, batch in parse_configs(args.configs):
        r = bench_config(hidden, layers, batch, args)
        mfu = {name: r[f"flops_{name}"] * r[name] / peak for name in ("before", "after")}
        print(f"| {hidden} × {layers} | {batch} | {r['flops_after'] / 1e6:.0f} | {r['before']:.1f} | {r['after']:.1f} "
              f"| {r['after'] / r['before']:.2f}× | {r['cpu_after']:.1f} | {r['cpu_after'] / r['cpu_before']:.2f}× "
              f"| {mfu['before']:.0%} | {mfu['after']:.0%} | {args.budget / r['after'] / 60:.0f} min "
              f"| {r['diff']:.1e} |", flush=True)
        if abs(r["flops_before"] - r["flops_after"]) > 1e-6 * r["flops_before"]:
            print(f"  (FLOP counts differ: before {r['flops_before'] / 1e6:.1f} M, "
                  f"after {r['flops_after'] / 1e6:.1f} M)")
    print("\nupd/s: wall clock, median of the rounds. upd/CPU-s: per second of this process's CPU time, what a "
          "dedicated core would give when other processes share the machine (with 1 thread). MFU: model FLOPs per "
          "update (torch flop counter: matmuls of the forward and backward passes) × upd/s ÷ GEMM peak. "
          f"Load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
