"""Per-image batch augmentation: torchvision's affine convention, independence, probabilities, RNG."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from trainables.augment import NO_AUGMENT, AugmentConfig, BatchAugment, batched_affine, inverse_affine_matrix

OFF = {p: 0.0 for p in ("rotate_p", "shift_p", "shear_p", "zoom_p", "rescale_p", "hflip_p", "vflip_p", "noise_p")}


def only(**kwargs) -> AugmentConfig:
    """A config with every augmentation off except the given fields."""
    return AugmentConfig(**{**OFF, **kwargs})


def smooth_image(h: int = 40, w: int = 56, dtype=torch.float32) -> torch.Tensor:
    """A (1, h, w) asymmetric image in [0, 1]: no mirror symmetry, smooth enough for bilinear checks."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64),
                          torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    img = 0.5 + 0.3 * torch.sin(7 * x + 3 * y * y) * torch.cos(5 * y) + 0.15 * x - 0.1 * y
    return img.clamp(0, 1).to(dtype)[None]


def batch(n: int, h: int = 32, w: int = 32, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("h, w", [(48, 48), (40, 56)])
def test_batched_affine_matches_torchvision_affine(h, w):
    img = smooth_image(h, w)
    params = [(12.5, [3.25, -2.0], 1.08, [4.0, 0.0]), (-7.0, [-1.5, 2.75], 0.92, [-3.0, 2.5])]
    out = batched_affine(torch.stack([img, img]),
                         torch.tensor([p[0] for p in params], dtype=torch.float64),
                         torch.tensor([p[1] for p in params], dtype=torch.float64),
                         torch.tensor([p[2] for p in params], dtype=torch.float64),
                         torch.tensor([p[3] for p in params], dtype=torch.float64))
    for k, (angle, translate, scale, shear) in enumerate(params):
        expected = TF.affine(img, angle=angle, translate=translate, scale=scale, shear=shear,
                             interpolation=InterpolationMode.BILINEAR)
        assert not torch.allclose(expected, img, atol=1e-2)  # the transform really does something
        assert (out[k] - expected).abs().max().item() < 1e-5



def _one_per_image(params: list[tuple]) -> list[torch.Tensor]:
    """(angle, translate, scale, shear) per image -> the four batched_affine tensors."""
    return [torch.tensor([p[i] for p in params], dtype=torch.float64) for i in range(4)]


def test_own_inverse_matrix_warps_as_torchvisions_public_affine_for_each_parameter_and_all_at_once():
    img = smooth_image(36, 60)  # not square: x and y scale differently in affine_grid's coordinates
    params = [(25.0, [0.0, 0.0], 1.0, [0.0, 0.0]), (-160.0, [0.0, 0.0], 1.0, [0.0, 0.0]),
              (0.0, [6.5, 0.0], 1.0, [0.0, 0.0]), (0.0, [0.0, -4.25], 1.0, [0.0, 0.0]),
              (0.0, [0.0, 0.0], 0.7, [0.0, 0.0]), (0.0, [0.0, 0.0], 1.3, [0.0, 0.0]),
              (0.0, [0.0, 0.0], 1.0, [18.0, 0.0]), (0.0, [0.0, 0.0], 1.0, [0.0, -14.0]),
              (33.0, [-5.0, 3.5], 0.8, [-21.0, 11.0])]
    out = batched_affine(img.expand(len(params), 1, 36, 60), *_one_per_image(params))
    for k, (angle, translate, scale, shear) in enumerate(params):
        expected = TF.affine(img, angle=angle, translate=translate, scale=scale, shear=shear,
                             interpolation=InterpolationMode.BILINEAR)
        assert not torch.allclose(expected, img, atol=1e-2), k
        assert (out[k] - expected).abs().max().item() < 1e-5, (k, angle, translate, scale, shear)


def test_a_positive_angle_turns_the_image_clockwise_as_displayed_unlike_rotate():
    img = torch.zeros(1, 32, 32)
    img[0, 14:18, 24:30] = 1.0  # a bar right of the centre
    out = batched_affine(img[None], *_one_per_image([(90.0, [0.0, 0.0], 1.0, [0.0, 0.0])]))[0]
    assert torch.allclose(out[0, 24:30, 14:18], torch.ones(6, 4), atol=1e-5)  # now below it (y points down)
    assert abs(out.sum().item() - img.sum().item()) < 1e-4
    smooth = smooth_image(40, 56)
    turned = batched_affine(smooth[None], *_one_per_image([(17.0, [0.0, 0.0], 1.0, [0.0, 0.0])]))[0]
    expected = TF.rotate(smooth, -17.0, interpolation=InterpolationMode.BILINEAR)  # rotate(): counter-clockwise
    assert (turned - expected).abs().max().item() < 1e-5


def test_inverse_affine_matrix_inverts_the_forward_map_its_docstring_states():
    def forward(angle, translate, scale, shear) -> torch.Tensor:
        a, sx, sy = (torch.deg2rad(torch.tensor(v, dtype=torch.float64)) for v in (angle, *shear))
        rotation = torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
        shear_x = torch.tensor([[1.0, -sx.tan()], [0.0, 1.0]], dtype=torch.float64)
        shear_y = torch.tensor([[1.0, 0.0], [-sy.tan(), 1.0]], dtype=torch.float64)
        m = torch.eye(3, dtype=torch.float64)
        m[:2, :2] = rotation @ (scale * torch.eye(2, dtype=torch.float64)) @ shear_y @ shear_x
        m[:2, 2] = torch.tensor(translate, dtype=torch.float64)
        return m

    for params in [(12.5, [3.25, -2.0], 1.08, [4.0, 0.0]), (-120.0, [-7.0, 9.5], 0.6, [-25.0, 30.0])]:
        inverse = torch.eye(3, dtype=torch.float64)
        inverse[:2] = torch.tensor(inverse_affine_matrix(*params), dtype=torch.float64).reshape(2, 3)
        torch.testing.assert_close(inverse @ forward(*params), torch.eye(3, dtype=torch.float64),
                                   atol=1e-12, rtol=0)

def test_each_image_gets_its_own_draw():
    images = smooth_image(32, 32).expand(16, 1, 32, 32)
    out = BatchAugment(only(rotate_p=1.0))(images, gen())
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat, p=float("inf"))
    distances.fill_diagonal_(float("inf"))
    assert (distances.min(dim=1).values > 1e-3).sum() >= 15  # (nearly) all images pairwise different


