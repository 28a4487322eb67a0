"""The losses of the study and of Dang et al. (TENCON 2019).

Every loss is a plain function ``loss(logits, target) -> scalar tensor``:

- ``logits``: float tensor (B, C, H, W), the raw model output, one channel per target label;
  ``p = sigmoid(logits)`` is the predicted foreground probability.
- ``target``: float tensor (B, C, H, W) with values in [0, 1] (binary masks, or soft labels).
- The result is a 0-dim float32 tensor, averaged over batch and channels. Losses are computed in
  float32 whatever the input dtype, because bf16/fp16 sums over H x W pixels lose the small terms.

**Dice is per image.** The overlap sums run over (H, W) of each image and channel separately, and
the B x C losses are then averaged (as MONAI's ``DiceLoss`` with ``batch=False``). A small apical
slice thus counts as much as a large basal one, matching the per-image Dice the study reports.

**Smoothing and empty targets.** With ``EPS = 1.0`` added to numerator and denominator,
``L_D = 1 - (2 sum(p g) + EPS) / (sum p + sum g + EPS)``. For an empty target the loss is
``1 - EPS / (sum p + EPS)``: exactly 0 for an empty prediction, 0.5 for one predicted pixel's worth
of probability, and towards 1 as the false-positive area grows, so empty slices are neither
undefined nor free. The inverse Dice loss treats an all-foreground target the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rvseg.checks import check_choice, is_finite_number, pick
from rvseg.errors import ConfigError

#: Smoothing added to the numerator and denominator of every Dice term (in pixels).
EPS = 1.0
#: The study's focal-loss parameters (Lin et al.'s defaults, torchvision's ``sigmoid_focal_loss``).
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
#: Dang et al.'s best weight of the switching loss.
SWITCH_LAMBDA = 0.75
SWITCH_PER = ("image", "batch")


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss of the foreground, per image and channel, averaged (see the module docstring)."""
    return dice_loss_per_image(logits, target).mean()


