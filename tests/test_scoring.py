"""Tests of pool scoring: every pool kind, batch-size independence, oracles, bad inputs."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from cli_models import tiny_cnn, tiny_seg3d
from torch.utils.data import DataLoader, Dataset

import rprselect
from rprselect.scoring import ScoreTable, default_batch_size, score


class ListDataset(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_cnn().double()


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    return torch.rand(11, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module")
def reference(model, pool) -> ScoreTable:
    return score(model, pool, k=4, solver="dense", progress=False)


def test_matches_direct_svd_per_sample(model, pool, reference) -> None:
    for i in range(len(pool)):
        res = rprselect.svd(model, pool[i], k=4, solver="dense")
        want = rprselect.rpr(res, pool[i]).numpy()
        np.testing.assert_allclose(
            reference.rpr_curve[i], want, rtol=1e-10, atol=1e-12, err_msg=f"sample {i}"
        )
        np.testing.assert_allclose(reference.singular_values[i], res.S.numpy(), rtol=1e-10)
    assert reference.ids == [str(i) for i in range(len(pool))]
    assert (np.diff(reference.rpr_curve, axis=1) >= -1e-12).all(), "RPR must grow with rank"
    assert ((reference.rpr >= 0) & (reference.rpr <= 1 + 1e-12)).all()
    assert reference.converged.all() and (reference.max_residual < 1e-8).all()
    assert (reference.n_products == 5).all()  # dense: min(m, n) = 5 products per sample
    assert (reference.batch_seconds > 0).all() and (reference.batch_size >= 1).all()
    np.testing.assert_allclose(reference.input_norm, pool.flatten(1).norm(dim=1).numpy())


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_scores(model, pool, reference, batch_size) -> None:
    t = score(model, pool, k=4, solver="dense", batch_size=batch_size, progress=False)
    np.testing.assert_allclose(t.rpr_curve, reference.rpr_curve, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t.singular_values, reference.singular_values, rtol=1e-10)


def _pools(pool: torch.Tensor) -> dict[str, object]:
    labels = list(range(len(pool)))
    return {
        "ndarray": pool.numpy(),
        "dataset": ListDataset(list(pool)),
        "tuples": ListDataset([(x, y) for x, y in zip(pool, labels, strict=True)]),
        "dicts": ListDataset([{"img": x, "label": y} for x, y in zip(pool, labels, strict=True)]),
        "loader": DataLoader(
            ListDataset([(x, y) for x, y in zip(pool, labels, strict=True)]), batch_size=4
        ),
        "dict_loader": DataLoader(ListDataset([{"img": x} for x in pool]), batch_size=5),
    }


@pytest.mark.parametrize("kind", ["ndarray", "dataset", "tuples", "dicts", "loader", "dict_loader"])
def test_every_pool_kind_gives_the_same_scores(model, pool, reference, kind) -> None:
    t = score(
        model,
        _pools(pool)[kind],
        k=4,
        solver="dense",
        progress=False,
        image_key="img",
        batch_size=3,
    )
    assert t.ids == reference.ids
    np.testing.assert_array_equal(t.index, np.arange(len(pool)))
    np.testing.assert_allclose(t.rpr_curve, reference.rpr_curve, rtol=1e-10, atol=1e-12)


def test_dict_item_without_the_key_is_named(model, pool) -> None:
    with pytest.raises(ValueError, match="image_key 'image'.*'img'"):
        score(model, ListDataset([{"img": x} for x in pool]), k=2, progress=False)


def test_float32_pool_is_cast_to_the_model_dtype(model, pool, reference) -> None:
    t = score(model, pool.float(), k=4, solver="dense", progress=False)
    np.testing.assert_allclose(t.rpr, reference.rpr, rtol=1e-5)


def test_lanczos_in_lockstep_agrees_with_dense(model, pool, reference) -> None:
    t = score(model, pool, k=2, tol=1e-8, solver="lanczos", batch_size=4, progress=False)
    assert t.converged.all()
    np.testing.assert_allclose(t.rpr_curve, reference.rpr_curve[:, :2], rtol=1e-6, atol=1e-8)


def test_labels_add_lpr_matching_the_metric(model, pool) -> None:
    labels = np.arange(len(pool)) % 5
    t = score(model, pool, k=5, solver="dense", labels=labels, progress=False)
    assert t.lpr_curve is not None and t.lpr_curve.shape == (len(pool), 5)
    for i in (0, 7):
        res = rprselect.svd(model, pool[i], k=5, solver="dense")
        want = rprselect.lpr(res, rprselect.label_logits(int(labels[i]), 5)).numpy()
        np.testing.assert_allclose(t.lpr_curve[i], want, rtol=1e-10)
    # 5 classes and rank 5: U spans the whole label space, so LPR is exactly 1 (paper 2.1)
    np.testing.assert_allclose(t.lpr, 1.0, rtol=1e-9)
    assert "lpr" in t.columns


def test_labels_need_a_classifier() -> None:
    vol = torch.rand(2, 1, 4, 4, 4, dtype=torch.float64) + 0.1
    with pytest.raises(ValueError, match="classifier whose output has shape"):
        score(tiny_seg3d().double(), vol, k=2, labels=[0, 1], progress=False)


def test_labels_of_the_wrong_length(model, pool) -> None:
    with pytest.raises(ValueError, match="one entry per pool sample"):
        score(model, pool, k=2, labels=[0, 1], progress=False)


def test_k_too_large_surfaces_the_svd_error(model, pool) -> None:
    with pytest.raises(ValueError, match=r"k must satisfy 0 < k <= min\(m, n\) = 5, got 6"):
        score(model, pool, k=6, progress=False)


def test_empty_pool_is_rejected(model) -> None:
    with pytest.raises(ValueError, match="pool must not be empty"):
        score(model, torch.empty(0, 1, 8, 8, dtype=torch.float64), progress=False)
    with pytest.raises(ValueError, match="pool must not be empty"):
        score(model, ListDataset([]), progress=False)


def test_wrong_shape_item_names_its_index_and_shape(model, pool) -> None:
    items = list(pool[:5])
    items[3] = torch.rand(1, 7, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"index 3\) of shape \(1, 7, 7\) could not be scored"):
        score(model, ListDataset(items), k=2, progress=False)


def test_odd_shape_fails_alone_and_the_rest_is_scored(model, pool) -> None:
    """Samples are grouped by shape: one the model cannot take fails, the others don't."""
    items = list(pool[:5])
    items[0] = torch.rand(1, 7, 7, dtype=torch.float64)  # first: it used to set the shape
    with pytest.warns(UserWarning, match="1 sample"):
        t = score(model, ListDataset(items), k=2, errors="record", progress=False)
    assert t.ids == ["1", "2", "3", "4"]
    assert [(f.id, f.index) for f in t.failures] == [("0", 0)]
    assert "rejected by the model" in t.failures[0].reason
    want = score(model, pool[1:5], k=2, progress=False)
    np.testing.assert_array_equal(t.rpr_curve, want.rpr_curve)


