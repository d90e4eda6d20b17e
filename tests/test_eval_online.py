"""Issue 9 §3 on real shards (generated demo clips, real DALI loader, tiny model):

* the online linear-FC protocol draws fresh clips every epoch through the frozen backbone, its
  first epoch is exactly the cached pass, and both modes run end to end;
* evaluation reproduces the encoder's input: backbones.json records the audio front end and the
  video geometry, an encoder trained on 64 mel bins is evaluated on 64 mel bins, and an old
  backbones.json without the record still loads (defaults, with a warning).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from crisscross.evaluate.config import EvalConfig, load_config
from crisscross.evaluate.features import POOLINGS
from crisscross.evaluate.pipeline import open_run, run_linear, train_features
from crisscross.train.checkpoint import find_latest, save_checkpoint
from crisscross.train.export import default_encoder_input, encoder_input, load_encoder_input, save_backbones
from crisscross.train.models import ModelConfig, build_audio_encoder, build_video_encoder

SMALL = ["frames=4", "crop=48", "batch_size=8", "train_pass.clips_per_sample=2", "test_pass.clips_per_sample=2"]
FC = ["classifier=fc", "fc.batch_size=8", "fc.milestones=[]"]


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory: pytest.TempPathFactory, demo_shards_builder) -> Path:
    return demo_shards_builder(tmp_path_factory.mktemp("demo"), num_classes=4, clips_per_class=4, seconds=3.0, workers=2)


def _rows(results: Path) -> list[dict]:
    return json.loads(results.read_text())["rows"]


# ------------------------------------------------------------------------------ online FC
def test_online_fc_draws_fresh_clips_every_epoch_and_its_first_epoch_is_the_cached_pass(demo_shards: Path):
    heads = {"video": ("video", POOLINGS["linear"]["video"])}
    online = open_run("random", demo_shards, load_config("demo", SMALL + FC + ["modality=video"]))
    epochs = train_features(online, heads)
    assert callable(epochs)
    first, second = epochs(0), epochs(1)
    cached_ctx = open_run("random", demo_shards, load_config("demo", SMALL + FC + ["modality=video", "fc.features=cached"]))
    cached = train_features(cached_ctx, heads)
    assert not callable(cached)
    assert first.keys == cached.keys == second.keys and len(first.keys) == 16
    np.testing.assert_array_equal(first.features["video"], cached.features["video"])
    # every sample's clips (random windows + augmentation) differ between epoch 0 and epoch 1
    differs = np.abs(first.features["video"] - second.features["video"]).reshape(16, -1).max(axis=1) > 1e-6
    assert differs.sum() == 16


def test_linear_fc_runs_online_and_cached(demo_shards: Path, tmp_path: Path):
    def run(mode: str, epochs: int) -> dict:
        cfg = load_config("demo", SMALL + FC + ["modality=audio", f"fc.features={mode}", f"fc.epochs={epochs}"])
        rows = _rows(run_linear("random", demo_shards, cfg, tmp_path / f"{mode}{epochs}"))
        assert len(rows) == 1 and rows[0]["extra"]["features"] == mode and rows[0]["extra"]["epochs"] == epochs
        return rows[0]

    online1, cached1 = run("online", 1), run("cached", 1)
    assert "fresh random clips every epoch" in online1["protocol"] and "cached" in cached1["protocol"]
    # one epoch: the online pass is the cached pass, so training and scores are identical
    assert online1["value"] == cached1["value"]
    assert online1["extra"]["final_train_loss"] == cached1["extra"]["final_train_loss"]
    online2, cached2 = run("online", 2), run("cached", 2)
    # the second epoch trains on other clips online: a different last loss
    assert online2["extra"]["final_train_loss"] != cached2["extra"]["final_train_loss"]
    for row in (online2, cached2):
        assert 0.0 <= row["value"] <= 1.0 and row["extra"]["test_samples"] == 4


def test_fc_features_mode_is_validated():
    from crisscross.evaluate.fc import FCConfig

    with pytest.raises(ValueError, match="fc.features"):
        FCConfig.from_dict({"features": "streaming"})
    assert FCConfig().features == "online"
    for preset, mode in (("kinetics400", "online"), ("ucf101_32f", "online"), ("hmdb51_32f", "online"),
                         ("dcase", "cached")):
        assert FCConfig.from_dict(load_config(preset).fc).features == mode, preset


# ------------------------------------------------------------------------------ encoder input
def _tiny_export(out: Path, train_config: dict | None) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    return save_backbones(out, build_video_encoder(cfg).eval(), build_audio_encoder(cfg).eval(), cfg,
                          train_config=train_config)


def _tiny_audio_dim(n_mels: int, seconds: float) -> int:
    audio = build_audio_encoder(ModelConfig.tiny()).eval()
    with torch.no_grad():
        fmap = audio.forward_features(torch.zeros(1, 1, n_mels, int(seconds * 100)))
    return int(POOLINGS["linear"]["audio"](fmap).shape[1])


def test_backbones_json_records_the_training_input(tmp_path: Path):
    data = {"shards": "x", "n_mels": 64, "hop": 320, "logmel_mean": -3.0, "frames": 16, "crop": 96}
    export = _tiny_export(tmp_path / "export", {"run": {"loader": "dali"}, "data": data})
    meta = json.loads((export / "backbones.json").read_text())
    assert meta["format"] == 2
    assert meta["input"]["audio"]["n_mels"] == 64 and meta["input"]["audio"]["hop"] == 320
    assert meta["input"]["audio"]["logmel_mean"] == -3.0 and meta["input"]["video"]["frames"] == 16
    assert meta["input"]["audio"]["n_fft"] == default_encoder_input()["audio"]["n_fft"]  # unset: the default
    assert load_encoder_input(export) == meta["input"]
    # a trainer checkpoint file carries its run config: the same record
    save_checkpoint(tmp_path / "run", 3, {"model": {}, "config": {"run": {"loader": "dali"}, "data": data}})
    assert load_encoder_input(find_latest(tmp_path / "run")) == meta["input"]
    # the synthetic loader's input: its own frames / crop / mel bins / length
    synthetic = encoder_input({"run": {"loader": "synthetic"},
                               "synthetic": {"frames": 4, "crop": 32, "mel_bins": 40, "audio_frames": 100}})
    assert synthetic["video"]["frames"] == 4 and synthetic["audio"]["n_mels"] == 40
    assert synthetic["audio"]["audio_seconds"] == pytest.approx(1.0)


def test_an_encoder_trained_on_64_mel_bins_is_evaluated_on_64(demo_shards: Path, tmp_path: Path):
    export = _tiny_export(tmp_path / "export", {"run": {"loader": "dali"}, "data": {"n_mels": 64}})
    cfg = load_config("demo", SMALL + ["modality=audio", "svm.cv_folds=2"])
    out = run_linear(str(export), demo_shards, cfg, tmp_path / "eval")
    saved = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text())
    assert saved["loader"]["n_mels"] == 64
    row = _rows(out)[0]
    assert row["extra"]["feature_dim"] == _tiny_audio_dim(64, 2.0) != _tiny_audio_dim(80, 2.0)


def test_old_backbones_json_without_input_falls_back_to_defaults_with_a_warning(demo_shards: Path, tmp_path: Path):
    export = _tiny_export(tmp_path / "export", {"data": {"n_mels": 64}})
    meta_path = export / "backbones.json"
    meta = json.loads(meta_path.read_text())
    del meta["input"]
    meta["format"] = 1
    meta_path.write_text(json.dumps(meta))
    assert load_encoder_input(export) is None
    with pytest.warns(UserWarning, match="records no encoder input"):
        ctx = open_run(str(export), demo_shards, load_config("demo", ["modality=audio"]))
    assert ctx.cfg.loader.n_mels == 80


def test_the_eval_config_overrides_the_encoders_input():
    spec = default_encoder_input()
    spec["video"].update(frames=16, crop=96)
    spec["audio"].update(n_mels=64, audio_seconds=3.0)
    preset = EvalConfig(frames=8, loader={"n_mels": 40})  # a preset's frames, a --set loader.n_mels
    assert preset.resolve_input(spec, source="x") == []
    assert (preset.frames, preset.crop, preset.audio_seconds) == (8, 96, 3.0)
    assert preset.loader.n_mels == 40 and preset.loader.n_fft == spec["audio"]["n_fft"]
    random = EvalConfig()
    assert random.resolve_input(None, source="random") == []  # random init: defaults, nothing to warn about
    assert (random.frames, random.crop, random.audio_seconds) == (8, 112, 2.0)
