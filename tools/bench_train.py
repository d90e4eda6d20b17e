"""Training throughput: end-to-end (DALI loader on real shards) vs the ceiling (synthetic tensors on the device).

Both runs use the trainer's own ``train_step`` on the same model, optimizer and precision. The
ceiling feeds one pre-made batch that already sits on the device, so it measures the model alone;
end-to-end reads the shards through ``crisscross.shards.loader``. Reported: clips/s of both
(``ours`` = end-to-end, ``baseline`` = ceiling, ``ratio`` = ours / baseline), the fraction of
end-to-end wall time spent waiting for data, FLOPs per clip (``torch.utils.flop_counter``, forward
+ backward) and model FLOPs utilization (MFU) against the device's dense peak: the spec-sheet bf16
figure for known GPUs, a measured float32 matmul rate on CPUs.

    crisscross bench train                                   # CPU: demo preset (tiny model), demo shards
    crisscross bench train --device cuda --preset kinetics_sound --batch 64 --channels-last --shards DIR
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from NVIDIA's data sheets, keyed by the
# tokens of ``torch.cuda.get_device_name()`` that identify the part. The most specific entry whose
# tokens all appear wins, so "NVIDIA H100 PCIe" gets the PCIe figure and not the SXM one ("H100"
# alone is the SXM part: its name is "NVIDIA H100 80GB HBM3"). "GH200" is its own token.
GPU_PEAK_TFLOPS: dict[tuple[str, ...], float] = {
    ("H100",): 989.4, ("H100", "PCIE"): 756.5, ("H100", "NVL"): 835.5,
    ("H200",): 989.4, ("H200", "NVL"): 835.5, ("GH200",): 989.4,
    ("B200",): 2250.0, ("A100",): 312.0, ("A800",): 312.0, ("L40S",): 362.1, ("L4",): 121.0, ("A10",): 125.0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (cpu)")
    parser.add_argument("--preset", default=None, help="training preset (default: demo on cpu, kinetics_sound on cuda)")
    parser.add_argument("--shards", type=Path, default=None,
                        help="dataset directory of shards (default: generated demo clips built into a temp dir, "
                             "at least 32 and at least one batch of them)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: 128 on cuda, the paper's per-GPU batch; the preset's, at most 16, "
                             "on cpu; with --shards, at most the number of samples there)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20 cpu / 50 cuda)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each run")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default=None,
                        help="training precision (default: the preset's run.precision)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last_3d for the video branch")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the preset's run.num_threads; demo: 1)")
    parser.add_argument("--loader-threads", type=int, default=None, help="DALI threads (data.num_threads)")
    parser.add_argument("--prefetch", type=int, default=None, help="batches decoded ahead (run.prefetch; 0 = inline)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="extra config overrides")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from crisscross.train.config import resolve_config

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("kinetics_sound" if cuda else "demo")
    overrides = [f"run.device={args.device}", "run.loader=dali", f"run.channels_last={str(args.channels_last).lower()}",
                 f"run.compile={str(args.compile).lower()}", *args.overrides]
    if args.precision:
        overrides.append(f"run.precision={args.precision}")
    if args.prefetch is not None:
        overrides.append(f"run.prefetch={args.prefetch}")
    if args.loader_threads:
        overrides.append(f"data.num_threads={args.loader_threads}")
    config = resolve_config(preset, overrides)
    available = _count_samples(args.shards) if args.shards else None
    batch, demo_clips = plan_sizes(cuda=cuda, preset_batch=int(config["optim"]["batch_size"]),
                                   requested=args.batch, available=available)
    wanted = plan_sizes(cuda=cuda, preset_batch=int(config["optim"]["batch_size"]), requested=args.batch,
                        available=None)[0]
    if batch != wanted:
        print(f"note: {args.shards} holds {available} samples: batch {wanted} -> {batch}", flush=True)
    config["optim"]["batch_size"] = batch
    steps = args.steps or (50 if cuda else 20)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        config["data"]["shards"] = str(args.shards or _demo_shards(Path(tmp), demo_clips))
        bench = _Bench(config)
        ceiling = bench.time_synthetic(steps, args.warmup)
        end_to_end, data_wait = bench.time_loader(steps, args.warmup)
    flops_per_clip = bench.flops_per_step / batch
    peak, peak_source = _peak_flops(bench.device)
    return {
        "ours": round(end_to_end, 2), "baseline": round(ceiling, 2), "ratio": round(end_to_end / ceiling, 3),
        "unit": "clips/s", "device": _device_name(bench.device),
        "data_wait_frac": round(data_wait, 3),
        "mfu_end_to_end": round(end_to_end * flops_per_clip / peak, 4),
        "mfu_ceiling": round(ceiling * flops_per_clip / peak, 4),
        "gflops_per_clip": round(flops_per_clip / 1e9, 3), "peak_tflops": round(peak / 1e12, 3),
        "peak_source": peak_source, "preset": preset, "batch": batch, "steps": steps,
        "precision": config["run"]["precision"], "channels_last": args.channels_last, "compile": args.compile,
        "threads": torch.get_num_threads(), "prefetch": config["run"]["prefetch"],
        "input": {k: list(v.shape) for k, v in bench.example.items()},
    }


class _Bench:
    """The trainer's model/optimizer/step on one device, timed on two data sources."""

    def __init__(self, config: dict[str, Any]) -> None:
        from crisscross.train.distributed import setup_distributed
        from crisscross.train.optim import Schedule, set_learning_rates
        from crisscross.train.trainer import build_setup

        self.config = config
        self.env = setup_distributed(config["run"])
        self.device = self.env.device
        self.setup = build_setup(config, self.env)  # the trainer's own model, optimizer, precision and loader
        self.views = self.setup.objective.views  # the method's views (docs/methods.md)
        o = config["optim"]
        set_learning_rates(self.setup.optimizer, 10, Schedule(o["lr"], o["end_lr"], o["pred_lr"], 0, 100))
        self.loader = self.setup.loader
        first = next(iter(self.loader))
        self.example = {k: first[k] for k in self.views}
        self.example_keys = first.get("key")  # AVID/CMA map sample keys to memory-bank rows
        self.flops_per_step = self._count_flops()

    def _views(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from crisscross.train.trainer import model_views
        return model_views(batch, self.views, channels_last=self.config["run"]["channels_last"])

    def _step(self, views: dict[str, torch.Tensor], keys: list[str] | None = None) -> torch.Tensor:
        from crisscross.train.methods import model_kwargs
        from crisscross.train.objectives.base import StepContext
        from crisscross.train.trainer import train_step
        s, ctx = self.setup, StepContext(env=self.env)
        batch = {**views, "key": keys if keys is not None else self.example_keys}
        return train_step(s.model, s.objective, s.optimizer, s.scaler, s.autocast, views, batch, ctx,
                          model_kwargs(s.raw, int(self.config["run"]["seed"]), ctx))[0]

    def _count_flops(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self._step(self._views(self.example))
        return float(counter.get_total_flops())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_synthetic(self, steps: int, warmup: int) -> float:
        views = {k: v.clone() for k, v in self._views(self.example).items()}  # already on the device
        for _ in range(warmup):
            self._step(views)
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            self._step(views)
        self._sync()
        return steps * self.config["optim"]["batch_size"] / (time.perf_counter() - start)

    def time_loader(self, steps: int, warmup: int) -> tuple[float, float]:
        from crisscross.train.prefetch import Prefetcher

        stream = Prefetcher(self.loader, depth=int(self.config["run"]["prefetch"]))  # as the trainer does
        try:
            for _ in range(warmup):
                warm = stream.next()
                self._step(self._views(warm), warm.get("key"))
            self._sync()
            waited, start = 0.0, time.perf_counter()
            for _ in range(steps):
                t0 = time.perf_counter()
                batch = stream.next()
                waited += time.perf_counter() - t0
                self._step(self._views(batch), batch.get("key"))
            self._sync()
            elapsed = time.perf_counter() - start
        finally:
            stream.close()
        return steps * self.config["optim"]["batch_size"] / elapsed, waited / elapsed


DEMO_CLASSES, MIN_DEMO_CLIPS = 4, 32


def plan_sizes(*, cuda: bool, preset_batch: int, requested: int | None, available: int | None) -> tuple[int, int]:
    """(batch size, demo clips to generate) for the benchmark's defaults.

    Batch: ``requested``, else 128 on CUDA (the paper's per-GPU batch on Kinetics-Sound: 512 over
    4 GPUs) or the preset's, at most 16, on the CPU; with user shards of ``available`` samples, at
    most that (the loader needs one full batch per epoch). Demo clips (when no shards are given):
    at least ``MIN_DEMO_CLIPS`` and at least one batch, in whole classes."""
    batch = requested or (128 if cuda else min(16, preset_batch))
    if available is not None:
        if available < 1:
            raise ValueError("the shards hold no samples")
        batch = min(batch, available)
    per_class = -(-max(MIN_DEMO_CLIPS, batch) // DEMO_CLASSES)
    return batch, per_class * DEMO_CLASSES


def _count_samples(shards: Path) -> int | None:
    """Samples in a dataset directory (its manifest), or None when it has no manifest."""
    from crisscross.shards.loader import find_shards

    manifest = find_shards(shards).manifest
    return len(manifest) or None


def _demo_shards(tmp: Path, clips: int = MIN_DEMO_CLIPS) -> Path:
    import os

    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    manifest = generate_demo_clips(tmp / "clips", num_classes=DEMO_CLASSES, clips_per_class=clips // DEMO_CLASSES,
                                   seconds=4.0)
    out = tmp / "shards"
    build_shards(manifest, out, name="demo", progress=False, workers=min(8, os.cpu_count() or 1))
    return out


def gpu_peak_tflops(device_name: str) -> tuple[float, str] | None:
    """(dense bf16 TFLOP/s, matched key) for a CUDA device name, or None when it is not listed.
    Tokens are compared whole ("H100" does not match "GH200"); the entry with most tokens wins."""
    import re

    tokens = set(re.split(r"[^A-Z0-9]+", device_name.upper()))
    matches = [key for key in GPU_PEAK_TFLOPS if tokens.issuperset(key)]
    if not matches:
        return None
    best = max(matches, key=len)
    return GPU_PEAK_TFLOPS[best], " ".join(best)


def _peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        found = gpu_peak_tflops(torch.cuda.get_device_name(device))
        if found is not None:
            return found[0] * 1e12, f"spec sheet dense bf16 ({found[1]})"
        return _measured_matmul_flops(device, torch.bfloat16), "measured bf16 matmul"
    return _measured_matmul_flops(device, torch.float32), "measured fp32 matmul (torch.mm 1024^2)"


def _measured_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} x{torch.get_num_threads()} threads"
    except OSError:
        pass
    return f"cpu: {platform.processor()}"
