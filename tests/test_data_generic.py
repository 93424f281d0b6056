"""Generic loaders: the MedMNIST .npz layout and PNG segmentation pairs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rprselect.data.generic import NpzData, SegData, load_npz, load_pngseg

Image = pytest.importorskip("PIL.Image")


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _medmnist(rng: np.random.Generator, shape: tuple[int, ...], n: tuple[int, int, int]) -> dict:
    out = {}
    for split, size in zip(("train", "val", "test"), n, strict=True):
        out[f"{split}_images"] = rng.integers(0, 256, (size, *shape), dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 3, (size, 1)).astype(np.uint8)
    return out


class TestLoadNpz:
    def test_uint8_channels_last_values(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        arrays = _medmnist(rng, (6, 5, 3), (7, 2, 4))
        arrays["test_labels"][0, 0] = 6  # an imbalanced, sparse label set: 7 classes
        data = load_npz(_npz(tmp_path / "d.npz", **arrays))
        assert isinstance(data, NpzData)
        assert data.train_x.shape == (7, 3, 6, 5) and data.train_x.dtype == torch.float32
        assert data.test_y.dtype == torch.int64 and data.test_y.shape == (4,)
        assert data.num_classes == 7
        want = arrays["train_images"][2, 4, 1, 2] / 255.0  # sample 2, row 4, col 1, channel 2
        assert float(data.train_x[2, 2, 4, 1]) == pytest.approx(want, abs=1e-7)
        assert data.val_y.tolist() == arrays["val_labels"][:, 0].tolist()
        assert sum(data.class_counts("test")) == 4 and data.class_counts("test")[6] == 1

    def test_grey_and_channels_first_and_float(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(1)
        grey = _medmnist(rng, (8, 8), (3, 1, 2))
        d = load_npz(_npz(tmp_path / "g.npz", **grey))
        assert d.train_x.shape == (3, 1, 8, 8)
        assert torch.equal(d.train_x[:, 0] * 255, torch.from_numpy(grey["train_images"]).float())
        chw = {
            k: (v.astype(np.float32)[:, None].repeat(2, 1) / 255 if "images" in k else v[:, 0])
            for k, v in grey.items()
        }
        d2 = load_npz(_npz(tmp_path / "c.npz", **chw))
        assert d2.train_x.shape == (3, 2, 8, 8)
        assert torch.allclose(d2.train_x[:, 1], d.train_x[:, 0])

    def test_missing_key_is_named(self, tmp_path: Path) -> None:
        arrays = _medmnist(np.random.default_rng(2), (4, 4), (2, 1, 1))
        del arrays["val_labels"]
        with pytest.raises(ValueError, match=r"missing \['val_labels'\]"):
            load_npz(_npz(tmp_path / "m.npz", **arrays))

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("train_images", np.zeros((2, 4), np.uint8), "3 or 4 dimensions"),
            ("train_images", np.zeros((2, 4, 4, 4), np.uint8), "cannot tell the channel axis"),
            ("train_images", np.full((2, 4, 4), 2.0), r"must lie in \[0, 1\]"),
            ("train_images", np.full((2, 4, 4), np.nan), "finite"),
            ("train_labels", np.zeros((2, 3), np.uint8), "multi-label"),
            ("train_labels", np.zeros(5, np.uint8), r"one label per image \(2\)"),
            ("train_labels", np.array([0.5, 1.0]), "whole class indices"),
            ("train_labels", np.array([-1, 0]), ">= 0"),
            ("test_images", np.zeros((1, 5, 5), np.uint8), "sample shape"),
        ],
    )
    def test_bad_arrays(self, tmp_path: Path, key: str, value: np.ndarray, message: str) -> None:
        arrays = _medmnist(np.random.default_rng(3), (4, 4), (2, 1, 1))
        arrays[key] = value
        with pytest.raises(ValueError, match=message):
            load_npz(_npz(tmp_path / "b.npz", **arrays))

    def test_not_a_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="nope.npz"):
            load_npz(tmp_path / "nope.npz")
        (tmp_path / "junk.npz").write_text("not a zip")
        with pytest.raises(ValueError, match="not a readable"):
            load_npz(tmp_path / "junk.npz")


def _png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


class TestLoadPngSeg:
    def _write(self, root: Path) -> tuple[np.ndarray, np.ndarray]:
        img = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
        lab = np.zeros((6, 8), np.uint8)
        lab[0:2, 0:2] = 255  # a full 2x2 block
        lab[2, 2] = 200  # one pixel of the block at rows 2-3, cols 2-3 (below the majority)
        lab[4:6, 4] = 255  # two of four pixels: a tie, counted as foreground
        _png(root / "image" / "a.png", img)
        _png(root / "label" / "a.png", lab)
        _png(root / "image" / "b.png", 255 - img)
        _png(root / "label" / "b.png", 255 - lab)
        return img, lab

    def test_full_resolution(self, tmp_path: Path) -> None:
        img, lab = self._write(tmp_path)
        d = load_pngseg(tmp_path)
        assert isinstance(d, SegData) and d.ids == ["a.png", "b.png"]
        assert d.images.shape == (2, 1, 6, 8) and d.masks.shape == (2, 6, 8)
        assert torch.allclose(d.images[0, 0], torch.from_numpy(img / 255.0).float())
        assert d.masks[0].tolist() == (lab > 127).astype(int).tolist()
        assert d.masks[1].tolist() == (lab <= 127).astype(int).tolist()
        inv = load_pngseg(tmp_path, invert_label=True)
        assert torch.equal(inv.masks[0], 1 - d.masks[0])

    def test_downsample_and_tile(self, tmp_path: Path) -> None:
        img, _ = self._write(tmp_path)
        d = load_pngseg(tmp_path, downsample=2)
        assert d.images.shape == (2, 1, 3, 4)
        block = img[2:4, 4:6].astype(float) / 255  # output row 1, column 2
        assert float(d.images[0, 0, 1, 2]) == pytest.approx(block.mean(), abs=1e-6)
        want = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
        assert d.masks[0].tolist() == want
        t = load_pngseg(tmp_path, downsample=2, tile=2)  # 3 x 4 -> one row of two 2x2 tiles
        assert t.ids == ["a.png@0,0", "a.png@0,2", "b.png@0,0", "b.png@0,2"]
        assert t.sources == ["a.png", "a.png", "b.png", "b.png"]
        assert torch.equal(t.images[1], d.images[0, :, 0:2, 2:4])
        assert torch.equal(t.masks[0], d.masks[0, 0:2, 0:2])

    def test_errors(self, tmp_path: Path) -> None:
        self._write(tmp_path)
        with pytest.raises(ValueError, match="tile must fit"):
            load_pngseg(tmp_path, tile=9)
        with pytest.raises(ValueError, match="downsample must be >= 1"):
            load_pngseg(tmp_path, downsample=0)
        with pytest.raises(TypeError, match="tile must be an int"):
            load_pngseg(tmp_path, tile=2.0)  # type: ignore[arg-type]
        _png(tmp_path / "image" / "c.png", np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError, match=r"unmatched in image/: \['c.png'\]"):
            load_pngseg(tmp_path)
        _png(tmp_path / "label" / "c.png", np.zeros((4, 5), np.uint8))
        with pytest.raises(ValueError, match=r"label/c.png must have the size"):
            load_pngseg(tmp_path)
        _png(tmp_path / "label" / "c.png", np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError, match=r"image/c.png must have the \(C, H, W\)"):
            load_pngseg(tmp_path)
        assert len(load_pngseg(tmp_path, tile=4).ids) == 2 + 2 + 1
        (tmp_path / "label" / "c.png").write_bytes(b"\x89PNG broken")
        with pytest.raises(ValueError, match="not a readable PNG"):
            load_pngseg(tmp_path)
        with pytest.raises(FileNotFoundError, match="label/"):
            load_pngseg(tmp_path / "image")


def test_data_package_imports_no_heavy_module() -> None:
    code = (
        "import sys, rprselect.data, rprselect.data.generic; "
        "bad = [m for m in ('monai', 'nibabel', 'sklearn', 'scipy', 'matplotlib', 'PIL') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
