"""Tests for rvseg.losses against independent NumPy implementations and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss, FocalLoss

from rvseg.errors import ConfigError
from rvseg.losses import (
    EPS,
    LOSSES,
    bce_loss,
    build_loss,
    deep_supervision_loss,
    dice_bce_inverse_loss,
    dice_bce_loss,
    dice_loss,
    focal_loss,
    inverse_dice_loss,
    switching_loss,
)

SHAPES = [(2, 1, 8, 8), (3, 2, 16, 12), (1, 1, 5, 7)]


# --- independent float64 NumPy references, written from the formulas, one image at a time ---


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_dice_term(p, g, eps=EPS):
    """1 - (2 sum(p g) + eps) / (sum p + sum g + eps) for one (H, W) image."""
    return 1.0 - (2.0 * np.sum(p * g) + eps) / (np.sum(p) + np.sum(g) + eps)


def np_terms(logits, target):
    """(B, C) arrays of the Dice and inverse Dice losses."""
    batch, channels = logits.shape[:2]
    dice = np.zeros((batch, channels))
    inverse = np.zeros((batch, channels))
    for b in range(batch):
        for c in range(channels):
            p, g = np_sigmoid(logits[b, c]), target[b, c]
            dice[b, c] = np_dice_term(p, g)
            inverse[b, c] = np_dice_term(1.0 - p, 1.0 - g)
    return dice, inverse


def np_bce(logits, target):
    p = np_sigmoid(logits)
    return float(np.mean(-(target * np.log(p) + (1.0 - target) * np.log(1.0 - p))))


def np_focal(logits, target, alpha=0.25, gamma=2.0):
    p = np_sigmoid(logits)
    ce = -(target * np.log(p) + (1.0 - target) * np.log(1.0 - p))
    p_t = p * target + (1.0 - p) * (1.0 - target)
    alpha_t = alpha * target + (1.0 - alpha) * (1.0 - target)
    return float(np.mean(alpha_t * (1.0 - p_t) ** gamma * ce))


def np_switching(logits, target, lam, tau, per):
    dice, inverse = np_terms(logits, target)
    batch, channels = logits.shape[:2]
    total = 0.0
    for b in range(batch):
        for c in range(channels):
            share = target[b, c].mean() if per == "image" else target[:, c].mean()
            if share > tau:
                total += lam * dice[b, c] + (1.0 - lam) * inverse[b, c]
            else:
                total += (1.0 - lam) * dice[b, c] + lam * inverse[b, c]
    return np_bce(logits, target) + total / (batch * channels)


NUMPY_REFERENCES = {
    "dice": lambda x, g: np_terms(x, g)[0].mean(),
    "inverse-dice": lambda x, g: np_terms(x, g)[1].mean(),
    "bce": np_bce,
    "dice-bce": lambda x, g: np_bce(x, g) + np_terms(x, g)[0].mean(),
    "dice-bce-inverse": lambda x, g: np_bce(x, g) + sum(term.mean() for term in np_terms(x, g)),
    "focal": np_focal,
}


def random_case(shape, seed, soft=False):
    """Logits and a blob-like target; the first image of the batch has an empty target."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=shape)
    if soft:
        target = rng.uniform(0.0, 1.0, size=shape)
    else:
        target = (rng.uniform(size=shape) < rng.uniform(0.05, 0.6, size=shape[:2] + (1, 1))).astype(np.float64)
    target[0] = 0.0
    return logits, target


def as_tensors(logits, target):
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)


