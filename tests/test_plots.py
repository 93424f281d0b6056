"""Pictures of the proposals: what the montage and the histogram show, the CLI's --plot, and the
MONAI handler's PNG at every firing; the core imports without matplotlib."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rprselect
from rprselect.cli import main
from rprselect.models import PocketUNet
from rprselect.plots import middle_slice, plot_proposals, predicted_labels

pytest.importorskip("matplotlib", reason="needs matplotlib: pip install 'rprselect[extras]'")


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256, 3, bias=False),
    )


def _pool(n: int = 10) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _rpr_of_title(title: str) -> float:
    m = re.search(r"RPR ([-+0-9.e]+)", title)
    assert m, title
    return float(m.group(1))


def test_montage_titles_histogram_and_marks_hold_the_values(tmp_path):
    net, X = _classifier(), _pool()
    table = rprselect.score(net, X, k=2, progress=False)
    sel = rprselect.select(table, 4)
    path = tmp_path / "sub" / "proposals.png"
    fig = plot_proposals(table, sel, X, model=net, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tiles, hist = fig.axes[:-1], fig.axes[-1]
    assert len(tiles) == 4
    for ax, sid, index, value in zip(tiles, sel.ids, sel.indices, sel.scores, strict=True):
        assert f" {sid}\n" in ax.get_title()
        assert _rpr_of_title(ax.get_title()) == pytest.approx(float(value), rel=1e-3)
        shown = ax.images[0].get_array()
        np.testing.assert_array_equal(np.asarray(shown), X[int(index), 0].numpy())
        pred = int(net(X[int(index)][None])[0].argmax())
        assert ax.get_title().endswith(f"pred {pred}")
    assert sum(p.get_height() for p in hist.patches) == len(table)
    marks = sorted(float(line.get_xdata()[0]) for line in hist.lines)
    np.testing.assert_allclose(marks, np.sort(sel.scores))


def test_ids_mapping_max_images_and_histogram_only(tmp_path):
    net, X = _classifier(), _pool()
    ids = [f"img{i}.png" for i in range(len(X))]
    table = rprselect.score(net, X, k=2, progress=False, ids=ids)
    chosen = list(table.ranked().ids[:5])
    fig = plot_proposals(table, chosen, {sid: X[i] for i, sid in enumerate(ids)}, max_images=3)
    assert len(fig.axes) == 4
    assert [_rpr_of_title(ax.get_title()) for ax in fig.axes[:3]] == pytest.approx(
        table.ranked().rpr[:3].tolist(), rel=1e-3
    )
    assert len(fig.axes[-1].lines) == 5  # every proposal is marked, shown or not
    only = plot_proposals(table, chosen)
    assert len(only.axes) == 1
    with pytest.raises(ValueError, match="not in the table"):
        plot_proposals(table, ["nope"])
    with pytest.raises(ValueError, match="max_images"):
        plot_proposals(table, chosen, max_images=0)
    with pytest.raises(TypeError, match="images must be"):
        plot_proposals(table, chosen, images=3.5)


def test_volume_middle_axial_slice_and_prediction_overlay():
    torch.manual_seed(0)
    net = PocketUNet(in_channels=1, out_channels=2, dims=3, depth=2, filters=4)
    x = torch.rand(1, 8, 6, 10, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(middle_slice(x), x[0, :, :, 5].numpy())
    with pytest.raises(ValueError, match="shape"):
        middle_slice(torch.zeros(1, 2, 2, 2, 2))
    labels = predicted_labels(net, x)
    assert isinstance(labels, np.ndarray) and labels.shape == (8, 6, 10)
    np.testing.assert_array_equal(labels, net(x[None])[0].argmax(0).numpy())
    X = x[None].repeat(3, 1, 1, 1, 1) * torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1, 1, 1)
    X[1] = torch.rand(1, 8, 6, 10, generator=torch.Generator().manual_seed(2))
    table = rprselect.score(net, X, k=2, progress=False)
    fig = plot_proposals(table, rprselect.select(table, 2), X, model=net)
    ax = fig.axes[0]
    index = int(rprselect.select(table, 2).indices[0])
    np.testing.assert_array_equal(ax.images[0].get_array(), np.rot90(X[index, 0, :, :, 5].numpy()))
    overlay = ax.images[1].get_array()
    want = np.rot90(net(X[index][None])[0].argmax(0).numpy()[:, :, 5])
    np.testing.assert_array_equal(np.ma.filled(overlay, 0), want)


def test_cli_select_plot(tmp_path, capsys):
    from PIL import Image

    net, X = _classifier(), _pool(6)
    folder = tmp_path / "pool"
    folder.mkdir()
    for i, x in enumerate(X):
        np.save(folder / f"s{i}.npy", x.numpy())
    table = rprselect.score(net, X, k=2, progress=False, ids=[f"s{i}.npy" for i in range(6)])
    table.ranked().to_csv(tmp_path / "scores.csv")
    png = tmp_path / "proposals.png"
    code = main(
        ["select", "--scores", str(tmp_path / "scores.csv"), "--n", "3", "--plot", str(png)]
        + ["--pool", str(folder), "--strategy", "lowest"]
    )
    assert code == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[1].split(",")[1] == table.ranked().ids[0]  # the lowest RPR
    assert out.err.strip() == f"wrote {png}"
    width, height = Image.open(png).size
    assert width > 400 and height > 300
    assert main(["select", "--scores", str(tmp_path / "scores.csv"), "--n", "2", "--plot",
                 str(png), "--weights", "w.pt"]) == 2  # fmt: skip


def test_monai_handler_writes_the_png_every_time_it_fires(tmp_path):
    ignite = pytest.importorskip("ignite.engine", reason="needs pytorch-ignite")
    from rprselect.integrations import RPRHandler

    net, X = _classifier(), _pool(6)
    engine = ignite.Engine(lambda e, b: None)
    engine.network = net  # type: ignore[attr-defined]
    handler = RPRHandler(X, every=1, n_propose=2, k=2, output_dir=tmp_path, plot=True)
    handler.attach(engine)
    engine.run([0], max_epochs=2)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["rpr_epoch1.png", "rpr_epoch2.png"]
    assert (tmp_path / "rpr_epoch2.png").read_bytes()[:4] == b"\x89PNG"


def test_core_and_plots_import_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import rprselect, rprselect.plots\n"
        "import torch\n"
        "net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)\n"
        "t = rprselect.score(net, torch.rand(2, 1, 4, 4), k=1, progress=False)\n"
        "try:\n    rprselect.plots.plot_proposals(t, t.ids[:1])\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rprselect[extras]" in out.stdout
    assert Path(rprselect.plots.__file__).name == "plots.py"


def test_cli_select_plot_with_a_model_of_the_current_folder(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    (tmp_path / "tinynets.py").write_text(
        "from torch import nn\n\n\ndef seg():\n"
        "    return nn.Conv2d(1, 2, 3, padding=1, bias=False)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    X = _pool(4)
    for i, x in enumerate(X):
        np.save(tmp_path / f"v{i}.npy", x.numpy())
    net = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    table = rprselect.score(net, X, k=2, progress=False, ids=[f"v{i}.npy" for i in range(4)])
    table.ranked().to_csv(tmp_path / "s.csv")
    argv = ["select", "--scores", "s.csv", "--n", "2", "--plot", "p.png", "--out", "p.csv"]
    argv += ["--pool", "v*.npy", "--model", "tinynets:seg", "--weights", "w.pt"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
