import pytest
import torch
from conftest import make_batch, make_noise

from mrcom_core.base import LatentState
from mrcom_core.config import ABLATIONS, PRESETS, apply_overrides
from mrcom_core.errors import UserInputError
from mrcom_core.layers import GRUCell, StreamingContextEncoder
from mrcom_core.losses import one_step_priors
from mrcom_core.models.mrcom import MrCoM
from mrcom_core.registry import build_model, load_config, model_config
from mrcom_core.steps import open_loop_predictions

torch.set_num_threads(1)
DIMS = dict(obs_dim=10, act_dim=3, num_scenarios=3)
WorldModel = MrCoM


def tiny(**overrides):
    return model_config("tiny", overrides=overrides, **DIMS)


def losses(model, batch, noise):
    """The trainer's two calls: the model's latents, then its loss terms."""
    return model.loss(model(batch, noise), batch, noise)


def open_loop_error(model, batch, horizon):
    """Per-row normalized MSE of the open-loop predictions over real dims (the metric's definition)."""
    pred = open_loop_predictions(model, batch, horizon)
    mask = batch["obs_mask"][:, None]
    err = torch.square(pred - model.normalize(batch["obs"][:, 1 : horizon + 1])) * mask
    return err.sum((1, 2)) / (mask.sum((1, 2)) * horizon)


def test_presets_validate_and_grow():
    sizes = [sum(p.numel() for p in WorldModel(model_config(p, **DIMS)).parameters()) for p in PRESETS]
    assert sizes == sorted(sizes) and sizes[0] < 50_000


@pytest.mark.parametrize("overrides,field", [
    ({"u_dim": 0}, "model.u_dim"), ({"ctx_width": 10, "ctx_heads": 4}, "model.ctx_width"),
    ({"gamma": 1.0}, "model.gamma"), ({"min_std": -1.0}, "model.min_std"),
    ({"kl_direction": "sideways"}, "model.kl_direction"), ({"colour": 1}, "unknown field 'colour'"),
    ({"u_dim": "many"}, "model.u_dim"), ({"overshoot_horizon": -1}, "model.overshoot_horizon"),
    ({"overshoot_horizon": 3, "model_type": "cadm"},
     r"model.overshoot_horizon applies to mrcom, rssm_ctx, rssm, mamba, not cadm"),
    ({"model_type": "transformer"}, "model.model_type must be one of mrcom, rssm_ctx, rssm, cadm, mamba"),
])
def test_bad_config_values_name_the_field(overrides, field):
    with pytest.raises(UserInputError, match=field):
        tiny(**overrides)


def test_overrides_are_coerced_from_strings():
    cfg = apply_overrides(model_config("tiny"), {"u_dim": "7", "no_d": "true", "gamma": "0.9"})
    assert (cfg.u_dim, cfg.options.no_d, cfg.options.gamma) == (7, True, 0.9)
    assert cfg.to_dict()["no_d"] is True and load_config(cfg.to_dict()) == cfg  # saved flat, read back whole
    with pytest.raises(UserInputError, match="unknown preset"):
        model_config("huge")
    with pytest.raises(UserInputError, match="unknown ablation"):
        model_config("tiny", ["no_x"])


def test_gru_cell_matches_torch_gru_cell():
    torch.manual_seed(0)
    ours, ref = GRUCell(5, 7), torch.nn.GRUCell(5, 7)
    with torch.no_grad():
        ref.weight_ih.copy_(ours.x2h.weight)
        ref.bias_ih.copy_(ours.x2h.bias)
        ref.weight_hh.copy_(ours.h2h.weight)
        ref.bias_hh.copy_(ours.h2h.bias)
    x, h = torch.randn(4, 5), torch.randn(4, 7)
    torch.testing.assert_close(ours(x, h), ref(x, h))


def test_scan_stacks_nested_step_outputs_and_shifted_gives_the_previous_state():
    from mrcom_core.base import Gaussian
    from mrcom_core.scan import scan, shifted

    xs = torch.arange(12.0).reshape(2, 3, 2)  # (B, T, 2)

    def step(total, x):
        total = total + x
        return total, (LatentState(total, x, x[:, :0]), Gaussian(x, -x))

    last, (states, g) = scan(step, torch.zeros(2, 2), xs)
    torch.testing.assert_close(last, xs.sum(1))
    torch.testing.assert_close(states.u, xs.cumsum(1))
    assert isinstance(states, LatentState) and isinstance(g, Gaussian) and states.h.shape == (2, 3, 0)
    torch.testing.assert_close(g.std_raw, -xs)
    prev = shifted(LatentState(torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 0)), states)
    torch.testing.assert_close(prev.u[:, 1:], states.u[:, :-1])
    assert prev.u[:, 0].abs().sum() == 0 and (prev.d[:, 0] == 1).all()
    with pytest.raises(ValueError, match="at least one sequence"):
        scan(step, torch.zeros(2, 2))