@pytest.mark.parametrize("name", sorted(NUMPY_REFERENCES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("soft", [False, True])
def test_each_loss_matches_its_numpy_reference(name, shape, soft):
    logits, target = random_case(shape, seed=len(name) * 7 + shape[0], soft=soft)
    loss = LOSSES[name](*as_tensors(logits, target))
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(NUMPY_REFERENCES[name](logits, target), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("per", ["image", "batch"])
@pytest.mark.parametrize("shape", SHAPES)
def test_switching_matches_its_numpy_reference(per, shape):
    logits, target = random_case(shape, seed=shape[0] + shape[1])
    tau = 0.2
    loss = switching_loss(*as_tensors(logits, target), lam=0.75, tau=tau, per=per)
    assert loss.item() == pytest.approx(np_switching(logits, target, 0.75, tau, per), rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_dice_agrees_with_monai(shape):
    logits, target = as_tensors(*random_case(shape, seed=11))
    monai_dice = DiceLoss(sigmoid=True, smooth_nr=EPS, smooth_dr=EPS, reduction="mean")
    assert dice_loss(logits, target).item() == pytest.approx(monai_dice(logits, target).item(), rel=1e-5)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 1.0), (0.9, 0.0)])
@pytest.mark.parametrize("shape", SHAPES)
def test_focal_agrees_with_monai_on_binary_targets(alpha, gamma, shape):
    # MONAI's sigmoid focal loss weights t == 1 by alpha and t == 0 by 1 - alpha, as torchvision does;
    # its (1 - p_t) is sigmoid(-x (2t - 1)), the same as ours only for binary targets.
    logits, target = as_tensors(*random_case(shape, seed=5))
    monai_focal = FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False, reduction="mean")
    ours = focal_loss(logits, target, alpha=alpha, gamma=gamma)
    assert ours.item() == pytest.approx(monai_focal(logits, target).item(), rel=1e-5)


def test_empty_target_and_empty_prediction_give_zero_dice_loss():
    target = torch.zeros(2, 1, 8, 8)
    logits = torch.full((2, 1, 8, 8), -50.0)
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-7)
    # One confidently predicted pixel on an empty target: 1 - EPS / (1 + EPS) = 0.5.
    logits[:, :, 3, 4] = 50.0
    assert dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-6)


def test_full_target_and_full_prediction_give_zero_inverse_dice_loss():
    target = torch.ones(2, 1, 8, 8)
    assert inverse_dice_loss(torch.full((2, 1, 8, 8), 50.0), target).item() == pytest.approx(0.0, abs=1e-7)
    # The foreground Dice of a perfect prediction is 0 too, and the background Dice of a wrong one is not.
    assert dice_loss(torch.full((2, 1, 8, 8), 50.0), target).item() == pytest.approx(0.0, abs=1e-7)
    assert inverse_dice_loss(torch.full((2, 1, 8, 8), -50.0), target).item() > 0.98


def test_dice_is_per_image_not_pooled_over_the_batch():
    # Image 0: perfect on a 16-pixel target; image 1: predicts 16 pixels on an empty target.
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, :4, :4] = 1.0
    logits = torch.full((2, 1, 8, 8), -50.0)
    logits[:, :, :4, :4] = 50.0
    expected = (0.0 + (1.0 - EPS / (16.0 + EPS))) / 2.0
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_combined_losses_are_sums_of_their_parts():
    logits, target = as_tensors(*random_case((3, 2, 10, 9), seed=2))
    bce, dice, inverse = bce_loss(logits, target), dice_loss(logits, target), inverse_dice_loss(logits, target)
    assert torch.allclose(dice_bce_loss(logits, target), bce + dice)
    assert torch.allclose(dice_bce_inverse_loss(logits, target), bce + dice + inverse)


def extreme_case():
    """Logits of +/-50 on a target they agree with in half the pixels and contradict in the other."""
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, :4] = 1.0
    logits = torch.full((2, 1, 8, 8), -50.0)
    logits[:, :, :2] = 50.0
    logits[:, :, 6:] = 50.0
    return logits.requires_grad_(), target


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_gradient_are_finite_at_saturated_logits(name):
    logits, target = extreme_case()
    loss = build_loss(name, switch_tau=0.1)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert loss.item() > 0  # the contradicted pixels must cost something


