"""The results tests' own fixture: a toy metric registered for one test (tests/results/toy_metric.py)."""
from __future__ import annotations

import pytest

from tests.results.toy_metric import registered


@pytest.fixture
def toy_metric():
    with registered() as metric:
        yield metric
