"""One command that checks and measures a GPU machine: PASS/FAIL/SKIP per step, one JSON line.

    crisscross bench gpu                      # --device cuda when a GPU is visible, else cpu
    crisscross bench gpu --device cpu         # what CI runs: CUDA-only steps are SKIPped with a reason

Every step runs in its own process (``python -m crisscross.tools.bench_gpu --step NAME``) with its
own timeout, so a crash, a hang or a CUDA error in one step cannot take the others down; the
run goes on after a failure and the whole stays within ``--budget`` seconds (5 minutes on one GPU
by default). The steps build their own small demo shards (generated clips, like the demo).

Steps, in order:

1. ``torch``: torch sees the device; a bf16 matmul runs and agrees with fp32.
2. ``shards``: generate demo clips and build shards (untimed input for the later steps).
3. ``loader``: the DALI training loader on the device: augmented frames/s and clips/s (the clock
   stops after ``torch.cuda.synchronize``), and what a batch costs in Python on the feeding thread.
4. ``eval_decoder``: does NVDEC take the shards' MJPEG? Then the evaluation loader on the GPU
   (which makes the same check and falls back to CPU decoding by itself): clips/s, decoder chosen.
5. ``pretrain_tiny``: a few pretraining steps of the tiny model (bf16 on CUDA), then ``--resume
   auto`` continues from its checkpoint on the same device.
6. ``pretrain_full``: a few steps of the paper-size model (kinetics_sound preset) with
   channels_last and LARC (on a CPU: a scaled-down model, to check the plumbing only).
7. ``bench_train``: ``crisscross bench train`` end to end vs its synthetic ceiling (ratio, MFU).
8. ``ddp_pretrain`` / ``ddp_finetune`` (2+ GPUs): a 2-rank torchrun pretraining (NCCL,
   SyncBatchNorm) and a 2-rank finetune (``--cpu-ddp``: the same with gloo on a CPU).

Peak GPU memory is reported per step and overall. The JSON's ``ours``/``baseline`` are the steps
that passed / the steps that ran (not skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_MARK = "@@bench-gpu-step "  # the child's result line starts with this
# the longest single-GPU step (bench_train) runs last, so a short --budget cuts it rather than the rest
STEPS = ("torch", "shards", "loader", "eval_decoder", "pretrain_tiny", "pretrain_full", "bench_train",
         "ddp_pretrain", "ddp_finetune")
# per-step timeouts (seconds); the run as a whole is also held to --budget
TIMEOUTS = {"torch": 60, "shards": 150, "loader": 120, "pretrain_tiny": 150, "pretrain_full": 150,
            "bench_train": 200, "eval_decoder": 120, "ddp_pretrain": 180, "ddp_finetune": 180}
# sizes per device: a GPU gets the paper's per-GPU batch; the CPU run is what CI can afford
SIZES = {
    "cuda": {"clips": 128, "loader_batch": 128, "loader_batches": 10, "tiny_batch": 32, "tiny_steps": 6,
             "full_batch": 64, "full_steps": 5, "train_steps": 30, "eval_batch": 8, "eval_clips": 4},
    "cpu": {"clips": 16, "loader_batch": 8, "loader_batches": 3, "tiny_batch": 8, "tiny_steps": 4,
            "full_batch": 4, "full_steps": 2, "train_steps": 2, "eval_batch": 4, "eval_clips": 2},
}
# the paper-size model scaled down so that a CPU runs its steps in seconds (the plumbing only)
CPU_FULL_MODEL = ["model.width=8", "model.video_blocks=[1,1,1,1]", "model.audio_blocks=[1,1,1,1]",
                  "model.proj_hidden=64", "model.proj_dim=64", "model.pred_hidden=16", "data.crop=64", "data.frames=4"]
QUIET_RUN = ["run.progress=false", "run.tensorboard=false"]


class Skip(Exception):
    """The step does not apply here (e.g. needs CUDA); the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="cuda, cpu (CUDA-only steps are skipped), or auto (cuda when visible)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run (each step is cut to what is left)")
    parser.add_argument("--only", nargs="*", choices=STEPS, default=None, help="run only these steps (shards is added when needed)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep shards and runs here (default: a temp dir)")
    parser.add_argument("--clips", type=int, default=None, help="demo clips to build (default: 128 cuda / 16 cpu)")
    parser.add_argument("--cpu-ddp", action="store_true",
                        help="with --device cpu, also run the 2-rank steps (torchrun, gloo, 2 processes) instead of skipping them")


