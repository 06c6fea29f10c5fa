"""Per-image random augmentation of grey chest X-ray batches, on the batch's own device.

torchvision.transforms.v2 transforms draw ONE set of parameters per call, so a batch would get
the same rotation, flip, ... for every image. Here each image draws its own parameters, and all
images' affine transforms run in one affine_grid + grid_sample call on the images' device (GPU
when there is one), so the CPU never limits the training step. Geometry matches
torchvision.transforms.v2.functional.affine and v2.RandomAffine (inverse_affine_matrix: translate in
pixels, centre at the image centre; bilinear, fill 0).

Randomness: all parameters are drawn on the CPU from the caller's generator, always in the same
order and amount, then moved to the device, so a resumed run is bit-identical. Noise is drawn on
the images' device from a device generator seeded by one draw of that CPU generator (no large
tensor crosses from the CPU): reproducible per device type; CPU and CUDA noise streams differ.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as TF

_PROBABILITIES = ("rotate_p", "shift_p", "shear_p", "zoom_p", "rescale_p", "hflip_p", "vflip_p", "noise_p")


def _pair(low_min: float, strict: bool = False) -> Callable[[tuple], bool]:
    def ok(r: tuple) -> bool:
        return len(r) == 2 and (r[0] > low_min if strict else r[0] >= low_min) and r[0] <= r[1] < math.inf
    return ok


_RULES: dict[str, tuple[Callable, str]] = {
    "rotate_degrees": (lambda v: 0.0 <= v <= 180.0, "degrees in [0, 180]"),
    "shift_fraction": (lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]"),
    "shear_degrees": (lambda v: 0.0 <= v < 90.0, "degrees in [0, 90)"),
    "zoom_range": (_pair(0.0, strict=True), "a (low, high) pair with 0 < low <= high"),
    "gain_range": (_pair(0.0), "a (low, high) pair with 0 <= low <= high"),
    "offset_range": (_pair(-math.inf, strict=True), "a (low, high) pair with low <= high"),
    "noise_sigma": (_pair(0.0), "a (low, high) pair with 0 <= low <= high"),
    **{p: (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]") for p in _PROBABILITIES},
}


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (0 disables) and ranges; defaults are mild, chest-X-ray-safe settings."""

    rotate_p: float = 0.5
    rotate_degrees: float = 10.0  # uniform in [-d, d]
    shift_p: float = 0.5
    shift_fraction: float = 0.05  # of width / height, uniform in [-f, f], not rounded to pixels
    shear_p: float = 0.3
    shear_degrees: float = 5.0  # x shear only, uniform in [-d, d] (like v2.RandomAffine(shear=d))
    zoom_p: float = 0.5
    zoom_range: tuple[float, float] = (0.9, 1.1)
    rescale_p: float = 0.5
    gain_range: tuple[float, float] = (0.9, 1.1)
    offset_range: tuple[float, float] = (-0.05, 0.05)
    hflip_p: float = 0.0  # flips move the heart and other lateralised findings: off by default
    vflip_p: float = 0.0
    noise_p: float = 0.3
    noise_sigma: tuple[float, float] = (0.0, 0.02)

    def __post_init__(self) -> None:
        for name, (ok, expected) in _RULES.items():
            value = getattr(self, name)
            try:
                valid = bool(ok(value))
            except TypeError:
                valid = False
            if not valid:
                raise ValueError(f"AugmentConfig.{name}={value!r}: expected {expected}")


NO_AUGMENT = AugmentConfig(**{p: 0.0 for p in _PROBABILITIES})


def inverse_affine_matrix(angle: float, translate: list[float], scale: float, shear: list[float]) -> list[float]:
    """The 2 x 3 matrix (row-major, 6 floats) mapping an output pixel to where it is sampled in the input,
    in torchvision's convention for v2.functional.affine and v2.RandomAffine about the image centre.

    Coordinates: pixels, x to the right, y DOWN, origin at the image centre. The forward map is
    M = T(translate) . R(angle) . S(scale) . SHy(shear[1]) . SHx(shear[0]), with
    R(a) = [[cos a, -sin a], [sin a, cos a]] (y down: a positive angle turns the image clockwise as
    displayed, the opposite of torchvision's rotate()), SHx(s) = [[1, -tan s], [0, 1]],
    SHy(s) = [[1, 0], [-tan s, 1]], S(s) = s * I and T adding translate (x, y) in pixels; angle and shear
    in degrees. R . SHy . SHx has determinant 1, so M's linear part inverts as its adjugate over scale.
    The same formulas as torchvision's own (private) helper, evaluated in the same order.
    """
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    tan_sx = math.tan(sx)
    a = math.cos(rot - sy) / math.cos(sy)  # R . SHy . SHx = [[a, b], [c, d]]
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * tan_sx
    m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    tx, ty = translate
    m[2] = 0.0 - m[0] * tx - m[1] * ty  # M^-1 = (R S SHy SHx)^-1 . T^-1 (0.0 - x: never -0.0)
    m[5] = 0.0 - m[3] * tx - m[4] * ty
    return m


