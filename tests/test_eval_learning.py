"""Did pretraining learn anything? A tiny model pretrained with CrissCross on generated demo clips
against the same architecture randomly initialised, both evaluated with the linear SVM protocol
(cost by CV on the training split) on the demo clips' own held-out test split.

The demo's classes differ in bounce rhythm (video) and click rhythm + pitch (audio). Random
convolutions already separate the click pitches well, so audio is no fair test of learning;
randomly initialised video features are near chance, and the video encoder can only learn the
rhythm from the audio-visual correspondence. The video windows span one second (4 frames,
stride 4 at 16 fps) in pretraining and evaluation, so that a bounce period is visible at all.
Pretraining and evaluation use disjoint generated clip sets (different seeds), and the
evaluation set is large enough (24 held-out clips) that one lucky clip is not a "margin".

Slow: about 4 CPU minutes (400 pretraining steps). Measured on the 2-core dev machine
(docs/evaluate.md): at this budget the pretrained encoder does NOT beat random init (25.0 % vs
33.3 %), so the check is marked as an expected failure, strictly: the day pretraining learns at
this budget, the test XPASSes, which fails the suite, and the marker must come off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisscross.evaluate.config import load_config
from crisscross.evaluate.pipeline import run_linear

PRETRAIN = [
    "optim.batch_size=16",
    "optim.lr=5e-3",
    "optim.pred_lr=5e-2",
    "optim.warmup_epochs=5",
    "data.frames=4",
    "data.frame_stride=4",
    "run.progress=false",
    "run.tensorboard=false",
]
STEPS = 400
MARGIN = 4 / 24
EVAL = ["modality=video", "frames=4", "loader={frame_stride: 4}", "plots=false"]


def _top1(results: Path) -> float:
    rows = json.loads(results.read_text())["rows"]
    return next(r["value"] for r in rows if "comparison only" not in r["protocol"])


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="known gap, measured: 400 CPU steps of tiny CrissCross pretraining do not beat random init "
    "(video linear SVM 25.0% vs 33.3% on 24 held-out demo clips; see docs/evaluate.md)",
)
def test_pretrained_video_encoder_beats_random_init_on_held_out_demo_clips(tmp_path: Path):
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips
    from crisscross.train.config import resolve_config
    from crisscross.train.trainer import train

    pretrain_set = build_shards(generate_demo_clips(tmp_path / "clips_pre", num_classes=4, clips_per_class=16, seed=0),
                                tmp_path / "shards_pre", name="demo", workers=2, progress=False).out_dir
    eval_set = build_shards(generate_demo_clips(tmp_path / "clips_eval", num_classes=4, clips_per_class=24, seed=1),
                            tmp_path / "shards_eval", name="demo", workers=2, progress=False).out_dir
    # 64 clips / batch 16 = 4 steps per epoch; the cosine schedule ends at the last step
    config = resolve_config("demo", PRETRAIN + [f"data.shards={pretrain_set}", f"run.dir={tmp_path / 'run'}",
                                                f"run.epochs={STEPS // 4}", f"run.max_steps={STEPS}"])
    summary = train(config)
    assert summary["status"] == "completed"

    pretrained = _top1(run_linear(summary["export"], eval_set, load_config("demo", EVAL), tmp_path / "pre"))
    random_init = _top1(run_linear("random", eval_set, load_config("demo", EVAL), tmp_path / "rnd"))
    # 24 held-out clips, 4 classes (chance 25 %): a clear margin is at least 4 clips (1/6)
    assert pretrained >= random_init + MARGIN, f"pretrained {pretrained:.1%} vs random init {random_init:.1%}"
