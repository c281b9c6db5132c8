"""End to end: the quick soak (scripts/soak.py --quick, about 70 s) against a cluster of its own:
its verdict, and the report with its table of figures, slopes, requests and faults."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_the_quick_soak_passes_and_writes_its_report():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    written = re.search(r"report written to (bench/results/soak-\d{8}T\d{6}Z\.md)", run.stderr)
    assert written, run.stderr[-3000:]
    report = (ROOT / written.group(1)).read_text()
    try:
        assert run.returncode == 0, f"{report[:3000]}\n{run.stderr[-2000:]}"
        assert report.splitlines()[2].startswith("**PASS**")
        table = report[report.index("## Figures over time"):report.index("## Requests")]
        for figure in ("nmc RSS (MiB)", "nmc open fds", "nmc greenlets", "client connections ESTABLISHED",
                       "replica connections ESTABLISHED", "containers (any state)", "docker-proxy processes"):
            row = next(line for line in table.splitlines() if line.startswith(f"| {figure} |"))
            assert row.rstrip().endswith("| flat |"), row
        assert "| t=20 s |" in table and "slope /min" in table  # the samples after the warm-up
        faults = report[report.index("## Faults"):report.index("## At the end")]
        for fault in ("| kill |", "| pause |", "| scale 3 → 5 |", "| scale 5 → 3 |", "| rollout to "):
            assert fault in faults, faults
        end = report[report.index("## At the end"):]
        assert "nmc exited with code 0" in end and "containers of the cluster left: 0" in end
        assert "files left in nmc's run directory: none" in end
    finally:
        (ROOT / written.group(1)).unlink(missing_ok=True)  # a test's run is no result to keep
