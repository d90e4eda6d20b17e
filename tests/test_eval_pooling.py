"""Pooling of the last conv block covers the whole map, with the sizes docs/evaluate.md states.

The full-size (paper) encoders run on PyTorch's meta device: shapes without the arithmetic, so a
32x224^2 forward pass costs nothing on the CPU. The peak test then runs the real pooling on a real
tensor of that map's shape, one peak per map position.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import torch

from crisscross.evaluate.config import load_config, preset_names
from crisscross.evaluate.features import POOLINGS, max_pool
from crisscross.train.models import (
    ModelConfig,
    build_audio_encoder,
    build_video_encoder,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "evaluate.md"
ROW = re.compile(r"^\| (video (?P<frames>\d+)x(?P<crop>\d+)\^2|audio (?P<seconds>[\d.]+) s) \| (?P<map>[\dx]+) \| "
                 r"(?P<linear>\d+) \| (?P<fusion>\d+) \| (?P<global>\d+) \|$")
HOP_PER_SECOND = 100  # 16 kHz, hop 160


@cache
def _encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = ModelConfig()
    return build_video_encoder(cfg).to("meta").eval(), build_audio_encoder(cfg).to("meta").eval()


def map_shape(modality: str, frames: int = 8, crop: int = 112, seconds: float = 2.0, n_mels: int = 80) -> tuple[int, ...]:
    """[C, ...] of the full-size encoder's last conv block for one clip of that input."""
    video, audio = _encoders()
    if modality == "video":
        x = torch.zeros(1, 3, frames, crop, crop, device="meta")
        return tuple(video.forward_features(x).shape[1:])
    x = torch.zeros(1, 1, n_mels, int(seconds * HOP_PER_SECOND), device="meta")
    return tuple(audio.forward_features(x).shape[1:])


def documented_sizes() -> dict[tuple, dict[str, object]]:
    rows = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if m := ROW.match(line.strip()):
            key = ("video", int(m["frames"]), int(m["crop"])) if m["frames"] else ("audio", float(m["seconds"]))
            rows[key] = {"map": tuple(int(x) for x in m["map"].split("x")),
                         **{name: int(m[name]) for name in ("linear", "fusion", "global")}}
    return rows


def _input_key(modality: str, cfg) -> tuple:
    return ("video", cfg.frames, cfg.crop) if modality == "video" else ("audio", float(cfg.audio_seconds))


def assert_every_position_counts(pool, shape: tuple[int, ...]) -> None:
    """A peak above a random background at each map position changes the pooled feature."""
    gen = torch.Generator().manual_seed(0)
    _, *spatial = shape
    positions = list(torch.cartesian_prod(*[torch.arange(n) for n in spatial]).reshape(-1, len(spatial)))
    background = torch.rand((1, 2, *spatial), generator=gen)  # 2 channels: pooling is per channel
    base = pool(background)
    maps = background.repeat(len(positions), 1, *[1] * len(spatial))
    for i, pos in enumerate(positions):
        maps[(i, 1, *pos.tolist())] = 2.0
    changed = (pool(maps) != base).any(dim=1)
    missed = [tuple(p.tolist()) for p, c in zip(positions, changed) if not c]
    assert not missed, f"{len(missed)} of {len(positions)} map positions never reach the feature, e.g. {missed[:5]}"
    assert len(positions) == int(torch.tensor(spatial).prod())


def test_docs_table_lists_every_paper_input_and_matches_the_full_encoders():
    rows = documented_sizes()
    want = {("video", f, c) for f in (8, 32) for c in (112, 224)} | {("audio", s) for s in (1.0, 2.0, 5.0)}
    assert set(rows) == want, "docs/evaluate.md 'Feature sizes' table lost or gained rows"
    for key, doc in rows.items():
        modality = key[0]
        shape = map_shape("video", frames=key[1], crop=key[2]) if modality == "video" else map_shape("audio", seconds=key[1])
        assert shape == doc["map"], key
        fmap = torch.zeros((1, *shape), device="meta")
        for name in ("linear", "fusion", "global"):
            assert POOLINGS[name][modality](fmap).shape == (1, doc[name]), (key, name)
            assert_every_position_counts(POOLINGS[name][modality], shape)


def _preset_heads(name: str) -> list[tuple[str, str]]:
    """(modality, pooling) pairs an eval preset extracts with the frozen encoders."""
    cfg = load_config(name)
    if name.startswith("finetune_"):
        return []  # finetuning trains the backbone with its own adaptive max pool
    if name.startswith("fusion"):
        return [("video", "fusion"), ("audio", "fusion")]
    if name == "retrieval":
        return [(m, "global") for m in ("video", "audio")]
    return [(cfg.modality, "linear")]


# demo: the tiny model on 64 px, not a paper input (its clamped pooling: test_demo_pooling below)
@pytest.mark.parametrize("preset", [p for p in preset_names() if not p.startswith("finetune_") and p != "demo"])
def test_each_eval_preset_pools_its_full_size_map_completely(preset):
    cfg = load_config(preset)
    rows = documented_sizes()
    heads = _preset_heads(preset)
    assert heads
    for modality, pooling in heads:
        if cfg.frames is None or cfg.crop is None or cfg.audio_seconds is None:  # the encoder's input
            cfg.frames, cfg.crop, cfg.audio_seconds = cfg.frames or 8, cfg.crop or 112, cfg.audio_seconds or 2.0
        shape = map_shape(modality, frames=cfg.frames, crop=cfg.crop, seconds=cfg.audio_seconds)
        doc = rows[_input_key(modality, cfg)]
        assert shape == doc["map"]
        assert POOLINGS[pooling][modality](torch.zeros((1, *shape), device="meta")).shape[1] == doc[pooling]
        assert_every_position_counts(POOLINGS[pooling][modality], shape)


def test_paper_kernel_without_ceil_mode_would_miss_positions():
    """The check above can fail: the pre-issue-9 pooling (no partial window) misses rows 4-6."""
    def plain(fmap):
        return torch.nn.functional.max_pool3d(fmap, (1, 4, 4), (1, 4, 4)).flatten(1)

    with pytest.raises(AssertionError, match="never reach the feature"):
        assert_every_position_counts(plain, (512, 1, 7, 7))
    assert_every_position_counts(max_pool((1, 4, 4)), (512, 1, 7, 7))


def test_fewer_mel_bins_pool_completely():
    shape = map_shape("audio", seconds=2.0, n_mels=64)
    assert shape == (512, 2, 7)
    assert POOLINGS["linear"]["audio"](torch.zeros((1, *shape), device="meta")).shape[1] == 512 * 2 * 3
    assert_every_position_counts(POOLINGS["linear"]["audio"], shape)


def test_demo_pooling_covers_the_tiny_models_map():
    cfg = load_config("demo")
    tiny = ModelConfig.tiny()
    video, audio = build_video_encoder(tiny).eval(), build_audio_encoder(tiny).eval()
    with torch.no_grad():
        v_map = video.forward_features(torch.zeros(1, 3, cfg.frames, cfg.crop, cfg.crop))
        a_map = audio.forward_features(torch.zeros(1, 1, 80, int(cfg.audio_seconds * HOP_PER_SECOND)))
    for modality, fmap in (("video", v_map), ("audio", a_map)):
        for name in ("linear", "fusion", "global"):
            assert_every_position_counts(POOLINGS[name][modality], tuple(fmap.shape[1:]))
