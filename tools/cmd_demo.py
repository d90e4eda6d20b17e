"""``crisscross demo``: the whole pipeline on generated clips, in minutes, on a CPU (GPU if present).

    generate labelled demo clips -> build shards -> pretrain the tiny model with CrissCross
    -> linear SVM + retrieval for the pretrained encoder and a randomly initialised one
    -> demo/report.md with the numbers, the loss curve, a retrieval grid and an embedding map

Every step is resumable: a rerun skips the clips, shards, training steps and evaluations that
are already complete (``--fresh`` starts over).

How the demo recipe (data generator, preset, evaluation) was chosen, with the measured runs:
docs/demo.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

ENCODERS = ("pretrained", "random")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="generate clips, build shards, pretrain, evaluate, write a report",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"), help="working folder (report.md lands here)")
    parser.add_argument("--classes", type=_class_count, default=4, help="number of demo classes (4; 2 to 8)")
    parser.add_argument("--clips-per-class", type=int, default=16, help="pretraining clips per class")
    parser.add_argument("--eval-clips-per-class", type=int, default=40,
                        help="evaluation clips per class (3/4 train, 1/4 test for the linear SVM; "
                             "40 -> 40 test clips over 4 classes, so one clip is 2.5 points)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each generated clip")
    parser.add_argument("--epochs", type=float, default=None, help="pretraining epochs (default: the demo preset's)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on pretraining steps (CI uses a few)")
    parser.add_argument("--clips-per-sample", type=int, default=None,
                        help="evaluation clips per sample (default: the demo eval preset's)")
    # CPU unless asked: on CUDA, fp32 matmuls run as TF32 and cuDNN picks other kernels, so the
    # README's figures (measured on a CPU) would not reproduce exactly
    parser.add_argument("--device", default="cpu",
                        help="cpu (default; where the README's figures were measured), cuda, or auto (cuda when present)")
    parser.add_argument("--workers", type=int, default=2, help="shard-building processes")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the pretraining clips and the run (the evaluation clips use seed+1)")
    parser.set_defaults(func=run)


def _class_count(text: str) -> int:
    """--classes: checked when parsing, so a bad count stops before any clip is generated."""
    from crisscross.tools.demo_data import MAX_CLASSES

    value = int(text)
    if not 2 <= value <= MAX_CLASSES:
        raise argparse.ArgumentTypeError(f"the demo generator has 2 to {MAX_CLASSES} classes, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    report = run_demo(
        args.out, classes=args.classes, clips_per_class=args.clips_per_class,
        eval_clips_per_class=args.eval_clips_per_class, seconds=args.seconds,
        epochs=args.epochs, max_steps=args.max_steps, clips_per_sample=args.clips_per_sample,
        device=args.device, workers=args.workers, fresh=args.fresh, seed=args.seed,
    )
    summary = json.loads((report.parent / "summary.json").read_text())
    print(f"\nreport: {report.resolve()}")
    for modality in ("video", "audio"):
        pre, rnd = summary["linear"]["pretrained"][modality], summary["linear"]["random"][modality]
        print(f"linear SVM top-1 ({modality}, demo test split): pretrained {pre:.1%}  vs  random init {rnd:.1%}")
    return 0


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(
    out: Path,
    *,
    classes: int = 4,
    clips_per_class: int = 16,
    eval_clips_per_class: int = 40,
    seconds: float = 6.0,
    epochs: float | None = None,
    max_steps: int | None = None,
    clips_per_sample: int | None = None,
    device: str = "cpu",
    workers: int = 2,
    fresh: bool = False,
    seed: int = 0,
) -> Path:
    """Run the demo end to end into ``out``; returns the path of ``report.md``."""
    from crisscross.evaluate.config import load_config
    from crisscross.evaluate.pipeline import run_linear, run_retrieval
    from crisscross.evaluate.report import atomic_write_text
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips
    from crisscross.train.config import resolve_config
    from crisscross.train.trainer import train

    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(device)
    timings: dict[str, float] = {}

    # Two disjoint sets, as in real use (pretrain on Kinetics, evaluate on UCF101): pretraining
    # never sees the clips it is evaluated on, not even without their labels.
    started = _step(f"1/4 generating demo clips: {classes} classes x {clips_per_class} for pretraining, "
                    f"{classes} x {eval_clips_per_class} for evaluation")
    sets = {"pretrain": (clips_per_class, seed), "eval": (eval_clips_per_class, seed + 1)}
    manifests = {}
    for name, (per_class, set_seed) in sets.items():
        manifests[name] = out / "clips" / name / "manifest.csv"
        if not manifests[name].exists():
            generate_demo_clips(manifests[name].parent, num_classes=classes, clips_per_class=per_class,
                                seconds=seconds, seed=set_seed)
    timings["clips"] = time.perf_counter() - started

    started = _step("2/4 building shards (16 fps, 112 px, 16 kHz)")
    shard_dirs = {name: out / "shards" / name for name in sets}
    for name, manifest in manifests.items():
        # small shards so that the build spreads over the workers and every DDP rank gets some
        per_shard = max(4, (classes * sets[name][0]) // 8)
        build_shards(manifest, shard_dirs[name], name=f"demo_{name}", workers=workers, seed=seed,
                     samples_per_shard=per_shard)
    shards = shard_dirs["eval"]
    timings["shards"] = time.perf_counter() - started

    started = _step(f"3/4 pretraining the tiny model with CrissCross on {device}")
    overrides = [f"data.shards={shard_dirs['pretrain']}", f"run.dir={out / 'run'}", f"run.device={device}", f"run.seed={seed}"]
    if epochs is not None:
        overrides.append(f"run.epochs={epochs}")
    if max_steps is not None:
        overrides.append(f"run.max_steps={max_steps}")
    config = resolve_config("demo", overrides)
    summary = train(config, resume="auto")
    timings["pretrain"] = time.perf_counter() - started
    export = Path(summary["export"]) if summary.get("export") else out / "run" / "export"

    started = _step("4/4 evaluating: linear SVM and retrieval, pretrained vs random init")
    results: dict[str, Any] = {"linear": {e: {} for e in ENCODERS}, "retrieval": {}}
    eval_dirs: dict[str, Path] = {}
    for encoder, checkpoint in (("pretrained", str(export)), ("random", "random")):
        for modality in ("video", "audio"):
            cfg = _eval_config(load_config, modality, clips_per_sample, device, seed, encoder)
            path = _once(run_linear, checkpoint, shards, cfg, out / "eval" / f"linear_{modality}_{encoder}")
            results["linear"][encoder][modality] = _headline(path, "top1")
        cfg = _eval_config(load_config, "video", clips_per_sample, device, seed, encoder)
        eval_dirs[encoder] = out / "eval" / f"retrieval_{encoder}"
        path = _once(run_retrieval, checkpoint, shards, cfg, eval_dirs[encoder])
        results["retrieval"][encoder] = _retrieval_headline(path)
    timings["evaluate"] = time.perf_counter() - started

    summary_path = out / "summary.json"
    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    results["device"] = device  # the figures above were measured here
    results["train"] = {k: summary.get(k) for k in ("status", "step", "run_dir", "metrics")}
    results["train"]["objective_terms"] = list(config["objective"]["terms"])
    results["train"]["views"] = {k: config["data"].get(k) for k in ("relaxation", "view_alignment")}
    atomic_write_text(summary_path, json.dumps(results, indent=2))
    return write_report(out, results, Path(summary["run_dir"]), eval_dirs)


def _once(evaluator, checkpoint: str, shards: Path, cfg, out_dir: Path) -> Path:
    """Run an evaluator unless its results.json (written atomically, last) is already there."""
    done = out_dir / "results.json"
    return done if done.exists() else evaluator(checkpoint, shards, cfg, out_dir)


# The evaluation sees the same 1 s video window as the demo pretraining (train/presets/demo.yaml:
# 8 frames at stride 2): the demo's classes differ in bounce rhythm, and a 0.5 s window does not
# span one bounce of the slow classes.
DEMO_EVAL_OVERRIDES = ["frames=8", "loader={frame_stride: 2}"]


def _eval_config(load_config, modality: str, clips_per_sample: int | None, device: str, seed: int, encoder: str):
    overrides = [*DEMO_EVAL_OVERRIDES, f"modality={modality}", f"device={device}", f"seed={seed}",
                 f"pretrain=demo-{encoder}"]
    if clips_per_sample is not None:
        overrides += [f"train_pass.clips_per_sample={clips_per_sample}", f"test_pass.clips_per_sample={clips_per_sample}"]
    return load_config("demo", overrides)


def _rows(results_json: Path) -> list[dict]:
    return json.loads(results_json.read_text())["rows"]


def _headline(results_json: Path, metric: str) -> float:
    """The honest number: the first row (cost chosen by CV on train), not the best-on-test one."""
    from crisscross.evaluate.report import COMPARISON_ONLY

    rows = [r for r in _rows(results_json) if r["metric"] == metric and COMPARISON_ONLY not in r["protocol"]]
    return float(rows[0]["value"])


def _retrieval_headline(results_json: Path) -> dict[str, float]:
    return {f"{r['modality']} {r['metric']}": float(r["value"]) for r in _rows(results_json)}


TERMS = {"intra": "L_intra (v1-v2, a1-a2)", "sync": "L_sync (v1-a1, v2-a2)", "async": "L_async (v1-a2, v2-a1)"}


def _objective_text(train: dict[str, Any]) -> str:
    """Which objective terms ran (and which did not), and how the two views were sampled."""
    ran = train.get("objective_terms") or []
    skipped = [TERMS[t] for t in TERMS if t not in ran]
    text = f"Objective terms that ran: {', '.join(TERMS.get(t, t) for t in ran)} (their mean; the demo preset)."
    if skipped:
        text += (f" Not run: {', '.join(skipped)}; full CrissCross uses all three — on these tiny clips the "
                 "intra-modal term makes the tiny video encoder learn per-clip colour and size (docs/demo.md).")
    views = train.get("views") or {}
    if views.get("relaxation"):
        text += f" Views: relaxation `{views['relaxation']}`, alignment `{views.get('view_alignment')}`."
    return text


def write_report(out: Path, results: dict[str, Any], run_dir: Path, eval_dirs: dict[str, Path]) -> Path:
    from crisscross.evaluate.report import atomic_write_text

    figures = out / "figures"
    figures.mkdir(exist_ok=True)

    def copy(src: Path, name: str) -> str | None:
        if src.exists():
            shutil.copyfile(src, figures / name)
            return f"figures/{name}"
        return None

    loss_png = copy(run_dir / "loss_curve.png", "loss_curve.png")
    grid_png = copy(eval_dirs["pretrained"] / "retrieval_video_video.png", "retrieval_grid_video.png")
    tsne_pre = copy(eval_dirs["pretrained"] / "tsne_video.png", "tsne_video_pretrained.png")
    tsne_rnd = copy(eval_dirs["random"] / "tsne_video.png", "tsne_video_random.png")
    tsne_audio = copy(eval_dirs["pretrained"] / "tsne_audio.png", "tsne_audio_pretrained.png")

    lin = results["linear"]
    lines = [
        "# crisscross demo report",
        "",
        "Generated clips (a ball bounces with a class-specific rhythm and each bounce clicks; the click's pitch "
        "comes from a class band that overlaps the neighbouring classes' bands; colours, sizes, loudness and "
        "background noise are random per clip) → shards → CrissCross pretraining of the tiny model on "
        "one set of clips, without labels → frozen-feature evaluation on a second, disjoint set of clips "
        "(its own train/test split; the SVM cost is chosen by cross-validation on the train part, the test part "
        "is scored once).",
        "",
        "## Linear SVM (top-1, cost chosen by cross-validation on the training split)",
        "",
        "| encoder | video | audio |",
        "|---|---|---|",
        *[f"| {e} | {lin[e]['video']:.1%} | {lin[e]['audio']:.1%} |" for e in ENCODERS],
        "",
        "## Retrieval (test queries against training samples; cross-modal within the test split)",
        "",
        "| metric | pretrained | random init |",
        "|---|---|---|",
        *[f"| {k} | {v:.1%} | {results['retrieval']['random'].get(k, float('nan')):.1%} |"
          for k, v in results["retrieval"]["pretrained"].items()],
        "",
        "## Pretraining",
        "",
        _objective_text(results["train"]),
        "",
        f"Status: {results['train']['status']}, {results['train']['step']} steps; last logged metrics:",
        "",
        "```json",
        json.dumps(results["train"]["metrics"], indent=1, sort_keys=True),
        "```",
        "",
    ]
    if loss_png:
        lines += [f"![loss curve]({loss_png})", ""]
    if grid_png:
        lines += ["## Retrieval grid (pretrained video encoder; green = same class)", "", f"![retrieval grid]({grid_png})", ""]
    lines += ["## Embedding maps (t-SNE of sample features)", ""]
    for title, png in (("video, pretrained", tsne_pre), ("video, random init", tsne_rnd), ("audio, pretrained", tsne_audio)):
        if png:
            lines += [f"**{title}**", "", f"![t-SNE {title}]({png})", ""]
    lines += [
        "## Where the time went (seconds)",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in results["timings_s"].items()],
        "",
        "Every number here comes from `summary.json` and the `results.json` files under `eval/`.",
    ]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
