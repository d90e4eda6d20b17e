"""Per-sample instance indices for the memory-bank objectives (AVID, CMA).

A memory bank has one row per training instance; ``InstanceIndex`` maps the sample keys a batch
carries (``batch["key"]``) to those rows. The instances are the audio-visual rows of the shards'
``manifest.parquet`` in manifest order (``unit: sample``), or one instance per source video
(``unit: source``: every clip cut from one video shares a row, the official AVID code's
per-video instances). The synthetic loader's keys ``synthetic-NNNNNN`` map to NNNNNN.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

UNITS = ("sample", "source")


class InstanceIndex:
    def __init__(self, keys: Iterable[str], groups: Iterable[str] | None = None) -> None:
        keys = list(keys)
        if groups is None:
            self.rows = {k: i for i, k in enumerate(keys)}
            self.size = len(keys)
        else:
            first: dict[str, int] = {}
            self.rows = {k: first.setdefault(g, len(first)) for k, g in zip(keys, groups)}
            self.size = len(first)

    def __len__(self) -> int:
        return self.size

    def __call__(self, keys: Iterable[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.rows[k] for k in keys], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"sample {exc.args[0]!r} is not in the shards' manifest: the memory bank has no row for "
                           "it (were the shards rebuilt after the manifest was read?)") from None

    @classmethod
    def from_manifest(cls, shards: str | Path, unit: str = "sample") -> InstanceIndex:
        if unit not in UNITS:
            raise ValueError(f"instance unit must be one of {UNITS}, got {unit!r}")
        path = Path(shards) / "manifest.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: AVID/CMA number their memory-bank rows from the shards' "
                                    "manifest (written by `crisscross shards build`)")
        import pyarrow.parquet as pq

        rows = [r for r in pq.read_table(path, columns=["key", "source", "modalities"]).to_pylist()
                if r["modalities"] == "av"]
        if len(rows) < 2:
            raise ValueError(f"{path}: {len(rows)} audio-visual samples; a memory bank needs at least 2")
        keys = [r["key"] for r in rows]
        return cls(keys, [r["source"] for r in rows] if unit == "source" else None)

    @classmethod
    def for_run(cls, config: dict[str, Any], unit: str = "sample") -> InstanceIndex:
        """The instances of a training config's data (shards, or the synthetic loader's samples)."""
        if config["run"]["loader"] == "synthetic":
            return cls(f"synthetic-{i:06d}" for i in range(int(config["synthetic"]["num_samples"])))
        return cls.from_manifest(config["data"]["shards"], unit)