def test_fully_convolutional_model_scores_every_shape(pool) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1, bias=False), torch.nn.ReLU()
    ).double()
    items = [pool[0], torch.rand(1, 6, 5, dtype=torch.float64), pool[1]]
    t = score(net, ListDataset(items), k=2, solver="dense", progress=False)
    assert t.ids == ["0", "1", "2"] and not t.failures
    for i, x in enumerate(items):
        want = rprselect.rpr(rprselect.svd(net, x, k=2, solver="dense"), x).numpy()
        np.testing.assert_allclose(t.rpr_curve[i], want, rtol=1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_item_names_its_id(model, pool, bad) -> None:
    X = pool[:4].clone()
    X[2, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="'scan-c'.*NaN or Inf"):
        score(model, X, k=2, ids=["scan-a", "scan-b", "scan-c", "scan-d"], progress=False)


def test_all_zero_item_names_its_id(model, pool) -> None:
    X = pool[:4].clone()
    X[1] = 0
    with pytest.raises(ValueError, match="'1'.*all zeros"):
        score(model, X, k=2, progress=False)


def test_bad_items_can_be_recorded_instead(model, pool) -> None:
    X = pool[:5].clone()
    X[1] = float("nan")
    with pytest.warns(UserWarning, match=r"1 sample\(s\) could not be scored.*1: holds NaN"):
        t = score(model, X, k=2, errors="record", progress=False)
    assert t.ids == ["0", "2", "3", "4"]
    assert [(f.id, f.index) for f in t.failures] == [("1", 1)]


def test_unconverged_samples_get_one_summary_warning(model, pool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = score(model, pool[:6], k=3, tol=1e-300, solver="dense", batch_size=2, progress=False)
    assert not t.converged.any()
    mine = [w for w in caught if issubclass(w.category, rprselect.NotConvergedWarning)]
    assert len(mine) == 1, [str(w.message) for w in mine]
    assert "6 of 6 samples" in str(mine[0].message) and "0, 1, 2, 3, 4, 5" in str(mine[0].message)


def test_duplicate_or_short_ids_are_rejected(model, pool) -> None:
    with pytest.raises(ValueError, match="ids must be unique"):
        score(model, pool[:3], ids=["a", "a", "b"], progress=False)
    with pytest.raises(ValueError, match="one entry per sample"):
        score(model, pool[:3], ids=["a"], progress=False)


def test_bad_arguments(model, pool) -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        score(lambda x: x, pool, progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pool must be"):
        score(model, [1, 2, 3], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        score(model, pool, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="tol"):
        score(model, pool, tol=0.0, progress=False)
    with pytest.raises(ValueError, match="solver must be one of"):
        score(model, pool, solver="svds", progress=False)


def test_default_batch_size_follows_the_sample_size() -> None:
    assert default_batch_size(28 * 28) == 64
    assert default_batch_size(64**3) == 4
    assert default_batch_size(4 * 128**3) == 1
    # a small pool is cut into at least ~8 batches, so that the progress bar moves (30 small
    # images used to be one batch of 30, with the bar at 0% until the end)
    assert default_batch_size(32 * 32, 30) == 4
    assert default_batch_size(32 * 32, 10_000) == 64
    assert default_batch_size(64**3, 3) == 1


def test_progress_bar_moves_during_a_small_pool(model, pool, monkeypatch) -> None:
    updates: list[int] = []

    class Bar:
        def update(self, n: int = 1) -> None:
            updates.append(n)

        def close(self) -> None:
            pass

    monkeypatch.setattr("rprselect.scoring.progress_bar", lambda *a, **k: Bar())
    score(model, pool, k=2)
    assert sum(updates) == len(pool) and len(updates) >= 5, updates


def test_progress_without_tqdm_still_scores(model, pool, reference, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    t = score(model, pool, k=4, solver="dense", progress=True)
    np.testing.assert_allclose(t.rpr, reference.rpr, rtol=1e-10)


def test_progress_bar_reports_samples(model, pool, capsys) -> None:
    pytest.importorskip("tqdm")
    score(model, pool, k=2, progress=True)
    assert "sample/s" in capsys.readouterr().err


# -- the table ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labelled(model, pool) -> ScoreTable:
    return score(
        model,
        pool,
        k=3,
        solver="dense",
        labels=np.arange(len(pool)) % 5,
        ids=[f"img{i:02d}" for i in range(len(pool))],
        progress=False,
    )


def test_csv_round_trip_is_exact(labelled, tmp_path) -> None:
    path = tmp_path / "s.csv"
    labelled.ranked().to_csv(path)
    back = ScoreTable.from_csv(path)
    want = labelled.ranked()
    assert back.ids == want.ids
    for name in (
        "index",
        "rpr_curve",
        "singular_values",
        "converged",
        "max_residual",
        "n_products",
        "batch_seconds",
        "batch_size",
        "input_norm",
        "lpr_curve",
        "logits",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(want, name), err_msg=name)


def test_minimal_csv_with_id_and_rpr(tmp_path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,rpr\na,0.5\nb,0.25\n")
    t = ScoreTable.from_csv(path)
    assert t.ids == ["a", "b"] and t.k == 1
    np.testing.assert_array_equal(t.rpr, [0.5, 0.25])
    path.write_text("id,score\na,0.5\n")
    with pytest.raises(ValueError, match="must have columns id and rpr"):
        ScoreTable.from_csv(path)


def test_ranked_columns_json_and_pandas(labelled, tmp_path) -> None:
    r = labelled.ranked()
    assert (np.diff(r["rpr"]) >= 0).all()
    assert sorted(r.ids) == sorted(labelled.ids)
    assert isinstance(labelled["id"], np.ndarray) and labelled["id"][3] == "img03"
    np.testing.assert_array_equal(labelled["rpr"], labelled.rpr_curve[:, -1])
    with pytest.raises(KeyError, match="column must be one of"):
        labelled["nope"]
    labelled.to_json(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["k"] == 3 and len(data["rows"]) == len(labelled)
    assert data["rows"][0]["id"] == "img00" and len(data["rows"][0]["lpr_curve"]) == 3
    pytest.importorskip("pandas")
    df = labelled.to_pandas()
    assert list(df["id"]) == labelled.ids
    np.testing.assert_array_equal(df["rpr_3"], labelled.rpr)


def test_to_pandas_names_the_extra(labelled, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"rprselect\[extras\]"):
        labelled.to_pandas()


def test_sliding_windows_with_options(tmp_path) -> None:
    sliding = pytest.importorskip("rprselect.sliding")
    model = tiny_seg3d().double()
    vols = [
        torch.rand(1, 10, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        for i in range(2)
    ]
    opts = {"overlap": 0.5, "mode": "gaussian"}
    t = score(
        model,
        ListDataset(vols),
        k=2,
        solver="lanczos",
        tol=1e-8,
        roi_size=(8, 8, 8),
        sliding=opts,
        progress=False,
        cache=str(tmp_path / "c.jsonl"),
    )
    for i, x in enumerate(vols):
        op = sliding.sliding_window_operator(model, x, (8, 8, 8), **opts)
        want = rprselect.rpr(rprselect.svd(op, k=2, tol=1e-8, solver="lanczos"), x).numpy()
        np.testing.assert_allclose(t.rpr_curve[i], want, rtol=1e-6)
    with pytest.raises(ValueError, match="another model or other settings \\(window: "):
        score(
            model,
            ListDataset(vols),
            k=2,
            solver="lanczos",
            tol=1e-8,
            roi_size=(8, 8, 8),
            progress=False,
            cache=str(tmp_path / "c.jsonl"),
        )
    with pytest.raises(ValueError, match="sliding options need roi_size"):
        score(model, ListDataset(vols), k=2, sliding=opts, progress=False)


def test_graph_traced_once_per_call(model, pool, monkeypatch) -> None:
    """Trace once per score() call, reused by every batch (and every window group)."""
    import importlib

    lin = importlib.import_module("rprselect.linearize")  # the package's name is the function
    calls = []
    real = lin.trace
    monkeypatch.setattr(lin, "trace", lambda m: calls.append(1) or real(m))
    t = score(model, pool, k=2, batch_size=2, solver="lanczos", progress=False)
    assert len(t) == len(pool) and len(calls) == 1, f"{len(calls)} traces for {len(pool)} samples"
    calls.clear()
    seg = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1, bias=False)).double()
    vols = torch.rand(2, 1, 8, 8, 8, dtype=torch.float64)
    score(seg, vols, k=2, roi_size=(4, 4, 4), sliding={"sw_batch_size": 2}, progress=False)
    assert len(calls) == 1, "8 windows in 4 groups per volume, 2 volumes: one trace"


def test_settings_object_equals_keywords_and_validates_once(model, pool) -> None:
    from rprselect import ScoreSettings

    s = ScoreSettings(k=2, solver="dense")
    a = score(model, pool, settings=s, progress=False)
    b = score(model, pool, k=2, solver="dense", progress=False)
    np.testing.assert_array_equal(a.rpr_curve, b.rpr_curve)
    with pytest.raises(TypeError, match=r"either settings= or its keywords.*\['k'\]"):
        score(model, pool, settings=s, k=3, progress=False)
    # one rule: wrong type -> TypeError, right type out of range -> ValueError
    with pytest.raises(TypeError, match="k must be an int or None, got str 'a'"):
        score(model, pool, k="a", progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="k must be an int"):
        rprselect.svd(model, pool[0], k="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        ScoreSettings(k=0)
    with pytest.raises(ValueError, match="device must name a torch device.*'banana'"):
        ScoreSettings(device="banana")
    with pytest.raises(ValueError, match="sliding options need roi_size"):
        ScoreSettings(sliding={"overlap": 0.5})
    assert s.fingerprint(model) == ScoreSettings(k=2, solver="dense", batch_size=7).fingerprint(
        model
    ), "batch size and device do not change the numbers, so not the cache key"


def test_k_adapts_to_a_binary_classifier_and_says_so(pool) -> None:
    from rprselect.engine import RankChoiceWarning

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 2, bias=False),
    ).double()
    with pytest.warns(RankChoiceWarning, match="using k=2"):
        t = score(net, pool[:3], progress=False)
    assert t.k == 2 and t.logits is not None and t.logits.shape == (3, 2)
    with pytest.raises(ValueError, match=r"k must satisfy 0 < k <= min\(m, n\) = 2, got 10"):
        score(net, pool[:3], k=10, progress=False)
