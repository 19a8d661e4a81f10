"""Tests for ``mrcom_core.kernels``: the fused Gaussian sample + KL (reference math, Triton kernels, dispatch).

The Triton kernels are exercised on CPU through the Triton interpreter. ``TRITON_INTERPRET=1`` only takes effect
if it is set before the kernels are built, and another test module may already have imported Triton in this
process, so all Triton-side work runs ONCE in a child process (``_CHILD``, env ``TRITON_INTERPRET=1`` and
``MRCOM_KERNELS=triton``): it imports this module for the case definitions, runs every case through the public
``gaussian_sample_kl`` (so also through the env-var dispatch) plus ``gradcheck``, and ``torch.save``s the
results; the tests here compare them with the eager reference computed in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import mrcom_core.kernels as kernels
from mrcom_core.kernels import (
    gaussian_sample,
    gaussian_sample_kl,
    gaussian_sample_kl_reference,
    gaussian_std,
    resolve_backend,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


# ----------------------------------------------------------------------------------------------- helpers
def _inputs(shape, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(5)]


def _closed_form_kl(mean_a, std_a, mean_b, std_b):
    """KL(N(a) || N(b)) per dim = ½ [σa²/σb² + (μb−μa)²/σb² − 1 + ln(σb²/σa²)], summed over the last dim."""
    va, vb = std_a**2, std_b**2
    return 0.5 * (va / vb + (mean_b - mean_a) ** 2 / vb - 1.0 + torch.log(vb) - torch.log(va)).sum(-1)


def _make_case(name, shape, *, dtype=torch.float32, reverse=False, min_std=0.1, layout="plain", loss="both",
               requires=(True,) * 5, seed=0):
    """One forward+backward scenario; tensors are generated here so parent and child see identical data.

    ``layout='chunked'``: the means/raws are ``chunk(2, -1)`` views of (..., 2D) tensors and the noise is a
    transposed view (non-contiguous inputs). ``loss``: which outputs get a random upstream gradient.
    ``requires`` (plain layout): which of the five inputs require grad.
    """
    g = torch.Generator().manual_seed(seed)
    lead, d = tuple(shape[:-1]), shape[-1]

    def rnd(*s):
        return torch.randn(s, generator=g, dtype=torch.float64).to(dtype)

    if layout == "plain":
        leaves = [rnd(*shape) for _ in range(5)]
    elif layout == "chunked":
        leaves = [rnd(*lead, 2 * d), rnd(*lead, 2 * d), rnd(*lead[:-1], d, lead[-1])]
    else:
        raise ValueError(layout)
    kl_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return {
        "name": name, "layout": layout, "loss": loss, "reverse": reverse, "min_std": min_std,
        "requires": requires, "leaves": leaves,
        "grad_sample": rnd(*shape), "grad_kl": torch.randn(lead, generator=g, dtype=torch.float64).to(kl_dtype),
    }


def _run_case(fn, case):
    """Run ``fn`` (a ``gaussian_sample_kl``-like function) forward + backward on ``case``; return the outputs."""
    if case["layout"] == "plain":
        leaves = [t.clone().requires_grad_(r) for t, r in zip(case["leaves"], case["requires"], strict=True)]
        ins = list(leaves)
    else:
        leaves = [t.clone().requires_grad_(True) for t in case["leaves"]]
        pm, pr = leaves[0].chunk(2, -1)
        qm, qr = leaves[1].chunk(2, -1)
        ins = [pm, pr, qm, qr, leaves[2].transpose(-1, -2)]
    sample, kl = fn(*ins, min_std=case["min_std"], reverse=case["reverse"])
    outs, grads_out = [], []
    if case["loss"] in ("both", "sample"):
        outs.append(sample)
        grads_out.append(case["grad_sample"])
    if case["loss"] in ("both", "kl"):
        outs.append(kl)
        grads_out.append(case["grad_kl"])
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(outs, wrt, grads_out, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for gr, t in zip(grads, wrt, strict=True)]
    return {"sample": sample.detach(), "kl": kl.detach(), "grads": [gr.detach() for gr in grads],
            "grad_fn": type(sample.grad_fn).__name__}


def _cases():
    cases = []
    for reverse in (False, True):
        r = "rev" if reverse else "fwd"
        for shape in [(7, 5), (2, 3, 33), (1, 4), (0, 6), (5, 16), (3, 128), (37, 64)]:
            cases.append(_make_case(f"f32-{'x'.join(map(str, shape))}-{r}", shape, reverse=reverse,
                                    seed=len(cases)))
        cases.append(_make_case(f"f64-2x3x5-{r}", (2, 3, 5), dtype=torch.float64, reverse=reverse, seed=len(cases)))
        cases.append(_make_case(f"f32-chunked-2x3x6-{r}", (2, 3, 6), layout="chunked", reverse=reverse,
                                seed=len(cases)))
    cases += [
        _make_case("f32-min_std-0.01", (4, 9), min_std=0.01, seed=101),
        _make_case("f32-min_std-0.5-rev", (4, 9), min_std=0.5, reverse=True, seed=102),
        _make_case("f32-large-raw", (3, 8), seed=103),  # overwritten below with |raw| up to ~40
        _make_case("f32-sample-only", (6, 7), loss="sample", seed=104),
        _make_case("f32-kl-only-rev", (6, 7), loss="kl", reverse=True, seed=105),
        _make_case("f32-noise-no-grad", (6, 7), requires=(True,) * 4 + (False,), seed=106),
        _make_case("f32-detached-prior", (6, 7), requires=(False, False, True, True, False), seed=109),
        _make_case("f32-detached-post-rev", (6, 7), reverse=True, requires=(True, True, False, True, False),
                   seed=110),
        _make_case("f32-1d", (9,), seed=111),
        _make_case("f16-6x10", (6, 10), dtype=torch.float16, seed=107),
        _make_case("bf16-6x10-rev", (6, 10), dtype=torch.bfloat16, reverse=True, seed=108),
    ]
    big = next(c for c in cases if c["name"] == "f32-large-raw")
    big["leaves"][1] = big["leaves"][1] * 15.0  # prior raw: softplus in its linear / exp tails
    big["leaves"][3] = big["leaves"][3] * 15.0
    return {c["name"]: c for c in cases}


CASES = _cases()

# Executed in a child process with TRITON_INTERPRET=1 and MRCOM_KERNELS=triton.
_CHILD = r"""
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
import test_kernels as T
from mrcom_core import kernels
from mrcom_core.kernels import gaussian_sample_kl, resolve_backend
out = {"backend_from_env": resolve_backend(torch.zeros(1)), "cases": {}, "gradcheck": {}}
for name, case in T.CASES.items():
    out["cases"][name] = T._run_case(gaussian_sample_kl, case)
