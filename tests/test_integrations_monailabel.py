"""MONAI Label: RPRScoring, RPRStrategy and propose against real MONAI Label code, no mocks.

A LocalDatastore on a folder of NIfTI volumes (small synthetic ones, and the shared BraTS cases
downsampled when present) is scored by the example app's infer task through its sliding-window
inferer; the stored RPR is checked against :func:`rprselect.score` on the same volumes. The
example app runs in process (``app.scoring``, ``app.next_sample``) and behind the real REST
server, started on 127.0.0.1 and stopped after the test.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rprselect

nib = pytest.importorskip("nibabel", reason="needs nibabel: pip install 'rprselect[monai]'")
pytest.importorskip("monailabel", reason="needs MONAI Label: see scripts/install.sh")
pytest.importorskip("monailabel.interfaces.app", reason="MONAI Label's app needs its extras")

from monai import transforms as mt  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402

from rprselect.integrations.monailabel import (  # noqa: E402
    RPRScoring,
    RPRStrategy,
    propose,
    sliding_options,
)

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "monailabel_app"
BRATS = ROOT.parent / "shared" / "data" / "brats2018_wt"
K = 3
SIZE = 12  # volumes of 12^3 through 8^3 windows: 8 windows each, the sliding path
CONF = {
    "skip_scoring": "false",
    "skip_strategies": "false",
    "k": str(K),
    "roi_size": "8",
    "depth": "2",
    "filters": "4",
}
WINDOW = {"overlap": 0.25, "sw_batch_size": 4, "mode": "constant"}


@pytest.fixture(autouse=True)
def _quiet_settings(monkeypatch):
    """No background scoring requests, file watchers or session folders in process."""
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTO_UPDATE_SCORING", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSIONS", False)


@pytest.fixture(scope="module")
def app_module() -> Any:
    spec = importlib.util.spec_from_file_location("rprselect_monailabel_app", APP / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _synthetic(folder: Path, n: int = 4) -> list[str]:
    """Volumes of different kinds (noise, smooth blobs, a cube), so their RPR differ."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        if i % 3 == 0:
            a = rng.normal(size=(SIZE,) * 3)
        elif i % 3 == 1:
            c = rng.uniform(2, SIZE - 2, size=3)
            a = np.exp(-((grid - c) ** 2).sum(-1) / (2 * (1.5 + i) ** 2)) + 0.1 * rng.normal(
                size=(SIZE,) * 3
            )
        else:
            a = 0.2 * rng.normal(size=(SIZE,) * 3)
            a[2 : 2 + i, 3:9, 4 : 4 + i] += 3.0
        nib.save(nib.Nifti1Image(a.astype(np.float32), np.eye(4)), folder / f"vol{i}.nii.gz")
        ids.append(f"vol{i}")
    return ids


def _brats(folder: Path, n: int = 3) -> list[str]:
    """The shared BraTS FLAIR volumes: brain bounding box, area-downsampled to 12^3."""
    cases = sorted(p for p in BRATS.iterdir() if (p / "FLAIR.nii.gz").exists())[:n]
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for case in cases:
        a = np.asarray(nib.load(case / "FLAIR.nii.gz").dataobj, dtype=np.float32)
        nz = np.nonzero(a)
        box = a[tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)]
        t = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(box))[None, None], size=(SIZE,) * 3, mode="area"
        )[0, 0]
        nib.save(nib.Nifti1Image(t.numpy(), np.eye(4)), folder / f"{case.name}.nii.gz")
        ids.append(case.name)
    return ids


def _task(app_module: Any, folder: Path) -> Any:
    torch.manual_seed(0)
    net = rprselect.models.PocketUNet(in_channels=1, out_channels=2, dims=3, depth=2, filters=4)
    return app_module.PocketSegmentation(str(folder / "none.pt"), net, roi_size=8)