# ----------------------------------------------------------------------------- parent


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = _resolve_device(args.device)
    sizes = dict(SIZES[device])
    if args.clips:
        sizes["clips"] = args.clips
    wanted = list(STEPS if args.only is None else args.only)
    if any(s != "torch" and s != "shards" for s in wanted) and "shards" not in wanted:
        wanted.insert(0, "shards")  # every later step reads the shards
    wanted = [s for s in STEPS if s in wanted]
    deadline = time.monotonic() + args.budget
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, Any]] = {}
        for name in wanted:
            results[name] = _run_step(name, device, sizes, work, results, deadline, args.cpu_ddp)
            _print_row(name, results[name])
    return _summary(results, device, args.budget)


def _resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_step(name: str, device: str, sizes: dict[str, int], work: Path, done: dict[str, dict[str, Any]],
              deadline: float, cpu_ddp: bool = False) -> dict[str, Any]:
    skip = _skip_reason(name, device, done, cpu_ddp)
    if skip:
        return {"status": "SKIP", "reason": skip, "seconds": 0.0}
    left = deadline - time.monotonic()
    if left < 10:
        return {"status": "SKIP", "reason": "the time budget is spent", "seconds": 0.0}
    timeout = min(TIMEOUTS[name], left)
    cmd = [sys.executable, "-m", "crisscross.tools.bench_gpu", "--step", name, "--device", device,
           "--workdir", str(work), "--sizes", json.dumps(sizes)]
    return run_child(cmd, timeout)


def _skip_reason(name: str, device: str, done: dict[str, dict[str, Any]], cpu_ddp: bool = False) -> str | None:
    if name.startswith("ddp_"):
        if device != "cuda" and not cpu_ddp:
            return "needs 2+ GPUs (--cpu-ddp runs it with gloo; 2-rank runs: tests/test_train_distributed.py)"
        gpus = done.get("torch", {}).get("figures", {}).get("cuda_devices", 0)
        if device == "cuda" and gpus < 2:
            return f"needs 2+ GPUs, {gpus} visible"
        if name == "ddp_finetune" and done.get("pretrain_tiny", {}).get("status") != "PASS":
            return "needs the export of pretrain_tiny, which did not pass"
    if name == "eval_decoder" and device != "cuda":
        return "NVDEC is a GPU decoder (the CPU evaluation loader is covered by tests/test_loader_eval.py)"
    if name != "torch" and name != "shards" and done.get("shards", {}).get("status") != "PASS":
        return "no shards (the shards step did not pass)"
    return None


def run_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run one step's process in its own session; kill its whole group on timeout."""
    started = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group (torchrun children too)
        output, _ = proc.communicate()
        return {"status": "FAIL", "reason": f"timed out after {timeout:.0f} s", "seconds": round(time.monotonic() - started, 1),
                "tail": _tail(output)}
    seconds = round(time.monotonic() - started, 1)
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result["seconds"] = seconds
            if result["status"] == "FAIL":
                result["tail"] = _tail(output)
            return result
    return {"status": "FAIL", "reason": f"exit {proc.returncode} without a result", "seconds": seconds, "tail": _tail(output)}


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _print_row(name: str, result: dict[str, Any]) -> None:
    figures = result.get("figures") or {}
    detail = result.get("reason") or ", ".join(f"{k}={v}" for k, v in figures.items() if not isinstance(v, (dict, list)))
    print(f"{name:<14} {result['status']:<5} {result['seconds']:>7.1f} s  {detail}", flush=True)
    if result["status"] == "FAIL" and result.get("tail"):
        print(f"{'':<14} output: {result['tail'][-1500:]}", flush=True)


