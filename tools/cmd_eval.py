"""``crisscross eval linear|retrieval|finetune|fusion|report``: downstream evaluation.

Each evaluator reads a shard dataset (``--data``), a checkpoint (an export dir, a trainer
checkpoint file, or ``random``), an eval preset or YAML (``--config``) with ``key=value``
overrides (``--set key=value`` is the same), and writes ``results.json``, ``results.md`` and ``config.yaml`` into ``--out``.
``report`` collects results.json files into the layout of the paper's Tables 4, 6, 7, 8.

Before any feature is extracted, the data is checked against what the evaluator needs
(tools/preflight.py): the checkpoint exists, the samples hold the modality, carry labels, and
the splits or folds give non-empty train and test sides (finetune: at least one optimizer step).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from crisscross.tools.cli import add_overrides

EVALUATORS = ("linear", "retrieval", "finetune", "fusion")

DESCRIPTIONS = {
    "linear": "Linear evaluation of one encoder's frozen features (supplement E.1): K augmented clips "
              "per training sample, K uniform clips per test sample, a linear SVM with its cost chosen by "
              "grouped cross-validation on the training side (classifier=fc: a linear layer), "
              "leave-one-fold-out over the manifest's folds or its train/test split. "
              "`modality` (video|audio) picks the encoder.",
    "retrieval": "Nearest-neighbour retrieval (E.3, Table 7): sample features (mean of the test-pass "
                 "clips), cosine kNN, test samples query the training samples; cross-modal directions "
                 "query within the test split. Recall@k for retrieval.ks.",
    "finetune": "Full finetuning of the video backbone (E.2, Table S11): SGD, multi-step LR, the last "
                "epoch reported; resumes from --out/<partition>/checkpoints; runs under torchrun.",
    "fusion": "Multimodal late fusion (E.1): per clip the pooled video and audio features are "
              "concatenated and classified by a linear SVM as in linear evaluation. Needs samples "
              "with both video and audio.",
}


def _preset_summaries() -> dict[str, str]:
    """Preset name -> the first line of its leading comment."""
    from importlib import resources

    from crisscross.evaluate.config import preset_names

    out = {}
    for name in preset_names():
        text = resources.files("crisscross.evaluate").joinpath("presets", f"{name}.yaml").read_text(encoding="utf-8")
        first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
        out[name] = first
    return out


def _presets_for(evaluator: str, summaries: dict[str, str]) -> list[str]:
    """The presets written for an evaluator (by name); any preset parses with any evaluator."""
    def fits(name: str) -> bool:
        if name == "demo":
            return evaluator in ("linear", "retrieval", "fusion")
        if name.startswith("finetune_"):
            return evaluator == "finetune"
        if name.startswith("fusion_"):
            return evaluator == "fusion"
        if name == "retrieval":
            return evaluator == "retrieval"
        return evaluator == "linear"

    return [name for name in summaries if fits(name)]


def _epilog(evaluator: str, summaries: dict[str, str]) -> str:
    names = _presets_for(evaluator, summaries)
    lines = [f"presets for {evaluator} (--config NAME; docs/evaluate.md has every config key):"]
    lines += [f"  {name:<22} {summaries[name]}" for name in names] or ["  (none; give a YAML path)"]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate a pretrained (or random) encoder downstream",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    eval_sub = parser.add_subparsers(dest="evaluator", required=True, metavar="EVALUATOR")
    summaries = _preset_summaries()
    for name in EVALUATORS:
        p = eval_sub.add_parser(name, help=f"{name} evaluation (writes results.json + results.md)",
                                description=DESCRIPTIONS[name], epilog=_epilog(name, summaries),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--checkpoint", required=True, help="export dir, trainer checkpoint file, or 'random'")
        p.add_argument("--data", required=True, type=Path, help="shard dataset dir (manifest.parquet, *.tar)")
        p.add_argument("--config", help="eval preset name (listed below) or YAML path (default: the built-in defaults)")
        add_overrides(p, "train_pass.clips_per_sample=2 svm.cv_folds=3 (docs/evaluate.md#config-keys)")
        p.add_argument("--out", type=Path, help="output dir (default: eval_runs/<evaluator>-<data name>)")
        p.set_defaults(func=_run_evaluator)
    p = eval_sub.add_parser("report", help="collect results.json files into the paper's table layout",
                            description="Collect results.json files into the layout of the paper's Tables 4, 6, "
                                        "7 and 8 (honest rows only; rows selected on the test set are listed "
                                        "apart). Datasets are named by the shards they were measured on.")
    p.add_argument("results", nargs="+", type=Path, help="results.json files or folders searched recursively")
    p.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    p.set_defaults(func=_run_report)


def _run_evaluator(args: argparse.Namespace) -> int:
    from crisscross.evaluate.config import load_config
    from crisscross.tools.preflight import check_eval

    cfg = load_config(args.config, args.overrides)  # a bad preset, key or value: one line, exit 2
    check_eval(args.evaluator, args.checkpoint, args.data, cfg)
    out = args.out or Path("eval_runs") / f"{args.evaluator}-{args.data.resolve().name}"
    if args.evaluator == "linear":
        from crisscross.evaluate.pipeline import run_linear as run
    elif args.evaluator == "retrieval":
        from crisscross.evaluate.pipeline import run_retrieval as run
    elif args.evaluator == "fusion":
        from crisscross.evaluate.fusion import run_fusion as run
    else:
        from crisscross.evaluate.finetune import run_finetune as run
    path = run(args.checkpoint, args.data, cfg, out)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote the results
        print((path.parent / "results.md").read_text(encoding="utf-8"))
        print(f"wrote {path}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from crisscross.errors import UserError
    from crisscross.evaluate.report import atomic_write_text, collect_report, find_results, read_results

    files = find_results(args.results)
    if not files:
        raise UserError(f"no results.json under {[str(p) for p in args.results]}")
    rows = [row for f in files for row in read_results(f)]
    text = collect_report(rows)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out} ({len(rows)} rows from {len(files)} files)")
    else:
        print(text)
    return 0
