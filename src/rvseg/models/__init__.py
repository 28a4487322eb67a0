"""Segmentation networks and their registry.

Every model maps a float tensor (B, in_channels, H, W) to logits (B, out_channels, H, W), one
channel per target label, for any H and W (see :class:`~rvseg.models.unet.UNet` for the padding).
With deep supervision, in training mode only, it returns a tuple: those logits, then one auxiliary
output per supervised decoder level (see :func:`rvseg.losses.deep_supervision_loss`).

Parameter counts (``count_parameters``, 1 input and 1 output channel, depth 4):

=================  ============  ============
model              width 64      width 16
=================  ============  ============
``unet``           31,036,481    1,942,289
``dilated-unet``   49,914,945    3,122,961
=================  ============  ============
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from rvseg.checks import pick
from rvseg.errors import ConfigError
from rvseg.models.unet import DilatedUNet, UNet

#: The largest model built (4 GiB of float32 weights): larger ones are a typo, not an experiment.
MAX_PARAMETERS = 1_000_000_000

#: Model name (as used in configurations and on the command line) -> constructor.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "dilated-unet": DilatedUNet,
}


def model_from_config(config: Mapping, in_channels: int) -> nn.Module:
    """The network a training config describes (as saved in ``config.yaml`` and checkpoints: ``arch``,
    ``width``, ``depth``, ``dropout``, ``deep_supervision``), one output channel per ``target``; the one
    place that reads a model from a config, so training and loading build the same network.

    Raises:
        KeyError: the config lacks an option (``deep_supervision`` may be missing: older runs had none).
        ConfigError: as :func:`build_model`.
    """
    return build_model(config["arch"], in_channels=in_channels, out_channels=len(config["target"]),
                       width=config["width"], depth=config["depth"], dropout=config["dropout"],
                       deep_supervision=config.get("deep_supervision", 0))


def build_model(
    name: str,
    *,
    in_channels: int = 1,
    out_channels: int = 1,
    width: int = 64,
    depth: int = 4,
    dropout: float = 0.0,
    deep_supervision: int = 0,
) -> nn.Module:
    """Build the model registered under ``name``, freshly initialised.

    Args:
        name: a key of :data:`MODELS`.
        in_channels: image channels.
        out_channels: target labels (one logit channel each).
        width: channels of the first level (doubling per level).
        depth: number of poolings.
        dropout: dropout probability at the bottleneck (training mode only).
        deep_supervision: decoder levels with an auxiliary head (training mode only; 0 = none).

    Raises:
        ConfigError: an unknown name (the message lists the known ones) or an option out of range.
    """
    model_class = pick(MODELS, name, "model")
    options = dict(in_channels=in_channels, out_channels=out_channels, width=width, depth=depth, dropout=dropout,
                   deep_supervision=deep_supervision)
    too_large = (f"at most {MAX_PARAMETERS:,} parameters are allowed (the paper's U-Net, width 64 and depth 4, "
                 "has 31 million)")
    try:
        with torch.device("meta"):  # counted without memory: a mistyped --depth 12 would ask for terabytes
            parameters = count_parameters(model_class(**options))
    except RuntimeError as error:
        if "overflow" not in str(error):
            raise
        # Beyond ~2**63 bytes even the meta device cannot size a layer.
        raise ConfigError(f"width {width} and depth {depth} make a model too large to count; {too_large}") from None
    if parameters > MAX_PARAMETERS:
        raise ConfigError(f"width {width} and depth {depth} make a model of {parameters:,} parameters "
                          f"({parameters * 4 / 2**30:.0f} GiB of float32 weights); {too_large}")
    return model_class(**options)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (trainable or not; buffers such as BatchNorm
    running statistics are not parameters and are not counted)."""
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = ["MODELS", "DilatedUNet", "UNet", "build_model", "count_parameters"]
