"""Same results on fixed seeds: a tiny collect → train → export → rollout reproduces the committed reference
numbers (``tests/fixtures/reference.json``, written by the code before the "one place per concept" refactor)."""

import json

import numpy as np
import pytest
from reference_pipeline import REFERENCE, run_pipeline


def _compare(got, want, path="") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            _compare(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=2e-4, atol=2e-5,
                                   err_msg=path)
    else:
        assert got == pytest.approx(want, rel=2e-4, abs=2e-5), path


@pytest.mark.slow
def test_pipeline_reproduces_the_reference_numbers(tmp_path):
    _compare(run_pipeline(tmp_path), json.loads(REFERENCE.read_text()))
