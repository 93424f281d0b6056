"""Tests of the reference networks: shapes, no biases, fx traceability, homogeneity."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from rprselect.models import MNISTNet, PocketUNet, SimpleCNN


def _assert_bias_free(model: nn.Module) -> None:
    names = [name for name, _ in model.named_parameters()]
    assert names, "model has no parameters"
    bad = [name for name in names if not name.endswith("weight")]
    assert not bad, f"parameters that are not weights: {bad}"
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            assert module.bias is None, f"{name} has a bias"


class TestMNISTNet:
    def test_shape_28(self) -> None:
        assert MNISTNet()(torch.randn(3, 1, 28, 28)).shape == (3, 10)

    def test_shape_digits(self) -> None:
        net = MNISTNet(in_size=8)
        assert net.fc1.in_features == 64 * 2 * 2
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)

    def test_bias_free(self) -> None:
        _assert_bias_free(MNISTNet())
        _assert_bias_free(MNISTNet(dropout=0.5))

    def test_fx_traceable(self) -> None:
        net = MNISTNet().eval()
        gm = fx.symbolic_trace(net)
        x = torch.randn(2, 1, 28, 28)
        torch.testing.assert_close(gm(x), net(x))
        assert not any(isinstance(m, nn.Dropout) for m in net.modules())

    def test_dropout_modules_and_mc(self) -> None:
        net = MNISTNet(dropout=0.5)
        assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 2
        fx.symbolic_trace(net)
        x = torch.randn(1, 1, 28, 28)
        net.train()
        torch.manual_seed(0)
        a = net(x)
        b = net(x)
        assert not torch.equal(a, b), "dropout in train mode should be stochastic"
        net.eval()
        torch.testing.assert_close(net(x), net(x))

    def test_homogeneous(self) -> None:
        torch.manual_seed(0)
        net = MNISTNet().double().eval()
        x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
        torch.testing.assert_close(net(2 * x), 2 * net(x), rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"dropout": 1.0}, "dropout"),
            ({"dropout": -0.1}, "dropout"),
            ({"in_size": 10}, "in_size"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, float], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            MNISTNet(**kwargs)  # type: ignore[arg-type]


class TestPocketUNet:
    def test_shape_2d(self) -> None:
        net = PocketUNet(in_channels=2, out_channels=3, dims=2, depth=3, filters=4)
        assert net(torch.randn(2, 2, 16, 8)).shape == (2, 3, 16, 8)

    def test_shape_3d(self) -> None:
        net = PocketUNet(in_channels=4, out_channels=2, dims=3, depth=3, filters=4)
        assert net(torch.randn(1, 4, 8, 12, 4)).shape == (1, 2, 8, 12, 4)

    def test_paper_defaults_structure(self) -> None:
        net = PocketUNet()
        assert net.depth == 5 and net.filters == 32 and net.size_multiple == 16
        convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
        # 5 encoder + 4 decoder levels of 2 convolutions, plus the 1x1 head.
        assert len(convs) == 9 * 2 + 1
        assert {c.out_channels for c in convs[:-1]} == {32}
        allowed = (PocketUNet, nn.ModuleList, nn.Sequential, nn.Conv3d, nn.ReLU)
        leaves = [type(m).__name__ for m in net.modules() if not isinstance(m, allowed)]
        assert set(leaves) == {"SumPool", "NearestUpsample"}

    def test_bias_free(self) -> None:
        _assert_bias_free(PocketUNet(dims=2, depth=3, filters=4))
        _assert_bias_free(PocketUNet(dims=3, depth=2, filters=4))

    @pytest.mark.parametrize("dims", [2, 3])
    def test_fx_traceable(self, dims: int) -> None:
        net = PocketUNet(in_channels=1, out_channels=2, dims=dims, depth=3, filters=4)
        gm = fx.symbolic_trace(net)
        x = torch.randn((1, 1) + (8,) * dims)
        torch.testing.assert_close(gm(x), net(x))
        targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
        assert torch.cat in targets

    def test_bad_spatial_size(self) -> None:
        net = PocketUNet(in_channels=1, dims=2, depth=3, filters=2)
        with pytest.raises(ValueError, match=r"divisible by 2\*\*\(depth-1\) = 4.*\(8, 6\)"):
            net(torch.randn(1, 1, 8, 6))

    def test_bad_channels_and_rank(self) -> None:
        net = PocketUNet(in_channels=1, dims=2, depth=2, filters=2)
        with pytest.raises(ValueError, match="1 channels"):
            net(torch.randn(1, 3, 8, 8))
        with pytest.raises(ValueError, match="shape"):
            net(torch.randn(1, 1, 8, 8, 8))

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="dims"):
            PocketUNet(dims=1)
        with pytest.raises(ValueError, match="depth"):
            PocketUNet(depth=0)
        with pytest.raises(TypeError, match="filters"):
            PocketUNet(filters=2.0)  # type: ignore[arg-type]

    @pytest.mark.parametrize("dims", [2, 3])
    def test_homogeneous(self, dims: int) -> None:
        torch.manual_seed(0)
        net = PocketUNet(in_channels=2, out_channels=2, dims=dims, depth=3, filters=4)
        net = net.double()
        x = torch.randn((2, 2) + (8,) * dims, dtype=torch.float64)
        torch.testing.assert_close(net(2 * x), 2 * net(x), rtol=1e-5, atol=1e-5)


class TestSimpleCNN:
    def test_shape_and_biases(self) -> None:
        net = SimpleCNN().eval()
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert net.conv1.bias is not None and net.fc1.bias is not None
        assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert any(isinstance(m, nn.MaxPool2d) for m in net.modules())

    def test_fx_traceable(self) -> None:
        net = SimpleCNN().eval()
        gm = fx.symbolic_trace(net)
        x = torch.randn(2, 1, 28, 28)
        torch.testing.assert_close(gm(x), net(x))