def _expected(task: Any, folder: Path, ids: list[str]) -> dict[str, float]:
    """RPR at rank K by rprselect.score on the same volumes, read and normalised by MONAI."""
    load = mt.Compose(
        [
            mt.LoadImaged(keys="image"),
            mt.EnsureChannelFirstd(keys="image"),
            mt.NormalizeIntensityd(keys="image", nonzero=True),
        ]
    )
    xs = [load({"image": str(folder / f"{i}.nii.gz")})["image"].as_tensor() for i in ids]
    table = rprselect.score(
        task.network, torch.stack(xs), k=K, roi_size=(8, 8, 8), sliding=WINDOW, progress=False
    )
    return dict(zip(ids, table.rpr.tolist(), strict=True))


@pytest.mark.parametrize("source", ["synthetic", "brats"])
def test_scores_all_skips_all_and_serves_the_lowest(app_module, tmp_path, source):
    if source == "brats" and not BRATS.is_dir():
        pytest.skip(f"no shared BraTS cases at {BRATS}")
    folder = tmp_path / "studies"
    ids = _synthetic(folder) if source == "synthetic" else _brats(folder)
    ds = LocalDatastore(str(folder), auto_reload=False)
    task = _task(app_module, folder)
    method = RPRScoring(task, k=K)

    first = method({"device": "cpu"}, ds)
    assert (first["total"], first["skipped"], first["executed"]) == (len(ids), 0, len(ids))
    assert first["failures"] == []
    want = _expected(task, folder, ids)
    for i in ids:
        info = ds.get_image_info(i)
        assert info["rpr"] == pytest.approx(want[i], rel=1e-5, abs=1e-9), i
        assert len(info["rpr_curve"]) == K and info["rpr_curve"][-1] == info["rpr"]
        assert np.all(np.diff(info["rpr_curve"]) >= -1e-12)
        assert info["rpr_k"] == K and info["rpr_error"] is None
        assert isinstance(info["rpr_converged"], bool) and isinstance(info["rpr_ts"], int)
        json.dumps(info)
    versions = {ds.get_image_info(i)["rpr_model"] for i in ids}
    assert len(versions) == 1

    second = method({"device": "cpu"}, ds)
    assert (second["skipped"], second["executed"]) == (len(ids), 0)

    lowest = min(ids, key=lambda i: (want[i], i))
    got = RPRStrategy()({"strategy": "rpr"}, ds)
    assert got is not None and got["id"] == lowest and got["rpr_rank"] == 1
    assert got["rpr"] == pytest.approx(want[lowest], rel=1e-5, abs=1e-9)
    order = sorted(ids, key=lambda i: (want[i], i))
    assert [p["id"] for p in propose(ds, 2)] == order[:2]


def test_new_weights_or_k_rescore_and_max_samples_caps(app_module, tmp_path):
    folder = tmp_path / "studies"
    ids = _synthetic(folder, n=3)
    ds = LocalDatastore(str(folder), auto_reload=False)
    task = _task(app_module, folder)
    assert RPRScoring(task, k=K, max_samples=2)({"device": "cpu"}, ds)["executed"] == 2
    rest = RPRScoring(task, k=K)({"device": "cpu"}, ds)
    assert (rest["skipped"], rest["executed"]) == (2, 1)
    old = {i: ds.get_image_info(i)["rpr_model"] for i in ids}
    with torch.no_grad():
        next(task.network.parameters()).mul_(1.5)
    again = RPRScoring(task, k=K)({"device": "cpu"}, ds)
    assert (again["skipped"], again["executed"]) == (0, 3)
    assert all(ds.get_image_info(i)["rpr_model"] != old[i] for i in ids)
    other_k = RPRScoring(task, k=K)({"device": "cpu", "k": "2"}, ds)  # as a client sends it
    assert other_k["executed"] == 3 and all(ds.get_image_info(i)["rpr_k"] == 2 for i in ids)


