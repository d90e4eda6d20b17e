"""Checks before work: does the shard dataset hold what the command needs?

``crisscross pretrain`` and ``crisscross eval ...`` call these before any DALI pipeline, model or
feature pass starts, so that a wrong dataset, a missing modality, too few samples for a batch, a
label-less manifest or a finetuning schedule of zero steps is refused in a second with a message
that says what the data holds and what the command needs, instead of a DALI assertion ("input
samples: 0") or a traceback after minutes of feature extraction.

The dataset is opened once by ``crisscross.shards.Dataset`` (dataset.json, manifest.parquet;
pyarrow); nothing here imports DALI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crisscross.errors import UserError
from crisscross.shards.dataset import Dataset

AUDIO_FORMATS = ("pcm", "flac")  # what shards/pipelines.py reads


DatasetFacts = Dataset  # what a shard dataset holds (shards.Dataset)


def read_facts(data_dir: str | Path, *, need_manifest: bool) -> Dataset:
    """Open a dataset (shards.Dataset); refuse a missing folder, an unfinished build, a format
    version or an audio format the loaders do not read."""
    try:
        facts = Dataset.open(data_dir, need_manifest=need_manifest)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if facts.audio_format not in AUDIO_FORMATS:
        raise UserError(f"{facts.root} holds audio as {facts.audio_format!r}; the loaders read {AUDIO_FORMATS}")
    return facts


# ----------------------------------------------------------------------------- pretraining
def check_pretrain(config: dict[str, Any], world_size: int) -> None:
    """Pretraining reads video, audio and index of every sample (samples lacking one are skipped,
    or stop the run with data.missing_components=error) and needs one full batch per rank."""
    if config["run"]["loader"] != "dali":
        return
    data = config["data"]
    facts = read_facts(data["shards"], need_manifest=False)
    if not facts.has_manifest:  # a hand-made folder of tars: the loader's own checks apply
        return
    usable = facts.count_with(("video", "audio"))
    if usable == 0:
        raise UserError(f"{facts.root} holds {facts.describe()}; pretraining needs samples with both video and audio "
                        "(the training loader reads both streams of every sample): rebuild from sources with both streams "
                        "(`shards build --require av` keeps only those)")
    if data.get("missing_components", "skip") == "error" and usable < len(facts.rows):
        raise UserError(f"{facts.root} holds {facts.describe()}, and data.missing_components=error stops at the first "
                        "sample lacking video or audio: set data.missing_components=skip to train on the "
                        f"{usable} video+audio samples")
    global_batch = int(config["optim"]["batch_size"])
    per_rank = global_batch // max(world_size, 1)
    if usable // world_size < per_rank:
        raise UserError(f"{facts.root} holds {usable} video+audio samples: {usable // world_size} per rank over "
                        f"{world_size} rank(s), fewer than one batch of {per_rank} per rank "
                        f"(optim.batch_size={global_batch}): lower optim.batch_size or use more data")


# ----------------------------------------------------------------------------- evaluation
def eval_needs(evaluator: str, cfg: Any) -> tuple[str, ...]:
    """Modalities each sample must hold for an evaluator and config."""
    if evaluator == "fusion":
        return ("video", "audio")
    if evaluator == "finetune":
        return ("video",)
    if evaluator == "retrieval":
        used = {m for d in cfg.retrieval.directions for m in d.split("->")}
        return tuple(m for m in ("video", "audio") if m in used)
    return (cfg.modality,)


def check_eval(evaluator: str, checkpoint: str, data_dir: str | Path, cfg: Any) -> None:
    """Everything an evaluator would find out late: the checkpoint, the dataset, the modalities,
    labels, splits or folds, the classifier options and (finetune) a non-empty schedule."""
    if checkpoint != "random" and not Path(checkpoint).exists():
        raise UserError(f"checkpoint not found: {checkpoint} (an export dir, a trainer checkpoint file, or 'random')")
    facts = read_facts(data_dir, need_manifest=True)
    if not facts.rows:
        raise UserError(f"{facts.root}/manifest.parquet lists no samples")
    needs = eval_needs(evaluator, cfg)
    if not needs:
        raise UserError("retrieval.directions is empty: nothing to evaluate")
    holding = facts.count_with(needs)
    what = "+".join(needs)
    if holding == 0:
        other = "audio" if needs == ("video",) else "video"
        hint = (f" (--set modality={other}: {facts.count_with((other,))} samples hold {other})"
                if evaluator == "linear" and facts.count_with((other,)) else "")
        raise UserError(f"{facts.root} holds {facts.describe()}; eval {evaluator} needs samples with {what}{hint}")
    labelled = [r for r in facts.rows if str(r.get("label") or "") not in ("", "None") or int(r.get("label_index", -1)) >= 0]
    if not labelled:
        raise UserError(f"{facts.root} has no labels ({facts.describe()}): eval {evaluator} needs labelled samples; "
                        "build the shards from a dataset layout (--format) or a manifest with a label column")
    parts = _partitions(facts, cfg, needs)
    if evaluator in ("linear", "fusion", "finetune"):
        label_of = {str(r["key"]): _label(r) for r in facts.rows}
        for part in parts:
            classes = {label_of[k] for k in part.train_keys}
            if len(classes) < 2:
                raise UserError(f"partition {part.name}: the training side holds {len(classes)} class(es) "
                                f"({len(part.train_keys)} samples); a classifier needs at least 2")
    if evaluator == "finetune":
        check_finetune_steps(cfg, parts)


def _label(row: dict[str, Any]) -> str:
    return str(row.get("label_index")) if int(row.get("label_index", -1)) >= 0 else str(row.get("label"))


def _partitions(facts: DatasetFacts, cfg: Any, needs: tuple[str, ...]) -> list:
    """The evaluator's own train/test partitions (evaluate/pipeline.py), checked for emptiness."""
    from crisscross.evaluate.features import read_manifest
    from crisscross.evaluate.pipeline import _split_name, partitions

    try:
        parts = partitions(read_manifest(facts.root), cfg, _split_name(facts.root), needs)
    except ValueError as exc:
        raise UserError(f"{exc} ({facts.root} holds {facts.describe()})") from exc
    for part in parts:
        if not part.train_keys or not part.test_keys:
            raise UserError(f"partition {part.name} has {len(part.train_keys)} training and {len(part.test_keys)} "
                            f"test samples with {'+'.join(needs)} and a label; both must be non-empty "
                            f"({facts.root} holds {facts.describe()})")
    return parts


def check_finetune_steps(cfg: Any, parts: list) -> None:
    """Refuse a finetuning run that would take zero optimizer steps (it would report the
    untrained head's accuracy as a result)."""
    from crisscross.evaluate.finetune import steps_per_epoch  # the finetuner's own rule, not a copy

    ft = cfg.finetune
    if ft.epochs < 1:
        raise UserError(f"finetune.epochs={ft.epochs}: finetuning needs at least one epoch")
    for part in parts:
        if steps_per_epoch(len(part.train_keys), ft) == 0:
            raise UserError(f"finetune would take 0 optimizer steps on {part.name}: {len(part.train_keys)} training "
                            f"samples < finetune.batch_size={ft.batch_size} (each pass reads one clip per video "
                            "in full batches); lower finetune.batch_size or use more data")