def single_image(share_pixels, size=10, seed=0):
    """Random logits and a target whose first ``share_pixels`` pixels (row-major) are foreground."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 1, size, size, generator=generator) * 2
    target = torch.zeros(1, 1, size, size)
    target.view(-1)[:share_pixels] = 1.0
    return logits, target


@pytest.mark.parametrize(("pixels", "above"), [(30, True), (2, False), (0, False), (25, False), (26, True)])
def test_switching_picks_the_branch_by_the_share(pixels, above):
    # tau = 0.25 on 100 pixels: 25 foreground pixels is not *above* tau, 26 is.
    logits, target = single_image(pixels)
    bce, dice, inverse = bce_loss(logits, target), dice_loss(logits, target), inverse_dice_loss(logits, target)
    # lam = 1 makes each branch a single term: Dice above tau, inverse Dice otherwise.
    loss = switching_loss(logits, target, lam=1.0, tau=0.25)
    assert torch.allclose(loss, bce + (dice if above else inverse))
    loss = switching_loss(logits, target, lam=0.75, tau=0.25)
    weights = (0.75, 0.25) if above else (0.25, 0.75)
    assert torch.allclose(loss, bce + weights[0] * dice + weights[1] * inverse)


def test_switching_per_image_decides_each_image_of_a_batch_separately():
    large, small = single_image(30, seed=1), single_image(2, seed=2)
    logits, target = torch.cat([large[0], small[0]]), torch.cat([large[1], small[1]])
    bce = bce_loss(logits, target)
    dice = [dice_loss(*large), dice_loss(*small)]
    inverse = [inverse_dice_loss(*large), inverse_dice_loss(*small)]
    per_image = switching_loss(logits, target, lam=0.75, tau=0.1, per="image")
    expected_image = bce + ((0.75 * dice[0] + 0.25 * inverse[0]) + (0.25 * dice[1] + 0.75 * inverse[1])) / 2
    assert torch.allclose(per_image, expected_image)
    # Per batch the share is (30 + 2) / 200 = 0.16 > 0.1: both images take the Dice-heavy branch.
    per_batch = switching_loss(logits, target, lam=0.75, tau=0.1, per="batch")
    expected_batch = bce + ((0.75 * dice[0] + 0.25 * inverse[0]) + (0.75 * dice[1] + 0.25 * inverse[1])) / 2
    assert torch.allclose(per_batch, expected_batch)
    assert not torch.allclose(per_image, per_batch)


def test_switching_per_image_and_per_batch_agree_when_all_images_are_on_one_side():
    images = [single_image(pixels, seed=pixels) for pixels in (30, 40, 55)]
    logits, target = torch.cat([i[0] for i in images]), torch.cat([i[1] for i in images])
    per_image = switching_loss(logits, target, lam=0.75, tau=0.2, per="image")
    assert torch.allclose(per_image, switching_loss(logits, target, lam=0.75, tau=0.2, per="batch"))


def test_switching_per_batch_takes_one_share_per_channel():
    # Channel 0 is large in both images, channel 1 small in both: per batch, channel 1 is below tau.
    logits, target = as_tensors(*random_case((2, 2, 10, 10), seed=9))
    target[:, 0] = 0.0
    target[:, 0, :6] = 1.0
    target[:, 1] = 0.0
    target[:, 1, 0, :3] = 1.0
    per_batch = switching_loss(logits, target, lam=0.75, tau=0.2, per="batch")
    assert per_batch.item() == pytest.approx(np_switching(logits.numpy(), target.numpy(), 0.75, 0.2, "batch"), rel=1e-5)
    above_everywhere = switching_loss(logits, target, lam=0.75, tau=0.0, per="batch")
    assert not torch.allclose(per_batch, above_everywhere)


def test_switching_takes_one_threshold_per_channel():
    """A joint model's structures differ in size: each channel is compared with its own tau."""
    logits, target = as_tensors(*random_case((2, 2, 10, 10), seed=9))
    target.zero_()
    target[:, 0, :2] = 1.0  # 20 % in channel 0
    target[:, 1, :4] = 1.0  # 40 % in channel 1
    per_channel = switching_loss(logits, target, lam=0.75, tau=[0.1, 0.5])
    # Channel 0 above its 0.1, channel 1 below its 0.5: the same as two single-channel losses.
    first = switching_loss(logits[:, :1], target[:, :1], lam=0.75, tau=0.1)
    second = switching_loss(logits[:, 1:], target[:, 1:], lam=0.75, tau=0.5)
    assert per_channel.item() == pytest.approx((first.item() + second.item()) / 2, rel=1e-5)
    with pytest.raises(ConfigError, match="2 thresholds for 3 channels"):
        switching_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), tau=[0.1, 0.2])
    with pytest.raises(ConfigError, match="switching tau must be a number"):
        build_loss("switching", switch_tau=[0.1, 1.5])


