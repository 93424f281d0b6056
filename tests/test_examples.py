"""The examples run end to end with tiny settings (each in its own process), and the README's
modAL and MONAI sections show exactly the code and commands that run here."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODAL_CMD = (
    "python examples/modal_loop.py --queries 3 --epochs 1 --pool 100 --initial 20 --n-instances 5"
)
MONAI_CMD = (
    "python examples/monai_trainer_hook.py --epochs 2 --train 4 --pool 2 --propose 1 --k 2 "
    "--out out/monai_hook"
)
SECTIONS = ("## Use with modAL", "## Use with MONAI")


def _run(command: str, cwd: Path) -> str:
    """Run a README command line in ``cwd``, with this interpreter and one thread."""
    argv = shlex.split(command)
    argv[:2] = [sys.executable, str(ROOT / argv[1])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install 'rprselect[all]')")


def test_modal_loop(tmp_path):
    _needs("modAL", "skorch", "sklearn")
    lines = _run(MODAL_CMD, tmp_path).strip().splitlines()
    assert lines[0].startswith("start: 20 labelled")
    assert [line.split(",")[0] for line in lines[1:]] == [
        f"query {q}: labelled {20 + 5 * q}" for q in (1, 2, 3)
    ]


def test_monai_trainer_hook(tmp_path):
    _needs("monai", "ignite")
    out = _run(MONAI_CMD, tmp_path)
    files = sorted((tmp_path / "out" / "monai_hook").glob("rpr_epoch*.json"))
    assert [f.name for f in files] == ["rpr_epoch1.json", "rpr_epoch2.json"]
    for epoch, f in enumerate(files, start=1):
        report = json.loads(f.read_text())
        assert report["epoch"] == epoch and report["n_scored"] == 2
        assert len(report["proposals"]) == 1 and 0 <= report["proposals"][0]["rpr"] <= 1
        assert f"epoch {epoch}: propose" in out


def _sections() -> str:
    """The README's modAL and MONAI sections (or their draft in docs/ before the merge)."""
    for path in (ROOT / "README.md", ROOT / "docs" / "README_integrations.md"):
        if path.exists():
            text = path.read_text()
            if all(s in text for s in SECTIONS):
                start = text.index(SECTIONS[0])
                end = text.find("\n## ", text.index(SECTIONS[1]) + 1)
                return text[start : end if end > 0 else None]
    pytest.skip("no README section 'Use with modAL' / 'Use with MONAI' yet")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_readme_shows_the_code_that_runs():
    text = _sections()
    sources = [_lines(p.read_text()) for p in sorted((ROOT / "examples").glob("*.py"))]
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        want = _lines(block)
        found = any(src[i : i + len(want)] == want for src in sources for i in range(len(src)))
        assert found, f"this README block is not in any example, verbatim:\n{block}"
    commands = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    shown = {line.strip() for block in commands for line in block.splitlines() if line.strip()}
    assert shown == {MODAL_CMD, MONAI_CMD}


SKACTIVEML_CMD = (
    "python examples/skactiveml_loop.py --queries 2 --epochs 1 --pool 100 --initial 20 "
    "--batch-size 5"
)
BAAL_CMD = (
    "python examples/baal_loop.py --queries 2 --epochs 1 --pool 100 --initial 20 --query-size 5"
)
MORE_SECTIONS = {"## Use with scikit-activeml": SKACTIVEML_CMD, "## Use with baal": BAAL_CMD}


def _check_loop(out: str, start: int, step: int, queries: int) -> None:
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"start: {start} labelled")
    assert [line.split(",")[0] for line in lines[1:]] == [
        f"query {q}: labelled {start + step * q}" for q in range(1, queries + 1)
    ]
    accuracies = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert all(0.0 <= a <= 1.0 for a in accuracies)


def test_skactiveml_loop(tmp_path):
    _needs("skactiveml", "skorch")
    _check_loop(_run(SKACTIVEML_CMD, tmp_path), 20, 5, 2)


def test_baal_loop(tmp_path):
    _needs("baal", "structlog")
    _check_loop(_run(BAAL_CMD, tmp_path), 20, 5, 2)


def test_readme_scikit_activeml_and_baal_sections_show_the_code_that_runs():
    text = (ROOT / "README.md").read_text()
    missing = [s for s in MORE_SECTIONS if s not in text]
    if missing:
        pytest.skip(f"no README section {missing} yet")
    sources = [_lines(p.read_text()) for p in sorted((ROOT / "examples").glob("*.py"))]
    for head, command in MORE_SECTIONS.items():
        start = text.index(head)
        end = text.find("\n## ", start + 1)
        section = text[start : end if end > 0 else None]
        for block in re.findall(r"```python\n(.*?)```", section, flags=re.S):
            want = _lines(block)
            found = any(src[i : i + len(want)] == want for src in sources for i in range(len(src)))
            assert found, f"this README block is not in any example, verbatim:\n{block}"
        commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
        assert [line.strip() for b in commands for line in b.splitlines() if line.strip()] == [
            command
        ]
