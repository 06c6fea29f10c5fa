"""vocab.metrics: a metric is one declaration; its counts give the trial's number at unit weights and a resample's
with bootstrap weights; the metric lists are live views of the registry; a malformed declaration is refused."""
from __future__ import annotations

import numpy as np
import pytest

from tests.results.toy_metric import SPECIFICITY, registered
from vocab import names
from vocab.metrics import (EPOCH_METRICS, MACRO_METRICS, REGISTRY, SPLIT_METRICS, Metric, counted, pooled_columns,
                           register, split_value, thresholds_for, weighted_values)
from vocab.records import SplitMetrics


def _split(seed: int = 0, images: int = 40, classes: int = 4):
    rng = np.random.default_rng(seed)
    truth = (rng.random((images, classes)) < 0.3).astype(float)
    truth[rng.random(truth.shape) < 0.15] = np.nan
    truth[:, 1] = np.where(np.isnan(truth[:, 1]), np.nan, 0.0)  # a class without positives
    return truth, np.round(rng.random(truth.shape), 2), rng.random(classes) * 0.5


COUNTED = [m for m in REGISTRY.values() if m.counts is not None]


@pytest.mark.parametrize("metric", COUNTED, ids=lambda m: m.name)
def test_a_resamples_weights_give_the_metric_of_the_images_drawn_that_often(metric):
    """A bootstrap resample's value (weights: how often each image was drawn) is the trial's formula on the
    images repeated that often, so both sides compute one metric from one declaration."""
    truth, probs, fitted = _split()
    at = thresholds_for(metric, fitted)
    weights = np.random.default_rng(1).poisson(1.0, len(truth))
    drawn = np.repeat(np.arange(len(truth)), weights)
    expected, _ = split_value(metric, *counted(metric, truth[drawn], probs[drawn], at))
    resampled = weighted_values(metric, *pooled_columns(metric, *counted(metric, truth, probs, at)),
                                weights[None].astype(float))
    assert resampled[0] == pytest.approx(expected, rel=1e-12)


def test_the_metric_lists_are_live_views_of_the_registry():
    """A metric registered after the lists were imported is in them wherever they were, and the records ask for it."""
    with registered():
        _registered_toy_is_everywhere()
    assert "specificity" not in MACRO_METRICS and "specificity" not in EPOCH_METRICS


def _registered_toy_is_everywhere():
    assert "specificity" in MACRO_METRICS and "specificity" in EPOCH_METRICS and "specificity" in names.SPLIT_METRICS
    assert SPLIT_METRICS[:len(MACRO_METRICS)] == tuple(MACRO_METRICS) and MACRO_METRICS[-1] == "specificity"
    macro = {m: 0.5 for m in SPLIT_METRICS if m != "specificity"}
    with pytest.raises(ValueError, match="missing specificity"):
        SplitMetrics(macro=macro, per_class={}, classes={}, undefined=[])


@pytest.mark.parametrize("changes, said", [
    ({"name": "Specificity"}, "lower-case identifier"),
    ({"threshold": "ranking"}, "a ranking score is one of"),
    ({"counts": None}, "counts: Entries"),
    ({"curve": False}, "curve=True for the figure over epochs"),
    ({"threshold": "fitted", "external": True}, "external scores need no fitted thresholds"),
    ({"tables": ("val",)}, "tables among"),
    ({"aggregate": "split"}, "a split metric"),
])
def test_a_malformed_declaration_is_refused_saying_what_to_write(changes, said):
    fields = {**SPECIFICITY.__dict__, **changes}
    with pytest.raises(ValueError, match=f"metric '{fields['name']}': expected .*{said}"):
        Metric(**fields)


def test_a_second_declaration_of_a_name_is_refused():
    with registered():
        register(SPECIFICITY)  # the same one again: nothing happens
        with pytest.raises(ValueError, match="metric 'specificity' is declared twice"):
            register(Metric(**{**SPECIFICITY.__dict__, "percent": False}))
