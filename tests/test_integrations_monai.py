"""RPRHandler: fires on the right epochs, publishes and writes the proposals, restores modes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

import rprselect
from rprselect.integrations import RPRHandler
from rprselect.models import PocketUNet
from rprselect.scoring import score
from rprselect.sliding import sliding_window_operator


def _ignite():
    return pytest.importorskip(
        "ignite.engine", reason="needs pytorch-ignite: pip install 'rprselect[monai]'"
    )


def _net() -> nn.Module:
    torch.manual_seed(0)
    return PocketUNet(in_channels=1, out_channels=2, dims=2, depth=2, filters=4)


def _pool(n: int, size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, *size, generator=torch.Generator().manual_seed(seed))


class _Spy(RPRHandler):
    """Records the network's mode while it scores."""

    modes: list[bool]

    def score(self, network):
        self.modes.append(network.training)
        return super().score(network)


def _run(handler: RPRHandler, net: nn.Module, epochs: int):
    """A plain ignite engine whose step trains ``net`` a little (no MONAI needed)."""
    ignite = _ignite()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    data = _pool(2, (8, 8), seed=7)

    def step(engine, batch):
        net.train()
        opt.zero_grad()
        net(batch).pow(2).mean().backward()
        opt.step()

    engine = ignite.Engine(step)
    engine.network = net  # as MONAI's trainers expose it
    handler.attach(engine)
    after: list[tuple[int, bool]] = []
    engine.add_event_handler(
        ignite.Events.EPOCH_COMPLETED, lambda e: after.append((e.state.epoch, net.training))
    )
    engine.run([data], max_epochs=epochs)
    return engine, after


def test_fires_every_second_epoch_and_writes_json(tmp_path):
    net = _net()
    pool = _pool(5, (8, 8))
    handler = _Spy(
        pool, every=2, n_propose=3, k=4, output_dir=tmp_path, solver="dense", strategy="lowest"
    )
    handler.modes = []
    engine, after = _run(handler, net, epochs=4)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rpr_epoch2.json",
        "rpr_epoch2.png",
        "rpr_epoch4.json",
        "rpr_epoch4.png",
    ], "the JSON and the proposals picture every time the handler fires"
    from PIL import Image

    assert Image.open(tmp_path / "rpr_epoch4.png").size[0] > 100
    assert sorted(handler.history_) == [2, 4]
    assert handler.modes == [False, False]  # scored in eval mode
    assert after == [(e, True) for e in range(1, 5)]  # train mode restored
    report = json.loads((tmp_path / "rpr_epoch4.json").read_text())
    assert report["epoch"] == 4 and report["k"] == 4 and report["n_scored"] == 5
    assert report["proposals"] == engine.state.rpr_proposals == handler.history_[4]

    # the epoch-4 proposals are the lowest RPRs of the final network, computed independently
    table = engine.state.rpr_scores
    result = rprselect.svd_batch(net, pool, k=4, solver="dense")
    expected = rprselect.rpr(result, pool)[:, -1].numpy()
    np.testing.assert_allclose(table.rpr, expected, rtol=1e-6)
    props = engine.state.rpr_proposals
    assert [p["index"] for p in props] == np.argsort(expected, kind="stable")[:3].tolist()
    assert [p["rank"] for p in props] == [1, 2, 3]
    assert all(p["converged"] for p in props)


def test_sliding_windows_cover_the_volume(tmp_path):
    """A window the size of the volume gives the whole-image scores; smaller ones differ."""
    net = _net()
    pool = _pool(3, (12, 8))
    whole = score(net, pool, k=3, solver="dense", progress=False)
    one = RPRHandler(pool, k=3, roi_size=(12, 8), solver="dense").score(net)
    np.testing.assert_allclose(one.rpr_curve, whole.rpr_curve, rtol=1e-5)
    handler = RPRHandler(
        pool,
        every=1,
        n_propose=5,
        k=3,
        roi_size=(8, 8),
        overlap=0.5,
        sw_batch_size=2,
        output_dir=tmp_path,
        solver="dense",
    )
    engine, _ = _run(handler, net, epochs=1)
    assert len(engine.state.rpr_proposals) == 3  # n_propose capped at the pool size
    report = json.loads((tmp_path / "rpr_epoch1.json").read_text())
    assert report["roi_size"] == [8, 8]
    windowed = engine.state.rpr_scores
    assert windowed.rpr_curve.shape == (3, 3) and windowed.converged.all()
    x = pool[0]
    op = sliding_window_operator(net, x, (8, 8), overlap=0.5)
    expected = rprselect.rpr(rprselect.svd(op, k=3, solver="dense"), x)
    np.testing.assert_allclose(windowed.rpr_curve[0], expected.numpy(), rtol=1e-5)


def test_monai_supervised_trainer_and_dict_dataset(tmp_path):
    pytest.importorskip("monai", reason="needs MONAI: pip install 'rprselect[monai]'")
    from monai.data import Dataset
    from monai.engines import SupervisedTrainer

    net = _net()
    images = _pool(4, (8, 8), seed=3)
    train = torch.utils.data.DataLoader(
        [{"image": x, "label": (x > 0.5).long()} for x in images], batch_size=2
    )
    pool = Dataset([{"img": x} for x in _pool(3, (8, 8))])
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=train,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), 1e-3),
        loss_function=lambda out, lab: nn.functional.cross_entropy(out, lab[:, 0]),
    )
    handler = RPRHandler(pool, every=1, n_propose=2, k=3, image_key="img", output_dir=tmp_path)
    handler.attach(trainer)
    trainer.run()
    assert sorted(handler.history_) == [1, 2]
    assert len(trainer.state.rpr_proposals) == 2 and net.training
    assert (tmp_path / "rpr_epoch2.json").exists()


def test_validation_and_missing_ignite(monkeypatch):
    pool = _pool(2, (8, 8))
    for kw, match in [
        ({"every": 0}, "every"),
        ({"n_propose": 0}, "n_propose"),
        ({"k": -1}, "k"),
        ({"overlap": 1.0}, "overlap"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"roi_size": 8}, "roi_size"),
        ({"roi_size": (8.0, 8.0)}, "roi_size"),
        ({"mode": "linear"}, "mode"),
    ]:
        with pytest.raises(ValueError, match=match):
            RPRHandler(pool, **kw)

    class NoNetwork:
        class state:
            epoch = 1

    with pytest.raises(TypeError, match="engine.network"):
        RPRHandler(pool)(NoNetwork())
    monkeypatch.setitem(sys.modules, "ignite.engine", None)
    with pytest.raises(ImportError, match=r"rprselect\[monai\]"):
        RPRHandler(pool).attach(object())