def test_corrupt_volume_ends_in_rpr_error_and_the_others_are_scored(app_module, tmp_path):
    folder = tmp_path / "studies"
    ids = _synthetic(folder, n=3)
    (folder / "broken.nii.gz").write_bytes(b"this is not a NIfTI volume")
    ds = LocalDatastore(str(folder), auto_reload=False)
    out = RPRScoring(_task(app_module, folder), k=K)({"device": "cpu"}, ds)
    assert (out["total"], out["executed"]) == (4, 4)
    assert [f["id"] for f in out["failures"]] == ["broken"]
    bad = ds.get_image_info("broken")
    assert bad["rpr"] is None and "broken.nii.gz" in bad["rpr_error"]
    assert all(isinstance(ds.get_image_info(i)["rpr"], float) for i in ids)
    assert RPRStrategy()({"strategy": "rpr"}, ds)["id"] in ids
    assert "broken" not in [p["id"] for p in propose(ds, 10)]


def test_strategy_passes_over_recently_served_and_returns_none_unscored(tmp_path):
    folder = tmp_path / "studies"
    _synthetic(folder, n=3)
    ds = LocalDatastore(str(folder), auto_reload=False)
    strategy = RPRStrategy(reset=60)
    assert strategy({"strategy": "rpr"}, ds) is None
    for i, value in (("vol0", 0.3), ("vol1", 0.1), ("vol2", 0.2)):
        ds.update_image_info(i, {"rpr": value})
    assert strategy({"strategy": "rpr"}, ds) == {"id": "vol1", "rpr": 0.1, "rpr_rank": 1}
    now = int(time.time())
    ds.update_image_info("vol1", {"strategy": {"rpr": {"ts": now}}})
    assert strategy({"strategy": "rpr"}, ds)["id"] == "vol2"
    ds.update_image_info("vol2", {"strategy": {"rpr": {"ts": now - 10}}})
    ds.update_image_info("vol0", {"strategy": {"rpr": {"ts": now - 5}}})
    assert strategy({"strategy": "rpr"}, ds)["id"] == "vol2"  # all recent: served longest ago
    assert RPRStrategy(reset=0)({"strategy": "rpr"}, ds)["id"] == "vol1"
    assert RPRStrategy(key="other")({"strategy": "rpr"}, ds) is None


def test_in_process_app_scoring_and_next_sample(app_module, tmp_path):
    folder = tmp_path / "studies"
    ids = _synthetic(folder)
    app_dir = tmp_path / "app"
    shutil.copytree(APP, app_dir)
    app = app_module.RPRApp(app_dir=str(app_dir), studies=str(folder), conf=CONF)
    info = app.info()
    assert (
        info["scoring"]["rpr"]["config"]["k"] == K
        and "cpu" in info["scoring"]["rpr"]["config"]["device"]
    )
    assert set(info["strategies"]) == {"random", "rpr"}
    result = app.scoring({"method": "rpr", "device": "cpu"})
    assert (result["total"], result["executed"], result["failures"]) == (len(ids), len(ids), [])
    want = _expected(app._infers["segmentation"], folder, ids)
    sample = app.next_sample({"strategy": "rpr"})
    assert sample["id"] == min(ids, key=lambda i: (want[i], i)) and sample["rpr_rank"] == 1
    assert Path(sample["path"]) == (folder / f"{sample['id']}.nii.gz").resolve()


def test_rejects_torchscript_and_bad_settings(app_module, tmp_path):
    folder = tmp_path / "studies"
    _synthetic(folder, n=1)
    ds = LocalDatastore(str(folder), auto_reload=False)
    task = _task(app_module, folder)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(task.network, torch.rand(1, 1, 8, 8, 8)), str(path))
    scripted = app_module.PocketSegmentation(str(path), None, roi_size=8)
    with pytest.raises(TypeError, match="TorchScript"):
        RPRScoring(scripted, k=K)({"device": "cpu"}, ds)
    with pytest.raises(TypeError, match="infer_task"):
        RPRScoring(object())
    with pytest.raises(ValueError, match="k must"):
        RPRScoring(task, k=0)
    with pytest.raises(ValueError, match="solver must"):
        RPRScoring(task, solver="svd")
    with pytest.raises(ValueError, match="reset must"):
        RPRStrategy(reset=-1)
    with pytest.raises(TypeError, match="CVATDatastore"):
        propose(ds, 1, upload_to_cvat=True)


