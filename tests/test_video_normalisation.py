"""The video input normalisation (per-channel RGB mean/std) is part of an encoder's recorded input
(issue 14): an export records it (the trainer: data.augment.video.mean/std; the weights import: its
release's), every evaluator's loader applies it unless ``loader.video_mean`` / ``video_std`` say
otherwise, and exports that predate the record stay on the Kinetics statistics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from crisscross.evaluate.config import load_config
from crisscross.preprocess.build import build_shards
from crisscross.shards.augment import KINETICS_MEAN, KINETICS_STD
from crisscross.shards.loader import ViewSpec, build_eval_loader
from crisscross.tools.demo_data import write_index_clip
from crisscross.train.export import load_encoder_input, save_backbones
from crisscross.train.models import ModelConfig, build_audio_encoder, build_video_encoder
from crisscross.train.weights_import import IMAGENET_MEAN, IMAGENET_STD

SMALL_VIEW = ["frames=2", "crop=64", "audio_seconds=1.0", "test_pass.clips_per_sample=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("video_norm")
    src = root / "src"
    src.mkdir()
    write_index_clip(src / "a.mp4", seconds=2.0, fps=16, size=(96, 96), codec="mjpeg")
    with open(src / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], ["a.mp4", "x", "test"]])
    build_shards(src / "manifest.csv", root / "shards", name="norm", progress=False)
    return root / "shards"


def _export(out: Path, input_spec: dict | None = None, train_config: dict | None = None) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    return save_backbones(out, build_video_encoder(cfg).eval(), build_audio_encoder(cfg).eval(), cfg,
                          input_spec=input_spec, train_config=train_config)


def _eval_clips(shards: Path, export: Path, overrides: list[str] | None = None) -> tuple[torch.Tensor, dict]:
    """The test pass's video clips as an evaluator builds them (preset, resolve_input, loader_args)."""
    cfg = load_config("demo", SMALL_VIEW + (overrides or []))
    cfg.resolve_input(load_encoder_input(export), source=str(export))
    args = cfg.loader_args()
    loader = build_eval_loader(shards, **args, clips_per_sample=2, sampling="uniform",
                               augment=cfg.test_pass.augment, modalities=("video",), batch_size=1)
    return next(iter(loader))["video"][0], cfg.to_dict()["loader"]


def _renormalised(clips: torch.Tensor, mean_from, std_from, mean_to, std_to) -> torch.Tensor:
    """Clips normalised with (mean_from, std_from) as they would be with (mean_to, std_to):
    x = y * s1 + m1, so y' = (y * s1 + m1 - m2) / s2 per channel."""
    view = (1, 3, 1, 1, 1)
    m1, s1, m2, s2 = (torch.tensor(v, dtype=torch.float32).view(view) for v in (mean_from, std_from, mean_to, std_to))
    return (clips * s1 + m1 - m2) / s2


def test_eval_clips_use_the_exports_recorded_normalisation(shards: Path, tmp_path: Path):
    imagenet = ViewSpec(frames=2, crop=64, audio_seconds=1.0, video_mean=tuple(IMAGENET_MEAN),
                        video_std=tuple(IMAGENET_STD)).to_input(16.0, 16000)
    export = _export(tmp_path / "imagenet", input_spec=imagenet)
    assert json.loads((export / "backbones.json").read_text())["input"]["video"]["video_mean"] == IMAGENET_MEAN
    kinetics = _export(tmp_path / "kinetics")  # the data defaults
    got, loader_cfg = _eval_clips(shards, export)
    ref, _ = _eval_clips(shards, kinetics)
    assert loader_cfg["video_mean"] == IMAGENET_MEAN and loader_cfg["video_std"] == IMAGENET_STD
    assert got.shape == ref.shape == (2, 3, 2, 64, 64)
    # the same pixels, normalised with the ImageNet statistics instead of the Kinetics ones
    expected = _renormalised(ref, KINETICS_MEAN, KINETICS_STD, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # and the difference is not negligible: a black pixel is -m/s, whose two values differ by > 0.05 per channel
    black = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], [-m / s for m, s in zip(KINETICS_MEAN, KINETICS_STD)]
    assert min(abs(a - b) for a, b in zip(*black)) > 0.05
    assert (got - ref).abs().max() > 0.1


