"""Atomic checkpoints, retention, find_latest, weights-only loading, and the backbone export."""

from __future__ import annotations

import json

import pytest
import torch

from crisscross.train.checkpoint import checkpoint_dir, find_latest, list_checkpoints, load_checkpoint, save_checkpoint
from crisscross.train.export import load_backbones, save_backbones
from crisscross.train.models import CrissCrossModel, ModelConfig


def test_atomic_save_retention_and_find_latest(tmp_path):
    assert find_latest(tmp_path) is None
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 20]
    milestones = tmp_path / "milestones"
    for step in range(5, 45, 5):
        save_checkpoint(milestones, step, {"step": step}, keep=2, keep_every=20)
    assert [s for s, _ in list_checkpoints(milestones)] == [20, 35, 40]
    # a half-written checkpoint (crash mid-save) is never taken for a whole one
    (checkpoint_dir(tmp_path) / ".step-000000025.pt.999.tmp").write_bytes(b"\x80\x02truncated")
    (checkpoint_dir(tmp_path) / "step-000000030.pt.tmp").write_bytes(b"partial")
    latest = find_latest(tmp_path)
    assert latest.name == "step-000000020.pt"
    assert load_checkpoint(latest)["w"].tolist() == [20.0, 20.0, 20.0]
    assert not list(checkpoint_dir(tmp_path).glob(".step-000000020*"))  # no temp left behind by a good save


class _NotATensor:
    pass


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": _NotATensor()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(path)


def test_export_round_trip_from_directory_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    model = CrissCrossModel(cfg)
    model.train()
    model({"v1": torch.randn(4, 3, 4, 32, 32), "a1": torch.randn(4, 1, 80, 100)})  # move BN running stats
    model.eval()
    out = save_backbones(tmp_path / "export", model.video.encoder, model.audio.encoder, cfg)
    assert {p.name for p in out.iterdir()} == {"video.safetensors", "audio.safetensors", "backbones.json"}
    assert json.loads((out / "backbones.json").read_text())["model"]["width"] == 8
    save_checkpoint(tmp_path / "run", 7, {"model": model.state_dict(), "config": {"model": cfg.to_dict()}})
    x_v, x_a = torch.randn(2, 3, 4, 32, 32), torch.randn(2, 1, 80, 100)
    with torch.no_grad():
        want_v, want_a = model.video.encoder(x_v), model.audio.encoder(x_a)
        for source in (out, find_latest(tmp_path / "run")):
            video, audio, loaded_cfg = load_backbones(source)
            assert loaded_cfg == cfg and not video.training
            assert torch.allclose(video(x_v), want_v) and torch.allclose(audio(x_a), want_a)
            assert video.forward_features(x_v).shape[:2] == (2, 64)
    with pytest.raises(FileNotFoundError, match="backbones.json"):
        load_backbones(tmp_path)
