"""``crisscross bench soak``: the training loader and a tiny training loop for N batches, with RSS,
open file descriptors and threads sampled from /proc; the figures would show a leak."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crisscross.tools.bench_soak import growth, process_figures


def test_soak_runs_the_loader_and_training_and_reports_the_series(tmp_path):
    cmd = [sys.executable, "-m", "crisscross.tools.cli", "bench", "soak", "--batches", "30", "--from", "10",
           "--every", "10"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert [s["batch"] for s in figures["series"]] == [10, 20, 30]
    assert figures["from_batch"] == 10 and figures["to_batch"] == 30 and figures["train"] is True
    assert figures["baseline"] == pytest.approx(figures["series"][0]["rss_mib"], abs=0.01)
    assert figures["ours"] == pytest.approx(figures["series"][-1]["rss_mib"], abs=0.01)
    assert figures["ratio"] == pytest.approx(figures["ours"] / figures["baseline"], rel=1e-3)
    assert figures["baseline"] > 50 and figures["fds_from"] >= 3 and figures["threads_from"] >= 2
    # the DALI pipelines and the prefetch thread do not pile up over epoch boundaries (4 batches each)
    assert figures["fds_to"] == figures["fds_from"] and figures["threads_to"] == figures["threads_from"]


def test_figures_see_a_descriptor_and_memory_leak():
    before = process_figures()
    leaked = [open(os.devnull) for _ in range(20)]  # noqa: SIM115 - the leak under test
    ballast = bytearray(64 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page so it is resident
    after = process_figures()
    try:
        assert after["fds"] - before["fds"] == 20
        assert after["rss_mib"] - before["rss_mib"] > 60
        report = growth([{"batch": 100, **before}, {"batch": 200, **after}], start=100)
        assert report["fds_growth_pct"] > 0 and report["rss_mib_growth_pct"] > 0
        assert report["from_batch"] == 100 and report["to_batch"] == 200
    finally:
        for handle in leaked:
            handle.close()


def test_soak_refuses_a_baseline_after_the_end():
    from argparse import Namespace

    from crisscross.tools.bench_soak import run

    with pytest.raises(ValueError, match="--batches"):
        run(Namespace(batches=50, start=100, every=10))
