"""The U-Net of Dang et al. (TENCON 2019) and its dilated-bottleneck variant.

With the defaults (``depth=4, width=64``, the paper's network) the encoder levels have 64, 128,
256 and 512 channels and the bottleneck 1024 (at 1/16 of the input size); the decoder mirrors the
encoder back to 64 channels and a 1x1 convolution maps them to one logit per target label.

Every block is two (3x3 conv + BatchNorm + ReLU); going down is a 2x2 max-pool, going up a 2x2
transposed convolution with stride 2 ("up-convolution") that halves the channels, whose output is
concatenated with the encoder block of the same level before the next block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rvseg.checks import is_real_number, is_whole_number
from rvseg.errors import ConfigError

#: Dilations of the bottleneck convolutions of :class:`DilatedUNet` (Dang et al.).
DILATED_BOTTLENECK = (2, 2, 2, 4)


class ConvBlock(nn.Sequential):
    """A stack of (3x3 conv + BatchNorm + ReLU), one per entry of ``dilations``.

    Padding equals the dilation, so the spatial size is kept: (B, in, H, W) -> (B, out, H, W).
    The convolutions have no bias because the BatchNorm right after them would cancel it.
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 1)):
        layers: list[nn.Module] = []
        for index, dilation in enumerate(dilations):
            layers += [
                nn.Conv2d(
                    in_channels if index == 0 else out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=dilation,
                    dilation=dilation,
                    bias=False,
                ),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class UNet(nn.Module):
    """The baseline U-Net of Dang et al.: ``depth`` poolings, widths ``width * 2**level``.

    Args:
        in_channels: image channels (1 for grey MRI, 3 for the study's RGB variant).
        out_channels: one output channel per target label (e.g. 1 for endo, 2 for endo + epi).
        width: channels of the first level; level ``k`` has ``width * 2**k``, the bottleneck
            ``width * 2**depth`` (64 -> 1024 for the defaults).
        depth: number of 2x2 max-poolings (and of up-convolutions).
        dropout: element-wise dropout probability applied once, to the output of the bottleneck block
            (before the first up-convolution), in training mode only; 0 disables it.
        bottleneck_dilations: dilation of each 3x3 convolution of the bottleneck block; its length is
            the number of convolutions there. ``(1, 1)`` is the plain U-Net.
        deep_supervision: number of decoder levels below full resolution (1/2, 1/4, ...) that get a
            1x1 auxiliary head of their own, in ``[0, depth)``; 0 disables it.

    Input: float tensor (B, in_channels, H, W) of any H, W >= 1. When H or W is not a multiple of
    ``2**depth`` the input is zero-padded (the same value the convolutions pad with; mirroring would
    copy anatomy into the border), split as evenly as possible between the two sides so the image
    stays centred, and the output is cropped back.

    Output: float tensor (B, out_channels, H, W) of logits; the sigmoid is left to the losses and
    the prediction code. In training mode with ``deep_supervision = k > 0`` the output is a tuple of
    k + 1 such tensors: the logits, then those of the 1/2, ..., 1/2**k levels' heads, each upsampled
    bilinearly to the input size, so that every one is scored against the same full-size target
    (:func:`rvseg.losses.deep_supervision_loss`). In evaluation mode only the logits are returned.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 64,
        depth: int = 4,
        dropout: float = 0.0,
        bottleneck_dilations: Sequence[int] = (1, 1),
        deep_supervision: int = 0,
    ):
        super().__init__()
        check_architecture(in_channels, out_channels, width, depth, dropout, deep_supervision)
        self.in_channels = in_channels
        self.depth = depth
        widths = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            ConvBlock(in_channels if level == 0 else widths[level - 1], widths[level]) for level in range(depth)
        )
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth], bottleneck_dilations)
        self.dropout = nn.Dropout(p=dropout)
        # Decoder modules are stored from the deepest level up, in the order forward() uses them.
        self.upconvs = nn.ModuleList(
            nn.ConvTranspose2d(widths[level + 1], widths[level], kernel_size=2, stride=2)
            for level in reversed(range(depth))
        )
        self.decoders = nn.ModuleList(
            ConvBlock(2 * widths[level], widths[level]) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        # aux_heads[k - 1] reads the decoder output at level k (1/2**k of the input size).
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(widths[level], out_channels, kernel_size=1) for level in range(1, deep_supervision + 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected a (B, {self.in_channels}, H, W) tensor, got shape {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        padded, (top, left) = pad_to_multiple(images, 2**self.depth)
        features = padded
        skips = []
        for encoder in self.encoders:
            features = encoder(features)
            skips.append(features)
            features = self.pool(features)
        features = self.dropout(self.bottleneck(features))
        auxiliary = []
        for index, (upconv, decoder, skip) in enumerate(zip(self.upconvs, self.decoders, reversed(skips), strict=True)):
            features = decoder(torch.cat([skip, upconv(features)], dim=1))
            level = self.depth - 1 - index  # this block's output is at 1/2**level of the input size
            if self.training and 0 < level <= len(self.aux_heads):
                coarse = self.aux_heads[level - 1](features)
                auxiliary.insert(0, F.interpolate(coarse, size=padded.shape[-2:], mode="bilinear", align_corners=False))
        logits = self.head(features)
        if not auxiliary:
            return logits[..., top : top + height, left : left + width]
        return tuple(output[..., top : top + height, left : left + width] for output in (logits, *auxiliary))


class DilatedUNet(UNet):
    """:class:`UNet` whose bottleneck block is four 3x3 convolutions with dilations 2, 2, 2, 4.

    Everything else (encoder, decoder, head, dropout, padding) is as in :class:`UNet`; the dilations
    widen the receptive field at the coarsest level without another pooling.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 64,
        depth: int = 4,
        dropout: float = 0.0,
        deep_supervision: int = 0,
    ):
        super().__init__(in_channels, out_channels, width, depth, dropout, bottleneck_dilations=DILATED_BOTTLENECK,
                         deep_supervision=deep_supervision)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two dimensions of ``images`` up to multiples of ``multiple``.

    Args:
        images: tensor (..., H, W).
        multiple: the size both H and W must become a multiple of.

    Returns:
        the padded tensor (..., H', W') and the (top, left) offsets of the original inside it.
    """
    height, width = images.shape[-2:]
    extra_rows, extra_cols = -height % multiple, -width % multiple
    if extra_rows == 0 and extra_cols == 0:
        return images, (0, 0)
    top, left = extra_rows // 2, extra_cols // 2
    padded = F.pad(images, (left, extra_cols - left, top, extra_rows - top))
    return padded, (top, left)


def check_architecture(in_channels: int, out_channels: int, width: int, depth: int, dropout: float,
                       deep_supervision: int = 0) -> None:
    """Raise :class:`ConfigError` for an architecture option out of range."""
    options = {"in_channels": in_channels, "out_channels": out_channels, "width": width, "depth": depth}
    for name, value in options.items():
        if not is_whole_number(value) or value < 1:
            raise ConfigError(f"model {name} must be a positive integer, not {value!r}")
    if not is_real_number(dropout) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model dropout must be a number in [0, 1), not {dropout!r}")
    if not is_whole_number(deep_supervision) or not 0 <= deep_supervision < depth:
        raise ConfigError(f"deep supervision must be an integer in [0, {depth}) (below the depth), "
                          f"not {deep_supervision!r}")
