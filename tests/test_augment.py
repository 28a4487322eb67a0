"""Tests for batched on-device augmentation (rvseg.train.augment)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rvseg.errors import ConfigError
from rvseg.train.augment import (
    AugmentConfig,
    AugmentParams,
    affine_matrices,
    apply_params,
    augment_batch,
    elastic_displacement,
    sample_params,
    to_device_generator,
)

OFF = dict(flip=False, rotate_deg=0.0, scale=(1.0, 1.0), translate=0.0, intensity=0.0, elastic=0.0)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def disk(height: int, width: int, radius: float, centre: tuple[float, float] | None = None) -> torch.Tensor:
    """(H, W) float32 disk of ``radius`` pixels about ``centre`` (row, column), default the image centre."""
    row0, col0 = centre if centre is not None else ((height - 1) / 2, (width - 1) / 2)
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    return (((rows - row0) ** 2 + (cols - col0) ** 2) <= radius**2).float()


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def rigid(batch: int, height: int, width: int, **kwargs) -> torch.Tensor:
    """Affine matrices for ``batch`` images, all with the same parameters (defaults: identity)."""
    values = dict(flip_x=False, flip_y=False, angle_rad=0.0, scale=1.0, shift=(0.0, 0.0)) | kwargs
    return affine_matrices(
        flip_x=torch.full((batch,), values["flip_x"]),
        flip_y=torch.full((batch,), values["flip_y"]),
        angle_rad=torch.full((batch,), float(values["angle_rad"])),
        scale=torch.full((batch,), float(values["scale"])),
        shift=torch.tensor([values["shift"]] * batch, dtype=torch.float32),
        height=height,
        width=width,
    )


def everyone(batch: int) -> torch.Tensor:
    return torch.ones(batch, dtype=torch.bool)


def test_identity_config_returns_inputs_unchanged():
    images, targets = torch.randn(4, 2, 12, 10), (torch.rand(4, 3, 12, 10) > 0.5).float()
    out_images, out_targets = augment_batch(images, targets, AugmentConfig(**OFF), to_device_generator(0, "cpu"))
    assert torch.equal(out_images, images) and torch.equal(out_targets, targets)


def test_forced_flips_equal_torch_flip_for_image_and_target():
    images, targets = torch.randn(2, 2, 9, 7), (torch.rand(2, 1, 9, 7) > 0.5).float()
    for flip_x, flip_y, dims in [(True, False, (3,)), (False, True, (2,)), (True, True, (2, 3))]:
        params = AugmentParams(apply=everyone(2), theta=rigid(2, 9, 7, flip_x=flip_x, flip_y=flip_y))
        out_images, out_targets = apply_params(images, targets, params)
        torch.testing.assert_close(out_images, images.flip(dims), atol=1e-5, rtol=0)
        assert torch.equal(out_targets, targets.flip(dims))


def test_flip_only_config_gives_each_of_the_four_flips_with_the_image_and_target_flipped_alike():
    images = torch.randn(64, 1, 8, 6)
    targets = (images > 0).float()
    out_images, out_targets = augment_batch(
        images, targets, AugmentConfig(**(OFF | dict(flip=True))), to_device_generator(3, "cpu")
    )
    seen = set()
    for image, target, out_image, out_target in zip(images, targets, out_images, out_targets, strict=True):
        matches = [
            dims for dims in [(), (1,), (2,), (1, 2)] if torch.allclose(out_image, image.flip(dims), atol=1e-5)
        ]
        assert len(matches) == 1
        assert torch.equal(out_target, target.flip(matches[0]))
        seen.add(matches[0])
    assert seen == {(), (1,), (2,), (1, 2)}


def test_quarter_turn_of_square_image_matches_rot90_everywhere():
    # Every pixel centre lands on a pixel centre, so even the border rows must match exactly; the
    # opposite turn (or a sheared, aspect-blind map) differs by O(1) on random data.
    images = torch.rand(2, 1, 11, 11)
    targets = (images > 0.5).float()
    params = AugmentParams(apply=everyone(2), theta=rigid(2, 11, 11, angle_rad=math.pi / 2))
    out_images, out_targets = apply_params(images, targets, params)
    torch.testing.assert_close(out_images, torch.rot90(images, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    assert torch.equal(out_targets, torch.rot90(targets, 1, dims=(2, 3)))
    assert (out_images - torch.rot90(images, -1, dims=(2, 3))).abs().max() > 0.1


def test_half_turn_of_non_square_image_equals_double_flip():
    images = torch.rand(1, 1, 128, 108)
    params = AugmentParams(apply=everyone(1), theta=rigid(1, 128, 108, angle_rad=math.pi))
    out_images, _ = apply_params(images, images, params)
    # float32 sin(pi) is ~1e-7, not 0: a few 1e-5 of bilinear leakage, versus O(1) for a wrong map.
    torch.testing.assert_close(out_images, images.flip((2, 3)), atol=1e-4, rtol=0)


def test_shift_and_zoom_move_content_by_the_stated_amounts():
    height, width = 40, 30
    blob = disk(height, width, 4.0).view(1, 1, height, width)
    # Sampling offset of +0.1 W: output pixel q shows input q + 3 columns, i.e. content moves left by 3.
    params = AugmentParams(apply=everyone(1), theta=rigid(1, height, width, shift=(0.1, 0.0)))
    _, shifted = apply_params(blob, blob, params)
    assert torch.equal(shifted, torch.roll(blob, shifts=-3, dims=3))
    params = AugmentParams(apply=everyone(1), theta=rigid(1, height, width, scale=2.0))
    _, zoomed = apply_params(blob, blob, params)
    assert zoomed.sum() / blob.sum() == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("elastic", [0.0, 3.0])
def test_targets_stay_binary_and_aligned_with_the_image(elastic):
    height, width = 64, 64
    masks = torch.stack(
        [disk(height, width, radius, (30 + shift, 34 - shift)) for radius, shift in [(8, 0), (12, 3), (16, -2)]]
    ).unsqueeze(1)
    config = AugmentConfig(intensity=0.0, elastic=elastic)
    out_images, out_targets = augment_batch(masks.clone(), masks, config, to_device_generator(7, "cpu"))
    assert set(out_targets.unique().tolist()) <= {0.0, 1.0}
    for image, target in zip(out_images, out_targets, strict=True):
        assert dice(image > 0.5, target) > 0.97
    assert not torch.equal(out_targets, masks)


def test_grey_background_targets_keep_their_values():
    height, width = 48, 40
    target = 0.5 + 0.5 * disk(height, width, 10.0)
    targets = target.expand(8, 1, height, width)
    # Zoomed in enough that no pixel comes from outside the image, so 0 cannot appear.
    config = AugmentConfig(rotate_deg=5.0, scale=(1.4, 1.5), translate=0.02, intensity=0.0, elastic=1.0)
    _, out_targets = augment_batch(torch.rand(8, 1, height, width), targets, config, to_device_generator(1, "cpu"))
    assert set(out_targets.unique().tolist()) == {0.5, 1.0}
    # Zooming out brings in outside pixels, which are background 0; still no new in-between values.
    config = AugmentConfig(scale=(0.6, 0.7), intensity=0.0)
    _, out_targets = augment_batch(torch.rand(8, 1, height, width), targets, config, to_device_generator(1, "cpu"))
    assert set(out_targets.unique().tolist()) == {0.0, 0.5, 1.0}


def test_same_seed_reproduces_and_another_seed_differs():
    images, targets = torch.randn(4, 1, 32, 24), (torch.rand(4, 2, 32, 24) > 0.5).float()
    config = AugmentConfig(elastic=2.0)
    first = augment_batch(images, targets, config, to_device_generator(5, "cpu"))
    again = augment_batch(images, targets, config, to_device_generator(5, "cpu"))
    other = augment_batch(images, targets, config, to_device_generator(6, "cpu"))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


def test_restored_generator_state_replays_the_same_batch():
    images, targets = torch.randn(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    generator = to_device_generator(11, "cpu")
    augment_batch(images, targets, AugmentConfig(), generator)
    state = generator.get_state()
    second = augment_batch(images, targets, AugmentConfig(), generator)
    generator.set_state(state)
    assert torch.equal(augment_batch(images, targets, AugmentConfig(), generator)[0], second[0])


@pytest.mark.parametrize("height, width", [(64, 64), (128, 108)])
def test_rotation_preserves_foreground_area_and_shape(height, width):
    # A centred disk is rotation invariant, so any aspect error (an ellipse) would lower the Dice.
    blob = disk(height, width, 20.0)
    targets = blob.expand(16, 1, height, width)
    config = AugmentConfig(**(OFF | dict(rotate_deg=180.0)))
    _, out_targets = augment_batch(targets.clone(), targets, config, to_device_generator(2, "cpu"))
    for target in out_targets:
        assert target.sum() / blob.sum() == pytest.approx(1.0, abs=0.03)
        assert dice(target[0], blob) > 0.97


@pytest.mark.parametrize("height, width", [(128, 108), (216, 216)])
def test_non_square_and_square_sizes_keep_shapes_and_dtypes(height, width):
    images = torch.randn(3, 2, height, width)
    targets = (torch.rand(3, 4, height, width) > 0.5).float()
    out_images, out_targets = augment_batch(images, targets, AugmentConfig(elastic=2.0), to_device_generator(0, "cpu"))
    assert out_images.shape == images.shape and out_targets.shape == targets.shape
    assert out_images.dtype == torch.float32 and torch.isfinite(out_images).all()


def test_intensity_jitter_changes_images_only_and_keeps_pixel_order():
    images = torch.rand(6, 1, 20, 18) * 500.0 + 10.0
    targets = (torch.rand(6, 2, 20, 18) > 0.5).float()
    config = AugmentConfig(**(OFF | dict(intensity=0.2)))
    out_images, out_targets = augment_batch(images, targets, config, to_device_generator(4, "cpu"))
    assert torch.equal(out_targets, targets)
    for image, out_image in zip(images, out_images, strict=True):
        assert not torch.allclose(out_image, image)
        assert torch.equal(image.flatten().argsort(), out_image.flatten().argsort())
        # Changes stay within the configured strength, relative to the image's range.
        span = image.max() - image.min()
        assert float((out_image - image).abs().max() / span) < 0.6


def test_intensity_parameters_follow_the_documented_formula():
    images = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 5)
    params = AugmentParams(
        apply=everyone(1), gamma=torch.tensor([2.0]), contrast=torch.tensor([0.5]), brightness=torch.tensor([0.1])
    )
    out_images, _ = apply_params(images, images, params)
    gamma_applied = 4.0 * (images / 4.0) ** 2  # [0, 0.25, 1, 2.25, 4]
    mean = gamma_applied.mean()
    torch.testing.assert_close(out_images, mean + 0.5 * (gamma_applied - mean) + 0.1 * 4.0)


def test_padding_takes_the_image_minimum_not_zero():
    images = torch.full((1, 1, 16, 16), -2.0)
    images[..., 6:10, 6:10] = 3.0
    config = AugmentConfig(**(OFF | dict(scale=(0.5, 0.5))))
    out_images, out_targets = augment_batch(images, torch.ones_like(images), config, to_device_generator(0, "cpu"))
    assert out_images.min() == pytest.approx(-2.0) and out_images[0, 0, 0, 0] == pytest.approx(-2.0)
    assert out_targets[0, 0, 0, 0] == 0.0 and out_targets[0, 0, 8, 8] == 1.0


def test_probability_selects_whole_images_to_leave_untouched():
    images, targets = torch.randn(32, 1, 10, 10), (torch.rand(32, 1, 10, 10) > 0.5).float()
    out_images, out_targets = augment_batch(
        images, targets, AugmentConfig(p=0.5, elastic=1.0), to_device_generator(9, "cpu")
    )
    untouched = [torch.equal(a, b) for a, b in zip(out_images, images, strict=True)]
    assert 4 <= sum(untouched) <= 28
    for same, out_target, target in zip(untouched, out_targets, targets, strict=True):
        if same:
            assert torch.equal(out_target, target)
    out_images, _ = augment_batch(images, targets, AugmentConfig(p=0.0), to_device_generator(9, "cpu"))
    assert torch.equal(out_images, images)


def test_sample_params_leaves_switched_off_transforms_empty():
    params = sample_params(3, 8, 6, AugmentConfig(**(OFF | dict(elastic=1.0))), to_device_generator(0, "cpu"))
    assert params.theta is None and params.gamma is None
    assert params.displacement.shape == (3, 8, 6, 2)
    # Control-point amplitude is 1 pixel = 2 / W normalised units in x; bicubic overshoot is small.
    assert float(params.displacement[..., 0].abs().max()) <= 1.3 * 2 / 6


def test_elastic_displacement_is_in_pixels_of_each_axis():
    field = elastic_displacement(2, 8, 6, 1.5, 4, to_device_generator(3, "cpu"))
    coarse = torch.rand((2, 2, 4, 4), generator=to_device_generator(3, "cpu"))
    pixels = 1.5 * F.interpolate(2 * coarse - 1, size=(8, 6), mode="bicubic", align_corners=False)
    # [-1, 1] spans the width in x and the height in y: one pixel is 2 / W and 2 / H units.
    torch.testing.assert_close(field, torch.stack([pixels[:, 0] * 2 / 6, pixels[:, 1] * 2 / 8], dim=-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmenting_a_cuda_batch_never_waits_for_the_device():
    images = torch.rand(4, 1, 32, 28, device="cuda")
    targets = (images > 0.5).float()
    config, generator = AugmentConfig(elastic=2.0), to_device_generator(0, "cuda")
    augment_batch(images, targets, config, generator)  # first calls may initialise the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment_batch(images, targets, config, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_runs_under_autocast_and_returns_input_dtypes(device, dtype):
    images = torch.randn(2, 1, 24, 20, device=device).to(dtype)
    targets = (torch.rand(2, 1, 24, 20, device=device) > 0.5).to(dtype)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out_images, out_targets = augment_batch(
            images, targets, AugmentConfig(elastic=1.0), to_device_generator(0, device)
        )
    assert out_images.dtype == dtype and out_targets.dtype == dtype
    assert out_images.device.type == device
    assert set(out_targets.float().unique().tolist()) <= {0.0, 1.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_cpu_warp_for_the_same_parameters():
    images = torch.rand(2, 1, 32, 28)
    params = AugmentParams(apply=everyone(2), theta=rigid(2, 32, 28, angle_rad=0.3, scale=1.1, shift=(0.02, -0.03)))
    cpu_images, cpu_targets = apply_params(images, (images > 0.5).float(), params)
    cuda_params = AugmentParams(apply=params.apply.cuda(), theta=params.theta.cuda())
    gpu_images, gpu_targets = apply_params(images.cuda(), (images.cuda() > 0.5).float(), cuda_params)
    torch.testing.assert_close(gpu_images.cpu(), cpu_images, atol=1e-4, rtol=0)
    assert (gpu_targets.cpu() != cpu_targets).float().mean() < 0.01


def test_bad_inputs_raise_clear_errors():
    generator = to_device_generator(0, "cpu")
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment_batch(torch.zeros(1, 8, 8), torch.zeros(1, 1, 8, 8), AugmentConfig(), generator)
    with pytest.raises(ValueError, match="differ"):
        augment_batch(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9), AugmentConfig(), generator)
    with pytest.raises(ValueError, match="floating point"):
        augment_batch(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.long), AugmentConfig(), generator)


@pytest.mark.parametrize(
    "field, value",
    [("scale", (1.2, 0.9)), ("scale", (0.0, 1.0)), ("rotate_deg", -1.0), ("translate", 1.0), ("intensity", 1.0),
     ("elastic", -0.5), ("elastic_grid", 1), ("p", 1.5),
     # the ranges the training options are checked against, also for direct use (NaN and inf included)
     ("rotate_deg", float("inf")), ("elastic", float("nan")), ("intensity", float("nan"))],
)
def test_config_rejects_values_out_of_range(field, value):
    with pytest.raises(ConfigError, match=f"augment.{field}"):
        AugmentConfig(**{field: value})
