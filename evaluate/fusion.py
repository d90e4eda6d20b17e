"""Multimodal late fusion (appendix E.1): per clip, the video map max-pooled (1,2,2) and the audio
map max-pooled (1,4) (stride = kernel, ceil mode: every map position reaches the feature; 8x112^2
video 2048-d + 2 s audio 3072-d, see docs/evaluate.md) are concatenated, and a linear SVM is
trained on the joint vectors exactly as in the uni-modal linear evaluation (cost by grouped CV on
the training split)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crisscross.evaluate.config import EvalConfig
from crisscross.evaluate.features import POOLINGS, ClipFeatures
from crisscross.evaluate.pipeline import (
    classify_rows,
    extract_pass,
    finish_run,
    open_run,
    pass_timing,
    train_features,
)

FUSION_HEADS = {"video": ("video", POOLINGS["fusion"]["video"]), "audio": ("audio", POOLINGS["fusion"]["audio"])}


def concatenate(clips: ClipFeatures) -> ClipFeatures:
    """Add the "audio+video" head: [N, K, Dv + Da], clip k of the video beside clip k of the audio."""
    video, audio = clips.features["video"], clips.features["audio"]
    if video.shape[:2] != audio.shape[:2]:
        raise ValueError(f"video clips {video.shape[:2]} and audio clips {audio.shape[:2]} do not pair up")
    joint = np.concatenate([video, audio], axis=2)
    return ClipFeatures(clips.keys, {**clips.features, "audio+video": joint}, clips.seconds, clips.thumbnails,
                        clips.skipped)


def run_fusion(checkpoint: str, data_dir: Path, cfg: EvalConfig, out_dir: Path) -> Path:
    started = time.perf_counter()
    ctx = open_run(checkpoint, data_dir, cfg)
    train_joint = train_features(ctx, FUSION_HEADS, concatenate)  # a function of the epoch for the online FC
    test_clips = extract_pass(ctx.encoders, ctx.data_dir, cfg, cfg.test_pass, FUSION_HEADS)
    test_joint = concatenate(test_clips)
    rows, classifier_s = classify_rows(ctx, train_joint, test_joint, "audio+video", "audio+video", "fusion")
    timing = {**pass_timing("features_train", train_joint), "features_test": test_clips.seconds,
              "classifier": classifier_s, "total": time.perf_counter() - started}
    return finish_run(ctx, out_dir, "fusion", rows, timing)
