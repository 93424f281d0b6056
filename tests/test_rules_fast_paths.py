"""The float32 fast paths of the convolution rule against PyTorch's own operators.

The dense oracle runs in float64, where these paths are not taken: a stride-1 convolution's
adjoint as a convolution with the flipped kernel, and oneDNN for CPU float32 blocks.
"""

import pytest
import torch
import torch.nn.functional as F

from rprselect.rules import Conv

CASES = {
    "3d": dict(shape=(4, 6, 7, 5), out=5, k=3, stride=1, padding=1, dilation=1, groups=1),
    "2d-dilated-grouped": dict(
        shape=(4, 9, 9), out=6, k=3, stride=1, padding=2, dilation=2, groups=2
    ),
    "2d-strided": dict(shape=(3, 9, 8), out=4, k=3, stride=2, padding=1, dilation=1, groups=1),
    "1d-valid": dict(shape=(2, 11), out=3, k=5, stride=1, padding=0, dilation=1, groups=1),
    "3d-pointwise": dict(shape=(8, 6, 7, 5), out=2, k=1, stride=1, padding=0, dilation=1, groups=1),
}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@pytest.mark.parametrize("name", list(CASES))
def test_conv_rule_matches_torch_in_float32(name: str) -> None:
    c = CASES[name]
    shape, d = c["shape"], len(c["shape"]) - 1
    g = torch.Generator().manual_seed(0)
    w = torch.randn(c["out"], shape[0] // c["groups"], *([c["k"]] * d), generator=g)
    rule = Conv("conv", shape, w, c["stride"], c["padding"], c["dilation"], c["groups"])
    t = torch.randn(3, *shape, generator=g)
    args = (None, c["stride"], c["padding"], c["dilation"], c["groups"])
    want = CONV[d](t, w, *args)
    got = rule(t)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    z = torch.randn_like(want)
    back = rule.adjoint(z)[0]
    want_back = CONV_T[d](
        z, w, None, c["stride"], c["padding"], rule.output_padding, c["groups"], c["dilation"]
    )
    assert back.shape == t.shape
    assert torch.allclose(back, want_back, rtol=1e-5, atol=1e-5 * want_back.abs().max().item())
    lhs, rhs = (got * z).sum().double(), (t * back).sum().double()
    assert abs(lhs - rhs) <= 1e-5 * got.norm() * z.norm()
    assert rule.use_flipped == (c["stride"] == 1)