def inverse_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss of the background (``1 - p`` against ``1 - g``), per image and channel, averaged."""
    return inverse_dice_loss_per_image(logits, target).mean()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy, averaged over all B x C x H x W elements (computed from the logits, which
    stays finite where ``sigmoid`` saturates)."""
    logits, target = as_float32_pair(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def dice_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``bce + dice`` ("BCE + Dice"), equal weights."""
    return bce_loss(logits, target) + dice_loss(logits, target)


def dice_bce_inverse_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``bce + dice + inverse dice`` ("BCE + Dice + inverse Dice"), equal weights."""
    return bce_loss(logits, target) + dice_loss(logits, target) + inverse_dice_loss(logits, target)


def focal_loss(logits: Tensor, target: Tensor, *, alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Sigmoid focal loss of Lin et al., as torchvision's ``sigmoid_focal_loss`` with mean reduction.

    Per element: ``alpha_t * (1 - p_t)**gamma * BCE`` with ``p_t = p g + (1 - p)(1 - g)`` and
    ``alpha_t = alpha g + (1 - alpha)(1 - g)`` (``alpha`` weights the foreground), averaged over all
    B x C x H x W elements. ``1 - p_t`` is computed as ``g sigmoid(-x) + (1 - g) sigmoid(x)``, the
    same value without the cancellation of ``1 - p_t`` when ``p_t`` is close to 1.

    Args:
        alpha: foreground weight in [0, 1].
        gamma: focusing exponent >= 0 (0 gives alpha-weighted BCE).
    """
    check_focal_params(alpha, gamma)
    logits, target = as_float32_pair(logits, target)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    one_minus_p_t = target * torch.sigmoid(-logits) + (1 - target) * torch.sigmoid(logits)
    # sigmoid underflows to 0 for |logit| > ~88, where (1 - p_t)**gamma with gamma < 1 has an infinite
    # slope: 0 * inf would make every gradient NaN. The clamp's own zero slope there keeps them finite.
    one_minus_p_t = one_minus_p_t.clamp_min(torch.finfo(one_minus_p_t.dtype).tiny)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * one_minus_p_t.pow(gamma) * cross_entropy).mean()


def switching_loss(
    logits: Tensor, target: Tensor, *, lam: float = SWITCH_LAMBDA, tau: float | Sequence[float], per: str = "image"
) -> Tensor:
    """Switching loss of Dang et al.: BCE plus Dice and inverse Dice, weighted by the foreground share.

    With ``s`` the foreground share of the target (mean of ``g``):

    - ``s > tau``:  ``BCE + lam * L_D + (1 - lam) * L_I``
    - otherwise:   ``BCE + (1 - lam) * L_D + lam * L_I``

    so with ``lam = 0.75`` images with a large foreground are Dice-heavy and images with little (or no)
    foreground are inverse-Dice-heavy: their foreground Dice, dominated by a few pixels and by the
    smoothing, gets only weight 0.25, and the background term, which is well-defined there, leads.
    ``L_D`` and ``L_I`` are per image and channel, like :func:`dice_loss`; BCE is as :func:`bce_loss`.

    Args:
        lam: weight lambda in [0, 1].
        tau: share threshold in [0, 1], or one per channel (C,) (the structures of a joint model differ
            in size). No default: the paper gives none; the training code resolves ``auto`` to each
            target's mean foreground share over the training split.
        per: where the share and the branch are decided (the paper does not say):

            - ``"image"`` (default): per image and channel. The weights of an image then depend only
              on that image, as its per-image Dice does, not on which other slices share its
              mini-batch, so the loss is the same for any batch size or shuffling, and a small
              apical slice gets the inverse-Dice-heavy branch even in a batch of large slices.
            - ``"batch"``: one share per channel over the whole mini-batch (the channels are
              different structures); every image of the batch then takes the same branch, as in the
              same group's later per-mini-batch adaptation.

    Raises:
        ConfigError: ``lam`` or ``tau`` not a number in [0, 1], or ``per`` not "image"/"batch".
    """
    check_switching_params(lam, tau, per)
    logits, target = as_float32_pair(logits, target)
    if per == "image":
        share = target.mean(dim=(2, 3))
    else:
        share = target.mean(dim=(0, 2, 3)).expand(target.shape[0], -1)
    if is_finite_number(tau):
        dice_weight = torch.where(share > tau, lam, 1.0 - lam)
    else:
        if len(tau) != share.shape[1]:
            raise ConfigError(f"switching tau gives {len(tau)} thresholds for {share.shape[1]} channels")
        # Channel by channel with Python numbers: a tensor of the thresholds would be a host-to-device
        # copy in every step, which a captured CUDA graph (--cuda-graph) cannot hold.
        dice_weight = torch.stack([torch.where(share[:, channel] > float(value), lam, 1.0 - lam)
                                   for channel, value in enumerate(tau)], dim=1)
    dice_terms = dice_loss_per_image(logits, target)
    inverse_terms = inverse_dice_loss_per_image(logits, target)
    weighted = dice_weight * dice_terms + (1.0 - dice_weight) * inverse_terms
    return bce_loss(logits, target) + weighted.mean()


def dice_loss_per_image(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss of the foreground: float32 tensor (B, C), one value per image and channel."""
    logits, target = as_float32_pair(logits, target)
    return 1.0 - soft_dice(torch.sigmoid(logits), target)


def inverse_dice_loss_per_image(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss of the background: float32 tensor (B, C), one value per image and channel."""
    logits, target = as_float32_pair(logits, target)
    # sigmoid(-x) is 1 - p without the rounding of 1 - sigmoid(x) near p = 1.
    return 1.0 - soft_dice(torch.sigmoid(-logits), 1.0 - target)


def soft_dice(probabilities: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Smoothed soft Dice coefficient ``(2 sum(p g) + eps) / (sum p + sum g + eps)`` over (H, W).

    Args:
        probabilities: tensor (B, C, H, W) in [0, 1].
        target: tensor (B, C, H, W) in [0, 1].
        eps: smoothing added to numerator and denominator.

    Returns:
        tensor (B, C).
    """
    intersection = (probabilities * target).sum(dim=(2, 3))
    total = probabilities.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    return (2.0 * intersection + eps) / (total + eps)


def as_float32_pair(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check that ``logits`` and ``target`` are both (B, C, H, W) of one shape; return them as float32."""
    if logits.dim() != 4 or logits.shape != target.shape:
        raise ValueError(
            f"logits and target must both be (B, C, H, W) of one shape, got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    return logits.float(), target.float()


def check_focal_params(alpha: float, gamma: float) -> None:
    """Raise :class:`ConfigError` for a focal ``alpha`` outside [0, 1] or a negative ``gamma``."""
    if not (is_finite_number(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"focal alpha must be a number in [0, 1], not {alpha!r}")
    if not (is_finite_number(gamma) and gamma >= 0.0):
        raise ConfigError(f"focal gamma must be a number >= 0, not {gamma!r}")


def check_switching_params(lam: float, tau: float, per: str) -> None:
    """Raise :class:`ConfigError` for switching-loss parameters out of range."""
    if not (is_finite_number(lam) and 0.0 <= lam <= 1.0):
        raise ConfigError(f"switching lambda must be a number in [0, 1], not {lam!r}")
    taus = [tau] if is_finite_number(tau) or not isinstance(tau, Sequence) or isinstance(tau, str) else list(tau)
    if not taus or not all(is_finite_number(value) and 0.0 <= value <= 1.0 for value in taus):
        raise ConfigError(
            f"switching tau must be a number in [0, 1], not {tau!r} "
            "('auto' must be resolved to the training split's mean foreground share first)"
        )
    check_choice(per, SWITCH_PER, "switching per")


#: Loss name (as used in configurations and on the command line) -> loss function.
LOSSES: dict[str, Callable[..., Tensor]] = {
    "dice": dice_loss,
    "inverse-dice": inverse_dice_loss,
    "bce": bce_loss,
    "dice-bce": dice_bce_loss,
    "dice-bce-inverse": dice_bce_inverse_loss,
    "focal": focal_loss,
    "switching": switching_loss,
}

#: Parameters :func:`build_loss` accepts; each is used only by the loss it names.
LOSS_PARAMS = ("focal_alpha", "focal_gamma", "switch_lambda", "switch_tau", "switch_per")


def build_loss(name: str, **params: object) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss registered under ``name`` as a ``(logits, target) -> scalar`` function.

    Args:
        name: a key of :data:`LOSSES`.
        **params: any of ``focal_alpha``, ``focal_gamma`` (focal), ``switch_lambda``, ``switch_tau``,
            ``switch_per`` (switching). Parameters of other losses are accepted and ignored, so a
            whole configuration can be passed; ``None`` means the default.

    Raises:
        ConfigError: an unknown loss (the message lists the known ones), an unknown parameter, a
            value out of range, or ``switching`` without a numeric ``switch_tau``.
    """
    loss = pick(LOSSES, name, "loss")
    unknown = sorted(set(params) - set(LOSS_PARAMS))
    if unknown:
        raise ConfigError(f"unknown loss parameter(s) {', '.join(unknown)}; known: {', '.join(LOSS_PARAMS)}")
    given = {key: value for key, value in params.items() if value is not None}
    if name == "focal":
        alpha, gamma = given.get("focal_alpha", FOCAL_ALPHA), given.get("focal_gamma", FOCAL_GAMMA)
        check_focal_params(alpha, gamma)
        return functools.partial(focal_loss, alpha=alpha, gamma=gamma)
    if name == "switching":
        lam, per = given.get("switch_lambda", SWITCH_LAMBDA), given.get("switch_per", "image")
        tau = given.get("switch_tau")
        check_switching_params(lam, tau, per)
        return functools.partial(switching_loss, lam=lam, tau=tau, per=per)
    return loss


def deep_supervision_loss(loss: Callable[[Tensor, Tensor], Tensor], levels: int) -> Callable:
    """``loss`` applied to every output of a deeply supervised model, weighted 1, 1/2, 1/4, ...

    Args:
        loss: a ``(logits, target) -> scalar`` loss.
        levels: the model's auxiliary outputs (0 returns ``loss`` itself).

    Returns:
        ``(outputs, target) -> scalar``: for a tuple ``(logits, aux_1, ..., aux_levels)``, each
        (B, C, H, W) like ``target``, the weighted mean of ``loss`` over them (weights halving with
        each coarser level, as in nnU-Net, normalised to sum to 1); for a single tensor (a model in
        evaluation mode), ``loss`` of it.
    """
    if levels == 0:
        return loss
    weights = [0.5**level for level in range(levels + 1)]
    total = sum(weights)

    def combined(outputs: Tensor | tuple[Tensor, ...], target: Tensor) -> Tensor:
        if isinstance(outputs, Tensor):
            return loss(outputs, target)
        return sum(w * loss(output, target) for w, output in zip(weights, outputs, strict=True)) / total

    return combined
