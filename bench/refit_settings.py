"""Which refit settings lower the world model's reward error where the agent goes next, measured offline on the real
episodes of a finished adaptation run.

Run as ``python bench/refit_settings.py CELL EXPORT RUN [SETTING ...]``: ``CELL`` is an ``mrcom adapt`` run folder
whose checkpoints hold its real episodes (the newest ``checkpoints/step_*/buffers.npz``), ``EXPORT`` the export it
imagined with and ``RUN`` the training run behind it; each ``SETTING`` is ``frozen`` or comma-separated AdaptConfig
refit fields (``refit_lr=3e-4,refit_steps=150``; unset fields keep the cell's). For every setting it replays the
refits of ``mrcom adapt --set refit=all``: after each real episode k = 1 … N−1 one refit on episodes 1 … k (the
same :func:`~mrcom_train.rl.refit.refit_imagination` the adapter runs), then the one-step reward MAE
(:func:`~mrcom_train.rl.diagnostics.model_error`) on episode k+1, which the model has not seen (where the agent
goes next), and on episodes 1 … k (what it was refit on). One thread; prints a table with the ratio to frozen.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")
warnings.filterwarnings("ignore")
logging.getLogger("absl").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrcom_train.rl import diagnostics, refit  # noqa: E402
from mrcom_train.rl.adapt import Adapter  # noqa: E402
from mrcom_train.rl.adapt_config import AdaptConfig  # noqa: E402


def episodes(cell: Path) -> list[dict[str, np.ndarray]]:
    """The real episodes of the cell's newest checkpoint that has them."""
    for folder in sorted((cell / "checkpoints").glob("step_*"), reverse=True):
        if (folder / "buffers.npz").is_file():
            z = np.load(folder / "buffers.npz")
            n = len({k.split("_")[0] for k in z.files if k.startswith("ep")})
            return [{k: z[f"ep{i}_{k}"] for k in ("obs", "action", "reward")} for i in range(n)]
    raise SystemExit(f"{cell}: no checkpoint with real episodes (checkpoints/step_*/buffers.npz)")


def replay(cell: Path, export: str, run: str, setting: str, eps: list[dict]) -> tuple[float, float, float]:
    """(mean MAE on the next episode, mean MAE on the episodes so far, mean |r|) over k = 1 … N−1."""
    saved = {k: v for k, v in json.loads((cell / "config.json").read_text()).items() if k != "target"}
    changes = {} if setting == "frozen" else dict(item.split("=", 1) for item in setting.split(","))
    cfg = AdaptConfig(**{**saved, "refit": "none" if setting == "frozen" else "all",
                         **{k: type(saved[k])(v) for k, v in changes.items()}})
    nxt, seen, scale = [], [], []
    with tempfile.TemporaryDirectory() as tmp, Adapter(cfg, Path(tmp) / "run", export, progress=False, threads=1,
                                                        run=None if setting == "frozen" else run,
                                                        log=lambda *a: None) as adapter:
        for k in range(1, len(eps)):
            adapter.episodes = eps[:k]
            if setting != "frozen":
                refit.refit_imagination(adapter)
            seen.append(diagnostics.model_error(adapter)["reward_mae"])
            adapter.episodes = [eps[k]]
            error = diagnostics.model_error(adapter)
            nxt.append(error["reward_mae"])
            scale.append(error["reward_real_mean"])
    return float(np.mean(nxt)), float(np.mean(seen)), float(np.mean(scale))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cell", type=Path)
    p.add_argument("export")
    p.add_argument("run")
    p.add_argument("settings", nargs="*", default=["frozen", "refit_steps=50"])
    args = p.parse_args()
    torch.set_num_threads(1)
    eps = episodes(args.cell)
    rows = []
    for setting in dict.fromkeys(["frozen", *args.settings]):
        start = time.perf_counter()
        rows.append((setting, *replay(args.cell, args.export, args.run, setting, eps), time.perf_counter() - start))
    frozen = rows[0]
    print(f"# {args.cell}: {len(eps)} real episodes, {len(eps) - 1} refits per setting; 1 thread")
    print("| setting | reward MAE, next episode | × frozen | reward MAE, episodes so far | × frozen | mean abs r "
          "| s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setting, nxt, seen, scale, seconds in rows:
        print(f"| {setting} | {nxt:.4f} | {nxt / frozen[1]:.2f} | {seen:.4f} | {seen / frozen[2]:.2f} | "
              f"{scale:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
