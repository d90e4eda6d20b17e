"""The evaluators end to end: shards -> DALI eval loader -> frozen features -> classifier -> rows.

``run_linear`` (linear SVM or FC on one modality), ``run_retrieval`` and, in ``fusion.py``,
``run_fusion`` share the pieces here: building a loader pass, deciding the train/test partitions
(leave-one-fold-out over the manifest's folds, or its train/test split), and writing results.

Feature passes are shared across folds: with ESC-50's 5 folds every sample is extracted once with
the training-time settings (K augmented clips) and once with the test-time settings (K uniform
clips, no augmentation), and each fold picks its rows from those two passes.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from crisscross.evaluate.config import EvalConfig, PassConfig
from crisscross.evaluate.features import (
    POOLINGS,
    ClipFeatures,
    Encoders,
    Pool,
    SampleInfo,
    extract_features,
    load_encoders,
    read_manifest,
)
from crisscross.evaluate.linear import FeatureSet, linear_svm
from crisscross.evaluate.report import COMPARISON_ONLY, ResultRow, atomic_write_text, write_results
from crisscross.evaluate.retrieval import CROSS_MODAL_KS, recall_at_k, sample_means


# ------------------------------------------------------------------------------ partitions
@dataclass
class Partition:
    name: str  # "fold3" / "test"
    train_keys: list[str]
    test_keys: list[str]


def partitions(manifest: dict[str, SampleInfo], cfg: EvalConfig, split_name: str = "test",
               needs: tuple[str, ...] = ()) -> list[Partition]:
    """Leave-one-fold-out over the manifest's folds, or its train/test split (named ``split_name``).

    Samples lacking a modality in ``needs`` (a video without sound, an audio-only clip) are left
    out: the loader skips them, so they have no features to classify.
    """
    letters = {"video": "v", "audio": "a"}
    labelled = [s for s in manifest.values() if (s.label_index >= 0 or s.label not in ("", "None"))
                and all(letters[m] in s.modalities for m in needs)]
    folds = sorted({s.fold for s in labelled if s.fold >= 0})
    mode = cfg.splits if cfg.splits != "auto" else ("folds" if len(folds) >= 2 else "split")
    if mode == "folds":
        if len(folds) < 2:
            raise ValueError(f"splits=folds but the manifest has folds {folds}")
        chosen = cfg.folds or folds
        unknown = set(chosen) - set(folds)
        if unknown:
            raise ValueError(f"folds {sorted(unknown)} not in the manifest's folds {folds}")
        return [
            Partition(f"fold{f}", [s.key for s in labelled if s.fold >= 0 and s.fold != f],
                      [s.key for s in labelled if s.fold == f])
            for f in chosen
        ]
    train = [s.key for s in labelled if s.split == "train"]
    test = [s.key for s in labelled if s.split == "test"]
    if not train or not test:
        splits = sorted({s.split for s in labelled})
        raise ValueError(f"splits=split needs samples with split 'train' and 'test'; the manifest has {splits}")
    return [Partition(split_name, train, test)]


def label_indices(manifest: dict[str, SampleInfo]) -> tuple[dict[str, int], list[str]]:
    """Class index per key: the manifest's label_index when every sample has one, else sorted labels."""
    if all(s.label_index >= 0 for s in manifest.values()):
        index = {k: s.label_index for k, s in manifest.items()}
        names = {s.label_index: s.label for s in manifest.values()}
        return index, [names.get(i, str(i)) for i in range(max(names) + 1)]
    classes = sorted({s.label for s in manifest.values()})
    return {k: classes.index(s.label) for k, s in manifest.items()}, classes


def feature_set(clips: ClipFeatures, head: str, keys: list[str], manifest: dict[str, SampleInfo],
                labels: dict[str, int]) -> FeatureSet:
    rows = clips.rows(keys)
    return FeatureSet(
        keys=list(keys),
        features=clips.features[head][rows],
        labels=np.array([labels[k] for k in keys], dtype=np.int64),
        groups=np.array([manifest[k].group for k in keys]),
    )


# ------------------------------------------------------------------------------ loader passes
EpochClips = Callable[[int], ClipFeatures]  # online FC: the training clips' features of epoch e


