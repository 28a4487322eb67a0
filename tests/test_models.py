"""Tests for rvseg.models: shapes, padding, memory format, parameter counts, gradients, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rvseg.models
from rvseg.errors import ConfigError
from rvseg.models import MODELS, build_model, count_parameters
from rvseg.models.unet import pad_to_multiple

# Small widths keep every forward pass fast on a shared CPU; the architecture is the same.
SMALL = dict(width=4, depth=4)

DOCUMENTED_COUNTS = {
    ("unet", 64): 31_036_481,
    ("unet", 16): 1_942_289,
    ("dilated-unet", 64): 49_914_945,
    ("dilated-unet", 16): 3_122_961,
}


def seeded_model(name: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **{**SMALL, **options})


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [(216, 216), (128, 108), (37, 53)])
def test_output_has_input_size_and_one_channel_per_label(name, size):
    model = seeded_model(name, in_channels=3, out_channels=2)
    logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 2, *size)
    assert logits.dtype == torch.float32


def test_padding_is_centred_zero_padding_and_output_is_cropped_back():
    model = seeded_model("unet").eval()
    images = torch.randn(1, 1, 37, 53)
    # 37 -> 48 (11 rows: 5 on top, 6 below), 53 -> 64 (11 columns: 5 left, 6 right).
    padded, (top, left) = pad_to_multiple(images, 16)
    assert padded.shape == (1, 1, 48, 64) and (top, left) == (5, 5)
    assert torch.equal(padded[..., 5:42, 5:58], images)
    border = padded.clone()
    border[..., 5:42, 5:58] = 0
    assert not border.any()
    with torch.no_grad():
        expected = model(F.pad(images, (5, 6, 5, 6)))[..., 5:42, 5:58]
        assert torch.allclose(model(images), expected, atol=1e-6)


def test_sizes_already_a_multiple_are_not_padded():
    images = torch.randn(1, 1, 32, 48)
    padded, offsets = pad_to_multiple(images, 16)
    assert padded is images and offsets == (0, 0)


def test_channels_last_gives_the_same_logits():
    model = seeded_model("unet").eval()
    images = torch.randn(2, 1, 40, 36)
    with torch.no_grad():
        expected = model(images)
        model_cl = model.to(memory_format=torch.channels_last)
        logits = model_cl(images.to(memory_format=torch.channels_last))
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize(("name", "width"), sorted(DOCUMENTED_COUNTS))
def test_parameter_counts_are_the_documented_ones(name, width):
    count = count_parameters(build_model(name, width=width))
    assert count == DOCUMENTED_COUNTS[(name, width)]
    assert f"{count:,}" in rvseg.models.__doc__


def test_default_unet_is_the_paper_architecture():
    model = build_model("unet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert max(conv.out_channels for conv in convs) == 1024
    assert [block[0].out_channels for block in model.encoders] == [64, 128, 256, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2 * (4 + 1 + 4)
    assert [up.out_channels for up in model.upconvs] == [512, 256, 128, 64]
    assert all(up.kernel_size == (2, 2) and up.stride == (2, 2) for up in model.upconvs)
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 1
    assert all(conv.dilation == (1, 1) for conv in convs)


def test_dilated_unet_differs_only_in_the_bottleneck():
    plain, dilated = build_model("unet", width=8), build_model("dilated-unet", width=8)
    bottleneck_convs = [m for m in dilated.bottleneck if isinstance(m, nn.Conv2d)]
    assert [conv.dilation for conv in bottleneck_convs] == [(2, 2), (2, 2), (2, 2), (4, 4)]
    assert [conv.padding for conv in bottleneck_convs] == [(2, 2), (2, 2), (2, 2), (4, 4)]
    for part in ("encoders", "upconvs", "decoders", "head"):
        plain_shapes = [p.shape for p in getattr(plain, part).parameters()]
        assert plain_shapes == [p.shape for p in getattr(dilated, part).parameters()]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_reach_every_parameter(name):
    model = seeded_model(name, out_channels=2)
    images = torch.randn(2, 1, 24, 20)
    target = (torch.rand(2, 2, 24, 20) > 0.5).float()
    F.binary_cross_entropy_with_logits(model(images), target).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_same_seed_same_weights_and_logits():
    first, second = seeded_model("unet", seed=3), seeded_model("unet", seed=3)
    other = seeded_model("unet", seed=4)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert not torch.equal(first.head.weight, other.head.weight)
    images = torch.randn(2, 1, 32, 32)
    assert torch.equal(first.eval()(images), second.eval()(images))


def test_dropout_acts_only_in_training_mode():
    model = seeded_model("unet", dropout=0.5)
    assert model.dropout.p == 0.5
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(images), model(images))
        model.eval()
        assert torch.equal(model(images), model(images))
    # Without dropout the training-mode forward is deterministic, so the difference above is dropout.
    plain = seeded_model("unet", dropout=0.0).train()
    with torch.no_grad():
        assert torch.equal(plain(images), plain(images))


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'resnet'; choose one of unet, dilated-unet"):
        build_model("resnet")


@pytest.mark.parametrize(
    "options",
    [
        dict(width=0),
        dict(depth=0),
        dict(in_channels=2.0),
        dict(dropout=1.0),
        dict(dropout=-0.1),
        dict(out_channels=True),
    ],
)
def test_invalid_architecture_options_raise_config_error(options):
    with pytest.raises(ConfigError, match="model "):
        build_model("unet", **options)


def test_wrong_input_channels_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"expected a \(B, 1, H, W\) tensor, got shape \(2, 3, 16, 16\)"):
        seeded_model("unet")(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_deep_supervision_outputs_in_training_mode_only(name):
    model = seeded_model(name, out_channels=2, deep_supervision=2)
    images = torch.randn(2, 1, 37, 29)  # padded to 48 x 32 inside, cropped back
    outputs = model.train()(images)
    assert isinstance(outputs, tuple) and len(outputs) == 3
    assert all(output.shape == (2, 2, 37, 29) for output in outputs)
    # the main output is exactly the plain model's: the heads only add outputs
    plain = seeded_model(name, out_channels=2)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads")})
    with torch.no_grad():
        assert torch.allclose(model.eval()(images), plain.eval()(images))
        assert torch.allclose(model.train()(images)[0], plain.train()(images))
    target = (torch.rand(2, 2, 37, 29) > 0.5).float()
    model.zero_grad()
    sum(F.binary_cross_entropy_with_logits(output, target) for output in model.train()(images)).backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in model.aux_heads)
    assert count_parameters(model) == count_parameters(plain) + 2 * (8 + 1) + 2 * (16 + 1)  # 1x1 heads at 8, 16 ch


@pytest.mark.parametrize("levels", [-1, 4, 1.5, True])
def test_deep_supervision_needs_a_level_below_the_depth(levels):
    with pytest.raises(ConfigError, match=r"deep supervision must be an integer in \[0, 4\)"):
        build_model("unet", **SMALL, deep_supervision=levels)


def test_a_model_too_large_to_be_meant_is_refused_before_it_is_built():
    with pytest.raises(ConfigError, match="width 64 and depth 12 make a model of .* parameters"):
        build_model("unet", width=64, depth=12)


@pytest.mark.parametrize("width, depth", [(64, 23), (8, 40)])
def test_a_model_too_large_even_to_count_is_one_clear_error(width, depth):
    """Past ~2**63 bytes a layer cannot be sized even on the meta device (a RuntimeError from torch)."""
    with pytest.raises(ConfigError, match=f"width {width} and depth {depth} make a model too large to count"):
        build_model("unet", width=width, depth=depth)
