"""Every backbone and strategy builds, feeds grey input the way its weights expect, and trains a step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainables.losses import bce
from trainables.models import (BACKBONES, OWN_BACKBONES, Classifier, MultiSourceClassifier, build_branch, build_model,
                               own_backbone)

CHEAP = ("resnet18", "mobilenet_v3_small", "alexnet_style")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_backbone_outputs_one_logit_per_label_and_trains_one_step(backbone):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=5, dropout=0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(4, 1, 64, 64), torch.randint(0, 2, (4, 5)).float()
    loss = bce(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 80))  # non-square too
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="expected one of .*resnet50"):
        build_model("resnet51", 5, 0.0)


def test_seed_003_network_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="alexnet_style .* has no ImageNet weights"):
        build_branch("alexnet_style", "imagenet")


def test_seed_003_network_layout():
    branch = build_branch("alexnet_style")
    convs = [m for m in branch.trunk if isinstance(m, nn.Conv2d)]
    norms = [m for m in branch.trunk if isinstance(m, nn.BatchNorm2d)]
    pools = [i for i, m in enumerate(branch.trunk) if isinstance(m, nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256] and len(norms) == 5
    assert convs[0].in_channels == 1  # grey input
    # pooling after convolutions 1, 2 and 5: a pool directly follows the 1st, 2nd and 5th conv block
    conv_at = [i for i, m in enumerate(branch.trunk) if isinstance(m, nn.Conv2d)]
    assert [sum(c < p for c in conv_at) for p in pools] == [1, 2, 5]
    dense = [m for m in branch.pool if isinstance(m, nn.Linear)]
    drops = [m.p for m in branch.pool if isinstance(m, nn.Dropout)]
    assert [d.out_features for d in dense] == [4096, 1000] and drops == [0.5, 0.5]
    assert dense[0].in_features == 1024  # what the Keras original flattened at 256 px
    assert branch.eval()(torch.rand(1, 1, 256, 256)).shape == (1, 1000)


def test_scratch_branches_take_one_channel_and_imagenet_stats_are_not_used():
    branch = build_branch("resnet18", "scratch")
    first = next(m for m in branch.trunk.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and branch.mean.numel() == 1


def test_mixed_model_concatenates_both_branches_features():
    a, b = build_branch("resnet18"), build_branch("mobilenet_v3_small")
    model = Classifier([a, b], num_classes=3, dropout=0.0).eval()
    assert model.head.in_features == a.n_features + b.n_features == 512 + 576
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = model.head(torch.cat([a(x), b(x)], dim=1))
        assert torch.allclose(model(x), expected)


def test_each_mixed_branch_normalises_for_its_own_weights():
    scratch = build_branch("resnet18", "scratch")
    imagenet_like = build_branch("resnet18", "scratch")
    imagenet_like.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imagenet_like.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    seen = {}
    scratch.trunk.register_forward_pre_hook(lambda m, inp: seen.__setitem__("scratch", inp[0]))
    imagenet_like.trunk[0] = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    imagenet_like.trunk.register_forward_pre_hook(lambda m, inp: seen.__setitem__("imagenet", inp[0]))
    x = torch.full((1, 1, 32, 32), 0.5)
    Classifier([scratch, imagenet_like], 2, 0.0).eval()(x)
    assert seen["scratch"].shape[1] == 1 and torch.allclose(seen["scratch"], torch.zeros(1))  # (0.5-0.5)/0.25
    assert seen["imagenet"].shape[1] == 3
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(seen["imagenet"][0, :, 0, 0], (0.5 - mean) / std)


def test_co_trained_model_routes_each_image_to_its_sources_head():
    torch.manual_seed(0)
    branch = build_branch("resnet18")
    # union labels [a, b, c]; source 0 has a, b; source 1 has b, c
    model = MultiSourceClassifier(branch, columns=[[0, 1], [1, 2]], num_union=3, dropout=0.0).eval()
    x = torch.rand(4, 1, 32, 32)
    source = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        logits, features = model(x, source), branch(x)
    assert torch.allclose(logits[[0, 3]][:, :2], model.heads[0](features[[0, 3]]), atol=1e-6)
    assert torch.allclose(logits[[1, 2]][:, 1:], model.heads[1](features[[1, 2]]), atol=1e-6)
    assert (logits[[0, 3], 2] == 0).all() and (logits[[1, 2], 0] == 0).all()


def test_co_trained_masked_loss_ignores_labels_a_source_lacks():
    torch.manual_seed(0)
    model = MultiSourceClassifier(build_branch("resnet18"), columns=[[0], [1]], num_union=2, dropout=0.0)
    x, source = torch.rand(4, 1, 32, 32), torch.tensor([0, 0, 1, 1])
    targets = torch.tensor([[1.0, 0], [0, 0], [0, 1], [0, 0]])
    mask = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    bce(model(x, source), targets, mask).backward()
    # source 1's head only sees source 1's images: its gradient is that of their label-1 loss alone
    grad_1 = model.heads[1].weight.grad.clone()
    model.zero_grad()
    logits = model(x, source)
    (bce(logits[2:, 1:], targets[2:, 1:]) * 2 / 4).backward()
    assert torch.allclose(grad_1, model.heads[1].weight.grad, atol=1e-6)


@pytest.mark.parametrize("backbone", CHEAP)
def test_models_are_deterministic_given_the_seed(backbone):
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build_model(backbone, 2, 0.0).eval()
        with torch.no_grad():
            outputs.append(model(torch.ones(1, 1, 32, 32)))
    assert torch.equal(*outputs)
    assert np.isfinite(outputs[0].numpy()).all()


def test_a_classifier_with_an_input_size_feeds_its_branches_images_of_that_side():
    model = Classifier([build_branch("resnet18", "scratch")], 2, 0.0, input_size=24).eval()
    seen = {}
    model.branches[0].trunk[0].register_forward_pre_hook(lambda m, inp: seen.__setitem__("shape", inp[0].shape))
    model(torch.rand(3, 1, 32, 32))
    assert seen["shape"] == (3, 1, 24, 24)
    model.input_size = None
    model(torch.rand(3, 1, 32, 32))
    assert seen["shape"] == (3, 1, 32, 32)


@pytest.fixture
def toy_backbone():
    """A network of our own, registered as docs/design.md §5 ("A backbone") says, for one test."""
    @own_backbone("toy_net", "a test's two-layer network")
    def _toy_net():
        return (nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    yield "toy_net"
    OWN_BACKBONES.pop("toy_net")


def test_a_backbone_registered_with_one_function_is_in_the_spec_and_trains_one_epoch(toy_backbone, prepared_dir):
    """The one step a network of our own takes: a spec's grid accepts it, and a fit trains and evaluates it.
    About 1 s (24 patients at 32 px, one epoch of a 4-filter network)."""
    from sweeper.spec import parse_spec
    from tests.helpers import fit_config, fit_reports, spec_text

    assert "toy_net" in BACKBONES and "toy_net" in sorted(BACKBONES)
    assert parse_spec(spec_text("toy", grid={"backbone": ["toy_net"], "recipe": ["scratch"]})).grid.backbone == ["toy_net"]
    branch = build_branch("toy_net")
    assert branch.n_features == 4 and branch.mean.numel() == 1  # one grey channel, centred as scratch branches are
    reports = fit_reports(fit_config(prepared_dir, backbone="toy_net", epochs=1))
    final, state = reports[-1]
    assert final["completed"] and final["epoch"] == 1 and np.isfinite(final["train_loss"])
    assert state["best_model"]["branches.0.trunk.0.weight"].shape == (4, 1, 3, 3)
    with pytest.raises(ValueError, match="backbone 'toy_net' is declared twice"):
        own_backbone("toy_net", "another")(lambda: None)