from mrcom_core.kernels import triton_sample_kl
out["kernels_interpreted"] = triton_sample_kl.KERNELS_INTERPRETED
for reverse in (False, True):
    for shape in [(3, 5), (2, 1, 3)]:
        ins = [t.requires_grad_(True) for t in T._inputs(shape, seed=7)]
        fn = lambda *x: gaussian_sample_kl(*x, min_std=0.1, reverse=reverse)
        out["gradcheck"][f"{reverse}-{shape}"] = torch.autograd.gradcheck(fn, ins, raise_exception=False)
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    pytest.importorskip("triton")
    out_path = tmp_path_factory.mktemp("kernels") / "interpreted.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "MRCOM_KERNELS": "triton",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(TESTS_DIR), str(out_path)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"interpreted Triton run failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return torch.load(out_path, weights_only=False)


def _tol(case):
    dtype = case["leaves"][0].dtype
    return {torch.float64: (1e-7, 1e-9), torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3),
            # the interpreter rounds float32 -> bfloat16 differently from torch (1 ulp apart)
            torch.bfloat16: (1.6e-2, 1e-2)}[dtype]


# ------------------------------------------------------------------------------------ reference math
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5), (1, 1)])
def test_reference_matches_closed_form_and_torch_distributions(shape, reverse):
    pm, pr, qm, qr, eps = _inputs(shape, seed=1)
    sample, kl = gaussian_sample_kl_reference(pm, pr, qm, qr, eps, min_std=0.1, reverse=reverse)
    ps = torch.log1p(torch.exp(pr)) + 0.1
    qs = torch.log1p(torch.exp(qr)) + 0.1
    torch.testing.assert_close(sample, qm + qs * eps, rtol=0, atol=1e-12)
    a, b = ((pm, ps), (qm, qs)) if reverse else ((qm, qs), (pm, ps))
    torch.testing.assert_close(kl, _closed_form_kl(*a, *b), rtol=1e-10, atol=1e-10)
    dist_a, dist_b = (Independent(Normal(m, s), 1) for m, s in (a, b))
    torch.testing.assert_close(kl, kl_divergence(dist_a, dist_b), rtol=1e-10, atol=1e-10)
    assert kl.shape == shape[:-1] and sample.shape == shape


