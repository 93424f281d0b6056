"""Lanczos edge cases found by the solver benchmark, and the SumPool adjoint's fast upsampling."""

import torch
import torch.nn.functional as F

import rprselect
from rprselect.models import MNISTNet
from rprselect.rules import _upsample_nearest


def test_block_larger_than_the_output_space() -> None:
    """b = 16 on a 10-class network (m = 10) is capped to the matrix and still exact."""
    torch.manual_seed(0)
    model = MNISTNet(in_size=8).double().eval()
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    config = rprselect.SolverConfig(block_size=16)
    got = rprselect.svd(model, x, k=10, tol=1e-10, solver="lanczos", config=config)
    want = rprselect.svd(model, x, k=10, solver="dense")
    assert bool(got.converged.all())
    assert torch.allclose(got.S, want.S, rtol=1e-8)


def test_upsample_equals_interpolate() -> None:
    for shape in [(2, 3, 4), (2, 3, 4, 5), (1, 2, 3, 4, 5)]:
        z = torch.randn(shape)
        for k in (2, 3):
            assert torch.equal(_upsample_nearest(z, k), F.interpolate(z, scale_factor=float(k)))
