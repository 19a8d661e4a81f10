import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mrcom_train.agents.sac import SAC, ReplayBuffer, SACConfig, load_actor, mlp

torch.set_num_threads(1)

OBS_DIM, ACT_DIM = 3, 2
SMALL = SACConfig(hidden_dim=32, hidden_layers=2, batch_size=16, learning_starts=0, buffer_size=100)


def random_batch(rng: np.random.Generator, n: int = 16, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM):
    return {
        "obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "next_obs": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminated": (rng.random(n) < 0.2).astype(np.float32),
    }


def params(agent: SAC) -> list[torch.Tensor]:
    mods = (agent.actor, agent.critic, agent.critic_target)
    return [p.detach().clone() for m in mods for p in m.parameters()] + [agent.log_alpha.detach().clone()]


def assert_same_params(a: SAC, b: SAC) -> None:
    for pa, pb in zip(params(a), params(b), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_mlp_shapes():
    net = mlp(4, 3, hidden_dim=8, hidden_layers=2)
    assert net(torch.zeros(5, 4)).shape == (5, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in net) == 3


@pytest.mark.parametrize("deterministic", [False, True])
def test_act_shapes_dtypes_bounds(deterministic):
    agent = SAC(OBS_DIM, ACT_DIM, SMALL)
    obs = np.random.default_rng(0).normal(size=(64, OBS_DIM)) * 100.0  # large inputs -> saturated tanh
    single = agent.act(obs[0], deterministic=deterministic)
    batched = agent.act(obs, deterministic=deterministic)
    assert single.shape == (ACT_DIM,) and single.dtype == np.float32
    assert batched.shape == (64, ACT_DIM) and batched.dtype == np.float32
    assert np.all(np.abs(batched) <= 1.0) and np.all(np.abs(single) <= 1.0)


def test_actor_interface_and_log_prob():
    agent = SAC(OBS_DIM, ACT_DIM, SMALL)
    obs = torch.randn(7, OBS_DIM)
    mean, log_std = agent.actor(obs)
    assert mean.shape == log_std.shape == (7, ACT_DIM)
    assert torch.all(log_std >= -5) and torch.all(log_std <= 2)
    action, logp = agent.actor.sample(obs, generator=torch.Generator().manual_seed(0))
    assert action.shape == (7, ACT_DIM) and logp.shape == (7,)
    # Compare against the textbook (unstable) change of variables on the same noise.
    x = torch.atanh(action.double().clamp(-1 + 1e-12, 1 - 1e-12))
    normal = torch.distributions.Normal(mean.double(), log_std.double().exp())
    ref = (normal.log_prob(x) - torch.log(1 - action.double().pow(2))).sum(-1)
    torch.testing.assert_close(logp.double(), ref, rtol=1e-3, atol=1e-3)
    # Saturated pre-tanh values must still give a finite log-prob.
    agent.actor.net[-1].bias.data.fill_(50.0)
    assert torch.isfinite(agent.actor.sample(obs)[1]).all()


def test_deterministic_act_is_repeatable_and_stochastic_is_not():
    agent = SAC(OBS_DIM, ACT_DIM, SMALL)
    obs = np.ones(OBS_DIM, np.float32)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    assert not np.array_equal(agent.act(obs), agent.act(obs))


def test_construction_and_act_leave_global_rng_untouched():
    state = torch.get_rng_state()
    agent = SAC(OBS_DIM, ACT_DIM, SMALL, seed=123)
    agent.act(np.zeros(OBS_DIM))
    agent.update(random_batch(np.random.default_rng(0)))
    assert torch.equal(state, torch.get_rng_state())


def test_same_seed_is_reproducible_different_seed_is_not():
    a, b, c = SAC(OBS_DIM, ACT_DIM, SMALL, seed=7), SAC(OBS_DIM, ACT_DIM, SMALL, seed=7), SAC(
        OBS_DIM, ACT_DIM, SMALL, seed=8)
    obs = np.random.default_rng(1).normal(size=(5, OBS_DIM))
    np.testing.assert_array_equal(a.act(obs), b.act(obs))
    rng = np.random.default_rng(2)
    for _ in range(5):
        batch = random_batch(rng)
        a.update(batch)
        b.update(batch)
    assert_same_params(a, b)
    np.testing.assert_array_equal(a.act(obs), b.act(obs))
    assert not all(torch.equal(pa, pc) for pa, pc in zip(params(a), params(c), strict=True))


def test_update_returns_finite_metrics_and_changes_parameters():
    agent = SAC(OBS_DIM, ACT_DIM, SMALL)
    before = params(agent)
    metrics = agent.update(random_batch(np.random.default_rng(0)))
    assert set(metrics) == {"critic_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "q_mean"}
    # Detached 0-d tensors (no host sync per update); float() when logging.
    assert all(isinstance(v, torch.Tensor) and v.shape == () and not v.requires_grad for v in metrics.values())
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["alpha"]) == pytest.approx(agent.alpha)
    after = params(agent)
    actor_n = len(list(agent.actor.parameters()))
    critic_n = len(list(agent.critic.parameters()))
    groups = {"actor": slice(0, actor_n), "critic": slice(actor_n, actor_n + critic_n),
              "target": slice(actor_n + critic_n, -1), "log_alpha": slice(-1, None)}
    for name, sl in groups.items():
        assert any(not torch.equal(x, y) for x, y in zip(before[sl], after[sl], strict=True)), name


def test_update_accepts_torch_tensors_and_column_rewards():
    agent = SAC(OBS_DIM, ACT_DIM, SMALL)
    batch = {k: torch.as_tensor(v) for k, v in random_batch(np.random.default_rng(0)).items()}
    batch["reward"] = batch["reward"][:, None]
    batch["terminated"] = batch["terminated"][:, None]
    assert math.isfinite(float(agent.update(batch)["critic_loss"]))


def test_terminated_masks_bootstrapping():
    """With terminated=1 the critic target must not depend on next_obs; with 0 it must."""
    cfg = SACConfig(hidden_dim=32, batch_size=16, gamma=0.9)
    base = random_batch(np.random.default_rng(0))
    other = dict(base, next_obs=base["next_obs"] + 5.0)
    for done, should_match in ((1.0, True), (0.0, False)):
        a, b = SAC(OBS_DIM, ACT_DIM, cfg), SAC(OBS_DIM, ACT_DIM, cfg)
        a.update(dict(base, terminated=np.full(16, done, np.float32)))
        b.update(dict(other, terminated=np.full(16, done, np.float32)))
        pairs = zip(a.critic.parameters(), b.critic.parameters(), strict=True)
        same = all(torch.equal(x, y) for x, y in pairs)
        assert same == should_match


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    n = 4
    rng = np.random.default_rng(3)
    batches = [random_batch(rng) for _ in range(2 * n)]
    full = SAC(OBS_DIM, ACT_DIM, SMALL, seed=1)
    for batch in batches:
        full.update(batch)

    first = SAC(OBS_DIM, ACT_DIM, SMALL, seed=1)
    for batch in batches[:n]:
        first.update(batch)
    first.act(np.zeros(OBS_DIM))  # consumes generator state: must be restored too
    full_probe = SAC(OBS_DIM, ACT_DIM, SMALL, seed=1)  # replicate the extra act() on a reference run
    for batch in batches[:n]:
        full_probe.update(batch)
    full_probe.act(np.zeros(OBS_DIM))

    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = SAC(OBS_DIM, ACT_DIM, SMALL, seed=999)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for batch in batches[n:]:
        resumed.update(batch)
        full_probe.update(batch)
    assert_same_params(resumed, full_probe)
    obs = np.ones((3, OBS_DIM), np.float32)
    np.testing.assert_array_equal(resumed.act(obs), full_probe.act(obs))
    for key in ("actor_opt", "critic_opt", "alpha_opt"):
        assert resumed.state_dict()[key]["state"][0]["step"] == 2 * n

    # Without the extra act(), the resumed run equals an uninterrupted 2N-update run.
    plain = SAC(OBS_DIM, ACT_DIM, SMALL, seed=1)
    for batch in batches[:n]:
        plain.update(batch)
    path = tmp_path / "sac.pt"
    torch.save(plain.state_dict(), path)
    resumed2 = SAC(OBS_DIM, ACT_DIM, SMALL, seed=5)
    resumed2.load_state_dict(torch.load(path, weights_only=True))
    for batch in batches[n:]:
        resumed2.update(batch)
    assert_same_params(resumed2, full)


@pytest.mark.parametrize(
    ("field", "value"),
    [("gamma", 1.5), ("gamma", 1.0), ("tau", 0.0), ("tau", 1.1), ("actor_lr", 0.0), ("critic_lr", -1.0),
     ("alpha_lr", float("nan")), ("init_alpha", 0.0), ("hidden_dim", 0), ("hidden_layers", 0),
     ("batch_size", 0), ("learning_starts", -1), ("updates_per_step", 0), ("buffer_size", 0),
     ("hidden_dim", 2.5), ("batch_size", True), ("target_entropy", float("inf")), ("target_entropy", "x")],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SACConfig\.{field} must be"):
        SACConfig(**{field: value})


def test_config_defaults_and_message():
    cfg = SACConfig()
    assert cfg.target_entropy is None and SACConfig(target_entropy=-3).target_entropy == -3
    assert SAC(OBS_DIM, ACT_DIM, SMALL).target_entropy == -ACT_DIM
    with pytest.raises(ValueError, match=r"^SACConfig\.gamma must be in \[0, 1\), got 1\.5$"):
        SACConfig(gamma=1.5)


def test_replay_buffer_wraparound_and_sample():
    buf = ReplayBuffer(obs_dim=2, act_dim=1, capacity=5)
    assert len(buf) == 0
    with pytest.raises(ValueError):
        buf.sample(1, np.random.default_rng(0))
    for i in range(3):
        buf.add([i, i], [i], float(i), [i + 1, i + 1], terminated=(i == 2))
    assert len(buf) == 3
    n = 4  # 3 + 4 = 7 > 5: wraps, the oldest two (0, 1) are overwritten by 5, 6
    ids = np.arange(3, 3 + n, dtype=np.float64)
    buf.add_batch(np.stack([ids, ids], 1), ids[:, None], ids, np.stack([ids, ids], 1) + 1, ids == 6)
    assert len(buf) == 5
    np.testing.assert_array_equal(np.sort(buf._data["reward"]), [2, 3, 4, 5, 6])
    batch = buf.sample(256, np.random.default_rng(0))
    assert set(batch) == {"obs", "action", "reward", "next_obs", "terminated"}
    assert batch["obs"].shape == (256, 2) and batch["next_obs"].shape == (256, 2)
    assert batch["action"].shape == (256, 1) and batch["reward"].shape == (256,)
    assert batch["terminated"].shape == (256,)
    assert all(v.dtype == np.float32 for v in batch.values())
    assert set(np.unique(batch["reward"])) == {2, 3, 4, 5, 6}
    np.testing.assert_array_equal(batch["obs"][:, 0], batch["reward"])  # fields stay aligned
    np.testing.assert_array_equal(batch["terminated"], np.isin(batch["reward"], [2, 6]).astype(np.float32))
    # A batch larger than the capacity keeps only the newest transitions.
    ids = np.arange(10, 22, dtype=np.float64)
    buf.add_batch(np.stack([ids, ids], 1), ids[:, None], ids, np.stack([ids, ids], 1), np.zeros(12))
    assert len(buf) == 5
    np.testing.assert_array_equal(np.sort(buf._data["reward"]), [17, 18, 19, 20, 21])
    buf.add([0, 0], [0], 99.0, [0, 0], False)  # the oldest survivor (17) is overwritten next
    np.testing.assert_array_equal(np.sort(buf._data["reward"]), [18, 19, 20, 21, 99])


def bandit_return(agent_or_none, obs: np.ndarray, rng: np.random.Generator) -> float:
    if agent_or_none is None:
        action = rng.uniform(-1, 1, size=obs.shape).astype(np.float32)
    else:
        action = agent_or_none.act(obs, deterministic=True)
    return float(np.mean(-((action - 0.5 * obs) ** 2)))


def test_learns_contextual_bandit():
    """One-step task: obs ~ U[-1, 1], reward = -(a - obs / 2)^2, episode terminates after one step.

    The optimal action depends on obs, so neither the initial (near-zero) policy nor a random policy can
    score well; expected returns: random ~ -0.42, always-zero ~ -0.083, optimal 0.
    """
    cfg = SACConfig(hidden_dim=64, hidden_layers=2, batch_size=128, actor_lr=1e-3, critic_lr=1e-3,
                    alpha_lr=1e-3, init_alpha=0.05, learning_starts=0, buffer_size=2000)
    agent = SAC(obs_dim=1, act_dim=1, config=cfg, seed=0)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(1, 1, cfg.buffer_size)
    # Data collection with every transition recorded: random actions first, then the agent's own.
    for step in range(1200):
        obs = rng.uniform(-1, 1, size=1).astype(np.float32)
        action = rng.uniform(-1, 1, size=1) if step < 200 else agent.act(obs)
        reward = -float((action[0] - 0.5 * obs[0]) ** 2)
        buf.add(obs, action, reward, np.zeros(1), terminated=True)
        if step >= 200 and step % 2 == 0:
            agent.update(buf.sample(cfg.batch_size, rng))

    eval_obs = np.random.default_rng(42).uniform(-1, 1, size=(2000, 1)).astype(np.float32)
    trained = bandit_return(agent, eval_obs, rng)
    random_policy = bandit_return(None, eval_obs, np.random.default_rng(1))
    zero_policy = float(np.mean(-((0.5 * eval_obs) ** 2)))
    assert random_policy < -0.3
    assert trained > -0.02, (trained, random_policy, zero_policy)
    assert trained > zero_policy + 0.05


def _frozen_original():
    """bench/sac.py's LegacySAC: the update as it was before its rewrite (tests may not have bench on sys.path)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "sac.py"
    spec = importlib.util.spec_from_file_location("mrcom_bench_sac", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("hidden", "layers", "batch"), [(32, 2, 16), (24, 3, 40)])
def test_update_matches_the_frozen_original(hidden, layers, batch):
    """Fused Adam, batched twin critics, one actor+alpha backward, foreach Polyak: same numbers up to rounding."""
    bench = _frozen_original()
    cfg = SACConfig(hidden_dim=hidden, hidden_layers=layers, batch_size=batch, tau=0.05)
    old, new = bench.LegacySAC(OBS_DIM, ACT_DIM, cfg, seed=4), SAC(OBS_DIM, ACT_DIM, cfg, seed=4)
    assert bench.max_param_diff(old, new) == 0.0  # identical initialization
    rng = np.random.default_rng(5)
    for _ in range(20):
        b = random_batch(rng, n=batch)
        m_old, m_new = old.update(b), new.update(b)
    assert bench.max_param_diff(old, new) < 1e-5
    assert m_old == pytest.approx({k: float(v) for k, v in m_new.items()}, rel=1e-4, abs=1e-5)
    obs = np.random.default_rng(6).normal(size=(8, OBS_DIM)).astype(np.float32)
    assert torch.equal(old.generator.get_state(), new.generator.get_state())  # same noise consumed
    expected = old.actor.sample(torch.from_numpy(obs), deterministic=True)[0].detach().numpy()
    np.testing.assert_allclose(new.act(obs, deterministic=True), expected, atol=1e-5)


def test_checkpoint_of_the_original_layout_loads_and_resumes(tmp_path):
    """A SAC.state_dict saved before the twin critics were stacked (q1./q2. keys, 12-tensor critic_opt) loads
    with weights_only=True and continues exactly like the original would."""
    bench = _frozen_original()
    old = bench.LegacySAC(OBS_DIM, ACT_DIM, SMALL, seed=2)
    rng = np.random.default_rng(7)
    for _ in range(5):
        old.update(random_batch(rng))
    path = tmp_path / "legacy.pt"
    torch.save({"agent": old.state_dict()}, path)
    new = SAC(OBS_DIM, ACT_DIM, SMALL, seed=99)
    new.load_state_dict(torch.load(path, weights_only=True)["agent"])
    assert bench.max_param_diff(old, new) == 0.0
    assert all(g["fused"] for opt in (new.actor_opt, new.critic_opt, new.alpha_opt) for g in opt.param_groups)
    obs = torch.ones(2, OBS_DIM)
    torch.testing.assert_close(load_actor(path)(obs), old.actor(obs))  # the actor's layout never changed
    for _ in range(5):
        b = random_batch(rng)
        old.update(b)
        new.update(b)
    assert bench.max_param_diff(old, new) < 1e-5
    assert new.critic_opt.state_dict()["state"][0]["step"] == 10
    # And the new layout round-trips through a file too.
    torch.save(new.state_dict(), path)
    again = SAC(OBS_DIM, ACT_DIM, SMALL, seed=3)
    again.load_state_dict(torch.load(path, weights_only=True))
    assert_same_params(again, new)
