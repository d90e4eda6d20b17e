"""What a GPU run depends on, checked on the CPU: the benchmark's default sizes, the GPU peak
table, the torch.compile refusal, and the demo staying on the CPU unless asked (issue 10)."""

from __future__ import annotations

import argparse

import pytest

from crisscross.tools.bench_train import MIN_DEMO_CLIPS, gpu_peak_tflops, plan_sizes
from crisscross.train.trainer import check_compile, uses_sync_bn


# ------------------------------------------------------------------ bench train defaults (bug 4)
def test_cuda_default_batch_gets_enough_demo_clips():
    batch, clips = plan_sizes(cuda=True, preset_batch=512, requested=None, available=None)
    assert batch == 128  # the paper's per-GPU batch
    assert clips >= batch  # the loader can fill one batch (it used to build 32 clips for 128)
    assert clips % 4 == 0


def test_cpu_default_batch_and_clips():
    assert plan_sizes(cuda=False, preset_batch=8, requested=None, available=None) == (8, MIN_DEMO_CLIPS)
    assert plan_sizes(cuda=False, preset_batch=512, requested=None, available=None) == (16, MIN_DEMO_CLIPS)


def test_requested_batch_is_kept_and_demo_clips_follow():
    batch, clips = plan_sizes(cuda=False, preset_batch=8, requested=50, available=None)
    assert batch == 50 and clips == 52


def test_batch_is_sized_to_user_shards():
    assert plan_sizes(cuda=True, preset_batch=512, requested=None, available=40)[0] == 40
    assert plan_sizes(cuda=True, preset_batch=512, requested=64, available=1000)[0] == 64
    with pytest.raises(ValueError, match="no samples"):
        plan_sizes(cuda=True, preset_batch=512, requested=None, available=0)


# ---------------------------------------------------------------------- GPU peak table (bug 5)
@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4),  # SXM
    ("NVIDIA H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4),
    ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA GH200 480GB", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L40S", 362.1),
    ("NVIDIA L4", 121.0),
])
def test_gpu_peak_matches_the_exact_part(name, tflops):
    found = gpu_peak_tflops(name)
    assert found is not None and found[0] == tflops


@pytest.mark.parametrize("name", ["Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4090", "NVIDIA L40"])
def test_unknown_gpu_has_no_table_peak(name):
    assert gpu_peak_tflops(name) is None  # the benchmark measures a bf16 matmul instead


# ------------------------------------------------------------------- compile refusal (bug 6)
RUN = {"compile": True, "sync_bn": True}


def test_compile_with_ddp_and_syncbn_on_gpus_is_refused():
    with pytest.raises(ValueError, match="run.sync_bn=false"):
        check_compile(RUN, "batch", distributed=True, cuda=True)


@pytest.mark.parametrize("run, norm, distributed, cuda", [
    ({"compile": True, "sync_bn": False}, "batch", True, True),   # per-GPU BatchNorm: compile works
    ({"compile": True, "sync_bn": True}, "batch", False, True),   # one GPU: no SyncBatchNorm
    ({"compile": True, "sync_bn": True}, "batch", True, False),   # CPU DDP: no SyncBatchNorm
    ({"compile": True, "sync_bn": True}, "group", True, True),    # no BatchNorm to convert
    ({"compile": False, "sync_bn": True}, "batch", True, True),
])
def test_compile_allowed_without_syncbn(run, norm, distributed, cuda):
    check_compile(run, norm, distributed=distributed, cuda=cuda)
    expected = run["sync_bn"] and norm == "batch" and distributed and cuda
    assert uses_sync_bn(run, norm, distributed=distributed, cuda=cuda) == expected


# ------------------------------------------------------------------------ demo device (bug 7)
def test_demo_stays_on_the_cpu_unless_asked():
    from crisscross.tools import cmd_demo

    parser = argparse.ArgumentParser()
    cmd_demo.register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["demo"]).device == "cpu"
    assert parser.parse_args(["demo", "--device", "cuda"]).device == "cuda"
    assert cmd_demo._device("cpu") == "cpu"
