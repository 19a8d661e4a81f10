"""The paper's two other world-model baselines: the context-augmented RSSM (``rssm_ctx``, the paper's
DreamerV3) and the MAMBA-style model (``mamba``), whose recurrent context never forgets a step of the history.
Training, export parity and runtime rollouts of both are also covered by the baseline tests of test_model,
test_steps and test_export; here: what makes them different, and that they adapt through MrCoM's code path."""

import numpy as np
import pytest
import torch
from conftest import prompt_for

from mrcom_core.errors import UserInputError
from mrcom_core.registry import build_model, history_steps, model_config
from mrcom_export.exporter import export_model
from mrcom_export.runtime import Runtime

DIMS = dict(obs_dim=10, act_dim=3, num_scenarios=2)
QUIET = dict(progress=False, log=lambda s: None)


def _model(model_type, **overrides):
    torch.manual_seed(0)
    return build_model(model_config("tiny", overrides={"model_type": model_type, **overrides}, **DIMS)).eval()


def _readout_after(model, prompt) -> torch.Tensor:
    """The context readout after streaming every token of ``prompt`` (the exported blocks' order: the first m
    tokens in one pass, then one token at a time)."""
    obs, act, rew = (torch.from_numpy(x) for x in prompt)
    m = model.config.context_len
    with torch.no_grad():
        tokens = model.tokens(model.normalize(obs[:, :-1]), act, rew)
        readout, cache = model.encode_context(tokens[:, :m])
        c = readout[:, -1]
        for t in range(m, tokens.shape[1]):
            c, cache = model.context_step(tokens[:, t], cache)
    return c


def _changed_first_step(prompt):
    obs, act, rew = (x.copy() for x in prompt)
    obs[:, 0] += 1.0
    act[:, 0] = -act[:, 0]
    rew[:, 0] += 0.5
    return obs, act, rew


def test_the_recurrent_context_remembers_what_the_window_forgets():
    """Change the first step of a 4m-step history: MAMBA's context readout at the end changes, MrCoM's (one
    attention layer over the last m tokens at `tiny`) is exactly the same."""
    mrcom, mamba = _model("mrcom"), _model("mamba")
    m = mrcom.config.context_len
    prompt = prompt_for(mrcom, B=3, T=4 * m)
    changed = _changed_first_step(prompt)
    torch.testing.assert_close(_readout_after(mrcom, prompt), _readout_after(mrcom, changed), rtol=0, atol=0)
    assert (_readout_after(mamba, prompt) - _readout_after(mamba, changed)).abs().max() > 1e-4


def test_history_length_is_the_models_and_bad_values_are_refused():
    assert history_steps(model_config("tiny", **DIMS)) == 8  # MrCoM reads its m = 8 steps
    assert history_steps(model_config("tiny", overrides={"model_type": "mamba"}, **DIMS)) == 64  # 8 × m
    assert history_steps(model_config("tiny", overrides={"model_type": "mamba", "history_len": "20"}, **DIMS)) == 20
    assert _model("mamba").history_len == 64 and _model("rssm_ctx").history_len == 8
    with pytest.raises(UserInputError, match="model.history_len applies to mamba, not mrcom"):
        model_config("tiny", overrides={"history_len": 16}, **DIMS)
    with pytest.raises(UserInputError, match=r"model.history_len \(4\) must be 0 or >= model.context_len \(8\)"):
        model_config("tiny", overrides={"model_type": "mamba", "history_len": 4}, **DIMS)
    with pytest.raises(UserInputError, match="model.history_len must be an integer >= 0"):
        model_config("tiny", overrides={"model_type": "mamba", "history_len": -1}, **DIMS)


@pytest.fixture(scope="module")
def mamba_export(tmp_path_factory):
    model = _model("mamba", history_len=16)
    out = tmp_path_factory.mktemp("mamba-export")
    manifest = export_model(model, out, formats=("onnx",), horizon=2, blocks=True, log=lambda s: None)
    return out, model, manifest


def test_the_runtime_carries_the_whole_history_into_imagination(mamba_export):
    """Through the exported graphs: a prompt longer than m is read to its first step, and the imagined
    trajectory depends on that step."""
    out, model, manifest = mamba_export
    assert manifest["history_len"] == 16 and manifest["context_len"] == 8
    assert manifest["kv_shape"] == [1, "batch", 1, 1, model.config.ctx_width]  # the GRU state, FIFO layout
    rt = Runtime(out)
    assert rt.history_len == 16
    prompt = prompt_for(model, B=3, T=16)
    n = 16 - 8 + 1
    zeros = {k: np.zeros((3, n, getattr(model.sizes, k)), np.float32) for k in ("u", "h")}
    actions = np.zeros((3, 2, 3), np.float32)
    mean = {k: np.zeros((3, 2, getattr(model.sizes, k)), np.float32) for k in ("u", "h")}
    rt.reset(*prompt, noise=zeros)
    first = rt.rollout(actions, 2, noise=mean)["obs"]
    rt.reset(*_changed_first_step(prompt), noise=zeros)
    second = rt.rollout(actions, 2, noise=mean)["obs"]
    assert np.abs(first - second).max() > 1e-4


def test_mamba_adapts_through_the_same_loop_with_history_prompts(tmp_path):
    """The adaptation loop prompts the runtime with the model's history (here 2m steps) and fills its buffer."""
    from mrcom_train.rl.adapt import AdaptConfig, Adapter

    torch.manual_seed(0)
    model = build_model(model_config("tiny", overrides={"model_type": "mamba", "history_len": 16}, obs_dim=24,
                                     act_dim=6, num_scenarios=3)).eval()
    export_model(model, tmp_path / "export", formats=("onnx",), horizon=2, blocks=False, log=lambda s: None)
    config = AdaptConfig(split="t1-a5b20", domain="cheetah", env_steps=150, episode_length=100, learning_starts=100,
                         model_rollout_every=50, rollout_batch=16, horizon_end=2, eval_every=150, eval_episodes=1,
                         sac_hidden=32, batch_size=32, seed=0, updates_per_step=1)
    with Adapter(config, tmp_path / "run", tmp_path / "export", **QUIET) as adapter:
        runtime, lengths = adapter.imagined_env.runtime, []
        real_reset = runtime.reset

        def spy(prompt_obs, *args, **kwargs):
            lengths.append(np.asarray(prompt_obs).shape[1] - 1)
            return real_reset(prompt_obs, *args, **kwargs)

        runtime.reset = spy
        result = adapter.run()
    assert result["imagined"] > 0 and np.isfinite(result["normalized_return"])
    assert lengths and set(lengths) == {16}  # every prompt: the model's 16 history steps, not its m = 8
