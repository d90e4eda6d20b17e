"""The one place that names the shard format's components and the numeric index layout.

Everything that writes or reads shards imports its names from here; SPEC.md documents them.
A sample is a group of tar members sharing a key (WebDataset convention: the key is the member
name up to its first dot, so keys never contain dots):

    <key>.video.mp4   all-intra MJPEG in MP4, constant FORMAT fps (16), short side 112 px
    <key>.audio.pcm   raw little-endian int16 mono PCM at 16 kHz (or <key>.audio.flac)
    <key>.index.npy   float64 vector, INDEX_FIELDS below, header padded to NPY_HEADER_BYTES
    <key>.meta.json   provenance: source path/sha256, label, split, original stream properties
"""

from __future__ import annotations

import io
from enum import IntEnum

import numpy as np

FORMAT_VERSION = 1

VIDEO_EXT = "video.mp4"
AUDIO_PCM_EXT = "audio.pcm"
AUDIO_FLAC_EXT = "audio.flac"
INDEX_EXT = "index.npy"
META_EXT = "meta.json"

DEFAULT_FPS = 16
DEFAULT_SHORT_SIDE = 112
DEFAULT_SAMPLE_RATE = 16000
PCM_DTYPE = np.dtype("<i2")


class Index(IntEnum):
    """Positions in ``index.npy``. Times are seconds on the source's timeline.

    Video frame k is shown at ``t0 + video_offset + k / fps``; audio sample n is heard at
    ``t0 + audio_offset + n / sample_rate``. ``t0`` is the start of the sample's span (the clip
    start); the offsets (>= 0) say where each stream really starts inside that span, so a source
    whose audio starts late keeps its true alignment instead of being padded with invented data.
    """

    NUM_FRAMES = 0
    FPS = 1
    NUM_AUDIO_SAMPLES = 2
    SAMPLE_RATE = 3
    T0 = 4
    DURATION = 5
    HAS_VIDEO = 6
    HAS_AUDIO = 7
    VIDEO_OFFSET = 8
    AUDIO_OFFSET = 9


INDEX_LEN = len(Index)
# np.save (format 1.0) pads the header so that the data starts at a multiple of 64 bytes; for a
# 1-D float64 vector of INDEX_LEN entries that is exactly 128 bytes. A DALI graph can therefore
# read the index without Python: slice bytes [128:] and reinterpret them as float64.
NPY_HEADER_BYTES = 128


def encode_index(values: dict[Index, float]) -> bytes:
    """Serialize an index vector; every field must be given."""
    missing = [f.name for f in Index if f not in values]
    if missing:
        raise ValueError(f"index fields missing: {missing}")
    vec = np.array([float(values[f]) for f in Index], dtype="<f8")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, vec, version=(1, 0), allow_pickle=False)
    data = buf.getvalue()
    if len(data) != NPY_HEADER_BYTES + vec.nbytes:
        raise AssertionError(f"unexpected npy header size {len(data) - vec.nbytes}")
    return data


def decode_index(data: bytes) -> np.ndarray:
    """Parse ``index.npy`` bytes into a float64 vector of INDEX_LEN entries."""
    vec = np.load(io.BytesIO(data), allow_pickle=False)
    if vec.shape != (INDEX_LEN,):
        raise ValueError(f"index.npy has shape {vec.shape}, expected ({INDEX_LEN},)")
    return vec.astype(np.float64)


def shard_name(dataset: str, number: int) -> str:
    """``{name}-{000000}.tar``."""
    return f"{dataset}-{number:06d}.tar"