def test_reference_kl_of_identical_gaussians_is_zero_and_positive_otherwise():
    pm, pr, qm, qr, eps = _inputs((6, 5), seed=2)
    _, kl_same = gaussian_sample_kl_reference(pm, pr, pm, pr, eps)
    torch.testing.assert_close(kl_same, torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)
    for reverse in (False, True):
        assert (gaussian_sample_kl_reference(pm, pr, qm, qr, eps, reverse=reverse)[1] > 0).all()


def test_reference_dtype_policy():
    for dtype, kl_dtype in [(torch.float64, torch.float64), (torch.float32, torch.float32),
                            (torch.bfloat16, torch.float32), (torch.float16, torch.float32)]:
        sample, kl = gaussian_sample_kl_reference(*_inputs((3, 4), dtype=dtype))
        assert sample.dtype == dtype and kl.dtype == kl_dtype
    mixed = _inputs((3, 4), dtype=torch.float32)
    mixed[4] = mixed[4].to(torch.float64)
    sample, kl = gaussian_sample_kl(*mixed)
    assert sample.dtype == torch.float64 and kl.dtype == torch.float64


@pytest.mark.parametrize("reverse", [False, True])
def test_reference_gradcheck(reverse):
    ins = [t.requires_grad_(True) for t in _inputs((3, 5), seed=3)]
    assert torch.autograd.gradcheck(lambda *x: gaussian_sample_kl_reference(*x, reverse=reverse), ins)


def test_gaussian_std_and_sample():
    mean, raw, eps = _inputs((4, 3), seed=4)[:3]
    std = gaussian_std(raw, 0.2)
    torch.testing.assert_close(std, torch.log1p(torch.exp(raw)) + 0.2)
    torch.testing.assert_close(gaussian_sample(mean, raw, eps, min_std=0.2), mean + std * eps)
    big = torch.tensor([-100.0, 0.0, 100.0])
    assert torch.isfinite(gaussian_std(big)).all() and gaussian_std(big)[2] == 100.1


