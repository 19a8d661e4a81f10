"""The floors every result states: measured on the exact target scenario and evaluation episodes."""

import dataclasses

import numpy as np
import pytest

from mrcom_train.rl.adapt_config import AdaptConfig
from mrcom_train.rl.scoring import EVAL_SEED, floor_scores
from mrcom_train.scenarios import ScenarioEnv, get_split, sample_scenarios


def _zero_action_score(spec, episodes):
    env = ScenarioEnv(spec)
    scores = []
    for i in range(episodes):
        env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            _, reward, _, done, _ = env.step(np.zeros(spec.act_dim))
            total += reward
        scores.append(100 * total / spec.episode_length)
    return float(np.mean(scores))


def test_floors_are_measured_on_the_target_scenario():
    config = AdaptConfig(split="t1-a10b50", range="in", domain="cheetah", seed=0, episode_length=100)
    spec = config.target()
    floors = floor_scores(spec, 2, seed=0)
    assert set(floors) == {"zero", "random"} and all(0 <= v <= 100 for v in floors.values())
    assert floors["zero"] == pytest.approx(_zero_action_score(spec, 2))
    other = dataclasses.replace(spec, target_speed=spec.target_speed + 1.0)  # another target: another floor
    assert floor_scores(other, 2, seed=0)["zero"] != pytest.approx(floors["zero"])


def test_the_speed_margin_makes_standing_still_score_nothing():
    # margin = max(target, 0.1 v_max): a motionless cheetah earns 1 - v/margin when v < 1 m/s, else 0
    specs = sample_scenarios(get_split("t1-a10b50").range("in"), ("cheetah",), 4, 3, episode_length=50)
    for spec in specs:
        assert spec.speed_margin == pytest.approx(max(spec.target_speed, 1.0))
        expected = 100 * max(0.0, 1 - spec.target_speed / spec.speed_margin)
        assert _zero_action_score(spec, 1) == pytest.approx(expected, abs=3.0)


@pytest.mark.parametrize("field,value", [("speed_margin", 0), ("speed_margin_min", -0.1),
                                         ("speed_margin", float("nan"))])
def test_bad_margins_are_refused(field, value):
    from mrcom_core.errors import UserInputError

    with pytest.raises(UserInputError, match=field):
        dataclasses.replace(get_split("t1-a10b50").train, **{field: value})