@pytest.mark.parametrize("layers,window", [(1, 4), (3, 6)])
def test_incremental_context_step_equals_full_sequence(layers, window):
    torch.manual_seed(0)
    enc = StreamingContextEncoder(token_dim=9, width=16, layers=layers, heads=4, out_dim=8, window=window)
    with torch.no_grad():
        for block in enc.blocks:
            block.rel_bias.normal_()  # make the relative-position bias matter
    tokens = torch.randn(3, window + 7, 9)
    full, _ = enc(tokens)
    readout, cache = enc(tokens[:, :window])
    steps = [readout[:, -1]]
    for k in range(window, tokens.shape[1]):
        c, cache = enc.step(tokens[:, k], cache)
        steps.append(c)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, window - 1 :], atol=1e-5, rtol=1e-5)
    assert cache.keys.shape == (layers, 3, 4, window, 4)


def test_context_attention_is_limited_to_the_window():
    torch.manual_seed(0)
    enc = StreamingContextEncoder(token_dim=5, width=8, layers=1, heads=2, out_dim=4, window=3)
    tokens = torch.randn(1, 10, 5)
    base, _ = enc(tokens)
    changed = tokens.clone()
    changed[:, 2] += 5.0  # token 2 is outside the window of tokens 5..9 (one layer)
    out, _ = enc(changed)
    torch.testing.assert_close(out[:, 5:], base[:, 5:])
    assert not torch.allclose(out[:, 2:5], base[:, 2:5])