@pytest.mark.parametrize("field, dims", [("hflip_p", [-1]), ("vflip_p", [-2])])
def test_probability_one_flips_every_image_exactly(field, dims):
    images = batch(8, 32, 48)
    assert torch.equal(BatchAugment(only(**{field: 1.0}))(images, gen()), torch.flip(images, dims))


def test_flip_probability_is_honoured_per_image():
    images = batch(2000, 32, 32)
    out = BatchAugment(only(hflip_p=0.5))(images, gen(1))
    flipped = (out == torch.flip(images, [-1])).flatten(1).all(1)
    untouched = (out == images).flatten(1).all(1)
    assert torch.all(flipped ^ untouched)  # each image is exactly one of the two
    assert 0.4 < flipped.float().mean().item() < 0.6


def test_images_not_drawn_are_left_bit_identical():
    images = batch(400, 32, 32)
    out = BatchAugment(only(rotate_p=0.5, rescale_p=0.0, noise_p=0.0))(images, gen(2))
    untouched = (out == images).flatten(1).all(1)  # rotated images are resampled, so never bit-identical
    assert 0.4 < untouched.float().mean().item() < 0.6


def test_rescale_and_noise_do_what_they_say():
    images = torch.full((64, 1, 32, 32), 0.4)
    rescaled = BatchAugment(only(rescale_p=1.0, gain_range=(2.0, 2.0), offset_range=(0.1, 0.1)))(images, gen())
    assert torch.allclose(rescaled, torch.full_like(images, 0.9))
    noisy = BatchAugment(only(noise_p=1.0, noise_sigma=(0.05, 0.05)))(images, gen())
    residual = (noisy - images).flatten(1)
    assert residual.std(dim=1).sub(0.05).abs().max().item() < 0.01
    assert residual.mean().abs().item() < 0.005


def test_same_seed_same_output_different_seed_different_output():
    images = batch(32, 32, 32)
    aug = BatchAugment(AugmentConfig(hflip_p=0.5, vflip_p=0.5))
    assert torch.equal(aug(images, gen(7)), aug(images, gen(7)))
    assert not torch.equal(aug(images, gen(7)), aug(images, gen(8)))


def test_generator_advances_so_consecutive_batches_differ():
    images = batch(8, 32, 32)
    g = gen(3)
    aug = BatchAugment(only(rotate_p=1.0))
    assert not torch.equal(aug(images, g), aug(images, g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h, w", [(32, 32), (40, 64)])
def test_output_range_shape_dtype_device_and_input_untouched(dtype, h, w):
    images = batch(16, h, w, dtype=dtype)
    before = images.clone()
    strong = AugmentConfig(rotate_p=1, shift_p=1, shear_p=1, zoom_p=1, rescale_p=1, hflip_p=0.5, vflip_p=0.5,
                           noise_p=1, gain_range=(0.5, 2.0), offset_range=(-0.3, 0.3), noise_sigma=(0.1, 0.2))
    out = BatchAugment(strong)(images, gen())
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert torch.equal(images, before)
    assert not torch.equal(out, images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batch_stays_on_device_and_is_reproducible():
    images = batch(16, 32, 48).cuda()
    aug = BatchAugment(AugmentConfig(noise_p=1.0, hflip_p=0.5))
    out = aug(images, gen(5))
    assert out.device == images.device and out.dtype == images.dtype
    assert torch.equal(out, aug(images, gen(5)))


@pytest.mark.parametrize("kwargs, field", [
    ({"rotate_p": 1.5}, "rotate_p"),
    ({"noise_p": -0.1}, "noise_p"),
    ({"rotate_degrees": -1.0}, "rotate_degrees"),
    ({"shift_fraction": -0.05}, "shift_fraction"),
    ({"shear_degrees": 90.0}, "shear_degrees"),
    ({"zoom_range": (1.1, 0.9)}, "zoom_range"),
    ({"zoom_range": (0.0, 1.0)}, "zoom_range"),
    ({"gain_range": (1.2, 0.8)}, "gain_range"),
    ({"offset_range": (0.1, -0.1)}, "offset_range"),
    ({"noise_sigma": (-0.01, 0.02)}, "noise_sigma"),
    ({"noise_sigma": (0.01,)}, "noise_sigma"),
])
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**kwargs)


def test_no_augment_returns_input_and_leaves_generator_alone():
    images = batch(4, 32, 32)
    g = gen(11)
    state = g.get_state()
    assert BatchAugment(NO_AUGMENT)(images, g) is images
    assert torch.equal(g.get_state(), state)
    assert BatchAugment(only())(images, g) is images
