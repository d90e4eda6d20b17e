"""Evaluators on the demo preset: wall time of each, split into feature extraction vs classifier.

Runs ``linear`` (audio and video), ``retrieval``, ``fusion`` and ``finetune`` (one epoch) on the
demo clips' shards (generated and built in a temp dir unless ``--data`` is given) with the
``demo`` preset, reading each run's ``timing_s`` from its results.json ("total" includes model
loading and DALI pipeline construction). The comparison figure is the SVM cost sweep on real
data (ESC-10 from ../shared/data, fold 1 as test, tiny random audio encoder, 2 clips per sample,
5-fold grouped CV): ours runs the (cost x CV fold) fits in parallel with joblib, the baseline
runs the same fits one after another (n_jobs=1) on the same features; ratio = baseline / ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="demo shard dataset (default: generate + build one)")
    parser.add_argument("--checkpoint", default="random", help="export dir / checkpoint / random (tiny)")
    parser.add_argument("--clips-per-class", type=int, default=8, help="generated demo clips per class (8)")
    parser.add_argument("--jobs", type=int, default=-1, help="joblib workers for 'ours' (-1 = all cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="eval config override for both runs, e.g. --set svm.cv_folds=3 (repeatable)")
    parser.add_argument("--esc10", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "esc10",
                        help="ESC-10 folder (audio/ + esc10.csv) for the SVM sweep comparison")


def _demo_shards(root: Path, clips_per_class: int) -> Path:
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    manifest = generate_demo_clips(root / "clips", num_classes=4, clips_per_class=clips_per_class)
    build_shards(manifest, root / "shards", name="demo", workers=2, progress=False)
    return root / "shards"


def _timed_runs(checkpoint: str, data: Path, out: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
    from crisscross.evaluate.config import load_config
    from crisscross.evaluate.finetune import run_finetune
    from crisscross.evaluate.fusion import run_fusion
    from crisscross.evaluate.pipeline import run_linear, run_retrieval

    runs = {
        "linear_audio": (run_linear, ["modality=audio"]),
        "linear_video": (run_linear, ["modality=video"]),
        "retrieval": (run_retrieval, ["plots=false"]),
        "fusion": (run_fusion, []),
        "finetune_1epoch": (run_finetune, ["finetune.epochs=1", "finetune.batch_size=8", "finetune.clips_per_sample=2",
                                           "finetune.milestones=[]"]),
    }
    timings: dict[str, dict[str, float]] = {}
    for name, (run, extra) in runs.items():
        started = time.perf_counter()
        path = run(checkpoint, data, load_config("demo", overrides + extra), out / name)
        timing = json.loads(path.read_text())["timing_s"]
        timing["total_wall"] = round(time.perf_counter() - started, 3)
        timings[name] = timing
    return timings


def _esc10_shards(esc10: Path, root: Path) -> Path:
    from crisscross.preprocess.build import build_shards

    src = root / "esc10_src"
    src.mkdir()
    (src / "audio").symlink_to(esc10 / "audio", target_is_directory=True)  # link the real data, never copy
    (src / "esc10.csv").symlink_to(esc10 / "esc10.csv")
    build_shards(src, root / "esc10_shards", name="esc10", adapter="esc50", workers=2, progress=False)
    return root / "esc10_shards"


def _svm_sweep(data: Path, jobs: int) -> dict[str, float]:
    """The linear-audio classifier step twice on the same ESC-10 features: parallel vs serial sweep."""
    from crisscross.evaluate.config import load_config
    from crisscross.evaluate.features import POOLINGS
    from crisscross.evaluate.linear import linear_svm
    from crisscross.evaluate.pipeline import extract_pass, feature_set, label_indices, open_run

    cfg = load_config("esc50_2s", ["model=tiny", "folds=[1]", "train_pass.clips_per_sample=2",
                                   "test_pass.clips_per_sample=2", "batch_size=16"])
    ctx = open_run("random", data, cfg)
    heads = {"audio": ("audio", POOLINGS["linear"]["audio"])}
    train = extract_pass(ctx.encoders, ctx.data_dir, cfg, cfg.train_pass, heads)
    test = extract_pass(ctx.encoders, ctx.data_dir, cfg, cfg.test_pass, heads)
    labels, classes = label_indices(ctx.manifest)
    part = ctx.partitions()[0]
    tr = feature_set(train, "audio", part.train_keys, ctx.manifest, labels)
    te = feature_set(test, "audio", part.test_keys, ctx.manifest, labels)
    seconds = {}
    results = {}
    for label, n_jobs in (("parallel", jobs), ("serial", 1)):
        svm_cfg = dataclasses.replace(cfg.svm, n_jobs=n_jobs)
        started = time.perf_counter()
        results[label] = linear_svm(tr, te, svm_cfg, num_classes=len(classes))
        seconds[label] = time.perf_counter() - started
    if results["parallel"].accuracy != results["serial"].accuracy or results["parallel"].cost != results["serial"].cost:
        raise RuntimeError("parallel and serial SVM sweeps disagree")
    return seconds


def run(args: argparse.Namespace) -> dict:
    import os

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        root = Path(tmp)
        data = args.data or _demo_shards(root, args.clips_per_class)
        timings = _timed_runs(args.checkpoint, data, root / "runs", args.overrides)
        sweep = _svm_sweep(_esc10_shards(args.esc10, root), args.jobs)
    return {
        "ours": round(sweep["parallel"], 3),
        "baseline": round(sweep["serial"], 3),
        "ratio": round(sweep["serial"] / sweep["parallel"], 2),
        "unit": "s (LinearSVC sweep on ESC-10 fold 1: 8 costs x 5 CV folds + 8 final fits)",
        "device": f"cpu ({os.cpu_count()} cores)",
        "evaluators": timings,
        "checkpoint": args.checkpoint,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args()), sort_keys=True))