def test_observe_window_equals_step_by_step_observe_and_imagine():
    torch.manual_seed(0)
    cfg = tiny()
    model = WorldModel(cfg)
    B, L = 3, 5
    batch, noise = make_batch(cfg, B, L), make_noise(model, B, L)
    post = model.observe_window(batch, noise)
    priors = one_step_priors(model, post, noise)
    m = cfg.context_len
    obs_n = model.normalize(batch["obs"])
    tokens = torch.cat([model.tokens(model.normalize(batch["context_obs"]), batch["context_action"],
                                     batch["context_reward"]),
                        model.tokens(obs_n[:, :-1], batch["action"], batch["reward"])], 1)
    readout, _ = model.encode_context(tokens)
    state = model.initial_state(B)
    prev = torch.cat([batch["context_action"][:, -1:], batch["action"]], 1)
    for j in range(L + 1):
        c = readout[:, m - 1 + j]
        predicted = model.imagine_step(state, c, prev[:, j], noise["u_prior"][:, j], noise["h_prior"][:, j])
        state = model.observe_step(state, c, prev[:, j], obs_n[:, j], noise["u"][:, j], noise["h"][:, j])
        for a, b in zip(state, post.state, strict=True):
            torch.testing.assert_close(a, b[:, j], atol=1e-5, rtol=1e-5)
        for a, b in zip(predicted, priors, strict=True):
            torch.testing.assert_close(a, b[:, j], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ablation", [(), *((a,) for a in ABLATIONS)])
def test_step_shapes_and_finite_values(ablation):
    cfg = model_config("tiny", ablation, **DIMS)
    model = WorldModel(cfg)
    B = 5
    state = model.initial_state(B)
    c = torch.randn(B, model.sizes.context)
    a, o = torch.rand(B, cfg.act_dim), torch.randn(B, cfg.obs_dim)
    noise = torch.randn(B, cfg.u_dim), torch.randn(B, cfg.h_dim)
    post = model.observe_step(state, c, a, o, *noise)
    prior = model.imagine_step(post, c, a, *noise)
    for s in (post, prior):
        assert isinstance(s, LatentState)
        assert [x.shape for x in s] == [(B, cfg.u_dim), (B, model.sizes.d), (B, cfg.h_dim)]
        assert all(torch.isfinite(x).all() for x in s) and all(x.dtype == torch.float32 for x in s)
    assert model.decode(prior).shape == (B, cfg.obs_dim)
    assert model.reward(prior, a).shape == (B,)


def test_every_parameter_gets_a_gradient():
    cfg = tiny()
    model = WorldModel(cfg)
    out = losses(model, make_batch(cfg), make_noise(model))
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(torch.isfinite(v) for v in out.values())


def test_reconstruction_ignores_padded_obs_dims():
    from mrcom_core.losses import loss_var

    cfg = tiny()
    model = WorldModel(cfg)
    batch = make_batch(cfg)  # row 0 has its last two obs dims padded
    post = model.observe_window(batch, make_noise(model))
    base = loss_var(model, post, batch)["recon"]
    changed = dict(batch, obs=batch["obs"].clone())
    changed["obs"][0, :, -2:] += 100.0  # what sits in padded dims is never reconstructed
    torch.testing.assert_close(loss_var(model, post, changed)["recon"], base)
    changed["obs"][1, :, -2:] += 100.0  # ...but real dims are
    assert loss_var(model, post, changed)["recon"].item() > base.item() + 10


def test_ablations_really_remove_their_components():
    full = WorldModel(tiny())
    names = {n.split(".")[0] for n, _ in full.named_parameters()}
    assert {"encoder", "gru", "value_heads", "meta_value"} <= names
    no_d = WorldModel(model_config("tiny", ["no_d"], **DIMS))
    assert no_d.gru is None and no_d.sizes.state == no_d.config.u_dim + no_d.config.h_dim
    no_c = WorldModel(model_config("tiny", ["no_context"], **DIMS))
    assert no_c.encoder is None and no_c.u_prior[0].in_features == DIMS["act_dim"] + no_c.sizes.d  # u_on_d
    no_lv = WorldModel(model_config("tiny", ["no_lv"], **DIMS))
    assert no_lv.value_heads is None and no_lv.meta_value is None
    batch = make_batch(full.config)
    keys = {}
    for name, model in [("full", full), ("no_ls", WorldModel(model_config("tiny", ["no_ls"], **DIMS))),
                        ("no_lv", no_lv)]:
        keys[name] = set(losses(model, batch, make_noise(model)))
    assert {"s", "v", "value", "value_i"} <= keys["full"]
    assert "s" not in keys["no_ls"] and not {"v", "value", "value_i"} & keys["no_lv"]
    # no_ls: lambda_s no longer matters
    a = WorldModel(model_config("tiny", ["no_ls"], {"lambda_s": 0.0}, **DIMS))
    b = WorldModel(model_config("tiny", ["no_ls"], {"lambda_s": 5.0}, **DIMS))
    b.load_state_dict(a.state_dict())
    assert losses(a, batch, make_noise(a))["loss"].item() == losses(b, batch, make_noise(b))["loss"].item()


def test_no_context_ignores_the_context():
    model = WorldModel(model_config("tiny", ["no_context"], **DIMS))
    batch, noise = make_batch(model.config), make_noise(model)
    base = losses(model, batch, noise)["loss"]
    batch["context_obs"] += 3.0
    assert losses(model, batch, noise)["loss"].item() == base.item()


def _train(model, batch, noise, steps=150, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        out = losses(model, batch, noise)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    return history


@pytest.mark.parametrize("term,weights", [
    ("recon", {}), ("reward", {}), ("var", {}),
    ("s", {"lambda_var": 0.0, "lambda_v": 0.0}),
    ("v", {"lambda_var": 0.0, "lambda_s": 0.0, "value_loss_weight": 0.0}),
    ("value_i", {"gamma": 0.5}), ("value", {"gamma": 0.5}), ("overshoot", {"overshoot_horizon": 4}),
])
def test_each_loss_term_falls_on_tiny_data(term, weights):
    torch.manual_seed(0)
    cfg = tiny(kl_free_nats=0.0, **weights)
    model = WorldModel(cfg)
    batch, noise = make_batch(cfg, 8, 6), make_noise(model, 8, 6)
    history = _train(model, batch, noise)
    start = sum(h[term] for h in history[:5]) / 5
    end = sum(h[term] for h in history[-5:]) / 5
    assert end < 0.7 * start, (term, start, end)


def test_overshoot_loss_is_the_open_loop_reconstruction_error():
    """With zero noise, the overshooting term is the NLL of the eager open-loop predictions; MrCoM's default
    turns it on (15 steps), 0 turns it off."""
    from mrcom_core.losses import loss_overshoot

    torch.manual_seed(0)
    cfg = tiny(overshoot_horizon=4)
    model = WorldModel(cfg)
    batch = make_batch(cfg, 4, 6)
    zero = {k: torch.zeros_like(v) for k, v in make_noise(model, 4, 6).items()}
    loss = loss_overshoot(model, batch, zero)
    pred = open_loop_predictions(model, batch, 4)
    target = model.normalize(batch["obs"][:, 1:5])
    expected = 0.5 * (torch.square(pred - target) * batch["obs_mask"][:, None]).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    off = WorldModel(tiny(overshoot_horizon=0))
    assert "overshoot" in losses(model, batch, zero) and "overshoot" not in losses(off, batch, zero)
    assert tiny().options.overshoot_horizon == 15
    loss.backward()
    assert model.encoder.embed.weight.grad.abs().sum() > 0 and model.u_prior[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_type", ["rssm_ctx", "mamba"])
def test_the_rssm_baselines_take_the_overshooting_switch(model_type):
    """Off by default (DreamerV3 has none); ``overshoot_horizon`` adds the same open-loop term to their loss, with
    gradients into the context encoder and the prior."""
    from mrcom_core.losses import loss_overshoot

    torch.manual_seed(0)
    extra = {"history_len": 8} if model_type == "mamba" else {}
    plain = build_model(model_config("tiny", overrides={"model_type": model_type, **extra}, obs_dim=10, act_dim=3,
                                     num_scenarios=2))
    assert plain.config.options.overshoot_horizon == 0
    cfg = model_config("tiny", overrides={"model_type": model_type, "overshoot_horizon": 3, **extra}, obs_dim=10,
                       act_dim=3, num_scenarios=2)
    model = build_model(cfg)
    model.load_state_dict(plain.state_dict())
    batch = make_batch(cfg, 4, 6)
    noise = make_noise(model, 4, 6)
    on, off = losses(model, batch, noise), losses(plain, batch, noise)
    assert "overshoot" not in off and on["overshoot"] > 0
    expected = off["loss"] + cfg.options.overshoot_weight * loss_overshoot(model, batch, noise)
    torch.testing.assert_close(on["loss"], expected)
    on["loss"].backward()
    assert model.encoder.embed.weight.grad.abs().sum() > 0 and model.prior[0].weight.grad.abs().sum() > 0


def test_kl_direction_switch_changes_the_kl():
    batch = make_batch(tiny())
    a = WorldModel(tiny(kl_direction="post_prior"))
    b = WorldModel(tiny(kl_direction="prior_post"))
    b.load_state_dict(a.state_dict())
    ka, kb = losses(a, batch, make_noise(a))["kl_u"], losses(b, batch, make_noise(b))["kl_u"]
    assert ka.item() > 0 and kb.item() > 0 and ka.item() != pytest.approx(kb.item())


def test_open_loop_rollout_uses_predicted_observations():
    torch.manual_seed(0)
    cfg = tiny()
    model = WorldModel(cfg)
    batch = make_batch(cfg, 4, 6)
    pred = open_loop_predictions(model, batch, 5)
    err = open_loop_error(model, batch, 5)
    assert pred.shape == (4, 5, cfg.obs_dim) and err.shape == (4,) and torch.isfinite(err).all()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["obs"][:, 1:] += 10.0  # future observations must not leak into the open-loop predictions
    torch.testing.assert_close(open_loop_predictions(model, changed, 5), pred)
    with pytest.raises(ValueError, match="horizon"):
        open_loop_predictions(model, batch, 7)


def test_streaming_context_equals_reencoding_each_window_for_one_layer():
    # With one attention layer, the band-masked pass over context+window is exactly Enc(C_t) per step.
    a = WorldModel(tiny())
    b = WorldModel(tiny(ctx_reencode=True))
    b.load_state_dict(a.state_dict())
    batch = make_batch(a.config)
    torch.testing.assert_close(losses(a, batch, make_noise(a))["loss"], losses(b, batch, make_noise(b))["loss"])


@pytest.mark.parametrize("model_type", ["rssm_ctx", "rssm", "cadm", "mamba"])
def test_baselines_share_the_interface_and_learn(model_type):
    torch.manual_seed(0)
    cfg = model_config("tiny", overrides={"model_type": model_type, "kl_free_nats": 0.0}, **DIMS)
    model = build_model(cfg)
    names = {"rssm_ctx": "ContextRSSM", "rssm": "RSSM", "cadm": "CaDM", "mamba": "MambaStyle"}
    assert type(model).__name__ == names[model_type]
    assert (model.encoder is None) == (model_type == "rssm")  # the plain RSSM has no context
    assert model.sizes.h == 0 and (model.sizes.d == 0) == (model_type == "cadm")
    batch, noise = make_batch(cfg, 8, 6), make_noise(model, 8, 6)
    history = _train(model, batch, noise, steps=100)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and "recon" in history[-1]
    err = open_loop_error(model, batch, 5)
    assert err.shape == (8,) and torch.isfinite(err).all()
    B = 3
    C, U = model.sizes.context, model.sizes.u
    state = model.observe_step(model.initial_state(B), torch.zeros(B, C), torch.zeros(B, 3), torch.randn(B, 10),
                               torch.randn(B, U), torch.randn(B, 0))
    nxt = model.imagine_step(state, torch.zeros(B, C), torch.zeros(B, 3), torch.randn(B, U), torch.randn(B, 0))
    assert model.decode(nxt).shape == (B, 10) and model.reward(nxt, torch.zeros(B, 3)).shape == (B,)
    with pytest.raises(UserInputError, match=f"model.no_d applies to mrcom, not {model_type}"):
        model_config("tiny", ["no_d"], {"model_type": model_type}, **DIMS)
