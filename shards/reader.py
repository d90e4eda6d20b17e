"""Plain-Python shard reader (no DALI): for inspect, verify, tests and small tools.

``read_dataset(dir)`` returns the dataset-level files (opened by ``shards.dataset.Dataset``, the one
reader of dataset.json and the parquet files); ``iter_samples(dir)`` yields decoded
samples in shard order. Training and evaluation read shards through DALI instead (loader.py).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crisscross.shards import format as fmt
from crisscross.shards.dataset import DATASET_JSON, ERRORS, MANIFEST  # noqa: F401 (re-exported)


@dataclass
class DatasetInfo:
    root: Path
    dataset: dict  # dataset.json
    shards: list[Path]  # in shard-number order
    manifest: list[dict]  # one dict per sample (manifest.parquet rows)
    errors: list[dict] = field(default_factory=list)  # errors.parquet rows

    def by_key(self) -> dict[str, dict]:
        return {row["key"]: row for row in self.manifest}


@dataclass
class Sample:
    key: str
    index: np.ndarray  # float64 [INDEX_LEN], see format.Index
    meta: dict
    frames: np.ndarray | None  # uint8 [T, H, W, 3] or None (no video)
    audio: np.ndarray | None  # float32 [N] in [-1, 1) or None (no audio)
    raw: dict[str, bytes] = field(default_factory=dict)

    def field(self, name: fmt.Index) -> float:
        return float(self.index[name])


def read_dataset(root: str | Path) -> DatasetInfo:
    """A finished dataset's files (shards.Dataset: format version checked, each problem one line)."""
    from crisscross.shards.dataset import Dataset

    dataset = Dataset.open(root, finished=True)
    return DatasetInfo(dataset.root, dataset.info, list(dataset.shards), dataset.rows, dataset.errors)


def iter_raw(tar_path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a shard's members by key (name up to the first dot), in file order."""
    key, group = None, {}
    with tarfile.open(tar_path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            k, _, ext = name.partition(".")
            if k != key and group:
                yield key, group
                group = {}
            key = k
            group[ext] = tar.extractfile(member).read()
    if group:
        yield key, group


# the same picture-size cap as the builder's (media.MediaConfig.max_source_pixels), and a cap on
# the decoded size of one sample, so a damaged or hostile shard cannot exhaust memory here
MAX_FRAME_PIXELS = 7680 * 4320
MAX_DECODED_BYTES = 4 << 30


def decode_video(data: bytes) -> np.ndarray:
    """MJPEG-in-MP4 bytes -> uint8 [T, H, W, 3] RGB; ValueError for a video over the caps."""
    import av

    frames, total = [], 0
    with av.open(io.BytesIO(data)) as container:
        cc = container.streams.video[0].codec_context
        if cc.width * cc.height > MAX_FRAME_PIXELS:  # before decoding anything
            raise ValueError(f"video of {cc.width}x{cc.height} exceeds {MAX_FRAME_PIXELS} pixels")
        for frame in container.decode(video=0):
            if frame.width * frame.height > MAX_FRAME_PIXELS:
                raise ValueError(f"frame of {frame.width}x{frame.height} exceeds {MAX_FRAME_PIXELS} pixels")
            total += frame.width * frame.height * 3
            if total > MAX_DECODED_BYTES:
                raise ValueError(f"video decodes to over {MAX_DECODED_BYTES >> 30} GiB")
            frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def decode_audio(group: dict[str, bytes]) -> np.ndarray | None:
    if fmt.AUDIO_PCM_EXT in group:
        return np.frombuffer(group[fmt.AUDIO_PCM_EXT], dtype=fmt.PCM_DTYPE).astype(np.float32) / 32768.0
    if fmt.AUDIO_FLAC_EXT in group:
        import soundfile

        data, _ = soundfile.read(io.BytesIO(group[fmt.AUDIO_FLAC_EXT]), dtype="int16")
        return data.astype(np.float32) / 32768.0
    return None


def decode_sample(key: str, group: dict[str, bytes], *, video: bool = True) -> Sample:
    index = fmt.decode_index(group[fmt.INDEX_EXT])
    meta = json.loads(group[fmt.META_EXT])
    frames = decode_video(group[fmt.VIDEO_EXT]) if video and fmt.VIDEO_EXT in group else None
    return Sample(key, index, meta, frames, decode_audio(group), raw=group)


def iter_samples(root: str | Path, *, video: bool = True) -> Iterator[Sample]:
    """Every sample of a finished dataset, decoded, in shard order."""
    for shard in read_dataset(root).shards:
        for key, group in iter_raw(shard):
            yield decode_sample(key, group, video=video)
