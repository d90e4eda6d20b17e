"""ESC-10 (real recordings) through the audio path end to end:
shards -> DALI eval loader -> tiny random audio encoder -> LinearSVC with CV-chosen cost ->
fold-averaged accuracy in results.json, identical across two runs.

Kept small for the CPU budget: all 400 clips and all 5 folds, but the tiny encoder (width 8),
2 s windows, 2 augmented training clips and 2 uniform test clips per sample, and 2-fold CV for the cost (the protocol default is 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crisscross.evaluate.config import load_config
from crisscross.evaluate.pipeline import run_linear

OVERRIDES = [
    "model=tiny",
    "train_pass.clips_per_sample=2",
    "test_pass.clips_per_sample=2",
    "svm.cv_folds=2",
    "svm.n_jobs=2",
    "batch_size=16",
    "plots=false",
]


@pytest.fixture(scope="module")
def esc10_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crisscross.preprocess.build import build_shards

    # the ESC-50 adapter reads <root>/audio/<file> and the csv; link, never copy, the real data
    root = tmp_path_factory.mktemp("esc10_src")
    (root / "audio").symlink_to(shared_data / "esc10" / "audio", target_is_directory=True)
    (root / "esc10.csv").symlink_to(shared_data / "esc10" / "esc10.csv")
    out = tmp_path_factory.mktemp("esc10_shards")
    build_shards(root, out, name="esc10", adapter="esc50", workers=2, progress=False)
    return out


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_esc10_linear_svm_is_fold_averaged_honest_and_deterministic(esc10_shards: Path, tmp_path: Path):
    cfg = load_config("esc50_2s", OVERRIDES + ["dataset=esc10"])
    first = _rows(run_linear("random", esc10_shards, cfg, tmp_path / "a"))
    second = _rows(run_linear("random", esc10_shards, cfg, tmp_path / "b"))
    assert first == second  # same shards, seed and config: the same numbers, bit for bit

    honest = [r for r in first if "comparison only" not in r["protocol"]]
    folds = [r for r in honest if r["split"].startswith("fold")]
    assert [r["split"] for r in folds] == [f"fold{f}" for f in range(1, 6)]
    assert all(r["extra"]["train_samples"] == 320 and r["extra"]["test_samples"] == 80 for r in folds)
    mean = next(r for r in honest if r["split"] == "mean")
    assert mean["value"] == pytest.approx(np.mean([r["value"] for r in folds]))
    assert all(r["extra"]["cost"] in cfg.svm.costs for r in folds)
    # 10 balanced classes: chance is 10 %; even a random tiny encoder's features carry real signal
    assert mean["value"] > 0.25, mean
    assert mean["checkpoint_sha"].startswith("random-seed0-") and mean["dataset"] == "esc10"
    assert mean["modality"] == "audio" and mean["input"] == "audio 2s"

    comparison = [r for r in first if "comparison only" in r["protocol"]]
    assert len(comparison) == 6  # per fold + the paper's single best cost on the fold mean
    for fold in folds:
        best = next(r for r in comparison if r["split"] == fold["split"])
        assert best["value"] >= fold["value"]  # selection on test can only look better
    payload = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(payload["timing_s"]) == {"features_train", "features_test", "classifier", "total"}
    assert (tmp_path / "a" / "results.md").read_text().count("| linear | esc10 |") == len(first)
    assert (tmp_path / "a" / "config.yaml").exists()
