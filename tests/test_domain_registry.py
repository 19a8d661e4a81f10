"""Adding a domain = one :class:`~mrcom_train.scenarios.domains.Domain` record: a throw-away domain registered
here (a second cheetah with its own name and imagined-rollout length) is sampled by the splits, steps as an
environment, is collected into a dataset, scores observations by its task's reward, takes its horizon into an
adaptation config and is a choice of ``mrcom adapt --domain``, without any other file knowing about it."""

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from mrcom_core.errors import UserInputError
from mrcom_train.scenarios import (
    DOMAINS,
    ScenarioEnv,
    get_split,
    register_domain,
    reward_from_obs,
    sample_scenarios,
    unregister_domain,
)

QUIET = dict(progress=False, log=lambda s: None)
NAME = "cheetah_twin"


@pytest.fixture
def twin():
    domain = register_domain(dataclasses.replace(DOMAINS["cheetah"], name=NAME, mbpo_horizon=(2, 3)))
    yield domain
    unregister_domain(NAME)
    assert NAME not in DOMAINS


def test_a_registered_domain_is_sampled_stepped_collected_and_adapted_on(twin, tmp_path):
    from mrcom_train.cli import cli
    from mrcom_train.datasets.collect import CollectConfig, collect
    from mrcom_train.datasets.dataset import Dataset
    from mrcom_train.rl.adapt_config import AdaptConfig

    # the built-in domains keep their scenarios: the new one is seeded by its own (last) position
    before = sample_scenarios(get_split("t1-a5b20").range("in"), ("cheetah",), 2, 0)
    specs = sample_scenarios(get_split("t1-a5b20").range("in"), ("cheetah", NAME), 2, 0)
    assert specs[:2] == before and [s.domain for s in specs[2:]] == [NAME, NAME]

    env = ScenarioEnv(specs[2])
    obs, _ = env.reset(seed=0)
    next_obs, reward, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
    assert obs.shape == (twin.obs_dim,) and np.isfinite(reward)
    np.testing.assert_allclose(reward_from_obs(specs[2], next_obs[None])[0], reward, atol=1e-4)

    data = collect(CollectConfig(domains=(NAME,), scenarios_per_domain=1, episodes_per_scenario=2,
                                 episode_length=20), tmp_path / "data", **QUIET)
    assert {s.domain for s in Dataset(data).scenarios} == {NAME}

    config = AdaptConfig(domain=NAME, env_steps=100)
    assert (config.horizon_start, config.horizon_end) == twin.mbpo_horizon

    result = CliRunner().invoke(cli, ["adapt", "--help"])
    assert result.exit_code == 0 and NAME in result.output


def test_registering_refuses_a_second_domain_under_a_taken_name(twin):
    from mrcom_train.rl.adapt_config import AdaptConfig

    with pytest.raises(ValueError, match=f"already registered as '{NAME}'"):
        register_domain(dataclasses.replace(twin, v_max=1.0))
    with pytest.raises(TypeError, match="not a Domain"):
        register_domain("walker")
    unregister_domain(NAME)
    with pytest.raises(UserInputError, match=f"unknown domain '{NAME}'"):
        AdaptConfig(domain=NAME)
    register_domain(twin)  # the fixture removes it again
