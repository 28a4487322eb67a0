"""Batched, on-device data augmentation for training.

The training loop keeps the whole prepared set on the training device, so augmentation runs there
too, on whole mini-batches, in a handful of tensor ops and without any CPU data loader.

**Geometry.** Flips, rotation, isotropic zoom and translation are composed into one affine map per
image; an optional smooth elastic displacement is added to the same sampling grid, so each tensor is
resampled exactly once (one ``F.grid_sample`` call for the images, one for the targets). The map is
built in pixel units about the image centre, so a rotation of a non-square image stays a rotation
(circles stay circles) and flips and multiples of 90 degrees (on square images) land exactly on
pixel centres. Resampling uses ``align_corners=False`` throughout.

- Images are sampled **bilinearly**; pixels that come from outside the image take the image's own
  minimum (its background), which is right both for raw intensities and for z-scored ones, where
  zero would be a mid-grey.
- Targets are sampled with **nearest** neighbour and zero padding (outside the image is background),
  so every output value is one of the input values: binary masks stay binary, and soft targets
  such as 0.5 / 1 keep exactly those values. Nearest sampling shifts a boundary by at most half a
  pixel against the bilinear image, which is far below annotation noise.

**Intensity** (images only, per image, after the warp), with ``i = config.intensity``:

1. gamma ``g ~ U[1 - i, 1 + i]`` on the image min-max normalised to [0, 1], mapped back to its
   original range (so gamma changes the shape of the histogram, not its range);
2. contrast ``c ~ U[1 - i, 1 + i]``: scale about the image mean;
3. brightness ``b ~ U[-i, i]``: add ``b`` times the image's intensity range.

All three are increasing maps, so the order of pixel intensities within an image never changes.

**Randomness** comes only from the ``torch.Generator`` passed in, which must live on the tensors'
device: a seeded run is reproducible and a resumed run can restore the generator state.

**Precision.** Everything is computed in float32 with autocast disabled (bf16 sampling coordinates
would be off by a fraction of a pixel); results are returned in the inputs' dtypes, so the function
behaves the same inside and outside ``torch.autocast``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rvseg.errors import ConfigError
from rvseg.train.config import AUGMENT_RANGES

#: Columns of the per-image uniform draws, in the order they are drawn. Every batch draws all of
#: them whatever the config, so switching one transform off does not change the others' values.
_DRAWS = ("apply", "flip_x", "flip_y", "angle", "scale", "shift_x", "shift_y", "gamma", "contrast", "brightness")

#: Guards the min-max normalisation of constant images.
_EPS = 1e-6


@dataclass
class AugmentConfig:
    """What :func:`augment_batch` may do to each image.

    Attributes:
        flip: random horizontal and vertical flips, each with probability 0.5.
        rotate_deg: rotation angle drawn uniformly from ``[-rotate_deg, rotate_deg]`` degrees.
        scale: isotropic zoom drawn uniformly from ``[scale[0], scale[1]]`` (> 1 enlarges the content).
        translate: shift along each axis drawn uniformly from ``[-translate, translate]`` times
            that axis's size.
        intensity: strength ``i`` in [0, 1) of the intensity jitter (gamma and contrast in
            ``[1 - i, 1 + i]``, brightness shift of ``+/- i`` times the image's range); 0 = off.
        elastic: amplitude in pixels of a smooth random displacement field; 0 = off.
        elastic_grid: number of random control points along each axis of the displacement field,
            which is upsampled bicubically to the image size (fewer points = smoother field).
        p: probability that a given image is augmented at all; the others pass through unchanged.

    Raises:
        ConfigError: a value outside its range.
    """

    flip: bool = True
    rotate_deg: float = 180.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.05
    intensity: float = 0.1
    elastic: float = 0.0
    elastic_grid: int = 4
    p: float = 1.0

    def __post_init__(self) -> None:
        self.scale = tuple(float(value) for value in self.scale)  # YAML gives lists
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augment.scale must be (low, high) with 0 < low <= high, not {self.scale}")
        for name, (wanted, ok) in AUGMENT_RANGES.items():
            if not ok(getattr(self, name)):
                raise ConfigError(f"augment.{name} must be {wanted}, not {getattr(self, name)}")
        if self.elastic_grid < 2:
            raise ConfigError(f"augment.elastic_grid must be >= 2, not {self.elastic_grid}")
        if not 0 <= self.p <= 1:
            raise ConfigError(f"augment.p must be in [0, 1], not {self.p}")

    @property
    def spatial(self) -> bool:
        """Whether any geometric transform is switched on."""
        return self.flip or self.rotate_deg > 0 or self.scale != (1.0, 1.0) or self.translate > 0 or self.elastic > 0

    @property
    def affine(self) -> bool:
        """Whether any transform of the affine part (all but elastic) is switched on."""
        return self.flip or self.rotate_deg > 0 or self.scale != (1.0, 1.0) or self.translate > 0


@dataclass
class AugmentParams:
    """The random draws for one batch of B images of size H x W, all float32 on the batch's device.

    Attributes:
        apply: (B,) bool, which images are augmented at all.
        theta: (B, 2, 3) sampling affine in normalised coordinates (as for ``F.affine_grid``), or
            None for no affine warp.
        displacement: (B, H, W, 2) elastic displacement in normalised grid units ``(x, y)``, or
            None for no elastic warp.
        gamma, contrast, brightness: (B,) intensity parameters, or None for no intensity jitter.
    """

    apply: Tensor
    theta: Tensor | None = None
    displacement: Tensor | None = None
    gamma: Tensor | None = None
    contrast: Tensor | None = None
    brightness: Tensor | None = None


def to_device_generator(seed: int, device: str | torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``, for :func:`augment_batch`."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator


def affine_matrices(
    flip_x: Tensor, flip_y: Tensor, angle_rad: Tensor, scale: Tensor, shift: Tensor, height: int, width: int
) -> Tensor:
    """Sampling affines for ``F.affine_grid`` from per-image geometric parameters.

    In pixel units about the image centre, output pixel ``q`` is sampled from input position
    ``R(angle) @ diag(fx, fy) @ q / scale + shift * (W, H)``, where ``fx = -1`` when ``flip_x`` is set
    (likewise ``fy``). The matrix is then expressed in the normalised coordinates of ``affine_grid``
    (``[-1, 1]`` across each axis), which is what keeps rotations of non-square images rigid.

    Args:
        flip_x, flip_y: (B,) bool, mirror left-right / top-bottom.
        angle_rad: (B,) float rotation angle in radians.
        scale: (B,) float zoom factor, > 1 enlarges the content.
        shift: (B, 2) float sampling offset ``(x, y)`` as a fraction of the width / height.
        height, width: the image size H, W.

    Returns:
        float32 tensor of shape (B, 2, 3).
    """
    sign_x = 1.0 - 2.0 * flip_x.float()
    sign_y = 1.0 - 2.0 * flip_y.float()
    cos, sin = torch.cos(angle_rad.float()), torch.sin(angle_rad.float())
    inverse_scale = 1.0 / scale.float()
    aspect = height / width
    theta = torch.empty(flip_x.shape[0], 2, 3, dtype=torch.float32, device=flip_x.device)
    # Pixel-space matrix M = R @ diag(sx, sy) / s, conjugated by diag(W/2, H/2) into normalised units.
    theta[:, 0, 0] = cos * sign_x * inverse_scale
    theta[:, 0, 1] = -sin * sign_y * inverse_scale * aspect
    theta[:, 1, 0] = sin * sign_x * inverse_scale / aspect
    theta[:, 1, 1] = cos * sign_y * inverse_scale
    theta[:, :, 2] = 2.0 * shift.float()  # a fraction f of the size is 2f in [-1, 1] units
    return theta


def elastic_displacement(
    batch_size: int, height: int, width: int, amplitude: float, control_points: int, generator: torch.Generator
) -> Tensor:
    """A smooth random displacement field: uniform noise on a coarse grid, upsampled bicubically.

    Args:
        batch_size, height, width: B, H, W.
        amplitude: displacement at the control points, drawn from ``U[-amplitude, amplitude]`` pixels
            per axis (bicubic interpolation may overshoot it slightly in between).
        control_points: grid points along each axis.
        generator: the source of randomness; its device is the output's device.

    Returns:
        float32 tensor of shape (B, H, W, 2), displacement ``(x, y)`` in normalised grid units.
    """
    coarse = torch.rand(
        (batch_size, 2, control_points, control_points), generator=generator, device=generator.device
    )
    field = F.interpolate(2.0 * coarse - 1.0, size=(height, width), mode="bicubic", align_corners=False)
    # Python scalars, not a tensor built from a list: that would be a host-to-device copy, which
    # waits for the device's queue on every batch.
    return torch.stack([field[:, 0] * (amplitude * 2.0 / width), field[:, 1] * (amplitude * 2.0 / height)], dim=-1)


def sample_params(
    batch_size: int, height: int, width: int, config: AugmentConfig, generator: torch.Generator
) -> AugmentParams:
    """Draw the random transforms for one batch.

    Args:
        batch_size, height, width: B, H, W of the batch.
        config: what may be done.
        generator: the only source of randomness; its device is the device of the returned tensors.

    Returns:
        the parameters; transforms that ``config`` switches off are None.
    """
    uniform = torch.rand((batch_size, len(_DRAWS)), generator=generator, device=generator.device)
    draw = dict(zip(_DRAWS, uniform.unbind(dim=1), strict=True))

    def symmetric(name: str, half_width: float) -> Tensor:
        return (2.0 * draw[name] - 1.0) * half_width

    params = AugmentParams(apply=draw["apply"] < config.p)
    if config.affine:
        flip = config.flip
        low, high = config.scale
        params.theta = affine_matrices(
            flip_x=(draw["flip_x"] < 0.5) & flip,
            flip_y=(draw["flip_y"] < 0.5) & flip,
            angle_rad=symmetric("angle", math.radians(config.rotate_deg)),
            scale=low + draw["scale"] * (high - low),
            shift=torch.stack([symmetric("shift_x", config.translate), symmetric("shift_y", config.translate)], 1),
            height=height,
            width=width,
        )
    if config.elastic > 0:
        params.displacement = elastic_displacement(
            batch_size, height, width, config.elastic, config.elastic_grid, generator
        )
    if config.intensity > 0:
        params.gamma = 1.0 + symmetric("gamma", config.intensity)
        params.contrast = 1.0 + symmetric("contrast", config.intensity)
        params.brightness = symmetric("brightness", config.intensity)
    return params


def _sampling_grid(params: AugmentParams, batch_size: int, height: int, width: int, device: torch.device) -> Tensor:
    """(B, H, W, 2) float32 grid for ``F.grid_sample``: the affine grid plus the elastic displacement."""
    theta = params.theta
    if theta is None:
        theta = torch.eye(2, 3, device=device).expand(batch_size, 2, 3)
    grid = F.affine_grid(theta, [batch_size, 1, height, width], align_corners=False)
    if params.displacement is not None:
        grid = grid + params.displacement
    return grid


def _warp_images(images: Tensor, grid: Tensor) -> Tensor:
    """Bilinear resampling of (B, C, H, W) float32 images; outside pixels take each image's minimum."""
    background = images.amin(dim=(2, 3), keepdim=True)
    warped = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped + background


def _warp_targets(targets: Tensor, grid: Tensor) -> Tensor:
    """Nearest resampling of (B, L, H, W) float32 targets; outside pixels are background (0)."""
    return F.grid_sample(targets, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _jitter_intensity(images: Tensor, gamma: Tensor, contrast: Tensor, brightness: Tensor) -> Tensor:
    """Gamma, then contrast about the mean, then a brightness shift, per image of (B, C, H, W) float32.

    Gamma acts on the image min-max normalised to [0, 1] and is mapped back to the original range;
    the brightness shift is in units of that range.
    """
    per_image = (-1,) + (1,) * (images.dim() - 1)
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(_EPS)
    normalised = ((images - low) / span).clamp(0.0, 1.0)
    images = low + normalised.pow(gamma.view(per_image)) * span
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (images - mean) * contrast.view(per_image) + brightness.view(per_image) * span


def apply_params(images: Tensor, targets: Tensor, params: AugmentParams) -> tuple[Tensor, Tensor]:
    """Apply drawn transforms to a batch (see the module docstring for the rules).

    Args:
        images: (B, C, H, W) floating tensor.
        targets: (B, L, H, W) floating tensor with values in [0, 1].
        params: from :func:`sample_params` (or built by hand), on the batch's device.

    Returns:
        ``(images, targets)`` with the input shapes and dtypes; images with ``params.apply`` False
        are returned bit-for-bit unchanged, and the inputs themselves are never modified.
    """
    batch_size, _, height, width = images.shape
    spatial = params.theta is not None or params.displacement is not None
    jitter = params.gamma is not None
    if not (spatial or jitter):
        return images, targets
    with torch.autocast(device_type=images.device.type, enabled=False):
        new_images, new_targets = images.float(), targets.float()
        if spatial:
            grid = _sampling_grid(params, batch_size, height, width, images.device)
            new_images = _warp_images(new_images, grid)
            new_targets = _warp_targets(new_targets, grid)
        if jitter:
            new_images = _jitter_intensity(new_images, params.gamma, params.contrast, params.brightness)
        keep = ~params.apply.view(-1, 1, 1, 1)
        new_images = torch.where(keep, images, new_images.to(images.dtype))
        new_targets = torch.where(keep, targets, new_targets.to(targets.dtype))
    return new_images, new_targets


def augment_batch(
    images: Tensor, targets: Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Randomly augment a mini-batch on its own device.

    Args:
        images: (B, C, H, W) floating tensor (any float dtype, any device).
        targets: (B, L, H, W) floating tensor with values in [0, 1], on the same device.
        config: what may be done.
        generator: the only source of randomness, on the same device (see :func:`to_device_generator`).

    Returns:
        ``(images, targets)`` with the input shapes and dtypes. Targets are resampled with nearest
        neighbour, so they only ever hold values that were in the input targets (or 0 where the
        content moved in from outside the image). When ``config`` switches everything off the
        inputs themselves are returned.

    Raises:
        ValueError: tensors of the wrong rank or mismatched sizes, or a generator on another device.
    """
    _check_batch(images, targets, generator)
    if not (config.spatial or config.intensity > 0):
        return images, targets
    batch_size, _, height, width = images.shape
    params = sample_params(batch_size, height, width, config, generator)
    return apply_params(images, targets, params)


def _check_batch(images: Tensor, targets: Tensor, generator: torch.Generator) -> None:
    if images.dim() != 4 or targets.dim() != 4:
        raise ValueError(
            f"images and targets must be (B, C, H, W) and (B, L, H, W), got {tuple(images.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if images.shape[0] != targets.shape[0] or images.shape[2:] != targets.shape[2:]:
        raise ValueError(
            f"images {tuple(images.shape)} and targets {tuple(targets.shape)} differ in batch size or H x W"
        )
    if not (images.is_floating_point() and targets.is_floating_point()):
        raise ValueError(f"images and targets must be floating point, got {images.dtype} and {targets.dtype}")
    if targets.device != images.device or generator.device.type != images.device.type:
        raise ValueError(
            f"images ({images.device}), targets ({targets.device}) and generator ({generator.device}) "
            "must be on the same device"
        )
