import json
import math

import gymnasium as gym
import numpy as np
import pytest
from dm_control import suite

from mrcom_core.errors import UserInputError
from mrcom_train.scenarios import (
    DOMAINS,
    SPLITS,
    ScenarioEnv,
    ScenarioRange,
    ScenarioSpec,
    UnifiedSpace,
    affected_count,
    get_split,
    pad,
    sample_scenarios,
)
from mrcom_train.scenarios.domains import CheetahTargetSpeed, HopperTargetSpeed, WalkerTargetSpeed, scaled_xml


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("scales", [(0.8, 1.2), (1.2, 0.8)])
def test_scaled_domain_runs_1000_steps_finite(domain, scales):
    spec = ScenarioSpec(domain, *scales, target_speed=0.5 * DOMAINS[domain].v_max, seed=3)
    env = ScenarioEnv(spec)
    obs, _ = env.reset()
    rng = np.random.default_rng(0)
    truncated, steps = False, 0
    while not truncated:
        obs, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, spec.act_dim).astype(np.float32))
        assert np.isfinite(obs).all() and math.isfinite(reward) and 0.0 <= reward <= 1.0
        assert not terminated
        steps += 1
    assert steps == 1000
    assert obs.shape == (spec.obs_dim,) and obs.dtype == np.float32


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_scaling_changes_the_body(domain):
    base = suite.load(domain, DOMAINS[domain].task).physics
    env = ScenarioEnv(ScenarioSpec(domain, 1.2, 0.8))
    m0, m1 = base.model, env.physics.model
    assert m0.nbody == m1.nbody and m0.ngeom == m1.ngeom and m0.nq == m1.nq  # same body tree
    torso = m1.geom("torso").id
    assert m1.geom_size[torso, 0] == pytest.approx(m0.geom_size[torso, 0] * 0.8)
    assert not np.allclose(m0.body_mass, m1.body_mass)


def test_scaling_keeps_attachments_at_the_torso_ends():
    # hopper: nose moves with the top end; walker: thighs at the new bottom end; cheetah: thighs at the ends.
    import xml.etree.ElementTree as ET

    hop = ET.fromstring(scaled_xml("hopper", 1.2, 1.0))
    top = float(hop.find(".//geom[@name='torso']").get("fromto").split()[5])
    assert top == pytest.approx(-0.05 + 0.25 * 1.2)
    nose_z = float(hop.find(".//geom[@name='nose']").get("fromto").split()[2])
    assert nose_z == pytest.approx(0.13 + top - 0.2)
    walk = ET.fromstring(scaled_xml("walker", 0.8, 1.0))
    assert float(walk.find(".//body[@name='left_thigh']").get("pos").split()[2]) == pytest.approx(-0.3 * 0.8)
    assert float(walk.find(".//geom[@name='torso']").get("size").split()[1]) == pytest.approx(0.3 * 0.8)
    chee = ET.fromstring(scaled_xml("cheetah", 1.2, 1.0))
    assert float(chee.find(".//body[@name='bthigh']").get("pos").split()[0]) == pytest.approx(-0.6)
    assert float(chee.find(".//body[@name='fthigh']").get("pos").split()[0]) == pytest.approx(0.6)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_unit_scales_equal_suite_load(domain):
    seed = 7
    ours = ScenarioEnv(ScenarioSpec(domain, 1.0, 1.0, target_speed=None, seed=seed))
    ref = suite.load(domain, DOMAINS[domain].task, task_kwargs={"random": seed})
    obs, _ = ours.reset()
    ts = ref.reset()
    flat = np.concatenate([np.ravel(v) for v in ts.observation.values()])
    np.testing.assert_array_equal(obs, flat.astype(np.float32))
    rng = np.random.default_rng(1)
    for _ in range(300):
        a = rng.uniform(-1, 1, DOMAINS[domain].act_dim)
        obs, reward, *_ = ours.step(a)
        ts = ref.step(a)
        assert reward == ts.reward
        flat = np.concatenate([np.ravel(v) for v in ts.observation.values()])
        np.testing.assert_array_equal(obs, flat.astype(np.float32))


class _FakePhysics:
    def __init__(self, speed):
        self._speed = speed

    def height(self):
        return 1.0  # hopper standing

    def speed(self):
        return self._speed

    def horizontal_velocity(self):
        return self._speed

    def torso_height(self):
        return 1.3  # walker standing

    def torso_upright(self):
        return 1.0


@pytest.mark.parametrize("task_cls,v_max", [(HopperTargetSpeed, 2.0), (WalkerTargetSpeed, 8.0),
                                            (CheetahTargetSpeed, 10.0)])
