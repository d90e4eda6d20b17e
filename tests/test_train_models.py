"""Encoders and heads against Tables S5-S8 (shapes checked on the meta device: no compute)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from crisscross.train.models import (
    CrissCrossModel,
    ModelConfig,
    Predictor,
    Projector,
    build_audio_encoder,
    build_video_encoder,
)


def test_video_r2plus1d18_matches_table_s5():
    with torch.device("meta"):
        video = build_video_encoder(ModelConfig())
        x = torch.empty(2, 3, 8, 112, 112)
        stem = video.stem(x)
        stage_shapes = []
        h = stem
        for stage in video.stages:
            h = stage(h)
            stage_shapes.append(tuple(h.shape[2:]))
        feats = video.forward_features(x)
        pooled = video(x)
    # Table S5: conv1 56^2x8, maxpool 28^2x8, stages 28/14/7/4 spatial, 8/4/2/1 temporal
    assert stem.shape == (2, 64, 8, 28, 28)
    assert stage_shapes == [(8, 28, 28), (4, 14, 14), (2, 7, 7), (1, 4, 4)]
    assert feats.shape == (2, 512, 1, 4, 4)
    assert pooled.shape == (2, 512) and video.out_dim == 512
    conv1 = video.stem[0]
    assert conv1.kernel_size == (3, 7, 7) and conv1.stride == (1, 2, 2)
    assert video.stem[3].kernel_size == (1, 3, 3) and video.stem[3].stride == (1, 2, 2)
    blocks = [b for stage in video.stages for b in stage]
    assert len(blocks) == 8
    for index, block in enumerate(blocks):
        # no mid-plane widening: the spatial conv outputs the block's channels directly
        assert block.spatial1.out_channels == block.temporal1.in_channels == block.temporal2.out_channels
        assert block.spatial1.kernel_size == (1, 3, 3) and block.temporal1.kernel_size == (3, 1, 1)
        strided = index in (2, 4, 6)  # first block of stages 3-5
        assert block.spatial1.stride == ((1, 2, 2) if strided else (1, 1, 1))
        assert block.temporal1.stride == ((2, 1, 1) if strided else (1, 1, 1))
        assert isinstance(block.residual, nn.Conv3d) == strided
    assert [s[0].spatial1.out_channels for s in video.stages] == [64, 128, 256, 512]
    assert isinstance(video.pool, nn.AdaptiveAvgPool3d)
    assert isinstance(build_video_encoder(ModelConfig(video_pool="max")).pool, nn.AdaptiveMaxPool3d)


def test_audio_resnet18_is_torchvision_resnet18_with_one_channel_stem():
    with torch.device("meta"):
        audio = build_audio_encoder(ModelConfig())
        feats = audio.forward_features(torch.empty(2, 1, 80, 200))
        reference = torchvision.models.resnet18()
    assert feats.shape == (2, 512, 3, 7)  # Table S6
    assert audio.out_dim == 512 and isinstance(audio, torchvision.models.ResNet)
    ours = {k: v.shape for k, v in audio.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert ours.keys() == theirs.keys()
    diff = {k for k in ours if ours[k] != theirs[k]}
    assert diff == {"conv1.weight"} and ours["conv1.weight"] == (64, 1, 7, 7)


def test_heads_match_tables_s7_s8():
    cfg = ModelConfig()
    proj, pred = Projector(512, cfg), Predictor(cfg)
    linears = [m for m in proj.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 2048), (2048, 2048)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in proj.modules()) == 3
    assert sum(isinstance(m, nn.ReLU) for m in proj.modules()) == 2
    linears = [m for m in pred.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 2048)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in pred.modules()) == 1
    assert isinstance(pred[-1], nn.Linear)  # no norm/ReLU after the last fc


def test_tiny_model_runs_on_cpu_with_separate_heads_per_modality():
    cfg = ModelConfig.tiny()
    model = CrissCrossModel(cfg)
    assert model.video.projector is not model.audio.projector
    out = model({"v1": torch.randn(2, 3, 4, 32, 32), "a1": torch.randn(2, 1, 80, 100)})
    for z, p in out.values():
        assert z.shape == p.shape == (2, cfg.proj_dim) and torch.isfinite(z).all() and torch.isfinite(p).all()
    assert model.video.encoder.out_dim == model.audio.encoder.out_dim == 64
    small = sum(p.numel() for p in model.parameters())
    assert small < 500_000


@pytest.mark.parametrize("norm, forbidden", [("group", nn.modules.batchnorm._BatchNorm), ("none", nn.GroupNorm)])
def test_norm_knob(norm, forbidden):
    model = CrissCrossModel(ModelConfig.tiny(norm=norm))
    assert not any(isinstance(m, forbidden) for m in model.modules())
    if norm == "none":
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # group norm makes a sample's output independent of the rest of the batch (DDP parity on CPU)
    model.train()
    x = torch.randn(4, 3, 4, 32, 32)
    whole = model.video(x)[0]
    halves = torch.cat([model.video(x[:2])[0], model.video(x[2:])[0]])
    assert torch.allclose(whole, halves, atol=1e-5)


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="norm"):
        ModelConfig(norm="layer")
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"depth": 18})
    with pytest.raises(ValueError, match="video_blocks"):
        ModelConfig(video_blocks=[2, 2, 2])


def test_shared_predictor_is_one_module_fed_normalized_projections():
    """Table 3's 'common predictor': one predictor for both modalities, in one optimizer group."""
    from crisscross.train.models import CrissCrossModel, ModelConfig
    from crisscross.train.optim import parameter_groups

    model = CrissCrossModel(ModelConfig.tiny(shared_predictor=True, norm="group"))
    assert model.audio.predictor is model.video.predictor
    groups = {g["name"]: g["params"] for g in parameter_groups(model)}
    assert set(groups) == {"video_base", "video_pred", "audio_base"}
    all_ids = [id(p) for params in groups.values() for p in params]
    assert len(all_ids) == len(set(all_ids)), "a parameter sits in two optimizer groups"
    torch.optim.Adam(parameter_groups(model))  # torch refuses duplicated parameters
    views = {"v1": torch.randn(2, 3, 4, 32, 32), "a1": torch.randn(2, 1, 80, 100)}
    out = model(views)
    z, p = out["a1"]
    expected = model.audio.predictor(torch.nn.functional.normalize(z, dim=1))
    assert torch.allclose(p, expected)
    (out["v1"][1].sum() + p.sum()).backward()
    first = next(model.video.predictor.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    separate = CrissCrossModel(ModelConfig.tiny())
    assert separate.audio.predictor is not separate.video.predictor
    assert not separate.audio.normalize_predictor_input
