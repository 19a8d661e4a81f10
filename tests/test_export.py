import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import EXPORT_HORIZON as H
from conftest import export_model_for_tests as _model
from conftest import prompt_for as _prompt
from conftest import rollout_inputs, write_manifest

from mrcom_core.registry import build_model, model_config
from mrcom_export import graphs as G
from mrcom_export.exporter import PARITY_TOLERANCE, export_loop, export_model, parity_tolerance
from mrcom_export.manifest import ExportError, read_manifest
from mrcom_export.runtime import Runtime
from mrcom_export.vector_env import ImaginedVectorEnv

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}


def test_manifest_describes_every_graph(exported):
    out, model, manifest = exported
    assert set(manifest["graphs"]) == {"context_full", "context_step", "imagine", "reward", "prime", "observe", "step",
                                       "rollout", "policy", "policy_rollout", "ensemble"}
    step = manifest["graphs"]["step"]
    assert [i["name"] for i in step["inputs"]] == ["u", "d", "h", "obs", "action", "keys", "values", "noise_u",
                                                   "noise_h"]
    assert step["inputs"][3] == {"name": "obs", "shape": ["batch", 10], "dtype": "float32"}
    assert step["inputs"][5]["shape"][1] == "batch"
    assert manifest["rollout_horizon"] == H and manifest["policy"] == {"obs_dim": 8, "act_dim": 2}
    assert manifest["latent"] == {"u": 4, "d": 16, "h": 4} and manifest["context_len"] == 8
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime"} and manifest["opset"] == 18
    np.testing.assert_allclose(manifest["obs_std"], model.obs_std.numpy(), rtol=1e-6)
    assert len(manifest["files"]) == 22 and all(len(h) == 64 for h in manifest["files"].values())
    for name, errors in manifest["parity"].items():
        assert set(errors) == {f"{f}@{b}" for f in ("onnx", "torchscript") for b in (1, 7, 256)}, name
        assert max(errors.values()) <= PARITY_TOLERANCE  # (fused graphs may take H times this; tiny ones need not)
        assert manifest["parity_tolerance"][name] == parity_tolerance(name, H)
    assert parity_tolerance("rollout", 15) == 15 * PARITY_TOLERANCE == 15 * parity_tolerance("step", 15)
    onnx.checker.check_model(onnx.load(str(out / "rollout.onnx")), full_check=True)
    assert read_manifest(out)["format"] == "mrcom-export"


@pytest.mark.parametrize("name", ["step", "imagine", "observe", "context_step"])
def test_step_graphs_do_no_shape_arithmetic_and_shift_the_fifo_in_one_concat(exported, name):
    """The per-step graphs run on every imagined step: every reshape and split is by constant sizes (no
    ``Shape`` node: a ``chunk`` or a reshape read from a tensor's shape exports as 5–6 nodes of run-time
    arithmetic each), and each of keys/values leaves as one concatenation of the input's old slots with every
    layer's new token (not a shift per layer and then a stack: copies of the whole FIFO)."""
    out, _, _ = exported
    graph = onnx.load(str(out / f"{name}.onnx")).graph
    assert "Shape" not in [n.op_type for n in graph.node]
    made_by = {o: n for n in graph.node for o in n.output}
    for fifo in ("keys", "values"):
        if f"{fifo}_next" in [o.name for o in graph.output]:
            writer = made_by[f"{fifo}_next"]
            assert writer.op_type == "Concat" and len(writer.input) == 2, writer
            old = made_by[writer.input[0]]
            assert old.op_type == "Slice" and old.input[0] == fifo, old


def _eager_rollout(model, prompt, actions, reset_noise, noise):
    """Eager PyTorch, re-encoding the *whole* token sequence at every step (no key/value cache)."""
    obs, act, rew = (torch.from_numpy(x) for x in prompt)
    m, T = model.config.context_len, act.shape[1]
    with torch.no_grad():
        obs_n = model.normalize(obs)
        tokens = model.tokens(obs_n[:, :T], act, rew)
        state = model.initial_state(obs.shape[0])
        for k in range(m, T + 1):
            c = model.encode_context(tokens[:, :k])[0][:, -1]
            nu, nh = (torch.from_numpy(reset_noise[x][:, k - m]) for x in ("u", "h"))
            state = model.observe_step(state, c, act[:, k - 1], obs_n[:, k], nu, nh)
        last = obs_n[:, T]
        observations, rewards = [], []
        for t in range(actions.shape[1]):
            a = torch.from_numpy(actions[:, t])
            r = model.reward(state, a)
            tokens = torch.cat([tokens, model.tokens(last, a, r)[:, None]], 1)
            c = model.encode_context(tokens)[0][:, -1]
            nu, nh = (torch.from_numpy(noise[x][:, t]) for x in ("u", "h"))
            state = model.imagine_step(state, c, a, nu, nh)
            last = model.decode(state)
            observations.append(model.denormalize(last))
            rewards.append(r)
    return torch.stack(observations, 1).numpy(), torch.stack(rewards, 1).numpy()


