"""The other methods' model pieces: encoders' map sizes, heads, transformer pooling inside the
encoder (so exports carry it), feature crops through the same pooling and head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crisscross.train.models import ContrastiveModel, ModelConfig, build_audio_encoder, build_model, build_video_encoder


@torch.no_grad()
def test_vmz_res5_sizes():
    encoder = build_video_encoder(ModelConfig(video_arch="tv_r2plus1d")).eval()
    assert encoder.forward_features(torch.randn(1, 3, 30, 112, 112)).shape == (1, 512, 4, 7, 7)
    assert encoder.forward_features(torch.randn(1, 3, 30, 128, 128)).shape == (1, 512, 4, 8, 8)


@torch.no_grad()
def test_avid_conv2d_stage_sizes():
    encoder = build_audio_encoder(ModelConfig(audio_arch="avid_conv2d", audio_pool="max")).eval()
    x = encoder.stem(torch.randn(1, 1, 257, 200))
    sizes = [tuple(x.shape[2:])]
    for stage in encoder.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[2:]))
    assert sizes == [(129, 100), (65, 50), (33, 25), (17, 13), (17, 13)]
    assert encoder(torch.randn(1, 1, 257, 200)).shape == (1, 512)


def test_heads():
    avid = ContrastiveModel(ModelConfig.tiny(head="avid_mlp"))
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.GroupNorm)) for m in avid.video.projector.modules())
    assert [m.out_features for m in avid.video.projector if isinstance(m, nn.Linear)] == [512, 512, 128]
    gdt = ContrastiveModel(ModelConfig.tiny(head="gdt_mlp", head_dims=[32, 16], head_dropout=0.3))
    layers = list(gdt.audio.projector)
    assert isinstance(layers[0], nn.Dropout) and layers[0].p == 0.3 and layers[1].bias is None
    out = gdt({"a1": torch.randn(2, 1, 80, 100), "v1": torch.randn(2, 3, 4, 32, 32)})
    assert out["a1"]["z"].shape == (2, 16) and out["v1"]["y"].shape == (2, 64)
    assert isinstance(build_model(ModelConfig.tiny()), nn.Module) and not isinstance(build_model(ModelConfig.tiny()), ContrastiveModel)


def test_transformer_pooling_lives_in_the_encoder():
    cfg = ModelConfig.tiny(video_arch="tv_r2plus1d", video_temporal_pool="transformer", transformer_ffn=32)
    encoder = build_video_encoder(cfg)
    assert any(k.startswith("pool.transformer.") for k in encoder.state_dict())  # exported with the encoder
    assert encoder(torch.randn(2, 3, 8, 32, 32)).shape == (2, 64)


def test_feature_crops_in_the_forward_pass():
    cfg = ModelConfig.tiny(video_arch="tv_r2plus1d", head="gdt_mlp", head_dims=[32, 16], crops={},
                           video_temporal_pool="transformer", transformer_ffn=32)
    model = ContrastiveModel(cfg)
    views = {"v1": torch.randn(2, 3, 30, 112, 112), "v2": torch.randn(2, 3, 30, 112, 112)}
    out = model(views, crop_seed=5)
    crops = out["v1"]["crops"]
    assert {k: len(v) for k, v in crops.items()} == {"s_large": 2, "s_small": 4, "t_large": 2, "t_small": 1}
    assert all(z.shape == (2, 16) for zs in crops.values() for z in zs)
    # gradients reach the transformer through the crops as well
    sum(z.sum() for zs in crops.values() for z in zs).backward()
    assert model.video.encoder.pool.transformer.layers[0].attention.query.weight.grad is not None
    model.eval()
    assert "crops" not in model(views)["v1"]  # evaluation: the whole map only


def test_crops_on_a_4x4_map_are_a_clear_error():
    model = ContrastiveModel(ModelConfig.tiny(head="gdt_mlp", head_dims=[32, 16], crops={}))  # crisscross arch
    with pytest.raises(ValueError, match="7x7"):
        model({"v1": torch.randn(2, 3, 8, 112, 112)}, crop_seed=0)
