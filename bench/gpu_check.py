"""One-command health check of a CUDA machine for MrCoM: run ``bash scripts/gpu_check.sh`` from the repo root.

Parts (each a child process with a time limit: a crash or hang is a table row, the rest still runs): 1 environment;
2 Triton kernels (un-interpreted) vs the PyTorch reference; 3 ``bench/kernels.py --quick``; 4 fp32 / bf16 training
steps of every registered model on a synthetic batch; 5 export, ONNX Runtime parity, GPU rollout throughput. Output
also goes to ``$OUT/gpu_check.log`` and ``$OUT/gpu_check.json`` when OUT is set. Exit 1 if a correctness row FAILed.
``--cpu-dry-run`` (developer aid): every part on CPU, Triton interpreted, tiny sizes, modules hidden as on the GPU
machine (mujoco and dm_control are hidden in every run), to exercise all code paths before the one-shot GPU run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALWAYS_HIDDEN, DRY_HIDDEN = ("mujoco", "dm_control"), ("gymnasium", "tensorboard", "matplotlib", "glfw")
# part: (table label, seconds cap, whether a crash of its process is a correctness failure); in run order
PARTS = {"env": ("1 env", 90, True), "kernels": ("2 kernels", 200, True), "train": ("4 train", 200, True),
         "onnx": ("5 onnx", 200, True), "rollout": ("5 rollout", 120, False), "bench": ("3 bench", 200, False)}
ROWS: list[dict] = []  # a child's rows, written to its --result file after each


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def row(part, check, status, detail, correctness=True, **data):
    return {"part": part, "check": check, "status": status, "detail": detail, "correctness": correctness, "data": data}


def add(check, status, detail, correctness=True, **data):  # in a child process (its --part, --result: ARGS)
    ROWS.append(row(ARGS.label, check, status, detail, correctness, **data))
    print(f"[{ARGS.label}] {status} {check}: {detail}", flush=True)
    Path(ARGS.result).write_text(json.dumps(ROWS, default=str))


def guard(check, fn, correctness=True):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        traceback.print_exc(file=sys.stdout)
        add(check, "FAIL" if correctness else "ERROR", first_line(e), correctness)


def _median_s(fn, dev, reps):
    sync, times = sys.modules["torch"].cuda.synchronize if dev.type == "cuda" else (lambda: None), []
    for _ in range(reps + 1):  # the first call is a warm-up
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def part_env(dev, dry, limit):
    import onnxruntime as ort
    import torch
    info = {"python": platform.python_version(), "torch.cuda": torch.version.cuda}
    for name in ("torch", "triton", "numpy", "onnx", "onnxruntime"):
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception as e:  # noqa: BLE001
            info[name] = f"n/a ({first_line(e)})"
    info["ORT providers"] = ", ".join(ort.get_available_providers())
    add("versions", "INFO", "; ".join(f"{k} {v}" for k, v in info.items()), False, **info)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        add("GPU", "INFO", f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}"
            f"{p.minor}, bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.device_count()} device(s)", False)
    ok = bool(torch.isfinite(torch.randn(2048, 2048, device=dev) @ torch.randn(2048, 2048, device=dev)).all())
    add(f"{dev.type} matmul", "PASS" if ok else "FAIL", f"2048^2 float32 matmul on {dev} finite: {ok}")


def _err(got, ref, rtol, atol):  # max |a-b|, max |a-b| / max |b|, whether |a-b| <= atol + rtol |b| everywhere
    a, b = got.double(), ref.double()
    d = (a - b).abs()
    if not d.numel():
        return 0.0, 0.0, True
    return d.max().item(), d.max().item() / (b.abs().max().item() or 1.0), bool((d <= atol + rtol * b.abs()).all())


def part_kernels(dev, dry, limit):
    import torch

    from mrcom_core import kernels as K
    K.resolve_backend(torch.zeros(1, device=dev), "triton")  # raises if the fused kernels cannot run here
    from mrcom_core.kernels import triton_sample_kl as TK
    ref_fn, auto = K.gaussian_sample_kl_reference, K.resolve_backend(torch.zeros(1, device=dev))
    add("dispatch", "PASS" if TK.KERNELS_INTERPRETED == dry and (dry or auto == "triton") else "FAIL",
        f"auto backend on {dev.type}: {auto}; kernels interpreted: {TK.KERNELS_INTERPRETED} (expected {dry})")

    def fused(*x, **k):
        return K.gaussian_sample_kl(*x, backend="triton", **k)

    def cases(tag, items):  # with tests/test_kernels.py's helpers, on dev
        worst = {}
        for case in items:
            c = {**case, "leaves": [t.to(dev) for t in case["leaves"]], "grad_sample": case["grad_sample"].to(dev),
                 "grad_kl": case["grad_kl"].to(dev)}
            got, ref, tol = T._run_case(fused, c), T._run_case(ref_fn, c), T._tol(c)
            for key, a, b in (("fwd", [got["sample"], got["kl"]], [ref["sample"], ref["kl"]]),
                              ("bwd", got["grads"], ref["grads"])):
                w = worst.setdefault((str(c["leaves"][0].dtype)[6:], key), [0.0, 0.0, 0, 0, tol, []])
                errs = [_err(x, y, *tol) for x, y in zip(a, b, strict=True)]
                ok = all(e[2] for e in errs) and got["grad_fn"] == "GaussianSampleKLBackward"
                w[:5] = max(w[0], *(e[0] for e in errs)), max(w[1], *(e[1] for e in errs)), w[2] + ok, w[3] + 1, tol
                w[5] += [] if ok else [c["name"]]
        for (dt, key), (abs_e, rel_e, n_ok, n, (rtol, atol), bad) in sorted(worst.items(), reverse=True):
            what = "sample, kl" if key == "fwd" else "input grads"
            add(f"{key} {dt} {tag}", "PASS" if n_ok == n else "FAIL", f"{n_ok}/{n} cases ({what}) within |d| <= "
                f"{atol:g} + {rtol:g}|ref|; max abs {abs_e:.2e}, max rel {rel_e:.2e}{f'; failed {bad}' * bool(bad)}")

    def gradcheck():
        ins = [torch.randn(3, 5, dtype=torch.float64, device=dev).requires_grad_(True) for _ in range(5)]
        res = [torch.autograd.gradcheck(lambda *x, r=r: fused(*x, reverse=r), ins, raise_exception=False)
               for r in (False, True)]
        add("gradcheck float64", "PASS" if all(res) else "FAIL", f"triton backward vs finite differences: {res}")

    import test_kernels as T
    shapes = [(3, 5, 8), (7, 33)] if dry else [(32, 17, 32), (32, 17, 16), (65536, 64), (4097, 33), (257, 128)]
    guard("model-size cases", lambda: cases("model sizes", [T._make_case(f"{s}", s, dtype=dt, reverse=r, seed=i) for
          i, s in enumerate(shapes) for dt in (torch.float32, torch.bfloat16) for r in (False, True)]))
    guard("tests' cases", lambda: cases("tests' cases", T.CASES.values()))  # views, partial grads, f16/f64, empty
    guard("gradcheck float64", gradcheck)


def part_train(dev, dry, limit):
    import torch
    from conftest import make_batch  # tests/conftest.py: a random batch in the sampler's layout

    from mrcom_core.kernels import triton_sample_kl as TK
    from mrcom_core.registry import MODELS, build_model, model_config
    calls, orig = [0], TK.gaussian_sample_kl_triton
    TK.gaussian_sample_kl_triton = lambda *a, **k: calls.append(1) or orig(*a, **k)  # counts the fused calls
    preset, B, L, n = ("tiny", 4, 4, 8) if dry else ("small", 32, 16, 50)

    def train(name, bf16, backend="triton"):
        os.environ["MRCOM_KERNELS"] = backend
        torch.manual_seed(0)
        cfg = model_config(preset, overrides={"model_type": name}, obs_dim=24, act_dim=6, num_scenarios=6)
        model, g = build_model(cfg).to(dev).train(), torch.Generator().manual_seed(1)
        batch = {k: v.to(dev) for k, v in make_batch(cfg, B, L).items()}
        noise = {k: torch.randn(s, generator=g).to(dev) for k, s in model.noise_shapes(B, L).items()}
        opt, losses, norms, warm, t0 = torch.optim.Adam(model.parameters(), lr=1e-3), [], [], min(5, n // 2), 0.0
        del calls[1:]
        for i in range(n):
            if i == warm:  # timed from here; .item() below syncs every step, as the trainer's train_step does
                t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                out = model.loss(model(batch, noise), batch, noise)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0).item())
            opt.step()
            losses.append(out["loss"].item())
        rate, k, fused_calls = (n - warm) / (time.perf_counter() - t0), max(1, min(5, n // 3)), len(calls) - 1
        head, tail = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
        finite = all(map(math.isfinite, losses + norms))
        ok = finite and tail < head and (fused_calls > 0 or name == "cadm" or backend != "triton")  # cadm: no KL
        tag = f"{name} {'bf16' if bf16 else 'fp32'}" + ("" if backend == "triton" else f" ({backend} sample+KL)")
        add(f"{tag} {preset} B={B} L={L}", "PASS" if ok else "FAIL", f"loss {head:.3f} -> {tail:.3f} over {n} steps "
            f"(means of first/last {k}), finite {finite}; {rate:.1f} steps/s; triton sample+KL calls {fused_calls}",
            losses=losses, steps_per_s=rate)

    for name in MODELS:
        for bf16 in (False, True):
            guard(f"{name} {'bf16' if bf16 else 'fp32'}", lambda n=name, b=bf16: train(n, b))
    guard("mrcom bf16 (reference)", lambda: train("mrcom", True, "reference"))
    TK.gaussian_sample_kl_triton, why = orig, "it imports, but needs a dataset folder"
    try:
        import mrcom_train.training.trainer  # noqa: F401
    except Exception as e:  # noqa: BLE001
        why = f"importing mrcom_train.training.trainer fails without mujoco/dm_control ({first_line(e)})"
    add("Trainer (synthetic data)", "SKIP", f"not driven: {why}; the steps above do what its train_step does", False)


def part_onnx(dev, dry, limit):
    import numpy as np
    import onnxruntime as ort
    import torch

    from mrcom_core.registry import build_model, model_config
    from mrcom_export import graphs as G
    from mrcom_export.exporter import export_model
    torch.manual_seed(0)
    preset, H = ("tiny", 3) if dry else ("small", 5)
    model = build_model(model_config(preset, obs_dim=24, act_dim=6, num_scenarios=6)).eval()
    tmp, gen = Path(ARGS.result).parent, torch.Generator().manual_seed(0)  # the parent's temporary folder

    def repo_export():
        t0 = time.perf_counter()
        man = export_model(model, tmp / "export", horizon=H, blocks=False, log=print)
        worst = max(max(v.values()) for v in man["parity"].values())
        add("export_model (CPU)", "PASS", f"{preset} H={H}, onnx+torchscript, graphs {', '.join(man['graphs'])}; "
            f"exporter's parity vs eager max |d| {worst:.1e}; {time.perf_counter() - t0:.0f} s")

    def parity(provider, name):
        options = {"use_tf32": "0"} if provider.startswith("CUDA") else {}  # the reference is eager float32
        sess = ort.InferenceSession(str(paths[name]), providers=[(provider, options)])
        module, worst = G.build_graph(name, model).eval(), 0.0
        for B in (1, 256):
            inputs = G.example_inputs(name, model, B, H, 0, gen)
            with torch.no_grad():
                ref = module(*inputs)
            got = sess.run(None, {n: t.numpy() for n, t in zip(module.spec.inputs, inputs, strict=True)})
            worst = max(worst, *(float(np.abs(a - b.numpy()).max()) for a, b in zip(got, ref, strict=True)))
        add(f"ORT {provider.replace('ExecutionProvider', '')} {name}", "PASS" if worst <= 1e-4 and
            sess.get_providers()[0] == provider else "FAIL", f"max |d| vs eager {worst:.1e} (tol 1e-4) at B=1, 256; "
            f"session providers {sess.get_providers()}")

    guard("export_model (CPU)", repo_export)
    paths, available = {n: tmp / "export" / f"{n}.onnx" for n in ("step", "rollout")}, ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        add("ORT CUDA parity", "n/a", f"n/a (CPU-only onnxruntime: providers {', '.join(available)})", False)
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        for name in ("step", "rollout"):
            if provider in available and paths[name].exists():
                guard(f"ORT {provider} {name}", lambda p=provider, n=name: parity(p, n))


def part_rollout(dev, dry, limit):
    import torch

    from mrcom_core.registry import build_model, model_config
    from mrcom_export import graphs as G
    torch.manual_seed(0)
    preset, H, batches = ("tiny", 3, (1, 8)) if dry else ("small", 15, (1, 64, 1024, 16384))
    model = build_model(model_config(preset, obs_dim=24, act_dim=6, num_scenarios=6)).eval().to(dev)
    module = G.build_graph("rollout", model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, tuple(t.to(dev) for t in G.example_inputs("rollout", model, 7, H)),
                                 check_trace=False)

    def bench(B):
        inputs, reps = tuple(t.to(dev) for t in G.example_inputs("rollout", model, B, H)), 3 if B >= 1024 else 5
        with torch.no_grad():
            err = (traced(*inputs)[0] - module(*inputs)[0]).abs().max().item()
            rates = {"eager fp32": B * H / _median_s(lambda: module(*inputs), dev, reps),
                     "TorchScript fp32": B * H / _median_s(lambda: traced(*inputs), dev, reps)}
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                rates["eager bf16-autocast"] = B * H / _median_s(lambda: module(*inputs), dev, reps)
        add(f"rollout {preset} H={H} B={B}", "INFO", ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
            + f" samples*steps/s on {dev.type}; TorchScript vs eager max |d| {err:.1e}", False, **rates)

    for B in batches:
        guard(f"rollout B={B}", lambda B=B: bench(B), correctness=False)


def child(args):
    global ARGS
    ARGS, args.label = args, PARTS[args.part][0]
    hidden = ALWAYS_HIDDEN + DRY_HIDDEN * args.cpu_dry_run
    sys.modules.update(dict.fromkeys(hidden))  # `import mujoco` raises ImportError, as where it is not installed
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    sys.modules["mrcom_export"] = importlib.import_module("export")  # installed as mrcom_export; here: not installed
    import torch
    dev = torch.device("cpu" if args.cpu_dry_run else "cuda")
    guard(args.part, lambda: globals()[f"part_{args.part}"](dev, args.cpu_dry_run, args.limit))
    return 0


def stream(cmd, env, timeout, log):  # in the parent process
    """Run ``cmd``, echoing its output as it comes; returns (rc, or None if killed at ``timeout``; its lines)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    killed = []  # on timeout: SIGKILL to the process group this call started (the child and what it started)
    timer = threading.Timer(timeout, lambda: killed.append(os.killpg(proc.pid, signal.SIGKILL)))
    timer.start()
    lines = [line.rstrip("\n") for line in proc.stdout if log("    " + line.rstrip("\n")) or True]
    rc = proc.wait()
    timer.cancel()
    return (None if killed else rc), lines


