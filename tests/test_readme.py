"""The README's quick-start code runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_block_runs(capsys) -> None:
    text = README.read_text()
    quick = text[text.index("## Quick start") :]
    block = re.search(r"```python\n(.*?)```", quick, re.S)
    assert block, "no python block under 'Quick start'"
    exec(compile(block.group(1), "README quick start", "exec"), {})
    out = capsys.readouterr().out
    assert out.count("tensor(") == 2  # the RPR and LPR curves
