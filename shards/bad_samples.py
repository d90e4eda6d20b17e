"""Bad samples: skip, replace within the batch, count, and stop past a bound (issue 13).

A week-long run over millions of samples meets a few that cannot be decoded (a corrupt MP4, a
JPEG frame cut short, an index that disagrees with its payload). One such sample must not stop
the run, and the run must never silently train on garbage. The training loader therefore:

* checks every sample while it feeds the decoder (``jpeg_frames`` parses the MP4's sample table
  against the frames the index promised) and, when the decoder fails on a batch, finds the
  failing samples by decoding them one by one;
* replaces each bad sample by a good sample of the same batch (shapes stay fixed; the batch then
  holds that good sample twice, with the same augmentation draws);
* records it here: ``BadSampleTracker`` counts it, keeps its key, shard and reason for the run's
  ``bad_samples.jsonl``, and says when the count passes ``data.max_bad_fraction`` of the samples (the loader then raises ``BadSampleLimitError``, a
  ``ShardError``, or hands the message to the trainer, which saves a checkpoint first).

The bound: ``bad > max_bad_fraction * max(samples seen, samples per epoch)`` (the epoch size as a
floor, so that a bad sample early in the run is judged against the dataset, not against the first
few batches); ``0`` = strict: the first bad sample stops the run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MAX_BAD_FRACTION = 1e-4


@dataclass(frozen=True)
class BadSample:
    """One skipped sample: where it is, why it was skipped, and when (the loader's sample count)."""

    key: str
    shard: str
    reason: str
    stage: str  # "feed" (MP4/index check) or "decode" (the decoder failed on it)
    seen: int  # samples this loader had produced when it was found
    epoch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BadSampleTracker:
    """Counts bad samples against the bound; keeps those not yet written to the run's JSONL.

    The loader's thread adds; the training thread drains (``deque`` appends and pops are atomic),
    so the prefetch thread never writes files.
    """

    def __init__(self, max_fraction: float, samples_per_epoch: int) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {max_fraction!r}")
        self.max_fraction, self.samples_per_epoch = float(max_fraction), int(samples_per_epoch)
        self.bad = 0
        self.pending: deque[BadSample] = deque()
        self.examples: deque[BadSample] = deque(maxlen=20)  # the newest ones, for the error message

    def add(self, sample: BadSample) -> None:
        self.bad += 1
        self.pending.append(sample)
        self.examples.append(sample)

    def allowed(self, seen: int) -> float:
        return self.max_fraction * max(seen, self.samples_per_epoch)

    def exceeded(self, seen: int) -> bool:
        return self.bad > self.allowed(seen)

    def drain(self) -> list[dict[str, Any]]:
        """The records added since the last drain (for ``bad_samples.jsonl``)."""
        out = []
        while self.pending:
            out.append(self.pending.popleft().to_dict())
        return out

    def message(self, seen: int) -> str:
        shards = sorted({s.shard for s in self.examples})
        keys = [s.key for s in self.examples]
        reasons = sorted({s.reason.split(":", 1)[0] for s in self.examples})
        return (f"{self.bad} bad samples in {seen} seen, more than data.max_bad_fraction={self.max_fraction:g} allows "
                f"({self.allowed(seen):.1f}); newest keys {keys} in shards {shards} ({'; '.join(reasons)}); "
                "the run's bad_samples.jsonl lists them all. Check the shards with `crisscross shards verify`, "
                "or raise data.max_bad_fraction")