def affine_thetas(angle, translate, scale, shear, height: int, width: int) -> torch.Tensor:
    """(N, 2, 3) float64 affine_grid thetas reproducing torchvision's affine per image.

    angle, scale: (N,); translate: (N, 2) pixels; shear: (N, 2) degrees; all CPU tensors.
    """
    rows = [inverse_affine_matrix(a, t, s, sh) for a, t, s, sh in
            zip(angle.tolist(), translate.tolist(), scale.tolist(), shear.tolist())]
    m = torch.tensor(rows, dtype=torch.float64).reshape(-1, 2, 3)
    # torchvision's matrix maps centred pixel coordinates; affine_grid (align_corners=False) uses
    # them divided by half the size: theta = S^-1 M S with S = diag(W/2, H/2, 1).
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    return torch.cat([m[:, :, :2] * half / half[:, None], m[:, :, 2:] / half[:, None]], dim=2)


def batched_affine(images: torch.Tensor, angle, translate, scale, shear) -> torch.Tensor:
    """Each image its own affine (parameters as in affine_thetas), in one grid_sample call."""
    dtype = torch.promote_types(images.dtype, torch.float32)
    theta = affine_thetas(angle, translate, scale, shear, *images.shape[-2:])
    grid = nnf.affine_grid(_to_device(theta.to(dtype), images.device), list(images.shape), align_corners=False)
    out = nnf.grid_sample(images.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(images.dtype)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on device; for CUDA staged in pinned memory so the host does not wait for queued work."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _on_subset(x: torch.Tensor, mask: torch.Tensor, fn: Callable) -> torch.Tensor:
    """x with fn(x[sel], sel) written into the images selected by the CPU mask; out of place."""
    sel = mask.nonzero().flatten()
    if sel.numel() == 0:
        return x
    dev_sel = _to_device(sel, x.device)
    return x.index_copy(0, dev_sel, fn(x.index_select(0, dev_sel), sel))


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _to_device(values.to(x.dtype), x.device).view(-1, 1, 1, 1)


def _add_noise(x: torch.Tensor, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian noise drawn on x's device from a device generator with the given seed."""
    device_gen = torch.Generator(device=x.device)
    device_gen.manual_seed(seed)
    z = torch.randn(x.shape, generator=device_gen, device=x.device, dtype=x.dtype)
    return (x + _per_image(sigma, x) * z).clamp(0.0, 1.0)


def _draw(c: AugmentConfig, n: int, h: int, w: int, g: torch.Generator) -> dict:
    """Every per-image parameter, on the CPU, always in the same order and amount."""
    def hit(p: float) -> torch.Tensor:
        return torch.rand(n, generator=g, dtype=torch.float64) < p

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=g, dtype=torch.float64)

    zero = torch.zeros(n, dtype=torch.float64)
    rot, shift, shear, zoom = hit(c.rotate_p), hit(c.shift_p), hit(c.shear_p), hit(c.zoom_p)
    pixels = uniform(-c.shift_fraction, c.shift_fraction, 2) * torch.tensor([w, h], dtype=torch.float64)
    shear_x = torch.where(shear, uniform(-c.shear_degrees, c.shear_degrees), zero)
    return dict(
        geometric=rot | shift | shear | zoom,
        angle=torch.where(rot, uniform(-c.rotate_degrees, c.rotate_degrees), zero),
        translate=torch.where(shift[:, None], pixels, 0.0),
        shear=torch.stack([shear_x, zero], dim=1),
        scale=torch.where(zoom, uniform(*c.zoom_range), 1.0),
        hflip=hit(c.hflip_p), vflip=hit(c.vflip_p), rescale=hit(c.rescale_p), noise=hit(c.noise_p),
        gain=uniform(*c.gain_range), offset=uniform(*c.offset_range), sigma=uniform(*c.noise_sigma),
        noise_seed=int(torch.randint(0, 2**62, (1,), generator=g)),
    )


class BatchAugment:
    """Build once (__init__), call per batch (__call__), like torchvision's presets."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        self.active = any(getattr(config, p) > 0 for p in _PROBABILITIES)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images: (B, 1, H, W) in [0, 1] on any device -> same shape/dtype/device (input never modified)."""
        if not self.active:
            return images
        d = _draw(self.config, images.shape[0], *images.shape[-2:], generator)
        x = images.to(torch.promote_types(images.dtype, torch.float32))  # never modified in place
        x = _on_subset(x, d["hflip"], lambda s, _: TF.horizontal_flip(s))
        x = _on_subset(x, d["vflip"], lambda s, _: TF.vertical_flip(s))
        x = _on_subset(x, d["geometric"], lambda s, i: batched_affine(
            s, d["angle"][i], d["translate"][i], d["scale"][i], d["shear"][i]))
        x = _on_subset(x, d["rescale"], lambda s, i: (
            s * _per_image(d["gain"][i], s) + _per_image(d["offset"][i], s)).clamp(0.0, 1.0))
        x = _on_subset(x, d["noise"], lambda s, i: _add_noise(s, d["sigma"][i], d["noise_seed"]))
        return x.to(images.dtype)