def _summary(results: dict[str, dict[str, Any]], device: str, budget: float) -> dict[str, Any]:
    ran = [r for r in results.values() if r["status"] != "SKIP"]
    passed = [r for r in ran if r["status"] == "PASS"]
    peaks = [r.get("figures", {}).get("peak_gpu_mem_gib") for r in results.values()]
    peaks = [p for p in peaks if p is not None]
    print("\nstep           result  time     figures or reason")
    for name, result in results.items():
        _print_row(name, result)
    device_name = results.get("torch", {}).get("figures", {}).get("device_name", device)
    return {
        "ours": len(passed), "baseline": len(ran), "ratio": round(len(passed) / max(len(ran), 1), 3),
        "unit": "steps passed / steps run", "device": device_name,
        "skipped": [n for n, r in results.items() if r["status"] == "SKIP"],
        "failed": [n for n, r in results.items() if r["status"] == "FAIL"],
        "peak_gpu_mem_gib": max(peaks) if peaks else None,
        "wall_s": round(sum(r["seconds"] for r in results.values()), 1), "budget_s": budget,
        "steps": {n: {k: v for k, v in r.items() if k != "tail"} for n, r in results.items()},
    }


# ----------------------------------------------------------------------------- steps (child side)


def _cuda(device: str) -> bool:
    return device == "cuda"


def _sync(device: str) -> None:
    if _cuda(device):
        import torch

        torch.cuda.synchronize()


