"""Tests of the BraTS case finder and loader, on synthetic files and one real shared case."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

from rprselect.data.brats import (
    Case,
    CaseError,
    CaseList,
    canonical_modality,
    find_cases,
    load_case,
    load_cases,
)
from rprselect.data.synthetic import write_synthetic_brats

nib = pytest.importorskip("nibabel", reason="nibabel (rprselect[monai]) is not installed")
pytest.importorskip("monai", reason="MONAI (rprselect[monai]) is not installed")

SHARED_BRATS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats2018_wt"
SHAPE = (16, 16, 12)


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def _tiny(value: float = 1.0) -> np.ndarray:
    data = np.zeros(SHAPE, dtype=np.float32)
    data[4:12, 4:12, 3:9] = value
    return data


class TestSynthetic:
    def test_round_trip_shared(self, tmp_path: Path) -> None:
        ids = write_synthetic_brats(tmp_path, n_cases=3, shape=(24, 24, 16), seed=1)
        found = find_cases(tmp_path, ("flair", "t1"))
        assert [c.case_id for c in found] == ids and found.skipped == []
        case = found[0]
        assert set(case.images) == {"flair", "t1"} and case.label is not None
        image, label = load_case(case)
        assert image.dtype == np.float32 and image.ndim == 4 and image.shape[0] == 2
        assert label is not None and label.shape == (1, *image.shape[1:])
        assert set(np.unique(label)) == {0.0, 1.0}
        # Written mask, reoriented to RAS and cropped to the brain, keeps every tumour voxel.
        written = np.asarray(nib.load(case.label).dataobj)
        assert label.sum() == written.sum()
        brain = image[0] != 0
        np.testing.assert_allclose(image[:, brain].mean(1), 0.0, atol=1e-4)
        np.testing.assert_allclose(image[:, brain].std(1), 1.0, atol=1e-3)
        # Tumours are bright in FLAIR.
        assert image[0][label[0] > 0].mean() > image[0][brain & (label[0] == 0)].mean()

    def test_deterministic(self, tmp_path: Path) -> None:
        write_synthetic_brats(tmp_path / "a", n_cases=1, shape=(16, 16, 8), seed=5)
        write_synthetic_brats(tmp_path / "b", n_cases=1, shape=(16, 16, 8), seed=5)
        a = load_case(find_cases(tmp_path / "a")[0])
        b = load_case(find_cases(tmp_path / "b")[0])
        np.testing.assert_array_equal(a.image, b.image)

    def test_spacing(self, tmp_path: Path) -> None:
        write_synthetic_brats(tmp_path, n_cases=1, shape=(32, 32, 16))
        full = load_case(find_cases(tmp_path)[0])
        coarse = load_case(find_cases(tmp_path)[0], spacing=2.0)
        assert coarse.image.shape[0] == 2
        assert all(
            c <= (f + 1) // 2 + 1
            for c, f in zip(coarse.image.shape[1:], full.image.shape[1:], strict=True)
        )
        assert coarse.label is not None and set(np.unique(coarse.label)) <= {0.0, 1.0}

    @pytest.mark.parametrize("layout", ["brats2020", "brats2023", "msd"])
    def test_multilabel_layouts_merge_labels(self, tmp_path: Path, layout: str) -> None:
        ids = write_synthetic_brats(tmp_path, n_cases=2, shape=(16, 16, 12), layout=layout)
        found = find_cases(tmp_path, ("t1", "flair"))
        assert [c.case_id for c in found] == ids
        case = found[0]
        assert case.label is not None
        assert set(np.unique(np.asarray(nib.load(case.label).dataobj))) > {0, 1}
        image, label = load_case(case)
        assert image.shape[0] == 2 and label is not None
        assert set(np.unique(label)) == {0.0, 1.0}

    def test_bad_arguments(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="layout"):
            write_synthetic_brats(tmp_path, layout="nnunet")
        with pytest.raises(ValueError, match="shape"):
            write_synthetic_brats(tmp_path, shape=(4, 4, 4))


class TestLayouts:
    def test_brats2020(self, tmp_path: Path) -> None:
        case = tmp_path / "BraTS20_Training_001"
        for mod in ("flair", "t1", "t1ce", "t2", "seg"):
            _save(case / f"BraTS20_Training_001_{mod}.nii.gz", _tiny())
        (tmp_path / "name_mapping.csv").write_text("not a case\n")
        found = find_cases(tmp_path, ("flair", "t1", "t1ce", "t2"), layout="brats2020")
        assert [c.case_id for c in found] == ["BraTS20_Training_001"]
        assert found[0].images["t1ce"].name == "BraTS20_Training_001_t1ce.nii.gz"
        assert found[0].label == case / "BraTS20_Training_001_seg.nii.gz"
        assert find_cases(tmp_path, ("t2",)).cases[0].images["t2"].name.endswith("_t2.nii.gz")

    def test_brats2021(self, tmp_path: Path) -> None:
        for mod in ("flair", "t1", "seg"):
            _save(tmp_path / "BraTS2021_00000" / f"BraTS2021_00000_{mod}.nii.gz", _tiny())
        found = find_cases(tmp_path, ("flair", "t1"), layout="brats2021")
        assert [c.case_id for c in found] == ["BraTS2021_00000"]

    def test_brats2023(self, tmp_path: Path) -> None:
        name = "BraTS-GLI-00000-000"
        for mod in ("t2f", "t1n", "t1c", "t2w", "seg"):
            _save(tmp_path / name / f"{name}-{mod}.nii.gz", _tiny())
        found = find_cases(tmp_path, ("flair", "t1", "t1ce", "t2"))
        assert [c.case_id for c in found] == [name]
        images = found[0].images
        assert images["flair"].name.endswith("-t2f.nii.gz")
        assert images["t1"].name.endswith("-t1n.nii.gz")
        assert images["t1ce"].name.endswith("-t1c.nii.gz")
        assert images["t2"].name.endswith("-t2w.nii.gz")
        assert found[0].label is not None and found[0].label.name.endswith("-seg.nii.gz")

    def test_msd(self, tmp_path: Path) -> None:
        stack = np.stack([_tiny(v) for v in (1.0, 2.0, 3.0, 4.0)], axis=-1)
        _save(tmp_path / "imagesTr" / "BRATS_001.nii.gz", stack)
        _save(tmp_path / "imagesTr" / "._BRATS_001.nii.gz", stack)  # macOS junk in the MSD tar
        _save(tmp_path / "labelsTr" / "BRATS_001.nii.gz", _tiny(3.0).astype(np.uint8))
        _save(tmp_path / "imagesTs" / "BRATS_500.nii.gz", stack)
        found = find_cases(tmp_path, ("t2w", "t1gd"))
        assert [c.case_id for c in found] == ["BRATS_001", "BRATS_500"]
        assert found[0].channels == {"t2": 3, "t1ce": 2} and found[1].label is None
        image, label = load_case(found[0])
        assert image.shape == (2, 8, 8, 6)
        assert label is not None and set(np.unique(label)) == {1.0}  # cropped to the brain
        unlabelled = load_case(found[1])
        assert unlabelled.label is None

    def test_shared_layout_and_aliases(self, tmp_path: Path) -> None:
        for name in ("FLAIR", "T1", "GT_W"):
            _save(tmp_path / "case_a" / f"{name}.nii.gz", _tiny())
        found = find_cases(tmp_path, ("T2F", "t1n"), layout="shared")
        assert found[0].images["flair"].name == "FLAIR.nii.gz"
        assert canonical_modality("T1Gd") == "t1ce"

    def test_missing_modality_is_skipped_by_name(self, tmp_path: Path) -> None:
        for name in ("FLAIR", "T1", "GT_W"):
            _save(tmp_path / "good" / f"{name}.nii.gz", _tiny())
        for name in ("FLAIR", "GT_W"):
            _save(tmp_path / "no_t1" / f"{name}.nii.gz", _tiny())
        (tmp_path / "empty").mkdir()
        found = find_cases(tmp_path, ("flair", "t1"))
        assert [c.case_id for c in found] == ["good"]
        reasons = dict(found.skipped)
        assert set(reasons) == {"empty", "no_t1"}
        assert "missing modality t1" in reasons["no_t1"] and "T1.nii.gz" in reasons["no_t1"]
        assert "no NIfTI files" in reasons["empty"]

    def test_missing_label_is_not_skipped(self, tmp_path: Path) -> None:
        _save(tmp_path / "c" / "FLAIR.nii.gz", _tiny())
        found = find_cases(tmp_path, ("flair",))
        assert found[0].label is None

    def test_bad_arguments(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="layout must be one of"):
            find_cases(tmp_path, layout="nnunet")
        with pytest.raises(ValueError, match=r"modality must be one of .*got 'pd'"):
            find_cases(tmp_path, ("flair", "pd"))
        with pytest.raises(ValueError, match="modalities must be a non-empty sequence"):
            find_cases(tmp_path, "flair")
        with pytest.raises(FileNotFoundError, match="not a folder"):
            find_cases(tmp_path / "nope")


class TestBadFiles:
    @staticmethod
    def _case(tmp_path: Path) -> Path:
        folder = tmp_path / "case_x"
        for name in ("FLAIR", "T1", "GT_W"):
            _save(folder / f"{name}.nii.gz", _tiny())
        return folder

    def test_truncated_file_names_case_and_file(self, tmp_path: Path) -> None:
        folder = self._case(tmp_path)
        path = folder / "T1.nii.gz"
        path.write_bytes(path.read_bytes()[:60])
        case = find_cases(tmp_path)[0]
        with pytest.raises(CaseError, match=r"case case_x file .*T1\.nii\.gz: cannot be read") as e:
            load_case(case)
        assert e.value.case_id == "case_x" and e.value.path == path
        assert isinstance(e.value, ValueError)

    def test_garbage_gzip(self, tmp_path: Path) -> None:
        folder = self._case(tmp_path)
        with gzip.open(folder / "FLAIR.nii.gz", "wb") as f:
            f.write(b"this is not a NIfTI header")
        with pytest.raises(CaseError, match=r"FLAIR\.nii\.gz"):
            load_case(find_cases(tmp_path)[0])

    def test_nan(self, tmp_path: Path) -> None:
        folder = self._case(tmp_path)
        data = _tiny()
        data[5, 5, 5] = np.nan
        _save(folder / "FLAIR.nii.gz", data)
        with pytest.raises(CaseError, match=r"FLAIR\.nii\.gz: contains NaN"):
            load_case(find_cases(tmp_path)[0])

    def test_shape_mismatch(self, tmp_path: Path) -> None:
        folder = self._case(tmp_path)
        _save(folder / "T1.nii.gz", np.zeros((16, 16, 10), dtype=np.float32))
        with pytest.raises(CaseError, match=r"T1\.nii\.gz: shape must match FLAIR\.nii\.gz"):
            load_case(find_cases(tmp_path)[0])

    def test_load_cases_skips_by_name(self, tmp_path: Path) -> None:
        self._case(tmp_path)
        for name in ("FLAIR", "T1", "GT_W"):
            _save(tmp_path / "case_ok" / f"{name}.nii.gz", _tiny())
        (tmp_path / "case_x" / "GT_W.nii.gz").write_bytes(b"\x1f\x8b corrupt")
        (tmp_path / "case_t1_only").mkdir()
        _save(tmp_path / "case_t1_only" / "T1.nii.gz", _tiny())
        found = find_cases(tmp_path, ("flair", "t1"))
        loaded = load_cases(found)
        assert loaded.case_ids == ["case_ok"] and len(loaded.images) == len(loaded.labels) == 1
        skipped = dict(loaded.skipped)
        assert set(skipped) == {"case_t1_only", "case_x"}
        assert "GT_W.nii.gz" in skipped["case_x"]

    def test_load_case_argument_errors(self, tmp_path: Path) -> None:
        case = find_cases(self._case(tmp_path).parent)[0]
        with pytest.raises(ValueError, match="spacing must be a positive"):
            load_case(case, spacing=0.0)
        with pytest.raises(ValueError, match="modalities must be among"):
            load_case(case, ("t2",))
        assert isinstance(CaseList([case], []), CaseList) and isinstance(case, Case)


@pytest.mark.skipif(not SHARED_BRATS.is_dir(), reason=f"{SHARED_BRATS} is absent")
def test_real_shared_case_at_4mm() -> None:
    found = find_cases(SHARED_BRATS, ("flair", "t1"))
    assert len(found) >= 1 and found.skipped == []
    image, label = load_case(found[0], spacing=4.0)
    assert image.dtype == np.float32 and image.shape[0] == 2
    assert label is not None and label.shape == (1, *image.shape[1:])
    assert set(np.unique(label)) == {0.0, 1.0}
    # 240x240x155 at 1 mm, cropped to the brain, is at most 60x60x39 at 4 mm.
    assert all(s <= m for s, m in zip(image.shape[1:], (60, 60, 39), strict=True))
    assert np.isfinite(image).all()


def test_missing_monai_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_synthetic_brats(tmp_path, n_cases=1, shape=(16, 16, 8))
    case = find_cases(tmp_path)[0]
    monkeypatch.setitem(sys.modules, "monai.transforms", None)
    with pytest.raises(ImportError, match=r"pip install rprselect\[monai\]"):
        load_case(case)
