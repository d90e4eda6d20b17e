"""Screening the evaluation loader's samples before they enter its DALI graph (issue 13).

The evaluation loader decodes a whole batch in one DALI pipeline (``fn.decoders.video``), so a
sample the decoder cannot read fails the batch without saying which sample it was. Instead of
finding it afterwards, the loader checks every sample's payload once, cheaply, before building
its pipeline, and gives DALI's reader a copy of each shard's index without the bad ones:

* ``index.npy`` parses (``format.decode_index``) and its frame and audio counts are what the
  payload holds: the MP4's sample table (``mjpeg_frames.frame_table``, the table the training
  loader reads) lists ``NUM_FRAMES`` frames, the raw PCM holds at least ``NUM_AUDIO_SAMPLES``;
* every JPEG frame of the MP4 starts with an SOI marker and ends with an EOI marker (a frame
  zeroed or cut short fails here; an all-intra MJPEG frame is a complete JPEG).

This reads the (memory-mapped) tables and two bytes at each end of every frame, not the
compressed image data, so a defect inside a frame's entropy-coded data passes the screen; the
decoder then fails the batch with an error naming the shards, as before (docs/shards.md).

A skipped sample is never silently dropped: ``ScreenResult.bad`` lists key, shard and reason
(``BadSample`` records, as in training), the evaluators write them into results.json, and more
than ``max_bad_fraction`` of the samples stops with ``BadSampleLimitError`` naming them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crisscross.shards import format as shard_format
from crisscross.shards.bad_samples import BadSample
from crisscross.shards.mjpeg_frames import Mp4Error, frame_table

_SOI, _EOI = (0xFF, 0xD8), (0xFF, 0xD9)


@dataclass(frozen=True)
class _Member:
    ext: str
    offset: int
    size: int


@dataclass
class ScreenResult:
    """What the reader should read: the shards (tar, index) holding good samples, and the bad ones."""

    tars: tuple[str, ...]
    indexes: tuple[str, ...]
    samples: int  # good samples
    bad: list[BadSample] = field(default_factory=list)
    workdir: tempfile.TemporaryDirectory | None = None  # holds the filtered indexes while the loader lives


def _members(line: str) -> dict[str, _Member]:
    """One line of a DALI ``wds2idx`` index (v1.2): ``ext offset size name`` per component."""
    fields = line.split()
    return {fields[i]: _Member(fields[i], int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)}


def _check_video(data: np.ndarray, num_frames: int) -> None:
    offsets, sizes = frame_table(data)
    if len(offsets) != num_frames:
        raise Mp4Error(f"index.npy says {num_frames} frames, the MP4's sample table lists {len(offsets)}")
    if num_frames == 0:
        return
    if (sizes < 4).any():
        raise Mp4Error(f"frame {int(np.argmax(sizes < 4))} has {int(sizes.min())} bytes")
    ends = offsets + sizes
    for name, positions, marker in (("SOI", offsets, _SOI), ("EOI", ends - 2, _EOI)):
        ok = (data[positions] == marker[0]) & (data[positions + 1] == marker[1])
        if not ok.all():
            first = int(np.argmin(ok))
            raise Mp4Error(f"{int((~ok).sum())} of {num_frames} JPEG frames lack their {name} marker "
                           f"(first: frame {first})")


def screen_sample(tar: np.ndarray, members: dict[str, _Member], *, video: bool, pcm_audio: bool) -> str | None:
    """None when the sample passes, else the reason it is skipped."""
    index_member = members.get(shard_format.INDEX_EXT)
    if index_member is None:
        return None  # the reader's missing_components rule decides about such samples
    try:
        index = shard_format.decode_index(tar[index_member.offset : index_member.offset + index_member.size].tobytes())
    except ValueError as exc:
        return f"bad index.npy: {exc}"
    video_member = members.get(shard_format.VIDEO_EXT)
    if video and video_member is not None:
        data = tar[video_member.offset : video_member.offset + video_member.size]
        try:
            _check_video(data, int(index[shard_format.Index.NUM_FRAMES]))
        except Mp4Error as exc:
            return f"bad video: {exc}"
    audio_member = members.get(shard_format.AUDIO_PCM_EXT)
    if pcm_audio and audio_member is not None:
        needed = int(index[shard_format.Index.NUM_AUDIO_SAMPLES]) * shard_format.PCM_DTYPE.itemsize
        if audio_member.size < needed:
            return f"bad audio: index.npy says {needed} bytes of PCM, the member holds {audio_member.size}"
    return None


def screen_shards(tars: tuple[str, ...], indexes: tuple[str, ...], *, video: bool, audio_format: str | None) -> ScreenResult:
    """Screen every sample of the shards (``tars`` with their DALI ``indexes``); where some fail,
    write filtered copies of the indexes into a temporary folder (shards left without a good sample
    are dropped). ``audio_format``: the audio member read (``pcm`` is checked; None: no audio)."""
    bad: list[BadSample] = []
    kept_tars, kept_indexes, samples = [], [], 0
    workdir: tempfile.TemporaryDirectory | None = None
    for number, (tar_path, index_path) in enumerate(zip(tars, indexes)):
        header, *lines = Path(index_path).read_text(encoding="utf-8").splitlines()
        tar = np.memmap(tar_path, dtype=np.uint8, mode="r")
        good = []
        for line in lines:
            members = _members(line)
            reason = screen_sample(tar, members, video=video, pcm_audio=audio_format == "pcm")
            if reason is None:
                good.append(line)
                continue
            name = line.split()[3]
            bad.append(BadSample(key=name.split(".", 1)[0], shard=tar_path, reason=reason, stage="screen",
                                 seen=samples + len(good), epoch=0))
        del tar
        samples += len(good)
        if len(good) == len(lines):
            kept_tars.append(tar_path)
            kept_indexes.append(index_path)
            continue
        if not good:
            continue
        workdir = workdir or tempfile.TemporaryDirectory(prefix="crisscross-screened-")
        filtered = Path(workdir.name) / f"{number:06d}-{Path(index_path).name}"
        filtered.write_text("\n".join([f"{header.split()[0]} {len(good)}", *good]) + "\n", encoding="utf-8")
        kept_tars.append(tar_path)
        kept_indexes.append(str(filtered))
    return ScreenResult(tuple(kept_tars), tuple(kept_indexes), samples, bad, workdir)