def extract_pass(encoders: Encoders, data_dir: Path, cfg: EvalConfig, pass_cfg: PassConfig,
                 heads: dict[str, tuple[str, Pool]], *, thumbnails: bool = False,
                 seed: int | None = None) -> ClipFeatures:
    """One pass of the DALI evaluation loader over the whole dataset, through the frozen encoders
    (loader seed ``seed``, default ``cfg.seed``)."""
    from crisscross.shards.loader import build_eval_loader

    modalities = tuple(sorted({m for m, _ in heads.values()}, key=["video", "audio"].index))
    loader = build_eval_loader(
        str(data_dir),
        **cfg.loader_args(),
        clips_per_sample=pass_cfg.clips_per_sample,
        sampling=pass_cfg.sampling,
        augment=pass_cfg.augment,
        modalities=modalities,
        batch_size=cfg.batch_size,
        device=cfg.device,
        seed=cfg.seed if seed is None else seed,
    )
    return extract_features(encoders, loader, heads, chunk=cfg.feature_chunk, thumbnails=thumbnails)


# ------------------------------------------------------------------------------ bookkeeping
@dataclass
class RunContext:
    cfg: EvalConfig
    data_dir: Path
    encoders: Encoders
    manifest: dict[str, SampleInfo]
    dataset: str
    pretrain: str
    split_name: str = "test"  # "split1".."split3" for UCF101/HMDB51 shards (the builder's official split)
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> the loader's record (results.json)

    def partitions(self, needs: tuple[str, ...] = ()) -> list[Partition]:
        """The manifest's partitions without the samples the loader skipped (they have no features)."""
        parts = partitions(self.manifest, self.cfg, self.split_name, needs)
        if not self.skipped:
            return parts
        keep = lambda keys: [k for k in keys if k not in self.skipped]  # noqa: E731
        return [Partition(p.name, keep(p.train_keys), keep(p.test_keys)) for p in parts]

    def note_skipped(self, records: list[dict[str, Any]]) -> None:
        """Remember the samples a loader skipped (``ClipFeatures.skipped``, ``EvalLoader.skipped``):
        left out of every partition computed afterwards, listed in results.json."""
        for record in records:
            self.skipped.setdefault(record["key"], record)

    def row(self, **kw: Any) -> ResultRow:
        base = dict(dataset=self.dataset, checkpoint_sha=self.encoders.checkpoint_sha, pretrain=self.pretrain,
                    config=self.cfg.to_dict())
        base.update(kw)
        return ResultRow(**base)


def open_run(checkpoint: str, data_dir: Path, cfg: EvalConfig) -> RunContext:
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    encoders = load_encoders(checkpoint, model=cfg.model, seed=cfg.seed, device=cfg.device)
    for message in cfg.resolve_input(encoders.input_spec, source=checkpoint):  # cfg now names every input value
        warnings.warn(message, stacklevel=2)
    pretrain = cfg.pretrain or ("random" if checkpoint == "random" else _run_name(Path(checkpoint)))
    return RunContext(cfg, data_dir, encoders, manifest, cfg.dataset or _dataset_name(data_dir), pretrain,
                      _split_name(data_dir))


def _split_name(data_dir: Path) -> str:
    """UCF101/HMDB51 shards hold one official split (dataset.json build.split); name rows after it."""
    info = data_dir / "dataset.json"
    if info.exists():
        build = json.loads(info.read_text(encoding="utf-8")).get("build") or {}
        if build.get("adapter") in ("ucf101", "hmdb51") and build.get("split"):
            return f"split{int(build['split'])}"
    return "test"


def _run_name(checkpoint: Path) -> str:
    """The training run a checkpoint belongs to: runs/ks/export -> ks, runs/ks/checkpoints/step-9.pt -> ks."""
    path = checkpoint.resolve()
    while path.parent != path and (path.is_file() or path.name in ("export", "checkpoints")):
        path = path.parent
    return path.name


def _dataset_name(data_dir: Path) -> str:
    from crisscross.evaluate.report import dataset_from_shards

    return dataset_from_shards(data_dir)