def _peak_mem(device: str) -> dict[str, float]:
    if not _cuda(device):
        return {}
    import torch

    return {"peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def step_torch(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    import torch

    figures: dict[str, Any] = {"torch": torch.__version__, "cuda_devices": torch.cuda.device_count()}
    if _cuda(device):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device")
        figures["device_name"] = torch.cuda.get_device_name(0)
        figures["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        figures["bf16_supported"] = torch.cuda.is_bf16_supported()
    a = torch.randn(512, 512, device=device)
    b = torch.randn(512, 512, device=device)
    exact = a @ b
    approx = (a.bfloat16() @ b.bfloat16()).float()
    _sync(device)
    rel = float((approx - exact).norm() / exact.norm())
    figures["bf16_matmul_rel_err"] = round(rel, 4)
    if not rel < 0.02:  # bf16 keeps 8 bits of mantissa: ~0.3 % relative error on this product
        raise RuntimeError(f"bf16 matmul disagrees with fp32 (relative error {rel:.3g})")
    return figures


def step_shards(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    per_class = -(-sizes["clips"] // 4)
    started = time.perf_counter()
    manifest = generate_demo_clips(work / "clips", num_classes=4, clips_per_class=per_class, seconds=4.0)
    generated = time.perf_counter() - started
    stats = build_shards(manifest, work / "shards", name="gpucheck", progress=False,
                         workers=min(8, os.cpu_count() or 1), samples_per_shard=max(4, per_class))
    if getattr(stats, "errors", 0):
        raise RuntimeError(f"{stats.errors} clips failed to build")
    return {"clips": 4 * per_class, "generate_s": round(generated, 1), "build_s": round(time.perf_counter() - started - generated, 1)}


def step_loader(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    from crisscross.shards.loader import build_train_loader

    batch, count = sizes["loader_batch"], sizes["loader_batches"]
    loader = build_train_loader({"shards": str(work / "shards"), "relaxation": "mild", "num_threads": min(8, os.cpu_count() or 1)},
                                batch_size=batch, device="cuda:0" if _cuda(device) else "cpu", seed=0)

    def endless():
        while True:
            yield from loader

    batches = endless()
    next(batches)  # warm-up: pipelines built, first decode
    _sync(device)
    before = loader.timing()
    start = time.perf_counter()
    for _ in range(count):
        out = next(batches)
    _sync(device)  # the GPU's work for the last batch is done before the clock stops
    elapsed = time.perf_counter() - start
    after = loader.timing()
    frames = 2 * out["v1"].shape[2]  # two views x T frames
    feed_ms = 1e3 * (after["feed_s"] - before["feed_s"]) / count
    return {"clips_per_s": round(count * batch / elapsed, 1), "frames_per_s": round(count * batch * frames / elapsed, 1),
            "batch": batch, "feed_ms_per_batch": round(feed_ms, 2),
            "feed_share": round(feed_ms / (1e3 * elapsed / count), 3), "on": str(out["v1"].device), **_peak_mem(device)}


def _fresh(run_dir: Path) -> Path:
    """A step's own output folder, emptied: a rerun with the same --workdir starts clean."""
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


def _pretrain(preset: str, overrides: list[str], resume: str | None = None) -> dict[str, Any]:
    from crisscross.train.config import resolve_config
    from crisscross.train.trainer import train

    return train(resolve_config(preset, [*QUIET_RUN, *overrides]), resume=resume)


def step_pretrain_tiny(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    import math

    from crisscross.train.checkpoint import find_latest, load_checkpoint

    steps = sizes["tiny_steps"]
    run_dir = _fresh(work / "run_tiny")
    common = [f"data.shards={work / 'shards'}", f"run.dir={run_dir}", f"run.device={device}",
              f"run.precision={'bf16' if _cuda(device) else 'fp32'}", f"optim.batch_size={sizes['tiny_batch']}",
              f"run.checkpoint_every={steps}", f"run.log_every={steps}"]
    first = _pretrain("demo", [*common, f"run.max_steps={steps}", "run.export=false"])
    if first["status"] != "completed" or first["step"] != steps:
        raise RuntimeError(f"first run ended {first['status']} at step {first['step']}, wanted {steps}")
    start = time.perf_counter()
    second = _pretrain("demo", [*common, f"run.max_steps={steps + 2}", "run.log_every=1"], resume="auto")
    state = load_checkpoint(find_latest(run_dir), map_location="cpu")
    if second["step"] != steps + 2 or state["step"] != steps + 2:
        raise RuntimeError(f"resume reached step {second['step']} (checkpoint {state['step']}), wanted {steps + 2}")
    loss = second["metrics"].get("loss/total", math.nan)
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite loss after resuming: {loss}")
    return {"steps": steps + 2, "resumed_at": steps, "loss": round(loss, 4),
            "clips_per_s": round(first["metrics"].get("perf/clips_per_s", 0.0), 1),
            "resume_s": round(time.perf_counter() - start, 1), "export": bool(second.get("export")), **_peak_mem(device)}


def step_pretrain_full(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    import math

    steps = sizes["full_steps"]
    overrides = [f"data.shards={work / 'shards'}", f"run.dir={_fresh(work / 'run_full')}", f"run.device={device}",
                 f"run.precision={'bf16' if _cuda(device) else 'fp32'}", "run.channels_last=true", "optim.larc=true",
                 f"optim.batch_size={sizes['full_batch']}", f"run.max_steps={steps}", f"run.log_every={steps}",
                 f"run.checkpoint_every={steps}", "run.export=false", *([] if _cuda(device) else CPU_FULL_MODEL)]
    summary = _pretrain("kinetics_sound", overrides)
    loss = summary["metrics"].get("loss/total", math.nan)
    if summary["step"] != steps or not math.isfinite(loss):
        raise RuntimeError(f"ended at step {summary['step']} with loss {loss}")
    return {"model": "paper size" if _cuda(device) else "scaled down (cpu)", "batch": sizes["full_batch"],
            "steps": steps, "loss": round(loss, 4), "clips_per_s": round(summary["metrics"].get("perf/clips_per_s", 0.0), 1),
            **_peak_mem(device)}


def step_bench_train(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "crisscross.tools.cli", "bench", "train", "--device", device,
           "--shards", str(work / "shards"), "--steps", str(sizes["train_steps"])]
    if _cuda(device):  # the preset's 2 DALI threads would measure the host, not the GPU
        cmd += ["--loader-threads", str(min(8, os.cpu_count() or 1))]
    else:
        cmd += ["--warmup", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench train exited {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    keep = ("ours", "baseline", "ratio", "mfu_end_to_end", "mfu_ceiling", "data_wait_frac", "batch", "preset", "peak_source",
            "prefetch")
    return {k: figures[k] for k in keep if k in figures}


def step_eval_decoder(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """The evaluation loader on the GPU: it asks NVDEC once whether it takes the shards' MJPEG and
    decodes there, or on the CPU (feeding the GPU graph) when it does not; both are measured."""
    from crisscross.shards.loader import find_shards
    from crisscross.shards.pipelines import ReaderSpec, probe_gpu_video_decoder

    shards = find_shards(work / "shards")
    error = probe_gpu_video_decoder(ReaderSpec(paths=shards.tars[:1], index_paths=shards.indexes[:1] if shards.indexes else None), 0)
    figures: dict[str, Any] = {"nvdec_mjpeg": error is None, **({"nvdec_error": error[:300]} if error else {})}
    figures.update(_time_eval_loader(work, sizes, "cuda:0"))
    if figures["decoder"] != ("mixed" if error is None else "cpu"):
        raise RuntimeError(f"the eval loader chose {figures['decoder']!r} although the probe said {error or 'NVDEC works'}")
    return figures


def _time_eval_loader(work: Path, sizes: dict[str, int], device: str) -> dict[str, Any]:
    from crisscross.shards.loader import build_eval_loader

    loader = build_eval_loader(work / "shards", clips_per_sample=sizes["eval_clips"], batch_size=sizes["eval_batch"],
                               device=device, num_threads=min(8, os.cpu_count() or 1))
    start, clips = time.perf_counter(), 0
    for batch in loader:
        clips += batch["video"].shape[0] * batch["video"].shape[1]
    _sync("cuda" if device.startswith("cuda") else "cpu")
    elapsed = time.perf_counter() - start
    return {"decoder": loader.video_decoder, "clips_per_s": round(clips / elapsed, 1), "clips": clips,
            **_peak_mem("cuda" if device.startswith("cuda") else "cpu")}


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "crisscross.tools.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")  # the ranks' own messages, for the log
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() and "elastic" not in line]
        raise RuntimeError(f"torchrun exited {proc.returncode}: {' | '.join(errors[:3]) or _tail(proc.stderr, 12)}")
    return proc


def step_ddp_pretrain(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """2 ranks under torchrun: NCCL and SyncBatchNorm on GPUs (gloo and per-rank BatchNorm on a CPU)."""
    from crisscross.train.checkpoint import find_latest, load_checkpoint

    run_dir = _fresh(work / "run_ddp")
    steps = 4
    _torchrun(["pretrain", "--config", "kinetics_sound", f"data.shards={work / 'shards'}", f"run.dir={run_dir}",
               f"run.device={device}", "run.sync_bn=true", f"optim.batch_size={2 * sizes['full_batch']}",
               f"run.precision={'bf16' if _cuda(device) else 'fp32'}", f"run.max_steps={steps}", f"run.log_every={steps}",
               f"run.checkpoint_every={steps}", "run.export=false", *QUIET_RUN, *([] if _cuda(device) else CPU_FULL_MODEL)])
    state = load_checkpoint(find_latest(run_dir), map_location="cpu")
    if state["world_size"] != 2 or state["step"] != steps:
        raise RuntimeError(f"checkpoint has world size {state['world_size']} at step {state['step']}")
    return {"ranks": 2, "backend": "nccl" if _cuda(device) else "gloo", "sync_bn": _cuda(device), "steps": steps}


def step_ddp_finetune(device: str, work: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """2-rank finetune of pretrain_tiny's export (one epoch, one clip per video) on the demo split."""
    out = _fresh(work / "finetune_ddp")
    _torchrun(["eval", "finetune", "--checkpoint", str(work / "run_tiny" / "export"), "--data", str(work / "shards"),
               "--config", "demo", "--set", f"device={device}", "--set", "modality=video",
               "--set", "finetune={epochs: 1, batch_size: 8, clips_per_sample: 1, milestones: []}", "--out", str(out)])
    rows = json.loads((out / "results.json").read_text())["rows"]
    if not rows:
        raise RuntimeError(f"the finetune wrote no result rows ({out / 'results.json'})")
    return {"ranks": 2, **{f"{r['metric']}_{r['split']}": round(r["value"], 3) for r in rows}}


STEP_FUNCTIONS: dict[str, Callable[[str, Path, dict[str, int]], dict[str, Any]]] = {
    "torch": step_torch, "shards": step_shards, "loader": step_loader, "pretrain_tiny": step_pretrain_tiny,
    "pretrain_full": step_pretrain_full, "bench_train": step_bench_train, "eval_decoder": step_eval_decoder,
    "ddp_pretrain": step_ddp_pretrain, "ddp_finetune": step_ddp_finetune,
}


def _child(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one step of crisscross bench gpu")
    parser.add_argument("--step", choices=STEPS, required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sizes", type=json.loads, required=True)
    args = parser.parse_args(argv)
    try:
        figures = STEP_FUNCTIONS[args.step](args.device, args.workdir, args.sizes)
        result = {"status": "PASS", "figures": figures}
    except Skip as exc:
        result = {"status": "SKIP", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported as the step's FAIL, the parent goes on
        import traceback

        traceback.print_exc()
        result = {"status": "FAIL", "reason": f"{type(exc).__name__}: {exc}"[:2000]}
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)
    return 0 if result["status"] != "FAIL" else 1


if __name__ == "__main__":
    sys.exit(_child())
