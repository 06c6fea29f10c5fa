"""What a trained model looks at: Grad-CAM heatmaps per label and branch, and layer outputs.

Grad-CAM comes from Captum (`LayerGradCam` on each branch's convolutional trunk, upsampled to the
input with `LayerAttribution.interpolate`); a mixed dual-backbone model gets one heatmap per
branch. Layer outputs (seed 003's per-layer view) are a few of each trunk's stages, their first
channels tiled by torchvision's `make_grid`.
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on a cluster head or in CI
import numpy as np  # noqa: E402
import torch  # noqa: E402
from captum.attr import LayerAttribution, LayerGradCam  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from trainables.models import Classifier  # noqa: E402

LAYERS_SHOWN = 6  # stages per branch in the layer view
CHANNELS_SHOWN = 16  # channels per stage


MIN_CAM_SIDE = 7  # Grad-CAM's cells: a 224 px ImageNet input gives 7 x 7 at the last convolution


def cam_layers(model: Classifier, image: torch.Tensor) -> list[torch.nn.Module]:
    """Per branch, the layer Grad-CAM looks at: the trunk's output, or, where that is coarser than
    MIN_CAM_SIDE cells (small inputs: resnet18's is 2 x 2 at 64 px), the deepest stage that is not."""
    sides: dict[torch.nn.Module, int] = {}
    per_branch = [[*(m for _, m in branch_stages(b)), b.trunk] for b in model.branches]
    hooks = [m.register_forward_hook(lambda mod, _i, out: sides.__setitem__(mod, min(out.shape[-2:])))
             for ms in per_branch for m in ms]
    try:
        with torch.no_grad():
            model.eval()(image)
    finally:
        for hook in hooks:
            hook.remove()
    chosen = []
    for modules in per_branch:
        fine = [m for m in modules if sides.get(m, 0) >= MIN_CAM_SIDE]
        chosen.append(fine[-1] if fine else modules[0])
    return chosen


def grad_cam(model: Classifier, image: torch.Tensor, label: int) -> list[np.ndarray]:
    """One heatmap in [0, 1] per branch, at the input's size, for `label`'s logit. `image`: (1, 1, H, W)."""
    model.eval()
    maps = []
    for layer in cam_layers(model, image):
        cam = LayerGradCam(model, layer).attribute(image, target=label, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(image.shape[-2:]), interpolate_mode="bilinear")
        heat = cam[0, 0].detach().float().cpu().numpy()
        top = heat.max()
        maps.append(heat / top if top > 0 else heat)  # all zero: nothing in this branch pushes the label up
    return maps


def heatmap_overlays(model: Classifier, image: torch.Tensor, label: int) -> list[np.ndarray]:
    """`label`'s Grad-CAM per branch over the input (1, 1, H, W), each as RGB uint8."""
    grey = image[0, 0].detach().float().cpu().numpy()
    return [overlay(grey, heat) for heat in grad_cam(model, image, label)]


def overlay(grey: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The input (grey, [0, 1]) under the heatmap in the jet colour map, as RGB uint8."""
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    rgb = (1 - alpha) * np.repeat(grey[..., None], 3, axis=2) + alpha * colour
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def branch_stages(branch) -> list[tuple[str, torch.nn.Module]]:
    """A trunk's stages in order, named by their path under the trunk (a trunk wrapping one Sequential,
    as DenseNet's does, is looked into)."""
    prefix, trunk = "trunk", branch.trunk
    children = list(trunk.named_children())
    if len(children) <= 2 and isinstance(children[0][1], torch.nn.Sequential):
        prefix, trunk = f"{prefix}.{children[0][0]}", children[0][1]
        children = list(trunk.named_children())
    return [(f"{prefix}.{name}", module) for name, module in children]


def stages(model: Classifier) -> list[tuple[str, torch.nn.Module]]:
    """Up to LAYERS_SHOWN evenly spaced stages of each branch's trunk, named by their path in the model."""
    chosen = []
    for b, branch in enumerate(model.branches):
        children = branch_stages(branch)
        picks = np.unique(np.linspace(0, len(children) - 1, min(LAYERS_SHOWN, len(children))).round().astype(int))
        chosen += [(f"branches.{b}.{children[i][0]}", children[i][1]) for i in picks]
    return chosen


@torch.no_grad()
def layer_outputs(model: Classifier, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """{stage name: its output for `image`, (channels, h, w)} for the stages `stages` picks."""
    model.eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out))
             for name, module in stages(model)]
    try:
        model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: out[0].float().cpu() for name, out in seen.items() if out.dim() == 4}


def layer_grid(output: torch.Tensor) -> np.ndarray:
    """The first CHANNELS_SHOWN channels of one stage's output, each scaled to its own range, tiled."""
    channels = output[:CHANNELS_SHOWN].unsqueeze(1)
    grid = make_grid(channels, nrow=int(np.ceil(np.sqrt(len(channels)))), normalize=True, scale_each=True,
                     padding=1, pad_value=1.0)
    return (grid[0].numpy() * 255).round().astype(np.uint8)


def safe_name(text: str) -> str:
    """A label or file name as part of a file name (label names come from user files)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "_"


def write_png(pixels: np.ndarray, path: Path, scale_to: int = 0) -> Path:
    """Write a grey or RGB uint8 image; small ones enlarged (nearest) to `scale_to` px to be seen."""
    picture = Image.fromarray(pixels)
    if scale_to and max(picture.size) < scale_to:
        factor = scale_to // max(picture.size)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