def test_target_speed_reward_peaks_at_target(task_cls, v_max):
    target, margin = 0.3 * v_max, v_max / 2
    task = task_cls(target, margin, random=0)
    at = task.get_reward(_FakePhysics(target))
    near = [task.get_reward(_FakePhysics(target + d)) for d in (-0.2 * margin, 0.2 * margin)]
    far = task.get_reward(_FakePhysics(target + 1.5 * margin))
    assert at == pytest.approx(1.0)
    assert all(0 < r < 1 for r in near) and near[0] == pytest.approx(near[1])
    assert far == 0.0


def test_speed_margin_is_the_target_with_a_floor_of_a_tenth_of_vmax():
    for seed in range(20):
        spec = ScenarioRange(5, 20).sample("walker", np.random.default_rng(seed))
        assert spec.speed_margin == pytest.approx(max(spec.target_speed, 0.8))  # walker v_max = 8 m/s
    custom = ScenarioRange(5, 20, speed_margin=0.5, speed_margin_min=0.25).sample("walker", np.random.default_rng(0))
    assert custom.speed_margin == pytest.approx(max(0.5 * custom.target_speed, 2.0))


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_observation_function_dims(domain):
    n = DOMAINS[domain].obs_dim
    k = affected_count(n)
    assert k == math.ceil(0.1 * n)
    space = UnifiedSpace.of([ScenarioSpec(d, obs_fn="add-d") for d in DOMAINS])
    for fn, dims in [("none", n), ("add-g", n), ("add-d", n + k), ("msk-r", n), ("msk-f", n)]:
        spec = ScenarioSpec(domain, obs_fn=fn, seed=5)
        assert spec.obs_dim == dims
        env = ScenarioEnv(spec, space)
        assert env.obs_mask.sum() == dims and env.obs_mask[:dims].all()
        obs, info = env.reset()
        assert obs.shape == (space.obs_dim,)
        assert np.all(obs[dims:] == 0)


def _rollout(fn, steps=20, seed=0, domain="cheetah", std=0.1):
    env = ScenarioEnv(ScenarioSpec(domain, obs_fn=fn, obs_noise_std=std, seed=seed))
    obs, info = env.reset()
    seen, true = [obs], [info["true_obs"]]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape[0]))
        seen.append(obs)
        true.append(info["true_obs"])
    return np.array(seen), np.array(true)


def test_add_g_adds_noise_of_the_given_std():
    seen, true = _rollout("add-g", steps=200, std=0.3)
    noise = seen - true.astype(np.float32)
    assert noise.std() == pytest.approx(0.3, rel=0.1) and abs(noise.mean()) < 0.05


def test_add_d_appends_pure_noise_dims():
    seen, true = _rollout("add-d", steps=200)
    n = true.shape[1]
    np.testing.assert_allclose(seen[:, :n], true, rtol=1e-6, atol=1e-6)
    extra = seen[:, n:]
    assert extra.shape[1] == affected_count(n)
    assert extra.std() == pytest.approx(1.0, rel=0.15)


def test_msk_r_masks_a_fresh_tenth_each_step():
    seen, true = _rollout("msk-r", steps=50)
    k = affected_count(true.shape[1])
    zeroed = (seen == 0) & (true != 0)
    assert (zeroed.sum(1) <= k).all() and zeroed.sum(1).mean() > k - 0.5
    patterns = {tuple(np.flatnonzero(row)) for row in zeroed}
    assert len(patterns) > 10
    kept = ~zeroed & (seen != 0)
    np.testing.assert_allclose(seen[kept], true.astype(np.float32)[kept])


def test_msk_f_masks_the_same_dims_for_the_scenarios_life():
    seen, true = _rollout("msk-f", steps=50, seed=11)
    k = affected_count(true.shape[1])
    always_zero = np.flatnonzero((seen == 0).all(0))
    assert len(always_zero) == k
    seen2, _ = _rollout("msk-f", steps=5, seed=11)
    assert (seen2[:, always_zero] == 0).all()  # same seed, same dims
    other = {tuple(np.flatnonzero((_rollout("msk-f", steps=3, seed=s)[0] == 0).all(0))) for s in range(6)}
    assert len(other) > 1  # different scenarios mask different dims


def test_padding_and_masks_round_trip():
    specs = [ScenarioSpec(d) for d in DOMAINS]
    space = UnifiedSpace.of(specs)
    assert (space.obs_dim, space.act_dim) == (24, 6)
    hop = ScenarioEnv(specs[0], space)
    assert hop.action_mask.tolist() == [1, 1, 1, 1, 0, 0]
    obs, _ = hop.reset(seed=1)
    raw = obs[hop.obs_mask.astype(bool)]
    np.testing.assert_array_equal(pad(raw, space.obs_dim), obs)
    # padded action dims are ignored: garbage there changes nothing
    a = np.random.default_rng(0).uniform(-1, 1, 6)
    b = a.copy()
    b[4:] = [100.0, -7.0]
    hop.reset(seed=2)
    o1 = hop.step(a)[0]
    hop.reset(seed=2)
    o2 = hop.step(b)[0]
    np.testing.assert_array_equal(o1, o2)