def test_input_validation():
    ins = _inputs((3, 4))
    with pytest.raises(ValueError, match="same shape"):
        gaussian_sample_kl(*ins[:4], torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        gaussian_sample_kl(*ins[:4], torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one dim"):
        gaussian_sample_kl(*[torch.tensor(1.0)] * 5)


def test_reference_empty_batch():
    sample, kl = gaussian_sample_kl(*[t.requires_grad_(True) for t in _inputs((0, 6))])
    assert sample.shape == (0, 6) and kl.shape == (0,)


# --------------------------------------------------------------------------------------------- dispatch
def test_auto_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("MRCOM_KERNELS", raising=False)
    x = torch.zeros(2, 3)
    assert resolve_backend(x) == "reference"
    assert resolve_backend(x, "auto") == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter does not change what auto picks
    assert resolve_backend(x) == "reference"
    sample, _ = gaussian_sample_kl(*[t.requires_grad_(True) for t in _inputs((2, 3))])
    assert "GaussianSampleKL" not in type(sample.grad_fn).__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda_is_triton(monkeypatch):
    monkeypatch.delenv("MRCOM_KERNELS", raising=False)
    expected = "triton" if kernels.triton_available() else "reference"
    assert resolve_backend(torch.zeros(1, device="cuda")) == expected


def test_env_var_and_explicit_backend(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.setenv("MRCOM_KERNELS", "reference")
    assert resolve_backend(x) == "reference"
    monkeypatch.setenv("MRCOM_KERNELS", " Auto ")
    assert resolve_backend(x) == "reference"
    monkeypatch.setenv("MRCOM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="auto, triton, reference"):
        resolve_backend(x)
    assert resolve_backend(x, "reference") == "reference"  # the explicit argument wins over the env var
    with pytest.raises(ValueError, match="unknown kernel backend 'fast'"):
        resolve_backend(x, "fast")


def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    if not kernels.triton_available():
        pytest.skip("triton not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("MRCOM_KERNELS", raising=False)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend(x, "triton")
    monkeypatch.setenv("MRCOM_KERNELS", "triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        gaussian_sample_kl(*_inputs((2, 3)))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(x) == "triton"
    assert resolve_backend(x, "reference") == "reference"


def test_triton_module_built_without_interpreter_rejects_cpu(monkeypatch):
    """TRITON_INTERPRET=1 set only after the kernels were built cannot help: a clear error, not a crash."""
    tsk = pytest.importorskip("mrcom_core.kernels.triton_sample_kl")
    if tsk.KERNELS_INTERPRETED:
        pytest.skip("kernels were built by the interpreter in this process")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="imported without TRITON_INTERPRET=1"):
        gaussian_sample_kl(*_inputs((2, 3)), backend="triton")


def test_without_triton(monkeypatch):
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(2, 3)
    assert resolve_backend(x) == "reference"
    with pytest.raises(RuntimeError, match="triton is not installed"):
        resolve_backend(x, "triton")


def test_import_does_not_need_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, mrcom_core.kernels as k\n"
            "assert not k.triton_available()\n"
            "assert k.resolve_backend(torch.zeros(1)) == 'reference'\n"
            "s, kl = k.gaussian_sample_kl(*[torch.randn(2, 3) for _ in range(5)])\n"
            "try:\n    k.resolve_backend(torch.zeros(1), 'triton')\nexcept RuntimeError as e:\n    print('OK', e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK")


def test_kernels_package_imports_no_train_or_export():
    for path in Path(kernels.__file__).parent.glob("*.py"):
        src = path.read_text()
        assert "import mrcom_train" not in src and "from mrcom_train" not in src, path
        assert "import mrcom_export" not in src and "from mrcom_export" not in src, path


# ------------------------------------------------------------------------- Triton (interpreted, child)
def test_interpreted_run_used_triton(interpreted):
    assert interpreted["backend_from_env"] == "triton"
    assert interpreted["kernels_interpreted"] is True
    for name, res in interpreted["cases"].items():
        assert res["grad_fn"] == "GaussianSampleKLBackward", name


@pytest.mark.parametrize("name", list(CASES))
def test_triton_forward_matches_reference(interpreted, name):
    case = CASES[name]
    got = interpreted["cases"][name]
    ref = _run_case(gaussian_sample_kl_reference, case)
    rtol, atol = _tol(case)
    assert got["sample"].dtype == ref["sample"].dtype and got["kl"].dtype == ref["kl"].dtype
    torch.testing.assert_close(got["sample"], ref["sample"], rtol=rtol, atol=atol)
    torch.testing.assert_close(got["kl"], ref["kl"], rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(CASES))
def test_triton_grads_match_reference(interpreted, name):
    case = CASES[name]
    got = interpreted["cases"][name]
    ref = _run_case(gaussian_sample_kl_reference, case)
    rtol, atol = _tol(case)
    assert len(got["grads"]) == len(ref["grads"])
    for i, (g, r) in enumerate(zip(got["grads"], ref["grads"], strict=True)):
        assert g.shape == r.shape and g.dtype == r.dtype, i
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol, msg=lambda m, i=i: f"grad {i}: {m}")


def test_triton_gradcheck_float64(interpreted):
    assert interpreted["gradcheck"] and all(interpreted["gradcheck"].values()), interpreted["gradcheck"]