def test_losses_of_low_precision_inputs_are_computed_in_float32():
    logits, target = as_tensors(*random_case((2, 1, 16, 16), seed=4))
    half_logits = logits.to(torch.bfloat16)
    loss = dice_bce_inverse_loss(half_logits, target.to(torch.bfloat16))
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, dice_bce_inverse_loss(half_logits.float(), target))


def test_mismatched_shapes_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"one shape, got \(2, 1, 8, 8\) and \(2, 8, 8\)"):
        dice_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8))


def test_build_loss_returns_configured_functions():
    logits, target = random_case((2, 2, 9, 11), seed=8)
    tensors = as_tensors(logits, target)
    assert build_loss("dice", focal_alpha=None, switch_tau=None) is dice_loss
    focal = build_loss("focal", focal_alpha=0.5, focal_gamma=1.0)
    assert focal(*tensors).item() == pytest.approx(np_focal(logits, target, 0.5, 1.0), rel=1e-5)
    assert build_loss("focal")(*tensors).item() == pytest.approx(np_focal(logits, target), rel=1e-5)
    switching = build_loss("switching", switch_lambda=0.25, switch_tau=0.3, switch_per="batch")
    assert switching(*tensors).item() == pytest.approx(np_switching(logits, target, 0.25, 0.3, "batch"), rel=1e-5)


def test_build_loss_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown loss 'tversky'; choose one of dice, inverse-dice, .*, switching"):
        build_loss("tversky")


@pytest.mark.parametrize("tau", [None, "auto", True, float("nan"), 1.5])
def test_switching_without_a_numeric_tau_is_a_config_error(tau):
    with pytest.raises(ConfigError, match="switching tau must be a number"):
        build_loss("switching", switch_tau=tau)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(switch_tau=0.1, switch_lambda=1.5), "switching lambda"),
        (dict(switch_tau=0.1, switch_per="epoch"), "switching per"),
        (dict(switch_tau=0.1, tau=0.1), "unknown loss parameter"),
    ],
)
def test_build_loss_rejects_bad_switching_params(params, message):
    with pytest.raises(ConfigError, match=message):
        build_loss("switching", **params)


@pytest.mark.parametrize(
    ("params", "message"), [(dict(focal_alpha=-0.1), "focal alpha"), (dict(focal_gamma=-1), "focal gamma")]
)
def test_build_loss_rejects_bad_focal_params(params, message):
    with pytest.raises(ConfigError, match=message):
        build_loss("focal", **params)


def test_deep_supervision_loss_weights_halve_per_level():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    outputs = tuple(torch.randn(2, 1, 8, 8) for _ in range(3))
    combined = deep_supervision_loss(dice_loss, 2)
    expected = (dice_loss(outputs[0], target) + 0.5 * dice_loss(outputs[1], target)
                + 0.25 * dice_loss(outputs[2], target)) / 1.75
    assert torch.allclose(combined(outputs, target), expected)
    assert torch.equal(combined(outputs[0], target), dice_loss(outputs[0], target))  # evaluation mode: one tensor
    assert deep_supervision_loss(dice_loss, 0) is dice_loss
    with pytest.raises(ValueError):
        combined(outputs[:2], target)  # a model with another number of heads


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0])
def test_focal_gradients_stay_finite_for_confident_logits(gamma):
    # sigmoid(-100) underflows to 0 in float32; with gamma < 1 the modulating factor's slope is infinite there.
    logits = torch.tensor([[[[100.0, -100.0], [3.0, -0.5]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    loss = focal_loss(logits, target, alpha=0.25, gamma=gamma)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0, 0, 0] == 0 and logits.grad[0, 0, 1, 0] > 0  # confident and right: no push