def bench_rows(rc, lines, label):
    rows = [row(label, "bench/kernels.py --quick", "INFO", x, False) for x in lines if x.startswith("measured device")]
    table = [[c.strip() for c in x.strip().strip("|").split("|")] for x in lines if re.match(r"\| (float|bfloat)", x)]
    for dtype in ("float32", "bfloat16"):
        if ok := [r for r in table if r[0] == dtype and len(r) >= 11 and not r[3].startswith("FAILED")]:
            rows.append(row(label, f"fused vs eager {dtype}", "INFO", "; ".join(f"N={r[1]} D={r[2]}: {r[6]} vs "
                            f"eager, {r[7]} vs compile, {r[9]} of copy BW, err {r[10]}" for r in ok), False, rows=ok))
    rows += [row(label, "fused vs reference in bench", "FAIL", x) for x in lines if "MISMATCH" in x]
    if rc == 0 and not table:
        rows.append(row(label, "bench/kernels.py --quick", "SKIP", (lines or ["no output"])[-1][:200], False))
    return rows


def run_part(part, args, env, limit, tmp, log):
    (label, _cap, correctness), result = PARTS[part], Path(tmp) / f"{part}.json"
    if part == "bench":
        cmd = [sys.executable, "bench/kernels.py", "--quick"] + ["--no-compile"] * (limit < 120)
    else:
        cmd = [sys.executable, __file__, "--part", part, "--result", str(result), "--limit", f"{limit:.0f}"]
        cmd += ["--cpu-dry-run"] * args.cpu_dry_run
    rc, lines = stream(cmd, env, limit, log)
    rows = json.loads(result.read_text()) if result.exists() else bench_rows(rc, lines, label) * (part == "bench")
    if rc != 0:
        what = f"timed out after {limit:.0f} s" if rc is None else f"exited with rc={rc}"
        fail, last = correctness or any(r["status"] == "FAIL" for r in rows), next((x for x in lines[::-1] if x), "")
        rows.append(row(label, f"{part} process", "FAIL" if fail else "ERROR", f"{what}; last line: {last[:200]}",
                        fail))
    return rows