def test_sliding_options_from_monai_inferers():
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    assert sliding_options(SimpleInferer()) == (None, None)
    roi, kw = sliding_options(
        SlidingWindowInferer(roi_size=(8, 16, 4), overlap=0.5, sw_batch_size=2, mode="gaussian")
    )
    assert roi == (8, 16, 4)
    assert kw == {
        "overlap": 0.5,
        "sw_batch_size": 2,
        "mode": "gaussian",
        "sigma_scale": 0.125,
        "padding_mode": "constant",
    }
    with pytest.raises(ValueError, match="cval"):
        sliding_options(SlidingWindowInferer(roi_size=8, cval=1.0))
    with pytest.raises(ValueError, match="SimpleInferer or a SlidingWindowInferer"):
        sliding_options(object())


# -- the real REST server -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_rest_round_trip(app_module, tmp_path):
    launcher = Path(sys.executable).parent / "monailabel"
    if not launcher.exists():
        pytest.skip(f"no monailabel launcher beside {sys.executable}")
    folder = tmp_path / "studies"
    ids = _synthetic(folder)
    app_dir = tmp_path / "app"
    shutil.copytree(APP, app_dir)
    (app_dir / "model").mkdir(exist_ok=True)
    net = _task(app_module, folder).network  # the server loads these weights
    torch.save({"model": net.state_dict()}, app_dir / "model" / "pocket_unet.pt")
    port = _free_port()
    conf = [a for key, value in CONF.items() for a in ("--conf", key, value)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_SESSIONS": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "PATH": f"{launcher.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [str(launcher), "start_server", "--app", str(app_dir), "--studies", str(folder)]
    cmd += [*conf, "--host", "127.0.0.1", "--port", str(port)]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/info/", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail(f"server did not start:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(0.5)
        assert info["scoring"]["rpr"]["config"]["k"] == K
        result = _post(f"{base}/scoring/rpr?run_sync=true", {"device": "cpu"})
        assert (result["total"], result["executed"], result["failures"]) == (len(ids), len(ids), [])
        first = _post(f"{base}/activelearning/rpr")
        second = _post(f"{base}/activelearning/rpr")  # the first was just served: reset applies
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    want = _expected(_task(app_module, folder), folder, ids)
    order = sorted(ids, key=lambda i: (want[i], i))
    assert (first["id"], first["rpr_rank"]) == (order[0], 1)
    assert (second["id"], second["rpr_rank"]) == (order[1], 2)
    assert first["rpr"] == pytest.approx(want[order[0]], rel=1e-5, abs=1e-9)


# -- CVAT ----------------------------------------------------------------------------------------
class _CVATStandIn(http.server.BaseHTTPRequestHandler):
    """The four CVAT REST calls that CVATDatastore.upload_to_cvat makes (no CVAT server here)."""

    uploads: list[list[str]] = []

    def _reply(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200 if self.command == "GET" else 201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply({"results": []})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/data"):
            type(self).uploads.append(re.findall(r'filename="([^"]+)"', body.decode("latin-1")))
            self._reply({})
        else:
            self._reply({"id": 7})

    def log_message(self, *args: Any) -> None:
        pass


def test_propose_uploads_the_lowest_to_cvat_through_cvatdatastore(tmp_path):
    from monailabel.datastore.cvat import CVATDatastore

    folder = tmp_path / "studies"
    _synthetic(folder, n=4)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CVATStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ds = CVATDatastore(str(folder), api_url=url, auto_reload=False)
        for i, value in enumerate([0.4, 0.1, 0.3, 0.2]):
            ds.update_image_info(f"vol{i}", {"rpr": value})
        _CVATStandIn.uploads.clear()
        out = propose(ds, 2, upload_to_cvat=True)
    finally:
        server.shutdown()
        thread.join()
    assert [(p["id"], p["rpr_rank"]) for p in out] == [("vol1", 1), ("vol3", 2)]
    assert _CVATStandIn.uploads == [["vol1.nii.gz", "vol3.nii.gz"]]
