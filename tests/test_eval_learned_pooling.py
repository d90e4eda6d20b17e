"""An exported encoder with a learned temporal pooling (STiCA's transformer) is evaluated through
it: linear, fusion and retrieval features and finetuning use the pooling's output, as GDT/STiCA
``eval_video.py`` does; an encoder without one keeps the map poolings of docs/evaluate.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crisscross.evaluate.features import POOLINGS, extract_features, learned_pooling, load_encoders
from crisscross.evaluate.finetune import FinetuneModel
from crisscross.train.export import save_backbones
from crisscross.train.models import ModelConfig, build_audio_encoder, build_video_encoder

STICA_TINY = dict(video_arch="tv_r2plus1d", video_temporal_pool="transformer", transformer_ffn=128)
HEADS = {name: ("video", POOLINGS[name]["video"]) for name in ("linear", "fusion", "global")}


def _export(tmp_path: Path, **model: object) -> Path:
    cfg = ModelConfig.tiny(**model)
    torch.manual_seed(0)
    return save_backbones(tmp_path / "export", build_video_encoder(cfg), build_audio_encoder(cfg), cfg)


def _batches() -> list[dict[str, object]]:
    gen = torch.Generator().manual_seed(1)
    clips = torch.randn(3, 2, 3, 8, 64, 64, generator=gen)  # [B, K, 3, T, crop, crop]
    return [{"key": ["a", "b", "c"], "video": clips}]


def _features(export: Path) -> dict[str, torch.Tensor]:
    encoders = load_encoders(str(export))
    return {k: torch.from_numpy(v) for k, v in extract_features(encoders, _batches(), HEADS).features.items()}


def test_exported_stica_encoder_features_are_the_transformer_output(tmp_path: Path):
    export = _export(tmp_path, **STICA_TINY)
    encoders = load_encoders(str(export))
    assert learned_pooling(encoders.video) is not None and learned_pooling(encoders.audio) is None
    feats = _features(export)
    clips = _batches()[0]["video"].flatten(0, 1)
    with torch.no_grad():
        expected = encoders.video.pool(encoders.video.forward_features(clips)).reshape(3, 2, -1)
    for name, value in feats.items():
        # every head gets the transformer's token 0: [B, K, out_dim] (512 at full size, 64 at width 8)
        assert value.shape == (3, 2, encoders.video.out_dim), name
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_changing_the_transformer_weights_changes_the_features(tmp_path: Path):
    export = _export(tmp_path, **STICA_TINY)
    before = _features(export)["linear"]
    from safetensors.torch import load_file, save_file

    state = load_file(str(export / "video.safetensors"))
    names = [k for k in state if k.startswith("pool.transformer.") and k.endswith("weight") and state[k].ndim == 2]
    assert names, "the export carries the transformer's weights"
    for k in names:
        state[k] = state[k] + 0.5 * torch.randn_like(state[k])
    save_file(state, str(export / "video.safetensors"), metadata={"format": "2"})
    after = _features(export)["linear"]
    assert (after - before).abs().max() > 1e-3


def test_encoder_without_learned_pooling_keeps_the_map_poolings(tmp_path: Path):
    export = _export(tmp_path)
    encoders = load_encoders(str(export))
    assert learned_pooling(encoders.video) is None
    feats = _features(export)
    clips = _batches()[0]["video"].flatten(0, 1)
    with torch.no_grad():
        fmap = encoders.video.forward_features(clips)
    for name, (_, pool) in HEADS.items():
        torch.testing.assert_close(feats[name], pool(fmap).reshape(3, 2, -1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(feats["linear"], feats["global"])  # max over the map, not its mean


@pytest.mark.parametrize("stica", [True, False])
def test_finetuning_trains_through_the_transformer(tmp_path: Path, stica: bool):
    export = _export(tmp_path, **(STICA_TINY if stica else {}))
    encoder = load_encoders(str(export)).video.train()
    model = FinetuneModel(encoder, num_classes=4, dropout=0.0)
    clips = _batches()[0]["video"][:, 0]
    model(clips).square().sum().backward()
    transformer_grads = [p.grad for n, p in encoder.named_parameters() if n.startswith("pool.")]
    if stica:
        # some reach zero (Q/K when the map has one time step); the transformer as a whole trains
        assert transformer_grads and sum(float(g.abs().sum()) for g in transformer_grads if g is not None) > 0
        with torch.no_grad():
            model.eval()
            expected = model.fc(encoder.pool(encoder.forward_features(clips)).flatten(1))
            torch.testing.assert_close(model(clips), expected)
    else:
        assert not transformer_grads
