"""The moving average of weights (``--ema``): the closed form, BatchNorm buffers, the warm-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rvseg.train.average import WeightAverage


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())


def test_the_average_follows_the_closed_form_with_its_warm_up():
    source = network()
    average = WeightAverage(source, decay=0.9)
    expected = {name: tensor.clone() for name, tensor in source.state_dict().items()}
    for t in range(1, 6):
        with torch.no_grad():
            for tensor in source.parameters():
                tensor.add_(torch.randn_like(tensor))
        source.train()(torch.randn(4, 1, 8, 8))  # moves the BatchNorm statistics, counts a batch
        decay = min(0.9, (1 + t) / (10 + t))
        for name, tensor in source.state_dict().items():
            if tensor.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * tensor
        average.update()
    assert average.updates == 5 and average.current_decay() == pytest.approx(6 / 15)  # still warming up
    averaged = average.model.state_dict()
    for name, tensor in expected.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(averaged[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert int(averaged["1.num_batches_tracked"]) == 5  # counters are copied, not averaged
    assert not torch.equal(averaged["0.weight"], source.state_dict()["0.weight"])


def test_the_average_is_a_separate_frozen_network():
    source = network()
    average = WeightAverage(source, decay=0.5)
    assert all(not p.requires_grad for p in average.model.parameters())
    assert all(p.requires_grad for p in source.parameters())
    assert average.model[0].weight.data_ptr() != source[0].weight.data_ptr()


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="EMA decay"):
        WeightAverage(network(), decay)
