"""Tests of the MNIST reader, its downloader, the digits loader and the imbalanced subset."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from rprselect.data import mnist as mnist_module
from rprselect.data.mnist import (
    MNIST_FILES,
    default_mnist_dir,
    imbalance_indices,
    load_digits_tensors,
    load_mnist,
    verify_mnist,
)

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not all((SHARED_MNIST / name).is_file() for name in MNIST_FILES),
    reason=f"MNIST idx files not found in {SHARED_MNIST}",
)


def _write_idx(path: Path, magic: int, dims: list[int], payload: bytes) -> None:
    header = struct.pack(f">{1 + len(dims)}I", magic, *dims)
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def _fake_split(folder: Path, n: int = 3) -> None:
    """Tiny well-formed test split, with the wrong count on purpose (MNIST has 10000)."""
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", 0x803, [n, 28, 28], bytes(n * 28 * 28))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", 0x801, [n], bytes(n))


@needs_mnist
class TestSharedMNIST:
    def test_load_test_split(self) -> None:
        images, labels = load_mnist(SHARED_MNIST, split="test", download=False)
        assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (10000,) and labels.dtype == torch.int64
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0
        assert set(labels.unique().tolist()) == set(range(10))
        assert labels[:5].tolist() == [7, 2, 1, 0, 4]

    def test_checksums(self) -> None:
        verify_mnist(SHARED_MNIST)

    def test_checksum_mismatch_names_file(self, tmp_path: Path) -> None:
        for name in MNIST_FILES:
            shutil.copy(SHARED_MNIST / name, tmp_path / name)
        with open(tmp_path / "t10k-labels-idx1-ubyte.gz", "ab") as f:
            f.write(b"\0")
        with pytest.raises(ValueError, match=r"md5 of MNIST file .*t10k-labels-idx1-ubyte\.gz"):
            verify_mnist(tmp_path)

    def test_download_writes_verified_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        served: list[str] = []

        def fake_urlopen(url: str, timeout: float = 0.0) -> io.BytesIO:
            served.append(url)
            return io.BytesIO((SHARED_MNIST / url.rsplit("/", 1)[1]).read_bytes())

        monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
        images, labels = load_mnist(tmp_path / "new", split="test")
        assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
        assert len(served) == 2
        assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]


class TestErrors:
    def test_bad_split(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"split must be one of .*got 'val'"):
            load_mnist(tmp_path, split="val")

    def test_truncated_gz_names_file(self, tmp_path: Path) -> None:
        _fake_split(tmp_path)
        path = tmp_path / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:20])
        with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is corrupt or truncated"):
            load_mnist(tmp_path, split="test", download=False)

    def test_not_gzip_names_file(self, tmp_path: Path) -> None:
        _fake_split(tmp_path, n=10000)
        (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file at all")
        with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz is corrupt"):
            load_mnist(tmp_path, split="test", download=False)

    def test_wrong_magic(self, tmp_path: Path) -> None:
        _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x801, [10000, 28, 28], b"")
        _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, [10000], bytes(10000))
        with pytest.raises(ValueError, match=r"images-idx3-ubyte\.gz must have magic number"):
            load_mnist(tmp_path, split="test", download=False)

    def test_wrong_count(self, tmp_path: Path) -> None:
        _fake_split(tmp_path, n=3)
        with pytest.raises(ValueError, match=r"must have dimensions \[10000, 28, 28\], got \[3, "):
            load_mnist(tmp_path, split="test", download=False)

    def test_short_payload(self, tmp_path: Path) -> None:
        _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, [10000, 28, 28], bytes(100))
        _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, [10000], bytes(10000))
        with pytest.raises(
            ValueError, match=r"must hold 7840000 data bytes after its header, got 100"
        ):
            load_mnist(tmp_path, split="test", download=False)

    def test_missing_without_download(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="download=False") as info:
            load_mnist(tmp_path, split="train", download=False)
        assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(info.value)

    def test_download_failure_lists_files_and_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def offline(url: str, timeout: float = 0.0) -> io.BytesIO:
            raise urllib.error.URLError("no network")

        monkeypatch.setattr(urllib.request, "urlopen", offline)
        target = tmp_path / "mnist"
        with pytest.raises(FileNotFoundError) as info:
            load_mnist(target, split="train")
        message = str(info.value)
        assert "download failed" in message and "no network" in message
        assert f"in {target}:" in message
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
            assert str(target / name) in message
        assert "t10k" not in message
        assert list(target.iterdir()) == [], "no partial files may be left behind"

    def test_download_bad_checksum_is_rejected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0.0: io.BytesIO(b"x"))
        with pytest.raises(FileNotFoundError, match="checksum mismatch"):
            load_mnist(tmp_path, split="test")
        assert list(tmp_path.iterdir()) == []


def test_default_dir_is_a_path() -> None:
    path = default_mnist_dir()
    assert path.name == "mnist"


def test_default_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mnist_module, "__file__", str(tmp_path / "a" / "b" / "c" / "mnist.py"))
    monkeypatch.setenv("RPRSELECT_DATA", str(tmp_path / "data"))
    assert default_mnist_dir() == tmp_path / "data" / "mnist"
    monkeypatch.delenv("RPRSELECT_DATA")
    assert default_mnist_dir() == Path.home() / ".cache" / "rprselect" / "mnist"


def test_load_digits_tensors() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (rprselect[extras]) is not installed")
    images, labels = load_digits_tensors()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert 0.0 <= float(images.min()) and float(images.max()) == 1.0


class TestImbalance:
    labels = torch.arange(10).repeat(200)  # 200 samples of each digit

    def test_keeps_others_and_fraction_of_rare(self) -> None:
        idx = imbalance_indices(self.labels, rare=(1, 9), keep_fraction=0.01, seed=0)
        kept = self.labels[idx]
        counts = torch.bincount(kept, minlength=10).tolist()
        assert counts == [200, 2, 200, 200, 200, 200, 200, 200, 200, 2]
        assert idx.dtype == torch.int64 and torch.all(idx[1:] > idx[:-1])

    def test_deterministic_and_seed_dependent(self) -> None:
        a = imbalance_indices(self.labels, keep_fraction=0.1, seed=3)
        b = imbalance_indices(self.labels.numpy(), keep_fraction=0.1, seed=3)
        c = imbalance_indices(self.labels, keep_fraction=0.1, seed=4)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_at_least_one(self) -> None:
        labels = np.array([0, 0, 1, 1, 9])
        idx = imbalance_indices(labels, keep_fraction=0.01)
        assert sorted(labels[idx.numpy()].tolist()) == [0, 0, 1, 9]

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="keep_fraction"):
            imbalance_indices(self.labels, keep_fraction=0.0)
        with pytest.raises(ValueError, match=r"labels must be 1-D, got shape \(2, 1000\)"):
            imbalance_indices(self.labels.reshape(2, -1))


def test_missing_sklearn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install rprselect\[extras\]"):
        load_digits_tensors()
