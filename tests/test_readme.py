"""The README's quick-start code runs as printed, and prints the right numbers.

The printed RPR and LPR curves are checked against an oracle that shares no code with the
library: the float64 Jacobian of the model at x (``torch.func.jacrev``, which is A[x] for this
bias-free network), its LAPACK SVD, and the projections of x and of the label map.
"""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _printed_tensors(text: str) -> list[torch.Tensor]:
    """The float lists inside every ``tensor([...])`` that was printed."""
    found = re.findall(r"tensor\(\[(.*?)\]", text, re.S)
    return [torch.tensor([float(v) for v in body.replace("\n", " ").split(",")]) for body in found]


def test_quick_start_block_prints_the_oracle_curves(capsys) -> None:
    text = README.read_text()
    quick = text[text.index("## Quick start") :]
    block = re.search(r"```python\n(.*?)```", quick, re.S)
    assert block, "no python block under 'Quick start'"
    torch.manual_seed(0)
    env: dict = {}
    exec(compile(block.group(1), "README quick start", "exec"), env)
    printed = _printed_tensors(capsys.readouterr().out)
    assert len(printed) == 2, "the RPR and the LPR curve"

    model, x = env["model"], env["x"]
    J = torch.func.jacrev(lambda v: model(v[None])[0])(x).reshape(10, -1)  # A[x], 10 x 784
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    assert torch.allclose(J @ x.reshape(-1), model(x[None])[0], rtol=1e-10)  # A[x]x = F(x)
    xf = x.reshape(-1)
    rpr = torch.cumsum((Vh @ xf) ** 2, 0) / xf.dot(xf)
    y = torch.full((10,), -2.0, dtype=torch.float64)
    y[3] = 2.0  # the paper's label map of class 3 (Eq. 13)
    lpr = torch.cumsum((U.T @ y) ** 2, 0) / y.dot(y)

    for name, got, want in (("RPR", printed[0], rpr), ("LPR", printed[1], lpr)):
        assert got.shape == (10,), name
        # torch prints 4 decimals: each printed value is the oracle rounded
        assert torch.allclose(got.double(), want, atol=6e-5), f"{name}: {got} vs {want}"
    assert torch.allclose(env["result"].S, S, rtol=1e-10)
    assert float(rpr[-1]) < 1.0  # x has a part outside the 10-D row space of A[x]
    assert abs(float(lpr[-1]) - 1.0) < 1e-12  # U_10 spans the whole 10-D output space