def finish_run(ctx: RunContext, out_dir: Path, task: str, rows: list[ResultRow], timing: dict[str, float]) -> Path:
    """Save the config beside the results and write results.json + results.md."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(ctx.cfg.to_dict(), sort_keys=True))
    run = {
        "task": task,
        "checkpoint": ctx.encoders.source,
        "checkpoint_sha": ctx.encoders.checkpoint_sha,
        "model": ctx.encoders.model_cfg,
        "data": str(ctx.data_dir.resolve()),
        "argv": sys.argv,
        "python": platform.python_version(),
        # samples the evaluation loader skipped (shards/screen.py), never silently dropped
        "skipped_samples": sorted(ctx.skipped.values(), key=lambda r: (r["shard"], r["key"])),
    }
    return write_results(out_dir, rows, timing=timing, run=run)


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


# ------------------------------------------------------------------------------ classifier rows
def classify_rows(ctx: RunContext, train_clips: ClipFeatures | EpochClips, test_clips: ClipFeatures, head: str,
                  modality: str, task: str) -> tuple[list[ResultRow], float]:
    """SVM (cost by CV on train) or linear FC on every partition, plus the across-fold mean.
    ``train_clips`` is a function of the epoch only for the online FC (see ``train_features``)."""
    cfg = ctx.cfg
    ctx.note_skipped(test_clips.skipped)  # every pass screens the same shards: the same samples skipped
    labels, classes = label_indices(ctx.manifest)
    parts = ctx.partitions(("video", "audio") if modality == "audio+video" else (modality,))
    rows: list[ResultRow] = []
    start = time.perf_counter()
    honest, per_cost = [], []
    if modality == "audio+video":
        input_label = f"{cfg.input_label('video')} + {cfg.input_label('audio')}"
    else:
        input_label = cfg.input_label(modality)
    common = dict(task=task, modality=modality, input=input_label, metric="top1")
    if cfg.classifier == "fc":
        rows, honest = _fc_rows(ctx, train_clips, test_clips, head, parts, labels, len(classes), common)
    for part in parts if cfg.classifier == "svm" else []:
        train = feature_set(train_clips, head, part.train_keys, ctx.manifest, labels)
        test = feature_set(test_clips, head, part.test_keys, ctx.manifest, labels)
        res = linear_svm(train, test, cfg.svm, num_classes=len(classes))
        protocol = f"LinearSVC one-vs-rest, C by {res.cv_folds}-fold grouped CV on train"
        extra = {"cost": res.cost, "cv_accuracy": {str(c): a for c, a in res.cv_accuracy.items()},
                 "unconverged_fits": res.unconverged_fits, "train_samples": len(train.keys),
                 "test_samples": len(test.keys), "feature_dim": int(train.features.shape[2])}
        rows.append(ctx.row(split=part.name, protocol=protocol, value=res.accuracy, extra=extra, **common))
        rows.append(ctx.row(split=part.name, protocol=f"LinearSVC, best C on test {COMPARISON_ONLY}",
                            value=res.best_test_accuracy, extra={"cost": res.best_cost_on_test}, **common))
        honest.append(res.accuracy)
        per_cost.append(res.test_accuracy_per_cost)
    if len(parts) > 1:
        rows.append(ctx.row(split="mean", protocol=rows[0].protocol, value=_mean(honest),
                            extra={"over": [p.name for p in parts]}, **common))
        if per_cost:  # the paper's figure: the one cost whose fold-mean test accuracy is highest
            means = {c: _mean([pc[c] for pc in per_cost]) for c in per_cost[0]}
            best = max(means, key=lambda c: (means[c], -c))
            rows.append(ctx.row(split="mean", protocol=f"LinearSVC, best C on test {COMPARISON_ONLY}",
                                value=means[best], extra={"cost": best, "over": [p.name for p in parts]}, **common))
    return rows, time.perf_counter() - start


def _fc_rows(ctx: RunContext, train_clips: ClipFeatures | EpochClips, test_clips: ClipFeatures, head: str,
             parts: list[Partition], labels: dict[str, int], num_classes: int,
             common: dict[str, Any]) -> tuple[list[ResultRow], list[float]]:
    """Linear FC per partition. ``train_clips`` is one cached pass, or (online) a function giving
    each epoch's fresh pass; every partition's layer takes its rows from the same epoch pass."""
    from crisscross.evaluate.fc import FCTrainer

    fc_cfg = ctx.cfg.fc
    online = callable(train_clips)
    trainers: dict[str, FCTrainer] = {}
    for epoch in range(fc_cfg.epochs):
        clips = train_clips(epoch) if online else train_clips
        for part in parts:
            train = feature_set(clips, head, part.train_keys, ctx.manifest, labels)
            trainer = trainers.setdefault(part.name, FCTrainer(train, num_classes, fc_cfg))
            trainer.fit_epoch(train)
    if online:
        protocol = "linear FC on the frozen backbone, fresh random clips every epoch, last epoch"
    else:
        protocol = "linear FC on cached features (one training pass), last epoch"
    rows, honest = [], []
    for part in parts:
        test = feature_set(test_clips, head, part.test_keys, ctx.manifest, labels)
        res = trainers[part.name].score(test)
        extra = {"epochs": res.epochs, "features": fc_cfg.features, "train_samples": len(part.train_keys),
                 "test_samples": len(test.keys), "feature_dim": int(test.features.shape[2]),
                 "final_train_loss": res.final_train_loss}
        rows.append(ctx.row(split=part.name, protocol=protocol, value=res.accuracy, extra=extra, **common))
        honest.append(res.accuracy)
    return rows, honest


def train_features(ctx: RunContext, heads: dict[str, tuple[str, Pool]],
                   combine: Callable[[ClipFeatures], ClipFeatures] = lambda clips: clips) -> ClipFeatures | EpochClips:
    """The training pass, or for the online FC protocol a function giving epoch e's fresh pass
    (loader seed ``seed + e``: new random clips and augmentations each epoch, epoch 0 = the cached pass)."""
    cfg = ctx.cfg

    def epoch_pass(epoch: int) -> ClipFeatures:
        return combine(extract_pass(ctx.encoders, ctx.data_dir, cfg, cfg.train_pass, heads, seed=cfg.seed + epoch))

    if cfg.classifier == "fc" and cfg.fc.features == "online":
        return epoch_pass
    return epoch_pass(0)


def pass_timing(name: str, clips: ClipFeatures | EpochClips) -> dict[str, float]:
    """``{name: seconds}`` of a cached pass; {} for online passes (they run inside the classifier's time)."""
    return {name: clips.seconds} if isinstance(clips, ClipFeatures) else {}


# ------------------------------------------------------------------------------ evaluators
def run_linear(checkpoint: str, data_dir: Path, cfg: EvalConfig, out_dir: Path) -> Path:
    """Linear evaluation of one modality's frozen features (appendix E.1)."""
    started = time.perf_counter()
    ctx = open_run(checkpoint, data_dir, cfg)
    heads = {cfg.modality: (cfg.modality, POOLINGS["linear"][cfg.modality])}
    train_clips = train_features(ctx, heads)
    test_clips = extract_pass(ctx.encoders, ctx.data_dir, cfg, cfg.test_pass, heads)
    rows, classifier_s = classify_rows(ctx, train_clips, test_clips, cfg.modality, cfg.modality, "linear")
    timing = {**pass_timing("features_train", train_clips), "features_test": test_clips.seconds,
              "classifier": classifier_s, "total": time.perf_counter() - started}
    return finish_run(ctx, out_dir, "linear", rows, timing)


def run_retrieval(checkpoint: str, data_dir: Path, cfg: EvalConfig, out_dir: Path) -> Path:
    """Nearest-neighbour retrieval on sample features (mean of the test-pass clips; appendix E.3)."""
    started = time.perf_counter()
    ctx = open_run(checkpoint, data_dir, cfg)
    directions = list(cfg.retrieval.directions)
    ks = tuple(int(k) for k in cfg.retrieval.ks)
    needed = {m for d in directions for m in d.split("->")}
    heads = {m: (m, POOLINGS["global"][m]) for m in ("video", "audio") if m in needed}
    clips = extract_pass(ctx.encoders, ctx.data_dir, cfg, cfg.test_pass, heads, thumbnails=cfg.plots)
    ctx.note_skipped(clips.skipped)
    start = time.perf_counter()
    labels, classes = label_indices(ctx.manifest)
    feats = {m: sample_means(clips.features[m]) for m in heads}
    rows: list[ResultRow] = []
    parts = ctx.partitions(tuple(heads))
    for direction in directions:
        q_mod, g_mod = direction.split("->")
        per_part: list[dict[int, float]] = []
        for part in parts:
            if q_mod == g_mod:  # test samples query the training samples
                q_keys, g_keys, protocol, use_ks = part.test_keys, part.train_keys, "cosine kNN, test queries train", ks
            else:  # SpeedAug A.5: within the evaluation split, one modality queries the other
                q_keys = g_keys = part.test_keys
                protocol, use_ks = "cosine kNN, cross-modal within the test split", tuple(sorted(set(ks) | set(CROSS_MODAL_KS)))
            q_rows, g_rows = clips.rows(q_keys), clips.rows(g_keys)
            recall = recall_at_k(feats[q_mod][q_rows], np.array([labels[k] for k in q_keys]),
                                 feats[g_mod][g_rows], np.array([labels[k] for k in g_keys]), use_ks)
            per_part.append(recall)
            for k, value in recall.items():
                rows.append(ctx.row(task="retrieval", split=part.name, protocol=protocol, modality=direction,
                                    input=cfg.input_label(q_mod), metric=f"R@{k}", value=value,
                                    extra={"queries": len(q_keys), "gallery": len(g_keys)}))
        if len(parts) > 1:
            for k in per_part[0]:
                rows.append(ctx.row(task="retrieval", split="mean", protocol=rows[-1].protocol, modality=direction,
                                    input=cfg.input_label(q_mod), metric=f"R@{k}",
                                    value=_mean([r[k] for r in per_part]), extra={"over": [p.name for p in parts]}))
    retrieval_s = time.perf_counter() - start
    timing = {"features": clips.seconds, "retrieval": retrieval_s}
    if cfg.plots:
        plot_start = time.perf_counter()
        _retrieval_plots(ctx, clips, feats, parts[0], labels, classes, directions, Path(out_dir))
        timing["plots"] = time.perf_counter() - plot_start
    timing["total"] = time.perf_counter() - started
    return finish_run(ctx, out_dir, "retrieval", rows, timing)


def _retrieval_plots(ctx: RunContext, clips: ClipFeatures, feats: dict[str, np.ndarray], part: Partition,
                     labels: dict[str, int], classes: list[str], directions: list[str], out_dir: Path) -> None:
    """Grid of a few queries and their top-5 neighbours per uni-modal direction; t-SNE per modality."""
    from crisscross.evaluate.plots import retrieval_grid, tsne_map
    from crisscross.evaluate.retrieval import nearest_neighbours

    rng = np.random.default_rng(ctx.cfg.seed)
    for direction in directions:
        q_mod, g_mod = direction.split("->")
        if q_mod != g_mod or clips.thumbnails is None:
            continue
        k = min(5, len(part.train_keys))
        queries = sorted(rng.choice(len(part.test_keys), size=min(6, len(part.test_keys)), replace=False))
        q_keys = [part.test_keys[i] for i in queries]
        q_rows, g_rows = clips.rows(q_keys), clips.rows(part.train_keys)
        nn_idx = nearest_neighbours(feats[q_mod][q_rows], feats[g_mod][g_rows], k)
        thumbs = clips.thumbnails[q_mod]
        retrieval_grid(
            out_dir / f"retrieval_{q_mod}_{g_mod}.png",
            [thumbs[r] for r in q_rows],
            [classes[labels[key]] for key in q_keys],
            [[thumbs[g_rows[j]] for j in row] for row in nn_idx],
            [[classes[labels[part.train_keys[j]]] for j in row] for row in nn_idx],
        )
    for modality, matrix in feats.items():
        if len(matrix) >= 3:
            names = [classes[labels[key]] for key in clips.keys]
            tsne_map(out_dir / f"tsne_{modality}.png", matrix, names,
                     title=f"t-SNE of {modality} features ({ctx.dataset})", seed=ctx.cfg.seed)