@pytest.mark.parametrize("fused", [False, True])
def test_runtime_rollout_equals_eager_full_reencoding_rollout(exported, fused):
    out, model, _ = exported
    B = 5
    prompt = _prompt(model, B)
    reset_noise, noise, actions = rollout_inputs(model, prompt, B, H)
    ref_obs, ref_rew = _eager_rollout(model, prompt, actions, reset_noise, noise)
    rt = Runtime(out)
    first = rt.reset(*prompt, noise=reset_noise)
    np.testing.assert_array_equal(first, prompt[0][:, -1])
    got = rt.rollout(actions, H, fused=fused, noise=noise)
    std = model.obs_std.numpy()
    assert np.abs((got["obs"] - ref_obs) / std).max() <= 1e-4
    assert np.abs(got["reward"] - ref_rew).max() <= 1e-4
    assert got["latent"].shape == (B, model.sizes.state)


def test_one_export_rolls_out_any_horizon_in_one_loop_graph(exported):
    """The rollout graphs are an ONNX Loop (and a scripted TorchScript loop) over one step: the horizon is a
    run-time input, so one export serves H=1 and H=2H+1 alike, each matching eager re-encoding."""
    out, model, manifest = exported
    for name in G.LOOP_GRAPHS:
        ops = [n.op_type for n in onnx.load(str(out / f"{name}.onnx")).graph.node]
        # not unrolled: one Loop, and outside it only the once-per-rollout glue (no layer of the model)
        assert ops.count("Loop") == 1 and not {"MatMul", "Gemm", "Softmax", "LayerNormalization"} & set(ops), ops
    assert manifest["graphs"]["rollout"]["inputs"][6]["shape"] == ["batch", "horizon", 3]  # actions
    rt, B, std = Runtime(out), 4, model.obs_std.numpy()
    prompt = _prompt(model, B)
    for horizon in (1, 2 * H + 1):
        reset_noise, noise, actions = rollout_inputs(model, prompt, B, horizon)
        ref_obs, ref_rew = _eager_rollout(model, prompt, actions, reset_noise, noise)
        rt.reset(*prompt, noise=reset_noise)
        got = rt.rollout(actions, fused=True, noise=noise)
        assert got["obs"].shape == (B, horizon, 10)
        assert np.abs((got["obs"] - ref_obs) / std).max() <= 1e-4 * horizon
        assert np.abs(got["reward"] - ref_rew).max() <= 1e-4 * horizon
        rt.reset(*prompt, noise=reset_noise)
        policy_noise = {**noise, "action": np.random.default_rng(horizon).standard_normal((B, horizon, 2), np.float32)}
        fused = rt.rollout("exported", horizon, fused=True, noise=policy_noise)
        rt.reset(*prompt, noise=reset_noise)
        stepped = rt.rollout("exported", horizon, fused=False, noise=policy_noise)
        assert fused["actions"].shape == (B, horizon, 3)
        for key in ("obs", "reward", "actions"):
            np.testing.assert_allclose(fused[key], stepped[key], atol=1e-4 * horizon)
        ts = torch.jit.load(str(out / "rollout.pt"))
        inputs = G.example_inputs("rollout", model, B, horizon, generator=torch.Generator().manual_seed(horizon))
        with torch.no_grad():
            for a, b in zip(ts(*inputs), G.build_graph("rollout", model)(*inputs), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_rollout_loop_carries_only_the_rollouts_own_keys_and_values(exported):
    """The exported Loop reads the start cache in place (its per-layer split and transposes hoisted before the
    loop) and carries per layer only the rollout's own keys/values; past the window it gives the outputs of the
    Loop over the FIFO body (the whole cache shifted every step), final FIFO included."""
    out, model, manifest = exported
    split = onnx.load(str(out / "rollout.onnx"))
    fifo = export_loop("rollout", model, None, G.example_inputs("rollout", model, 7, 3), manifest["graphs"]["rollout"],
                       split=False)
    loop = next(n for n in split.graph.node if n.op_type == "Loop")
    body = loop.attribute[0].g
    assert "keys" not in loop.input and len(loop.input) == 2 + 4 + 2 * model.config.ctx_layers
    assert not {"keys", "values"} & {i for n in body.node for i in n.input}  # only hoisted nodes read them
    used = {i for n in body.node for i in n.input}
    assert all(t.name in used for t in body.initializer)  # nothing left behind by the hoisting
    B, horizon = 7, 2 * model.config.context_len + 1
    feed = dict(zip(G.GRAPHS["rollout"].spec.inputs, (x.numpy() for x in G.example_inputs(
        "rollout", model, B, horizon, generator=torch.Generator().manual_seed(0))), strict=True))
    got, want = (ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
                 for p in (split, fifo))
    assert got[0].shape[0] == B
    for name, a, b in zip(G.GRAPHS["rollout"].spec.outputs, got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


def test_an_export_of_an_older_format_is_refused_in_one_line(exported, tmp_path):
    out, _, manifest = exported
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    write_manifest(copy, {**manifest, "version": 3})
    with pytest.raises(ExportError, match="has export format version 3; this mrcom reads version 4"):
        Runtime(copy)


def test_runtime_is_seeded_and_batches_one_prompt(exported):
    out, model, _ = exported
    obs, act, rew = _prompt(model, 1)
    a, b = Runtime(out, seed=7), Runtime(out, seed=7)
    actions = np.zeros((6, H, 3), np.float32)
    a.reset(obs[0], act[0], rew[0], batch=6)
    b.reset(obs[0], act[0], rew[0], batch=6)
    ra, rb = a.rollout(actions), b.rollout(actions)
    np.testing.assert_array_equal(ra["obs"], rb["obs"])
    assert not np.allclose(ra["obs"][0], ra["obs"][1])  # each rollout gets its own noise
    policy = a.rollout("exported")
    assert policy["actions"].shape == (6, H, 3) and np.all(policy["actions"][..., 2] == 0)  # padded action dim
    step_obs, reward, latent = a.step(np.zeros((6, 3), np.float32))
    assert step_obs.shape == (6, 10) and reward.shape == (6,) and latent.shape == (6, 24)
    looped = a.rollout(lambda o: np.zeros((6, 3), np.float32), 5)
    assert looped["obs"].shape == (6, 5, 10) and np.isfinite(looped["obs"]).all()


def test_runtime_imports_and_runs_without_torch(exported):
    out, model, _ = exported
    np.savez(out.parent / "prompt.npz", *_prompt(model, 2))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any 'import torch' now fails
        import numpy as np
        from mrcom_export.runtime import Runtime
        from mrcom_export.vector_env import ImaginedVectorEnv
        p = np.load({str(out.parent / "prompt.npz")!r})
        rt = Runtime({str(out)!r})
        rt.reset(p["arr_0"], p["arr_1"], p["arr_2"])
        r = rt.rollout(np.zeros((2, {H}, 3), np.float32))
        assert r["obs"].shape == (2, {H}, 10)
        assert not any(name == "torch" or name.startswith("torch.") for name, mod in sys.modules.items()
                       if mod is not None)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_torchscript_round_trip(exported):
    out, model, _ = exported
    for name in ("step", "rollout", "context_full", "prime", "observe"):
        loaded = torch.jit.load(str(out / f"{name}.pt"))
        module = G.build_graph(name, model)
        inputs = G.example_inputs(name, model, 9, H, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            for a, b in zip(loaded(*inputs), module(*inputs), strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ablated_models_export_too(tmp_path):
    model = _model(no_context=True, no_d=True)
    manifest = export_model(model, tmp_path, formats=("onnx",), horizon=2, log=lambda s: None)
    rt = Runtime(tmp_path)
    rt.reset(*_prompt(model, 3))
    assert rt.rollout(np.zeros((3, 2, 3), np.float32))["obs"].shape == (3, 2, 10)
    assert manifest["latent"]["d"] == 0


def test_vector_env_runs_episodes_in_the_model(exported):
    out, model, _ = exported
    env = ImaginedVectorEnv(Runtime(out), num_envs=4, prompts=_prompt(model, 10), horizon=2, seed=0)
    obs, info = env.reset(seed=1)
    assert obs.shape == (4, 10) and env.action_space.shape == (4, 3)
    _, r, term, trunc, _ = env.step(env.action_space.sample())
    assert r.shape == (4,) and not term.any() and not trunc.any()
    _, _, _, trunc, _ = env.step(env.action_space.sample())
    assert trunc.all()
    obs, r, _, trunc, _ = env.step(env.action_space.sample())  # autoreset step
    assert not trunc.any() and np.all(r == 0)
    given = tuple(p[:4] for p in _prompt(model, 4, seed=9))
    obs, info = env.reset(options={"prompts": given})  # start from given prompts (what mrcom adapt does)
    np.testing.assert_array_equal(obs, given[0][:, -1])
    with pytest.raises(ExportError, match="3 prompts for 4 envs"):
        env.reset(options={"prompts": tuple(p[:3] for p in given)})
    with pytest.raises(ExportError, match="no prompts were given"):
        ImaginedVectorEnv(Runtime(out), num_envs=2).reset()


def test_runtime_rejects_bad_input(exported, tmp_path):
    out, model, _ = exported
    with pytest.raises(ExportError, match="manifest.json is missing"):
        Runtime(tmp_path / "nothing")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ExportError, match="version 99"):
        Runtime(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with open(copy / "step.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="checksum mismatch for .*step.onnx"):
        Runtime(copy)
    rt = Runtime(out)
    obs, act, rew = _prompt(model, 2)
    with pytest.raises(ExportError, match="reset"):
        rt.step(np.zeros((2, 3)))
    with pytest.raises(ExportError, match=r"prompt_obs must have shape \(2, 12, 10\)"):
        rt.reset(obs[..., :9], act, rew)
    with pytest.raises(ExportError, match="at least one rollout"):
        rt.reset(obs[:0], act[:0], rew[:0])
    with pytest.raises(ExportError, match="context_len=8"):
        rt.reset(obs[:, :5], act[:, :4], rew[:, :4])
    with pytest.raises(ExportError, match="pass prompt_rew"):
        rt.reset(obs, act)
    rt.reset(obs, act, rew)
    with pytest.raises(ExportError, match=r"actions must have shape \(2, 3\)"):
        rt.step(np.zeros((2, 4)))
    with pytest.raises(ExportError, match="NaN"):
        rt.step(np.full((2, 3), np.nan))


@pytest.mark.parametrize("args,message", [
    (["export", "{tmp}/norun", "--out", "{tmp}/e"], "no training run"),
    (["rollout", "{tmp}/noexport"], "manifest.json is missing"),
    (["rollout", "{exp}", "--batch", "0"], "--batch must be >= 1"),
    (["rollout", "{exp}", "--data", "{tmp}/nodata"], "manifest.json is missing"),
])
def test_export_and_rollout_cli_bad_input_exit_2(exported, tmp_path, args, message):
    out, _, _ = exported
    full = [a.replace("{tmp}", str(tmp_path)).replace("{exp}", str(out)) for a in args]
    r = subprocess.run([sys.executable, "-m", "mrcom_train.cli", *full], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_mrcom_without_context_exports_its_rollout_loop_with_a_multi_layer_config(tmp_path):
    """The ``no_context`` ablation has no encoder (a one-slot placeholder cache) whatever ``ctx_layers`` says: its
    rollout Loop exports (it failed at `small`, where ctx_layers = 2) and matches eager."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny", ["no_context"], overrides={"ctx_layers": 2}, obs_dim=10, act_dim=3,
                                     num_scenarios=2)).eval()
    manifest = export_model(model, tmp_path, formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    assert max(manifest["parity"]["rollout"].values()) <= manifest["parity_tolerance"]["rollout"]


@pytest.mark.parametrize("model_type", ["rssm_ctx", "rssm", "cadm", "mamba"])
def test_baselines_export_and_run_in_the_runtime(tmp_path, model_type):
    torch.manual_seed(0)
    # two encoder layers, as at `small`, while a model without a streaming encoder keeps a one-slot placeholder cache
    model = build_model(model_config("tiny", overrides={"model_type": model_type, "ctx_layers": 2},
                                     obs_dim=10, act_dim=3, num_scenarios=2)).eval()
    manifest = export_model(model, tmp_path, formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    assert manifest["model_type"] == model_type and manifest["latent"]["h"] == 0
    assert set(manifest["graphs"]) == {*G.RUNTIME_GRAPHS, *G.ENSEMBLE_GRAPHS}  # blocks=False: what the runtime runs
    for name, errors in manifest["parity"].items():  # parity with eager at batch 1, 7 and 256, every graph
        assert set(errors) == {f"onnx@{b}" for b in (1, 7, 256)}, name
        assert max(errors.values()) <= manifest["parity_tolerance"][name] <= 2 * PARITY_TOLERANCE
    B = 3
    prompt = _prompt(model, B)
    reset_noise, noise, actions = rollout_inputs(model, prompt, B, 2)
    ref_obs, ref_rew = _eager_rollout(model, prompt, actions, reset_noise, noise)
    rt = Runtime(tmp_path)
    for fused in (False, True):
        rt.reset(*prompt, noise=reset_noise)  # a rollout continues from where the last one ended
        out = rt.rollout(actions, 2, fused=fused, noise=noise)
        assert out["obs"].shape == (B, 2, 10) and np.isfinite(out["obs"]).all()
        assert np.abs((out["obs"] - ref_obs) / model.obs_std.numpy()).max() <= 1e-4
        assert np.abs(out["reward"] - ref_rew).max() <= 1e-4
