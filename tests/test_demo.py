"""`crisscross demo` end to end in a reduced form: clips -> shards -> pretrain -> eval -> report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_writes_a_report_with_numbers(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "crisscross.tools.cli", "demo", "--out", str(out), "--classes", "2",
           "--clips-per-class", "4", "--eval-clips-per-class", "4", "--seconds", "3", "--max-steps", "3", "--clips-per-sample", "1",
           "--device", "cpu", "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out / "report.md"
    assert report.exists()
    # the closing lines name the report and compare pretrained with random init
    assert str(report.resolve()) in proc.stdout
    assert re.search(r"pretrained \d+\.\d% +vs +random init \d+\.\d%", proc.stdout)
    summary = json.loads((out / "summary.json").read_text())
    for encoder in ("pretrained", "random"):
        for modality in ("video", "audio"):
            assert 0.0 <= summary["linear"][encoder][modality] <= 1.0
        assert summary["retrieval"][encoder], "retrieval produced no metric"
    assert summary["train"]["status"] == "completed" and summary["train"]["step"] == 3
    text = report.read_text()
    assert re.search(r"\| pretrained \| \d+\.\d% \| \d+\.\d% \|", text)
    assert "figures/loss_curve.png" in text and (out / "figures" / "loss_curve.png").stat().st_size > 0
    # the report says which objective terms ran (the demo preset: the cross-modal ones) and how views were cut
    assert "Objective terms that ran: L_sync (v1-a1, v2-a2), L_async (v1-a2, v2-a1)" in text
    assert "Not run: L_intra" in text and "alignment `paper`" in text
    # a rerun resumes: everything is complete, so no step is redone and the numbers are the same
    proc2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["linear"] == summary["linear"]
