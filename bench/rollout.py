"""Imagined-rollout throughput of the `small` MrCoM model across engines, against the FLOP roofline.

Run as ``python bench/rollout.py [--preset small] [--batches 1,64,1024] [--horizon 15] [--threads T]``.
Exports a randomly initialized model (speed does not depend on the weights) to a temp folder, then
times one H-step rollout (after a prompt reset, which is not timed) per engine and batch size:

* eager PyTorch, re-encoding the context window at every step (the paper's literal ``Enc(C_t)``),
* eager PyTorch with the streaming encoder's key/value FIFO (incremental),
* TorchScript (the ``rollout`` graph: a scripted loop over the traced step),
* ONNX Runtime, one ``step`` graph call per step (I/O binding, state kept on the device), and the same with
  the ``ensemble`` graph's disagreement before each step (as the imagined vector env and ``mrcom adapt`` run),
* ONNX Runtime, the exported ``rollout`` graph (an ONNX ``Loop`` over one step: any horizon; its body reads
  the start cache in place and carries only the rollout's own keys/values),
* ONNX Runtime, the same ``Loop`` over the FIFO body that shifts the whole cache every step (how ``rollout``
  was exported before; ``--no-before`` skips it),
* with ``--unrolled``, ONNX Runtime on the same H steps unrolled into one graph (how ``rollout`` was exported
  before the Loop; traced here from the eager module by the dynamo exporter, ~2.5 min),
  all called directly with the same inputs.

With ``--cpp``, the C++ examples (``cpp_examples/``, built into ``build/bench-cpp``) join the table: the ONNX
Runtime C++ API and LibTorch, each imagining with the exported ``rollout`` in one call (``--fused``).

Also times the export itself (ONNX + TorchScript with parity checks) and the unrolled graph's export.

Prints samples×steps/s, the ratio to eager re-encoding, and the model's FLOPs per sample-step (counted
with ``torch.utils.flop_counter`` on the step graph) against the machine's measured float32 GEMM peak.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peak import gemm_peak, median_time  # bench/peak.py

from mrcom_core import steps
from mrcom_core.base import BaseWorldModel as WorldModel
from mrcom_core.registry import build_model, model_config
from mrcom_export import graphs as G
from mrcom_export.exporter import export_loop, export_model
from mrcom_export.runtime import Runtime


@torch.no_grad()
def eager_rollout(model: WorldModel, prompt, actions: torch.Tensor, noise, reencode: bool) -> torch.Tensor:
    obs, act, rew = prompt
    m, H = model.config.context_len, actions.shape[1]
    obs_n = model.normalize(obs)
    state, cache = steps.prime(model, obs_n[:, :m], act, rew, obs_n[:, m], noise["u"][:, 0], noise["h"][:, 0])
    if not reencode:  # the streaming encoder's key/value FIFO: what the runtime runs
        return steps.rollout(model, state, cache, obs_n[:, m], H, actions, noise["u"], noise["h"]).obs
    tokens, last, out = model.tokens(obs_n[:, :m], act, rew), obs_n[:, m], []
    for t in range(H):  # the literal Enc(C_t): the whole m-token window encoded again every step
        a = actions[:, t]
        tokens = torch.cat([tokens[:, 1:], model.tokens(last, a, model.reward(state, a))[:, None]], 1)
        state = model.imagine_step(state, model.encode_context(tokens)[0][:, -1], a, noise["u"][:, t],
                                   noise["h"][:, t])
        last = model.decode(state)
        out.append(last)
    return torch.stack(out, 1)


def bench_batch(model: WorldModel, rt: Runtime, scripted, B: int, H: int, rng: np.random.Generator,
                reps: int, cpp: dict[str, Path] | None = None, cpp_threads: dict[str, int] | None = None
                ) -> dict[str, float]:
    """Median seconds of one H-step rollout of B samples, per engine."""
    c = model.config
    obs = rng.standard_normal((B, c.context_len + 1, c.obs_dim)).astype(np.float32)
    act = np.tanh(rng.standard_normal((B, c.context_len, c.act_dim))).astype(np.float32)
    rew = rng.random((B, c.context_len)).astype(np.float32)
    actions = np.tanh(rng.standard_normal((B, H, c.act_dim))).astype(np.float32)
    noise = {"u": rng.standard_normal((B, H, model.sizes.u), np.float32),
             "h": rng.standard_normal((B, H, model.sizes.h), np.float32)}
    tp = tuple(torch.from_numpy(x) for x in (obs, act, rew))
    ta, tn = torch.from_numpy(actions), {k: torch.from_numpy(v) for k, v in noise.items()}
    times = {
        "eager re-encode": median_time(lambda: eager_rollout(model, tp, ta, tn, True), reps),
        "eager incremental": median_time(lambda: eager_rollout(model, tp, ta, tn, False), reps),
    }
    with torch.no_grad():
        s = model.sizes
        state = [torch.zeros(B, s.u), torch.zeros(B, s.d), torch.zeros(B, s.h), tp[0][:, -1],
                 torch.zeros(model.cache_shape(B)), torch.zeros(model.cache_shape(B))]
        scripted(*state, ta, tn["u"], tn["h"])
        times["TorchScript loop"] = median_time(lambda: scripted(*state, ta, tn["u"], tn["h"]), reps)
    names = ("u", "d", "h", "obs", "keys", "values")
    arrays = {"obs": obs, "act": act, "rew": rew, "actions": actions, **noise,
              **{f"state_{n}": x.numpy() for n, x in zip(names, state, strict=True)}}
    times.update(ort_times(rt, arrays, H, reps))
    if cpp:
        s = model.sizes
        cpp_inputs = {"prompt_obs": obs, "prompt_act": act, "prompt_rew": rew, "actions": actions,
                      "noise_u": noise["u"], "noise_h": noise["h"],
                      "reset_noise_u": rng.standard_normal((B, 1, s.u), np.float32),
                      "reset_noise_h": rng.standard_normal((B, 1, s.h), np.float32)}
        times.update(cpp_times(cpp, rt.root, cpp_inputs, reps, cpp_threads))
    return times


_ORT_CHILD = """
import json, os, sys, time
import numpy as np
import onnxruntime as ort
from mrcom_export.bundle import read_bundle
from mrcom_export.runtime import Runtime
export, inputs, H, reps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
x = read_bundle(inputs)
rt = Runtime(export, threads=threads or None)
noise = {"u": x["u"], "h": x["h"]}


