"""``crisscross bench gpu`` on the CPU, as CI runs it: CUDA-only steps SKIP with a reason, the rest
PASS, one PASS/FAIL/SKIP table and one JSON line; a hung or crashing step is a FAIL, not the end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crisscross.tools.bench_gpu import _skip_reason, run_child


def test_bench_gpu_runs_on_the_cpu(tmp_path):
    steps = ["torch", "loader", "pretrain_tiny", "eval_decoder", "ddp_pretrain", "ddp_finetune"]
    cmd = [sys.executable, "-m", "crisscross.tools.cli", "bench", "gpu", "--device", "cpu", "--clips", "8",
           "--workdir", str(tmp_path), "--only", *steps]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    status = {name: step["status"] for name, step in figures["steps"].items()}
    assert status == {"torch": "PASS", "shards": "PASS", "loader": "PASS", "pretrain_tiny": "PASS",
                      "eval_decoder": "SKIP", "ddp_pretrain": "SKIP", "ddp_finetune": "SKIP"}, figures
    assert figures["ours"] == figures["baseline"] == 4 and figures["failed"] == []
    assert all(figures["steps"][n]["reason"] for n in ("eval_decoder", "ddp_pretrain", "ddp_finetune"))
    loader = figures["steps"]["loader"]["figures"]
    assert loader["clips_per_s"] > 0 and loader["frames_per_s"] == pytest.approx(loader["clips_per_s"] * 16, rel=0.02)  # 2 views x 8
    assert 0 < loader["feed_share"] < 1  # the feeding thread's Python is measured, and is not the whole batch
    tiny = figures["steps"]["pretrain_tiny"]["figures"]
    assert tiny["resumed_at"] == 4 and tiny["steps"] == 6  # --resume auto continued from the checkpoint
    table = [line for line in lines if line.startswith(("torch ", "loader ", "ddp_pretrain "))]
    assert any("PASS" in line for line in table) and any("SKIP" in line for line in table)


def test_a_hung_step_times_out_and_a_crash_is_a_fail():
    hung = run_child([sys.executable, "-c", "import time; time.sleep(60)"], timeout=2)
    assert hung["status"] == "FAIL" and "timed out" in hung["reason"]
    crashed = run_child([sys.executable, "-c", "raise SystemExit('boom')"], timeout=30)
    assert crashed["status"] == "FAIL" and "without a result" in crashed["reason"] and "boom" in crashed["tail"]


def test_cuda_only_steps_say_why_they_skip():
    torch_ok = {"torch": {"status": "PASS", "figures": {"cuda_devices": 1}}, "shards": {"status": "PASS"},
                "pretrain_tiny": {"status": "PASS"}}
    assert "2+ GPUs, 1 visible" in _skip_reason("ddp_pretrain", "cuda", torch_ok)
    assert _skip_reason("eval_decoder", "cuda", torch_ok) is None
    assert "NVDEC" in _skip_reason("eval_decoder", "cpu", torch_ok)
    two = {**torch_ok, "torch": {"status": "PASS", "figures": {"cuda_devices": 2}}}
    assert _skip_reason("ddp_pretrain", "cuda", two) is None
    assert "no shards" in _skip_reason("loader", "cuda", {"shards": {"status": "FAIL"}})


def test_eval_loader_falls_back_to_cpu_decoding_when_nvdec_refuses(monkeypatch):
    from crisscross.shards import loader
    from crisscross.shards.pipelines import ReaderSpec

    monkeypatch.setattr(loader, "_VIDEO_DECODERS", {})
    calls = []

    def refuses(reader, device_id):
        calls.append((reader.paths, reader.shard_id, reader.num_shards))
        return "Codec configuration not supported on this GPU. Codec: JPEG"

    reader = ReaderSpec(paths=("a.tar", "b.tar"), shard_id=1, num_shards=2, shuffle=True)
    assert loader.choose_video_decoder(reader, 0, probe=refuses) == "cpu"
    assert loader.choose_video_decoder(reader, 0, probe=refuses) == "cpu"
    assert calls == [(("a.tar",), 0, 1)]  # probed once, on the first shard only
    assert loader.choose_video_decoder(reader, 1, probe=lambda r, d: None) == "mixed"  # another GPU: its own answer


def test_nvdec_probe_reports_instead_of_raising_without_a_gpu(tmp_path):
    import torch

    from crisscross.shards.pipelines import ReaderSpec, probe_gpu_video_decoder

    if torch.cuda.is_available():
        pytest.skip("this checks the no-GPU answer")
    error = probe_gpu_video_decoder(ReaderSpec(paths=(str(tmp_path / "missing.tar"),)), 0)
    assert isinstance(error, str) and error
