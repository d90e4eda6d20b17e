"""A deterministic synthetic train loader with the DALI loader's interface (interfaces.md item 3).

Used by tests that need no real data (DDP parity, kill/resume) and as the benchmark ceiling.
Every sample is a function of (seed, epoch, sample id) only, and the global batch of step s is
split over ranks by position (rank r takes rows [r*B, (r+1)*B) of it), so a run on N ranks sees
exactly the samples a 1-rank run with the same global batch sees. ``state_dict()`` holds the
epoch and the next batch, so a resumed run continues mid-epoch with the same batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from crisscross.config import from_known_keys


@dataclass
class SyntheticConfig:
    num_samples: int = 64
    frames: int = 8
    crop: int = 112
    mel_bins: int = 80
    audio_frames: int = 200
    delay_s: float = 0.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SyntheticConfig:
        return from_known_keys(cls, values, "synthetic loader")


class SyntheticTrainLoader:
    """Iterable of {"v1","v2","a1","a2","key"} batches for one rank; drop-last, reshuffled per epoch."""

    def __init__(self, cfg: SyntheticConfig, *, batch_size: int, rank: int, world_size: int,
                 device: str, seed: int) -> None:
        global_batch = batch_size * world_size
        if cfg.num_samples < global_batch:
            raise ValueError(f"synthetic.num_samples={cfg.num_samples} < global batch {global_batch}")
        self.cfg, self.batch_size, self.rank, self.world_size = cfg, batch_size, rank, world_size
        self.device, self.seed = torch.device(device), seed
        self.epoch, self.next_batch = 0, 0
        self.batches_served = 0

    def __len__(self) -> int:
        return self.cfg.num_samples // (self.batch_size * self.world_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "next_batch": self.next_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.next_batch = int(state["epoch"]), int(state["next_batch"])

    def stats(self) -> dict[str, int]:
        return {"batches_served": self.batches_served}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = torch.randperm(self.cfg.num_samples, generator=self._generator(self.epoch, -1))
        while self.next_batch < len(self):
            start = (self.next_batch * self.world_size + self.rank) * self.batch_size
            ids = order[start:start + self.batch_size].tolist()
            if self.cfg.delay_s:
                time.sleep(self.cfg.delay_s)
            batch = self._collate([self._sample(i) for i in ids])
            batch["key"] = [f"synthetic-{i:06d}" for i in ids]
            self.next_batch += 1
            self.batches_served += 1
            yield batch
        self.epoch, self.next_batch = self.epoch + 1, 0

    def _generator(self, epoch: int, sample: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + sample) % 2**63)

    def _sample(self, sample_id: int) -> dict[str, torch.Tensor]:
        c, g = self.cfg, self._generator(self.epoch, sample_id)
        video = (c.frames, c.crop, c.crop)
        audio = (c.mel_bins, c.audio_frames)
        return {
            "v1": torch.randn(3, *video, generator=g), "v2": torch.randn(3, *video, generator=g),
            "a1": torch.randn(1, *audio, generator=g), "a2": torch.randn(1, *audio, generator=g),
        }

    def _collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        return {k: torch.stack([s[k] for s in samples]).to(self.device, non_blocking=True) for k in samples[0]}


def build_synthetic_loader(cfg: dict[str, Any], *, batch_size: int, rank: int = 0, world_size: int = 1,
                           device: str = "cpu", seed: int = 0) -> SyntheticTrainLoader:
    return SyntheticTrainLoader(SyntheticConfig.from_dict(cfg), batch_size=batch_size, rank=rank,
                                world_size=world_size, device=device, seed=seed)
