"""Byte ranges of the JPEG frames inside a shard's all-intra MJPEG MP4, from its sample table.

DALI's video decoder opens and indexes the whole container for every sample: on a 300 s clip
that costs ~70 ms for 16 frames, against ~5 ms on a 10 s clip. Every frame of a shard's video is a
complete JPEG (format: all-intra MJPEG), so the training loader instead reads the MP4 sample
table (``stsz``/``stsc``/``stco``/``co64`` of the video track, parsed once per sample key and
cached), cuts out just the planned frames' bytes (numpy views, no copy) and decodes them with
DALI's image decoder (libjpeg-turbo on the CPU, nvJPEG with ``mixed``): the cost of a view no
longer depends on the clip's length. Measured cost of this Python step: docs/shards.md.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

import numpy as np

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


class Mp4Error(ValueError):
    """The bytes are not an MP4 with one MJPEG video track and a readable sample table."""


def _boxes(data: np.ndarray, start: int, end: int):
    """Yield (type, payload_start, box_end) of the boxes in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4].tobytes(), "big")
        kind = data[pos + 4 : pos + 8].tobytes()
        header = 8
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16].tobytes(), "big")
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4Error(f"box {kind!r} at {pos} has a bad size {size}")
        yield kind, pos + header, pos + size
        pos += size


def _find_tables(data: np.ndarray, start: int, end: int, tables: dict) -> None:
    for kind, payload, box_end in _boxes(data, start, end):
        if kind in _CONTAINERS:
            if kind == b"trak" and "stsz" in tables:
                return  # first track only
            _find_tables(data, payload, box_end, tables)
        elif kind in (b"stsz", b"stsc", b"stco", b"co64", b"hdlr") and kind.decode() not in tables:
            tables[kind.decode()] = (payload, box_end)


def _count(data: np.ndarray, p: int, box_end: int, header: int, entry_bytes: int, what: str) -> int:
    """An entry count read from a box, bounded by what the box can hold: a count read from a file
    must never size an allocation on its own (2^32 entries would be a 32 GiB array)."""
    if p + header > box_end:
        raise Mp4Error(f"{what} box too short")
    (n,) = struct.unpack(">I", data[p + header - 4 : p + header].tobytes())
    if n * entry_bytes > box_end - p - header:
        raise Mp4Error(f"{what} claims {n} entries, its box holds {(box_end - p - header) // entry_bytes}")
    return n


