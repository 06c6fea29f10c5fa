"""Grad-CAM heatmaps and layer outputs: the heatmap of a learned finding lies where the phantom drew it,
and every backbone, the mixed two-branch model included, can be explained."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.dataset import PreparedDataset
from trainables.explain import MIN_CAM_SIDE, grad_cam, layer_grid, layer_outputs, overlay
from trainables.models import BACKBONES, Classifier, build_branch
from trainables.predict import TrainedModel


def test_the_heatmap_of_a_learned_big_heart_lies_over_the_heart(learned_run):
    """The phantom draws cardiac hypertrophy as a heart 1.4-1.6 times its size: an ellipse centred at
    (0.63, about 0.55) of the film's height and width, radii about 0.17 and 0.18 (phantom.anatomy)."""
    root, final, state = learned_run
    data = PreparedDataset(root)
    k = data.label_names.index("cardiac hypertrophy")
    assert final["test_auc_per_class"][k] > 0.9  # learned: what it looks at means something
    model = TrainedModel.from_state(state, "cpu")
    test = data.split(0, 0.2, 0).test
    positives = [i for i in test if data.labels[i, k] == 1]
    side = data.images.shape[1]
    y, x = np.mgrid[0:side, 0:side] / side
    heart = ((y - 0.63) / 0.17) ** 2 + ((x - 0.55) / 0.18) ** 2 <= 1
    inside_over_outside, centres = [], []
    for i in positives:
        (heat,) = grad_cam(model.model, model.tensor(data.images[i]), k)
        assert heat.shape == (side, side) and heat.min() >= 0 and heat.max() == pytest.approx(1)
        inside_over_outside.append(heat[heart].mean() / heat[~heart].mean())
        centres.append(((heat * y).sum() / heat.sum(), (heat * x).sum() / heat.sum()))
    assert len(positives) >= 10
    # heat spread evenly would give 1; measured 1.5 (94% of films above 1) since the folds balance image-level
    # prevalence and batch-norm recalibration weighs batches by their images (3 before: one training outcome)
    assert np.median(inside_over_outside) > 1.3 and np.mean(np.array(inside_over_outside) > 1) >= 0.8, \
        inside_over_outside
    cy, cx = np.mean(centres, axis=0)
    assert ((cy - 0.63) / 0.17) ** 2 + ((cx - 0.55) / 0.18) ** 2 < 0.5, (cy, cx)  # the centre of the heat: the heart


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_and_the_mixed_model_can_be_explained(backbone):
    torch.manual_seed(0)
    single = Classifier([build_branch(backbone, "scratch")], 3, 0.0)
    mixed = Classifier([build_branch(backbone, "scratch"), build_branch(backbone, "scratch")], 3, 0.0)
    image = torch.rand(1, 1, 64, 64)
    for model, branches in ((single, 1), (mixed, 2)):
        heats = grad_cam(model, image, 2)
        assert len(heats) == branches and all(h.shape == (64, 64) and np.isfinite(h).all() for h in heats)
        outputs = layer_outputs(model, image)
        assert len(outputs) >= 2 * branches and {name.split(".")[1] for name in outputs} == {
            str(b) for b in range(branches)}
        grids = [layer_grid(o) for o in outputs.values()]
        assert all(g.dtype == np.uint8 and g.ndim == 2 for g in grids)
    assert overlay(np.zeros((64, 64)), heats[0]).shape == (64, 64, 3)


def test_grad_cam_looks_at_a_fine_enough_layer_on_small_inputs():
    """resnet18's last convolution is 2 x 2 at 64 px: too coarse to say where; an earlier stage is used."""
    from trainables.explain import cam_layers

    model = Classifier([build_branch("resnet18", "scratch")], 2, 0.0)
    sides = {}
    (layer,) = cam_layers(model, torch.rand(1, 1, 64, 64))
    layer.register_forward_hook(lambda _m, _i, out: sides.update(side=out.shape[-1]))  # None: output unchanged
    model(torch.rand(1, 1, 64, 64))
    assert sides["side"] >= MIN_CAM_SIDE and layer is not model.branches[0].trunk
    (layer,) = cam_layers(model, torch.rand(1, 1, 512, 512))
    assert layer is model.branches[0].trunk  # 16 x 16 at 512 px: the usual last layer


def test_the_reports_examples_are_the_most_right_and_most_wrong_for_the_most_common_label():
    import pandas as pd
    from types import SimpleNamespace

    from sweeper.explain_sections import examples

    rows = [("a", 0.9, 1), ("b", 0.6, 1), ("c", 0.2, 1), ("d", 0.1, 1), ("e", 0.8, 0), ("f", 0.3, 0), ("g", 0.05, 0)]
    frame = pd.DataFrame([(k, "Effusion", p, t) for k, p, t in rows] + [(k, "Hernia", 0.5, 0) for k, _, _ in rows],
                         columns=["image_key", "class_name", "prob", "target"])
    model = SimpleNamespace(label_names=["Hernia", "Effusion"], thresholds=np.array([0.5, 0.5]))
    label, picked = examples(frame, model)  # Hernia has no positives: not a label to explain
    assert label == "Effusion"
    assert picked == [("true positive", "a", 0.9), ("false negative", "d", 0.1), ("false positive", "e", 0.8),
                      ("true negative", "g", 0.05)]
