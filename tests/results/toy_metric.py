"""A toy metric, declared as docs/design.md §5 ("A metric") says: specificity at 0.5, the share of negatives
called negative, per class and macro. `registered()` makes it known for a while (tests/results/conftest.py's
`toy_metric` fixture for one test) and takes it out after."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vocab.metrics import REGISTRY, Entries, Metric, register


def _negatives_called_negative(e: Entries):
    return e.known & ~e.positive & ~e.said, e.known & ~e.positive


SPECIFICITY = Metric("specificity", "specificity at 0.5", "macro", "half", _negatives_called_negative,
                     "negative images", percent=True, curve=True, tables=("test",), figures=("epochs",))


@contextmanager
def registered() -> Iterator[Metric]:
    register(SPECIFICITY)
    try:
        yield SPECIFICITY
    finally:
        REGISTRY.pop(SPECIFICITY.name)
