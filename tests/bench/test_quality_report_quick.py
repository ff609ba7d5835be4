"""The quality report's smoke mode runs end to end and writes a readable report: every initialization in the
tables, accuracies that are probabilities, three real PNG plots."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The baselines, then every condensing method of the registry (in its order) in each of fit and train it offers.
INITS = ["random", "weight-selection", "tleg fit", "tleg train", "layers fit", "layers train", "pool fit", "pool train",
         "wave fit", "wave train", "front fit"]
PLOTS = ["quality_depth.png", "quality_steps.png", "quality_width.png"]
CELL = re.compile(r"^(\d+\.\d+) ± (\d+\.\d+)$")


def table(markdown: str, heading: str) -> dict[str, list[str]]:
    """Rows of the first Markdown table under ``heading``: first cell -> the other cells."""
    lines = markdown.split(f"## {heading}", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    header, body = rows[0], rows[2:]  # rows[1] is the alignment row
    assert header.startswith("| initialization |")
    out = {}
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_report_writes_tables_and_plots(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "bench/quality_report.py", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "quality.md").read_text()

    by_depth = table(report, "Accuracy by depth")
    assert list(by_depth) == INITS
    measured = [cell for row in by_depth.values() for cell in row if cell != "—"]
    for init, row in by_depth.items():
        assert any(cell != "—" for cell in row), f"{init} has no descendant in the depth table"
    for cell in measured:
        mean, sd = map(float, CELL.match(cell).groups())  # type: ignore[union-attr]
        assert 0.0 <= mean <= 1.0 and 0.0 <= sd <= 0.5
    # Learngene layers fit keeps the ancestry's first blocks and weight selection at the ancestry's width takes the
    # first blocks too: at the layers' own depth they are the same network, so the harness must score them equally.
    assert by_depth["layers fit"][0] == by_depth["weight-selection"][0]
    # Fine-tuning is not a constant: the initializations do not all end at one accuracy.
    assert len(set(measured)) > 3

    summary = table(report, "Summary: gain over the baselines")
    assert list(summary) == INITS
    assert "Stored size against what it serves" in report
    for name in PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"]({name})" in report