def parent(args):
    out = os.environ.get("OUT")
    logfile = open(Path(out) / "gpu_check.log", "w", buffering=1) if out else None

    def log(line=""):
        print(line, flush=True)
        _ = logfile and logfile.write(line + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MRCOM_KERNELS")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1", MUJOCO_GL="disable", **({"TRITON_INTERPRET": "1"} if args.cpu_dry_run else {}))
    start, results, order = time.monotonic(), [], [p for p in PARTS if p not in args.skip.split(",")]
    log(f"gpu_check: {'CPU DRY RUN (TRITON_INTERPRET=1, tiny sizes)' if args.cpu_dry_run else 'CUDA'}; python "
        f"{platform.python_version()}; budget {args.budget:.0f} s; repo {REPO}")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for i, part in enumerate(order):
            label, left = PARTS[part][0], args.budget - (time.monotonic() - start)
            limit = max(20, min(PARTS[part][1], left - 15 * (len(order) - i - 1)))  # leave 15 s for each later part
            log(f"\n=== {label} ({part}): limit {limit:.0f} s, {left:.0f} s of the budget left")
            try:
                results += run_part(part, args, env, limit, tmp, log)
            except Exception as e:  # noqa: BLE001 - the driver itself must not die mid-run
                results.append(row(label, f"{part} driver", "ERROR", first_line(e), False))
            log(f"=== {label}: {left - args.budget + time.monotonic() - start:.0f} s")
            if out:
                Path(out, "gpu_check.json").write_text(json.dumps({"dry_run": args.cpu_dry_run, "rows": results},
                                                                  indent=1, default=str))
    results.sort(key=lambda r: r["part"])
    w = max(len(r["check"]) for r in results)
    log(f"\n| part      | {'check':<{w}} | status | detail |")
    for r in results:
        log(f"| {r['part']:<9} | {r['check']:<{w}} | {r['status']:<6} | {r['detail']} |")
    failed = [r for r in results if r["status"] == "FAIL" and r["correctness"]]
    log(f"\ngpu_check: {len(failed)} correctness failure(s), {sum(r['status'] == 'PASS' for r in results)} passed, "
        f"{time.monotonic() - start:.0f} s" + (f"; log and JSON in {out}" if out else ""))
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="developer aid: all parts on CPU, interpreted, tiny")
    p.add_argument("--budget", type=float, default=None, help="seconds for all parts (default 480; dry run 170)")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: " + ", ".join(PARTS))
    for hidden in ("--part", "--result", "--limit"):  # a child process's arguments
        p.add_argument(hidden, type=float if hidden == "--limit" else str, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        return child(args)
    args.budget = args.budget or (170.0 if args.cpu_dry_run else 480.0)
    if not args.cpu_dry_run:
        import torch
        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (torch.cuda.is_available() is False); "
                  "nothing to check here (bench/gpu_check.py --cpu-dry-run exercises the code paths on CPU).")
            return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