def median(fn, setup=lambda: None):
    setup()
    fn()  # warm-up: first-run allocations
    times = []
    for _ in range(reps):
        setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


out = {"ORT per step": median(lambda: rt.rollout(x["actions"], H, fused=False, noise=noise),
                              lambda: rt.reset(x["obs"], x["act"], x["rew"]))}


def with_disagreement():  # the step graph and the ensemble's disagreement, as the imagined vector env runs them
    for t in range(H):
        rt.uncertainty(x["actions"][:, t])
        rt.step(x["actions"][:, t], noise={k: v[:, t] for k, v in noise.items()})


if rt.has_ensemble:
    out["ORT per step + ensemble"] = median(with_disagreement, lambda: rt.reset(x["obs"], x["act"], x["rew"]))
feed = {k[6:]: v for k, v in x.items() if k.startswith("state_")}
feed.update(actions=x["actions"], noise_u=x["u"], noise_h=x["h"])
options = ort.SessionOptions()
if threads:
    options.intra_op_num_threads = threads
for name, path in (("ORT Loop", f"{export}/rollout.onnx"), ("ORT Loop, FIFO body (before)", f"{export}/fifo_loop.onnx"),
                   ("ORT unrolled", f"{export}/unrolled.onnx")):
    if not os.path.exists(path):
        continue
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out[name] = median(lambda: sess.run(None, feed))
assert "torch" not in sys.modules
print(json.dumps(out))
"""


def ort_times(rt: Runtime, arrays: dict[str, np.ndarray], H: int, reps: int) -> dict[str, float]:
    """ONNX Runtime timings in a fresh process that never imports torch, as the runtime is deployed (torch's
    idle OpenMP threads would otherwise compete with ONNX Runtime's)."""
    import json
    import subprocess
    import sys

    from mrcom_export.bundle import write_bundle

    inputs = rt.root / "bench-inputs.mrcb"
    write_bundle(inputs, arrays)
    threads = rt.threads or 0  # 0: ONNX Runtime's own default pool
    r = subprocess.run([sys.executable, "-c", _ORT_CHILD, str(rt.root), str(inputs), str(H), str(reps), str(threads)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def build_cpp(dest: Path) -> dict[str, Path]:
    """Build both C++ examples into ``dest`` (ONNX Runtime headers fetched once); returns name → binary."""
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "cpp_examples"
    deps = dest / "ortdeps"
    subprocess.run(["bash", str(src / "onnxruntime_rollout" / "fetch_deps.sh"), str(deps), sys.executable],
                   check=True, capture_output=True)
    defines = {"onnxruntime_rollout": [f"-DONNXRUNTIME_INCLUDE_DIR={deps / 'include'}",
                                       f"-DONNXRUNTIME_LIBRARY={deps / 'lib' / 'libonnxruntime.so'}"],
               "libtorch_rollout": [f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]}
    binaries = {}
    for name, binary, column in (("onnxruntime_rollout", "mrcom_ort_rollout", "C++ ORT Loop"),
                                 ("libtorch_rollout", "mrcom_libtorch_rollout", "C++ LibTorch loop")):
        build = dest / name
        subprocess.run(["cmake", "-S", str(src / name), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                        *defines[name]], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True,
                       capture_output=True)
        binaries[column] = build / binary
    return binaries


def cpp_times(binaries: dict[str, Path], export: Path, arrays: dict[str, np.ndarray], reps: int,
              threads: dict[str, int]) -> dict[str, float]:
    """Median seconds of the fused H-step imagination in each C++ example (``--fused --repeat``)."""
    import re
    import subprocess

    from mrcom_export.bundle import write_bundle

    inputs, out = export.parent / "cpp-inputs.mrcb", export.parent / "cpp-out.mrcb"
    write_bundle(inputs, arrays)
    times = {}
    for column, binary in binaries.items():
        run = subprocess.run([str(binary), str(export), str(inputs), str(out), "--fused", "--repeat", str(reps + 1),
                              "--threads", str(threads[column])], capture_output=True, text=True, check=True)
        times[column] = float(re.search(r"steps in ([0-9.e+-]+) ms", run.stdout).group(1)) / 1e3
    return times


def export_unrolled(model: WorldModel, path: Path, H: int) -> float | None:
    """The ``rollout`` graph as it was exported before the Loop: its H steps unrolled into one graph by the
    dynamo exporter (needs ``onnxscript``; ``None`` without it); returns the export's seconds."""
    import contextlib
    import importlib.util
    import io
    import warnings

    if importlib.util.find_spec("onnxscript") is None:
        return None
    module = G.build_graph("rollout", model).eval()
    spec, batch = module.spec, torch.export.Dim("batch", min=1, max=1 << 20)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, G.example_inputs("rollout", model, 7, H), str(path), dynamo=True, opset_version=18,
                          input_names=list(spec.inputs), output_names=list(spec.outputs), external_data=False,
                          dynamic_shapes={n: {spec.batch_axis[n]: batch} for n in spec.inputs})
    return time.perf_counter() - t0


def export_fifo_loop(model: WorldModel, path: Path, manifest: dict) -> float:
    """The ``rollout`` Loop over the FIFO body (the whole cache shifted every step), as exported before the
    split body; returns the export's seconds."""
    import onnx

    t0 = time.perf_counter()
    proto = export_loop("rollout", model, None, G.example_inputs("rollout", model, 7, 3), manifest["graphs"]["rollout"],
                        split=False)
    onnx.save(proto, str(path))
    return time.perf_counter() - t0


def flops_per_sample_step(model: WorldModel, batch: int = 64) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    module = G.Step(model)
    inputs = G.example_inputs("step", model, batch)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops() / batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batches", default="1,64,1024")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ort-threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (0: its default pool)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpp", action="store_true", help="build the C++ examples and add their columns")
    parser.add_argument("--no-before", dest="before", action="store_false",
                        help="skip the Loop over the FIFO body (the 'before' column)")
    parser.add_argument("--unrolled", action="store_true",
                        help="add the rollout unrolled by the dynamo exporter (needs onnxscript; ~2.5 min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    H = args.horizon
    torch.manual_seed(0)
    model = build_model(model_config(args.preset, obs_dim=24, act_dim=6, num_scenarios=6)).eval()
    print(f"# MrCoM imagined rollouts: {args.preset} model, H = {H}\n")
    print(f"- {platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__} with {args.threads} thread(s); "
          f"ONNX Runtime with {args.ort_threads or 'its default'} intra-op thread(s), in a separate process that "
          f"never imports torch")
    with tempfile.TemporaryDirectory(prefix="mrcom-bench-rollout-") as root:
        tmp = Path(root) / "export"  # the export's lock file goes beside it, inside the temporary folder
        t0 = time.perf_counter()
        manifest = export_model(model, tmp, formats=("onnx", "torchscript"), horizon=H, log=lambda s: None)
        print(f"- export (ONNX + TorchScript, every graph, with parity checks) took {time.perf_counter() - t0:.1f} s")
        if args.before:
            took = export_fifo_loop(model, tmp / "fifo_loop.onnx", manifest)
            print(f"- before: the Loop over the FIFO body took {took:.1f} s")
        if args.unrolled:
            took = export_unrolled(model, tmp / "unrolled.onnx", H)
            print("- the H-step rollout unrolled into one graph by the dynamo exporter (no checks) " +
                  (f"took {took:.1f} s" if took else "skipped: onnxscript not installed"))
        rt = Runtime(tmp, threads=args.ort_threads or None)  # default pool: faster than 2 threads at small batch
        scripted = torch.jit.load(str(tmp / "rollout.pt"))
        flops = flops_per_sample_step(model)
        peak = gemm_peak()
        print(f"- model: {flops / 1e6:.2f} MFLOP per sample-step (torch flop counter, step graph); measured "
              f"float32 GEMM peak {peak / 1e9:.1f} GFLOP/s (2048² matmul, {args.threads} threads)\n")
        header = ["B", "eager re-encode", "eager incremental", "TorchScript loop", "ORT per step",
                  *(["ORT per step + ensemble"] if rt.has_ensemble else []), "ORT Loop",
                  *(["ORT Loop, FIFO body (before)"] if args.before else []),
                  *(["ORT unrolled"] if args.unrolled else [])]
        cpp = build_cpp(Path(__file__).resolve().parents[1] / "build" / "bench-cpp") if args.cpp else None
        cpp_threads = {"C++ ORT Loop": args.ort_threads, "C++ LibTorch loop": args.threads}
        header += list(cpp or ())
        print("| " + " | ".join(header) + " | best vs roofline |")
        print("|" + "---:|" * (len(header) + 1))
        rng = np.random.default_rng(0)
        for B in batches:
            times = bench_batch(model, rt, scripted, B, H, rng, max(2, args.repeats if B < 1024 else 3), cpp,
                                cpp_threads)
            base = times["eager re-encode"]
            cells = [str(B)]
            for name in header[1:]:
                if name not in times:
                    cells.append("–")
                    continue
                rate = B * H / times[name]
                cells.append(f"{rate:,.0f} ({base / times[name]:.1f}×)")
            best = min(times.values())
            achieved = flops * B * H / best
            cells.append(f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} of peak")
            print("| " + " | ".join(cells) + " |")
        print("\nCells: samples×steps per second (speed-up over eager re-encoding). Reset (prompt encoding) not "
              "timed; median of repeats.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
