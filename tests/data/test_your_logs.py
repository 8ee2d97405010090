"""docs/your-logs.md's worked example runs as written (issue 16): its ``bash`` blocks, in order, with only
``D`` pointing at a temporary directory — generate a ratings log, map it with the SQL views, see ingest
refuse it under the default config (exit 2, too old), then ingest, features, train and evaluate with the
example's configs. The summaries the page shows are what the commands print."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.ray

DOC = REPO / "docs" / "your-logs.md"


def worked_example() -> tuple[list[str], list[str]]:
    """The ``bash`` blocks of section 3 and its plain output blocks, in order."""
    section = DOC.read_text().split("## 3. Worked example", 1)[1]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    return [b for lang, b in blocks if lang == "bash"], [b for lang, b in blocks if lang == ""]


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(1200)
def test_the_worked_example_runs_as_written(tmp_path: Path) -> None:
    commands, outputs = worked_example()
    assert commands[0].startswith("D=data/ratings\n")
    commands[0] = commands[0].replace("D=data/ratings", f"D={tmp_path}/ratings", 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    printed = []
    for block in commands:
        script = commands[0] if block is commands[0] else f"D={tmp_path}/ratings\n{block}"
        expect = int(m.group(1)) if (m := re.search(r"# exit (\d+)", block)) else 0
        run = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # the refusal's per-table lines go to stderr
            text=True,
            timeout=900,
        )
        assert run.returncode == expect, f"{block}\n{run.stdout[-5000:]}"
        printed.append(_lines(run.stdout.replace(f"{tmp_path}/ratings", "data/ratings")))
    # What the page shows is what the commands printed: the generator and mapping counts, the refused
    # ingest's per-table lines, the accepted ingest's summary.
    mapping, refused, accepted = outputs[0], outputs[1], outputs[2]
    assert _lines(mapping) == printed[0]
    for line in _lines(refused):
        if line != "...":
            assert line in printed[1], line
    assert set(_lines(accepted)) <= set(printed[2])
    # The evaluation: the ranker beside the peers, the labels a ratings log lacks named as not evaluated.
    table = printed[2][-12:]
    assert any(line.startswith("| ranker | – |") for line in table), table
    assert any(line.startswith("| lightgbm |") for line in table)
    assert "No positive label in this split for: click, comment, share (not evaluated)." in printed[2]
    assert (
        "No dwell in these logs (no view events): skip and dwell are neither learned nor evaluated."
        in (printed[2])
    )