def frame_table(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) int64 arrays, one entry per video frame, for MP4 bytes ``data`` (uint8)."""
    try:
        return _frame_table(data)
    except Mp4Error:
        raise
    except (ValueError, IndexError, struct.error) as exc:  # numpy/struct on malformed tables
        raise Mp4Error(f"malformed sample table: {exc}") from None


def _frame_table(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tables: dict[str, tuple[int, int]] = {}
    _find_tables(data, 0, len(data), tables)
    if "stsz" not in tables or "stsc" not in tables or not ({"stco", "co64"} & set(tables)):
        raise Mp4Error(f"no sample table in the MP4 (found boxes {sorted(tables)})")
    p, end = tables["stsz"]
    (uniform,) = struct.unpack(">I", data[p + 4 : p + 8].tobytes())
    count = _count(data, p, end, 12, 0 if uniform else 4, "stsz")
    if uniform:
        if count * max(uniform, 1) > len(data):  # every frame's bytes lie inside the file
            raise Mp4Error(f"stsz claims {count} frames of {uniform} bytes in a {len(data)}-byte file")
        sizes = np.full(count, uniform, dtype=np.int64)
    else:
        sizes = np.frombuffer(data[p + 12 : p + 12 + 4 * count].tobytes(), dtype=">u4").astype(np.int64)
    if "stco" in tables:
        p, end = tables["stco"]
        n_chunks = _count(data, p, end, 8, 4, "stco")
        chunk_offsets = np.frombuffer(data[p + 8 : p + 8 + 4 * n_chunks].tobytes(), dtype=">u4").astype(np.int64)
    else:
        p, end = tables["co64"]
        n_chunks = _count(data, p, end, 8, 8, "co64")
        chunk_offsets = np.frombuffer(data[p + 8 : p + 8 + 8 * n_chunks].tobytes(), dtype=">u8").astype(np.int64)
    p, end = tables["stsc"]
    n_entries = _count(data, p, end, 8, 12, "stsc")
    entries = np.frombuffer(data[p + 8 : p + 8 + 12 * n_entries].tobytes(), dtype=">u4").reshape(-1, 3).astype(np.int64)
    # samples per chunk for every chunk (stsc runs: first_chunk (1-based), samples_per_chunk, desc)
    firsts = entries[:, 0] - 1
    runs = np.diff(np.append(firsts, n_chunks))
    if (runs < 0).any() or (entries[:, 1] > count).any():
        raise Mp4Error("sample table inconsistent: stsc runs out of order or larger than the sample count")
    per_chunk = np.repeat(entries[:, 1], runs)
    if per_chunk.sum() != count:
        raise Mp4Error(f"sample table inconsistent: {per_chunk.sum()} samples in chunks, {count} sizes")
    chunk_of_sample = np.repeat(np.arange(n_chunks), per_chunk)
    first_sample_of_chunk = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])
    cumulative = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    within = cumulative - cumulative[first_sample_of_chunk[chunk_of_sample]]
    offsets = chunk_offsets[chunk_of_sample] + within
    if count and offsets[-1] + sizes[-1] > len(data):
        raise Mp4Error("sample table points past the end of the file")
    return offsets, sizes


class FrameTables:
    """LRU cache of ``frame_table`` per sample key (a table is 16 bytes per frame)."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._tables: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, key: str, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        table = self._tables.get(key)
        if table is None or (len(table[0]) and table[0][-1] + table[1][-1] > len(data)):
            table = frame_table(data)
            self._tables[key] = table
            if len(self._tables) > self.capacity:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table


def jpeg_frames(data: np.ndarray, table: tuple[np.ndarray, np.ndarray], indices: np.ndarray) -> list[np.ndarray]:
    """Views of the JPEG bytes of frames ``indices`` (clamped to the clip) inside ``data``."""
    offsets, sizes = table
    if len(offsets) == 0:
        raise Mp4Error("the video has no frames")
    indices = np.clip(indices, 0, len(offsets) - 1)
    starts = offsets[indices]  # one vectorised lookup; Python ints slice faster than numpy scalars
    ends = (starts + sizes[indices]).tolist()
    return [data[start:end] for start, end in zip(starts.tolist(), ends)]


# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): C0-CF
# except DHT (C4), JPG (C8) and DAC (CC)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(jpeg: np.ndarray | bytes) -> tuple[int, int]:
    """(height, width) of a JPEG image from its start-of-frame header (no decoding): what the
    training loader's crop boxes need before the frames are decoded. ``Mp4Error`` (a ValueError)
    for data that is not a JPEG or has no frame header."""
    data = bytes(jpeg[:65536]) if isinstance(jpeg, np.ndarray) else jpeg
    if data[:2] != b"\xff\xd8":
        raise Mp4Error("frame is not a JPEG (no SOI marker)")
    p = 2
    while p + 4 <= len(data):
        if data[p] != 0xFF:
            raise Mp4Error(f"JPEG marker expected at byte {p}")
        marker = data[p + 1]
        if marker == 0xFF:  # fill byte
            p += 1
            continue
        length = int.from_bytes(data[p + 2 : p + 4], "big")
        if marker in _SOF_MARKERS:
            if p + 9 > len(data):
                break
            return int.from_bytes(data[p + 5 : p + 7], "big"), int.from_bytes(data[p + 7 : p + 9], "big")
        if marker == 0xDA:  # start of scan before any frame header
            break
        p += 2 + length
    raise Mp4Error("JPEG has no frame header (SOF) before its scan")