def test_seeded_reset_reproduces_episodes():
    env = ScenarioEnv(ScenarioSpec("walker", 1.03, 0.97, target_speed=1.0, obs_fn="add-g"))
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=42)
        trace = [obs]
        for t in range(10):
            trace.append(env.step(np.full(6, 0.1 * t))[0])
        runs.append(np.array(trace))
    np.testing.assert_array_equal(*runs)
    assert not np.array_equal(env.reset(seed=43)[0], runs[0][0])


@pytest.mark.filterwarnings("ignore:.*Box observation space")
def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    env = ScenarioEnv(ScenarioSpec("hopper", target_speed=0.5, episode_length=50))
    check_env(env, skip_render_check=True)
    assert isinstance(env, gym.Env)


def test_step_validates_actions_and_reset():
    env = ScenarioEnv(ScenarioSpec("cheetah", episode_length=2))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(6))
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(4))
    env.step(np.zeros(6))
    assert env.step(np.zeros(6))[3]  # truncated after episode_length
    with pytest.raises(RuntimeError):
        env.step(np.zeros(6))


def test_spec_round_trips_through_json_and_rebuilds_the_same_env():
    spec = ScenarioRange(10, 50, obs_fn="msk-f").sample("hopper", np.random.default_rng(3))
    again = ScenarioSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    a, b = ScenarioEnv(spec), ScenarioEnv(again)
    np.testing.assert_array_equal(a.reset(seed=1)[0], b.reset(seed=1)[0])
    np.testing.assert_array_equal(a.step(np.full(4, 0.5))[0], b.step(np.full(4, 0.5))[0])


@pytest.mark.parametrize("name", list(SPLITS))
def test_splits_sample_inside_their_ranges(name):
    split = get_split(name)
    for which in ("train", "in", "ood"):
        rng_ = split.range(which)
        specs = sample_scenarios(rng_, tuple(DOMAINS), 20, seed=0)
        assert len(specs) == 60
        for s in specs:
            lo, hi = 1 - rng_.alpha / 100, 1 + rng_.alpha / 100
            assert lo <= s.length_scale <= hi and lo <= s.size_scale <= hi
            v_max = DOMAINS[s.domain].v_max
            if rng_.speed_frac is not None:
                assert s.target_speed == pytest.approx(rng_.speed_frac * v_max)
            else:
                assert 0 <= s.target_speed <= rng_.beta / 100 * v_max
            assert s.obs_fn == rng_.obs_fn


def test_paper_tables_are_in_the_split_table():
    t1 = get_split("t1-a10b50")
    assert (t1.train.alpha, t1.train.beta) == (10, 50)
    assert (t1.evaluate["ood"].alpha, t1.evaluate["ood"].beta) == (20, 100)
    t2 = get_split("t2-a5")
    assert t2.train.speed_frac == 0.5 and t2.evaluate["ood"].alpha == 10
    assert {f"t3-{fn}" for fn in ("add-g", "add-d", "msk-r", "msk-f")} <= set(SPLITS)


def test_sampling_is_seeded_and_per_domain_independent():
    r = get_split("t1-a5b20").train
    a = sample_scenarios(r, ("hopper", "walker"), 3, seed=1)
    assert a == sample_scenarios(r, ("hopper", "walker"), 3, seed=1)
    assert a != sample_scenarios(r, ("hopper", "walker"), 3, seed=2)
    assert [s for s in a if s.domain == "walker"] == sample_scenarios(r, ("walker",), 3, seed=1)


@pytest.mark.parametrize("make,message", [
    (lambda: ScenarioRange(-1, 20), "alpha"),
    (lambda: ScenarioRange(100, 20), "alpha"),
    (lambda: ScenarioRange(5, 101), "beta"),
    (lambda: ScenarioRange(5, -3), "beta"),
    (lambda: ScenarioRange(5, 20, obs_fn="blur"), "observation function"),
    (lambda: ScenarioSpec("ant"), "domain"),
    (lambda: ScenarioSpec("hopper", length_scale=0), "length_scale"),
    (lambda: ScenarioSpec("hopper", obs_fn="x"), "obs_fn"),
    (lambda: ScenarioSpec.from_dict({"domain": "hopper", "colour": 1}), "colour"),
    (lambda: get_split("t9"), "unknown split"),
    (lambda: get_split("t1-a5b20").range("test"), "no range"),
    (lambda: sample_scenarios(ScenarioRange(5, 20), ("hopper", "ant"), 1, 0), "unknown domain"),
])
def test_bad_scenario_input_raises_user_errors(make, message):
    with pytest.raises(UserInputError, match=message):
        make()
