from __future__ import annotations

import torch

from edgeship.pruning import count
from edgeship.zoo import build


def test_the_stride_2_stem_keeps_the_weights_and_runs_every_stage_on_a_quarter_of_the_pixels() -> None:
    """``resnet_small_s2`` is a distillation student of ``resnet_small``: same layers, a quarter of the MACs."""
    full = build("resnet_small", in_channels=1, num_classes=10, width=8).eval()
    small = build("resnet_small_s2", in_channels=1, num_classes=10, width=8).eval()
    assert [p.shape for p in full.parameters()] == [p.shape for p in small.parameters()]
    x = torch.randn(2, 1, 28, 28)
    assert small(x).shape == (2, 10)
    ratio = count(small, x[:1])[0] / count(full, x[:1])[0]
    assert 0.2 < ratio < 0.3