def test_loader_override_wins_over_the_recorded_normalisation(shards: Path, tmp_path: Path):
    imagenet = ViewSpec(frames=2, crop=64, audio_seconds=1.0, video_mean=tuple(IMAGENET_MEAN),
                        video_std=tuple(IMAGENET_STD)).to_input(16.0, 16000)
    export = _export(tmp_path / "imagenet", input_spec=imagenet)
    got, loader_cfg = _eval_clips(shards, export, ["loader.video_mean=[0.45,0.45,0.45]",
                                                   "loader.video_std=[0.225,0.225,0.225]"])
    ref, _ = _eval_clips(shards, export)
    assert loader_cfg["video_mean"] == [0.45] * 3
    expected = _renormalised(ref, IMAGENET_MEAN, IMAGENET_STD, [0.45] * 3, [0.225] * 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_old_exports_without_the_record_stay_on_kinetics(shards: Path, tmp_path: Path):
    export = _export(tmp_path / "old")
    meta_path = export / "backbones.json"
    meta = json.loads(meta_path.read_text())
    for key in ("video_mean", "video_std"):
        del meta["input"]["video"][key]
    meta_path.write_text(json.dumps(meta))
    spec = load_encoder_input(export)
    assert spec["video"]["video_mean"] == list(KINETICS_MEAN) and spec["video"]["video_std"] == list(KINETICS_STD)
    got, loader_cfg = _eval_clips(shards, export)
    assert loader_cfg["video_mean"] == list(KINETICS_MEAN)
    # the Kinetics statistics as the loader applied them before the record existed
    plain = build_eval_loader(shards, frames=2, crop=64, audio_seconds=1.0, clips_per_sample=2,
                              modalities=("video",), batch_size=1)
    torch.testing.assert_close(got, next(iter(plain))["video"][0], rtol=0, atol=0)
    # half a record is an error, not a silent default
    meta["input"]["video"]["video_mean"] = IMAGENET_MEAN
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="input.video needs exactly"):
        load_encoder_input(export)


def test_trainer_export_records_the_runs_normalisation(tmp_path: Path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    data = {"shards": "x", "augment": {"video": {"mean": mean, "std": std}}}
    export = _export(tmp_path / "run", train_config={"run": {"loader": "dali"}, "data": data})
    video = json.loads((export / "backbones.json").read_text())["input"]["video"]
    assert video["video_mean"] == mean and video["video_std"] == std
    assert load_encoder_input(_export(tmp_path / "default", train_config={"data": {}}))["video"]["video_mean"] == \
        list(KINETICS_MEAN)


def test_with_augment_keeps_the_normalisation():
    view = ViewSpec(video_mean=tuple(IMAGENET_MEAN), video_std=tuple(IMAGENET_STD))
    for augment in ("none", "linear", "train"):
        aug = view.with_augment(augment).video_augment()
        assert aug.mean == tuple(IMAGENET_MEAN) and aug.std == tuple(IMAGENET_STD), augment
    assert ViewSpec.from_input(view.to_input(16.0, 16000)) == view
    assert ViewSpec().video_augment().mean == KINETICS_MEAN  # the default: Kinetics, as before


def test_bad_loader_normalisation_is_refused():
    with pytest.raises(ValueError, match="loader.video_std"):
        load_config("demo", ["loader.video_std=[0.2,0.0,0.2]"])
    with pytest.raises(ValueError, match="loader.video_mean"):
        load_config("demo", ["loader.video_mean=[0.5,0.5]"])
