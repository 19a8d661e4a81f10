"""The imagination steps of ``mrcom_core.steps``, written once and shared by evaluation, the overshooting loss
and the exported graphs: they must agree with the training pass and with each other, for every model."""

import pytest
import torch
from conftest import make_batch, make_noise

from mrcom_core import steps
from mrcom_core.registry import MODELS, build_model, model_config

torch.set_num_threads(1)
DIMS = dict(obs_dim=10, act_dim=3, num_scenarios=3)


def _model(model_type="mrcom", ablations=()):
    torch.manual_seed(0)
    return build_model(model_config("tiny", ablations, {"model_type": model_type}, **DIMS)).eval()


def _assert_states_close(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type,ablations", [("mrcom", ()), ("mrcom", ("no_context",)), ("mrcom", ("no_d",)),
                                                  ("rssm_ctx", ()), ("rssm", ()), ("cadm", ()),
                                                  ("mamba", ())])
def test_prime_then_observe_equals_the_training_pass(model_type, ablations):
    """prime (prompt = the window's context) + observe over the window reproduces the posterior that
    observe_window computes in one pass, step for step (for the models whose window output is the posterior)."""
    model = _model(model_type, ablations)
    B, L = 3, 5
    batch, noise = make_batch(model.config, B, L), make_noise(model, B, L)
    obs_n = model.normalize(batch["obs"])
    with torch.no_grad():
        state, cache = steps.prime_from_batch(model, batch, noise["u"][:, 0], noise["h"][:, 0])
        states = [state]
        for j in range(1, L + 1):
            state, cache = steps.observe(model, state, cache, obs_n[:, j - 1], batch["action"][:, j - 1],
                                         batch["reward"][:, j - 1], obs_n[:, j], noise["u"][:, j], noise["h"][:, j])
            states.append(state)
        window = model.observe_window(batch, noise)
    if model_type == "cadm":  # the latent is the observation itself
        torch.testing.assert_close(torch.stack([s.u for s in states], 1), window.obs)
        return
    _assert_states_close([torch.stack(x, 1) for x in zip(*states, strict=True)], window.state)


@pytest.mark.parametrize("model_type", list(MODELS))
def test_rollout_is_imagine_step_after_step(model_type):
    model = _model(model_type)
    B, H = 4, 3
    batch = make_batch(model.config, B, H)
    g = torch.Generator().manual_seed(2)
    nu, nh = torch.randn(B, H, model.sizes.u, generator=g), torch.randn(B, H, model.sizes.h, generator=g)
    with torch.no_grad():
        state, cache = steps.prime_from_batch(model, batch)
        obs = model.normalize(batch["obs"][:, 0])
        fused = steps.rollout(model, state, cache, obs, H, batch["action"], nu, nh)
        rewards, observations = [], []
        for t in range(H):
            out = steps.imagine(model, state, cache, obs, batch["action"][:, t], nu[:, t], nh[:, t])
            rewards.append(out.reward)
            observations.append(out.obs)
            state, obs, cache = out.state, out.obs, out.cache
    torch.testing.assert_close(fused.obs, torch.stack(observations, 1))
    torch.testing.assert_close(fused.reward, torch.stack(rewards, 1))
    _assert_states_close(fused.state, state)
    assert fused.cache.keys.shape == model.cache_shape(B)


def test_a_policy_acts_on_each_prediction():
    model = _model()
    B, H = 2, 4
    batch = make_batch(model.config, B, H)
    seen = []

    def policy(t, obs):
        seen.append((t, obs.clone()))
        return torch.tanh(obs[:, : model.config.act_dim])

    with torch.no_grad():
        state, cache = steps.prime_from_batch(model, batch)
        first = model.normalize(batch["obs"][:, 0])
        out = steps.rollout(model, state, cache, first, H, policy)
    assert [t for t, _ in seen] == list(range(H))
    torch.testing.assert_close(seen[0][1], first)
    for t in range(1, H):  # the policy sees the model's own prediction of the step before
        torch.testing.assert_close(seen[t][1], out.obs[:, t - 1])


def test_imagine_feeds_its_reward_and_prediction_into_the_context():
    model = _model()
    batch = make_batch(model.config, 2, 2)
    with torch.no_grad():
        state, cache = steps.prime_from_batch(model, batch)
        obs, action = model.normalize(batch["obs"][:, 0]), batch["action"][:, 0]
        out = steps.imagine(model, state, cache, obs, action, torch.zeros(2, 4), torch.zeros(2, 4))
        reward = model.reward(state, action)
        context, shifted = model.context_step(model.tokens(obs, action, reward), cache)
        expected = model.imagine_step(state, context, action, torch.zeros(2, 4), torch.zeros(2, 4))
    torch.testing.assert_close(out.reward, reward)
    _assert_states_close(out.state, expected)
    torch.testing.assert_close(out.cache.keys, shifted.keys)


def test_a_model_without_context_carries_a_placeholder_cache():
    model = _model(ablations=("no_context",))
    batch = make_batch(model.config, 3, 2)
    with torch.no_grad():
        state, cache = steps.prime_from_batch(model, batch)
        out = steps.rollout(model, state, cache, model.normalize(batch["obs"][:, 0]), 2, batch["action"])
    assert cache.keys.shape == model.cache_shape(3) == (1, 3, 1, 1, 1)
    assert torch.equal(out.cache.keys, cache.keys)


@pytest.mark.parametrize("model_type", [m for m in MODELS if _model(m).has_rollout_cache])
def test_a_rollout_cache_steps_like_the_fifo_past_its_window(model_type):
    """A RolloutCache (the start cache read in place, the rollout's own tokens carried per layer) gives the
    FIFO cache's readouts at every step, also after more steps than the window (the start slots fall out of
    it), and ends with the FIFO the shifted cache holds."""
    model = _model(model_type)
    m, B = model.config.context_len, 3
    batch = make_batch(model.config, B, 2)
    with torch.no_grad():
        _, fifo = steps.prime_from_batch(model, batch)
        split = model.rollout_cache(fifo)
        assert all(layer.keys.shape[2] == 0 for layer in split.recent)
        tokens = torch.randn(2 * m + 3, B, model.encoder.embed.in_features, generator=torch.Generator().manual_seed(0))
        for t, token in enumerate(tokens):
            c_fifo, fifo = model.context_step(token, fifo)
            c_split, split = model.context_step(token, split)
            torch.testing.assert_close(c_split, c_fifo, atol=1e-5, rtol=1e-5, msg=f"readout of step {t}")
            assert split.recent[0].keys.shape == (B, model.config.ctx_heads, t + 1, fifo.keys.shape[-1])
        for a, b in zip(model.fifo(split), fifo, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_a_model_without_a_streaming_encoder_has_no_rollout_cache():
    assert not _model("rssm").has_rollout_cache and not _model("mamba").has_rollout_cache
    assert not _model(ablations=("no_context",)).has_rollout_cache
