"""STiCA's transformer temporal pooling and feature-crop boxes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crisscross.train.pooling import CropConfig, TemporalPool, TransformerPooling, crop_map, sample_crop_boxes


def test_transformer_pooling_shapes_and_reference():
    torch.manual_seed(0)
    pool = TransformerPooling(16, layers=1, heads=4, ffn=32)
    x = torch.randn(3, 2, 16)
    assert pool(x).shape == (3, 16)
    # hand-written reference of one post-LN layer with Q/K projections only (V, output = identity)
    layer = pool.layers[0]
    q = layer.attention.query(x).view(3, 2, 4, 4).transpose(1, 2)
    k = layer.attention.key(x).view(3, 2, 4, 4).transpose(1, 2)
    v = x.view(3, 2, 4, 4).transpose(1, 2)
    att = ((q @ k.transpose(-1, -2)) / math.sqrt(4)).softmax(-1) @ v
    h = F.layer_norm(x + att.transpose(1, 2).reshape(3, 2, 16), (16,), layer.norm1.weight, layer.norm1.bias, 1e-12)
    ffn = layer.ffn[2](F.gelu(layer.ffn[0](h)))
    want = F.layer_norm(h + ffn, (16,), layer.norm2.weight, layer.norm2.bias, 1e-12)[:, 0]
    assert torch.allclose(pool(x), want, atol=1e-6)


def test_transformer_pooling_permutation_invariance():
    torch.manual_seed(1)
    pool = TransformerPooling(16, layers=2, heads=4, ffn=32)
    x = torch.randn(2, 5, 16)
    permuted = x[:, [0, 3, 1, 4, 2]]
    assert torch.allclose(pool(x), pool(permuted), atol=1e-5)  # no positional embedding
    changed = x.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(pool(x), pool(changed), atol=1e-3)  # the output is token 0's state


def test_transformer_tokens_repooling():
    x = torch.tensor([[[0.0], [2.0], [4.0]]])  # x0, x1, x2 with one channel
    out = F.adaptive_avg_pool1d(x.transpose(1, 2), 4).transpose(1, 2)
    assert out.flatten().tolist() == [0.0, 1.0, 3.0, 4.0]  # [x0, (x0+x1)/2, (x1+x2)/2, x2]
    pool = TransformerPooling(4, layers=1, heads=1, ffn=8, tokens=4)
    assert pool(torch.randn(2, 3, 4)).shape == (2, 4)


def test_temporal_pool_kinds():
    fmap = torch.randn(2, 8, 3, 4, 4)
    assert torch.allclose(TemporalPool("avg", 8)(fmap), fmap.mean(dim=(2, 3, 4)))
    assert torch.allclose(TemporalPool("max", 8)(fmap), fmap.amax(dim=(2, 3, 4)))
    assert TemporalPool("transformer", 8, {"heads": 2, "ffn": 16})(fmap).shape == (2, 8)


def _starts(cfg: CropConfig, t: int, kind: str, draws: int = 400) -> set:
    g = torch.Generator().manual_seed(0)
    out = set()
    for _ in range(draws):
        for start, _size in sample_crop_boxes(cfg, t, 7, 7, g)[kind]:
            out.add(divmod(start, 7) if kind[0] == "s" else start)
    return out


def test_crop_start_ranges():
    cfg = CropConfig()
    assert _starts(cfg, 4, "s_large") == {(y, x) for y in (0, 1) for x in (0, 1)}
    assert _starts(cfg, 4, "s_small") == {(y, x) for y in range(4) for x in range(4)}
    assert _starts(cfg, 4, "t_large") == {0, 1}
    assert _starts(cfg, 4, "t_small") == {0, 1, 2}
    parity = CropConfig(parity_randint=True)
    assert _starts(parity, 4, "s_large") == {(0, 0)}
    assert _starts(parity, 4, "s_small") == {(y, x) for y in range(3) for x in range(3)}
    assert _starts(parity, 4, "t_large") == {0}
    assert _starts(parity, 4, "t_small") == {0, 1}
    assert cfg.sizes(8, 7, 7)["t_large"] == (2, 6) and cfg.sizes(8, 7, 7)["t_small"] == (1, 4)
    boxes = sample_crop_boxes(cfg, 4, 7, 7, torch.Generator().manual_seed(3))
    assert [len(boxes[k]) for k in ("s_large", "s_small", "t_large", "t_small")] == [2, 4, 2, 1]


def test_crop_values_are_the_region_means():
    t, h, w = 4, 7, 7
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    fmap = (100 * tt + 10 * yy + xx).float().expand(1, 1, t, h, w)
    crop = crop_map(fmap, "s_small", 2 * w + 3, 4)  # y = 2, x = 3, 4x4
    assert crop.shape == (1, 1, 4, 4, 4)
    assert crop.mean().item() == pytest.approx(100 * 1.5 + 10 * 3.5 + 4.5)
    crop = crop_map(fmap, "t_small", 1, 2)  # frames 1, 2
    assert crop.mean().item() == pytest.approx(100 * 1.5 + 10 * 3 + 3)


def test_crops_that_do_not_fit_are_a_clear_error():
    with pytest.raises(ValueError, match="7x7 map"):
        CropConfig().sizes(1, 4, 4)  # the crisscross arch at 112 px
