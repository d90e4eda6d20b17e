"""Look at a finished dataset: a summary, one sample dumped to PNG/WAV, and a full verification."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from crisscross.errors import UserError
from crisscross.shards import format as fmt
from crisscross.shards.reader import decode_sample, iter_raw, read_dataset
from crisscross.shards.writer import IDX_VERSION, sample_digest


def summarize(root: str | Path) -> dict:
    info = read_dataset(root)
    counts = info.dataset["counts"]
    durations = np.array([r["duration"] for r in info.manifest]) if info.manifest else np.zeros(1)
    summary = {
        "name": info.dataset["name"], "format_version": info.dataset["format_version"],
        "samples": counts["samples"], "errors": counts["errors"], "shards": len(info.shards),
        "modalities": counts["modalities"], "labels": len(info.dataset["labels"]),
        "splits": dict(Counter(r["split"] for r in info.manifest)),
        "hours": float(durations.sum() / 3600), "duration_s": {"min": float(durations.min()),
                                                            "median": float(np.median(durations)),
                                                            "max": float(durations.max())},
        "bytes_per_clip_second": counts["sample_bytes"] / counts["seconds"] if counts["seconds"] else None,
        "error_reasons": counts["error_reasons"], "build": info.dataset["build"],
    }
    lines = [f"dataset {summary['name']} (format v{summary['format_version']}): {summary['samples']} samples "
             f"in {summary['shards']} shards, {summary['hours']:.3f} h, modalities {summary['modalities']}",
             f"  labels: {summary['labels']}, splits: {summary['splits']}",
             f"  duration s: min {summary['duration_s']['min']:.2f} / median {summary['duration_s']['median']:.2f} "
             f"/ max {summary['duration_s']['max']:.2f}",
             f"  errors: {summary['errors']} {summary['error_reasons']}"]
    if summary["bytes_per_clip_second"]:
        lines.append(f"  {summary['bytes_per_clip_second'] / 1e3:.1f} kB per clip-second")
    summary["text"] = "\n".join(lines)
    return summary


class SampleNotFound(UserError, KeyError):
    """``--key`` names no sample of the dataset (a KeyError for callers; one line on the command line)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _find(root: Path, key: str | None) -> tuple[str, dict[str, bytes]]:
    info = read_dataset(root)
    rows = info.by_key()
    if key is not None and key not in rows:
        raise SampleNotFound(f"no sample {key!r} in {root} (its manifest.parquet lists the keys)")
    shard = root / (rows[key]["shard"] if key else info.manifest[0]["shard"])
    try:
        for k, group in iter_raw(shard):
            if key is None or k == key:
                return k, group
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{shard}: unreadable (truncated or damaged tar: {exc}); run `crisscross shards verify`") from None
    raise SampleNotFound(f"{key!r} listed in the manifest but missing from {shard}")


def dump_sample(root: str | Path, key: str | None = None, out_dir: str | Path | None = None) -> dict:
    """Decode one sample; with ``out_dir``, write frame_XXXX.png, audio.wav, index.json, meta.json."""
    key, group = _find(Path(root), key)
    sample = decode_sample(key, group)
    shown = {"key": key, "index": {f.name: float(sample.index[f]) for f in fmt.Index}, "meta": sample.meta,
             "frames_shape": None if sample.frames is None else list(sample.frames.shape),
             "audio_samples": None if sample.audio is None else int(sample.audio.size)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if sample.frames is not None:
            from PIL import Image

            for k, frame in enumerate(sample.frames):
                Image.fromarray(frame).save(out / f"frame_{k:04d}.png")
        if sample.audio is not None:
            import soundfile

            soundfile.write(out / "audio.wav", sample.audio, int(sample.index[fmt.Index.SAMPLE_RATE]), subtype="PCM_16")
        (out / "index.json").write_text(json.dumps(shown["index"], indent=1))
        (out / "meta.json").write_text(json.dumps(sample.meta, indent=1, ensure_ascii=False))
        shown["dumped_to"] = str(out)
    return shown


def _check_idx(shard: Path, groups: list[tuple[str, dict]]) -> list[str]:
    idx = shard.with_suffix(".idx")
    if not idx.exists():
        return [f"{shard.name}: index {idx.name} missing"]
    try:
        lines = idx.read_text(encoding="utf-8").splitlines() or [""]
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{idx.name}: unreadable ({type(exc).__name__}: {exc})"]
    problems = []
    if lines[0] != f"{IDX_VERSION} {len(groups)}":
        problems.append(f"{idx.name}: header {lines[0][:80]!r}, shard holds {len(groups)} samples")
    data = shard.read_bytes()
    for number, (line, (key, group)) in enumerate(zip(lines[1:], groups), 2):
        fields = line.split(" ")
        if len(fields) % 4 or not all(f.isdigit() for f in fields[1::4] + fields[2::4]):
            problems.append(f"{idx.name}: line {number} is malformed (not <ext> <offset> <size> <name> groups)")
            continue
        for ext, offset, size, name in zip(fields[0::4], fields[1::4], fields[2::4], fields[3::4]):
            blob = data[int(offset):int(offset) + int(size)]
            if name != f"{key}.{ext}" or blob != group.get(ext):
                problems.append(f"{idx.name}: entry {name} does not point at its member's bytes")
    return problems


def _read_groups(shard: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """The samples readable from a shard, and a problem if the tar breaks off (truncated, damaged)."""
    groups: list[tuple[str, dict]] = []
    try:
        for key, group in iter_raw(shard):
            groups.append((key, group))
    except (tarfile.TarError, OSError, EOFError) as exc:
        return groups, [f"{shard.name}: unreadable after {len(groups)} sample(s) (truncated or damaged tar: "
                        f"{type(exc).__name__}: {exc})"]
    return groups, []


def verify_dataset(root: str | Path, *, decode: bool = True) -> list[str]:
    """Re-read every shard: members vs manifest, index vs manifest, idx offsets, decodability,
    labels/splits/folds vs each sample's meta. Every problem of every shard is reported."""
    root = Path(root)
    info = read_dataset(root)
    rows = info.by_key()
    labels = list(info.dataset.get("labels", []))
    problems, seen = [], set()
    for shard in info.shards:
        if not shard.exists():
            problems.append(f"{shard.name}: missing")
            continue
        groups, broken = _read_groups(shard)
        problems += broken
        problems += _check_idx(shard, groups)
        for key, group in groups:
            found = _check_sample(key, group, rows.get(key), shard.name, decode, labels)
            problems += [f"{key}: {p}" for p in found]
            seen.add(key)
    problems += [f"{k}: in manifest, not in any shard" for k in sorted(set(rows) - seen)]
    return problems


def _check_labels(meta: dict, row: dict, labels: list[str]) -> list[str]:
    """The manifest's label/split/fold against the sample's own meta.json and the label list."""
    problems = []
    for field_name, manifest_value in (("label", row["label"] or None), ("split", row["split"]), ("fold", row["fold"])):
        if meta.get(field_name) != manifest_value:
            problems.append(f"{field_name} {meta.get(field_name)!r} in meta.json, {manifest_value!r} in the manifest")
    label = row["label"] or None
    expected = labels.index(label) if label in labels else -1
    if label is not None and label not in labels:
        problems.append(f"label {label!r} is not in dataset.json's labels")
    if row["label_index"] != expected or meta.get("label_index") != expected:
        problems.append(f"label_index {row['label_index']} (manifest) / {meta.get('label_index')} (meta.json), "
                        f"expected {expected} from dataset.json's labels")
    return problems


def _check_sample(key: str, group: dict, row: dict | None, shard: str, decode: bool,
                  labels: list[str] | None = None) -> list[str]:
    if row is None:
        return ["in a shard but not in the manifest"]
    problems = []
    if row["shard"] != shard:
        problems.append(f"manifest says shard {row['shard']}, found in {shard}")
    if row["bytes"] != sum(len(v) for v in group.values()):
        problems.append("byte count differs from the manifest")
    if row.get("sha256") and row["sha256"] != sample_digest(group):
        problems.append("checksum differs from the manifest (damaged member)")
    try:
        sample = decode_sample(key, group, video=decode)
    except Exception as exc:  # noqa: BLE001 - report, keep verifying the rest
        return problems + [f"does not decode: {type(exc).__name__}: {exc}"]
    idx = sample.index
    if int(idx[fmt.Index.NUM_FRAMES]) != row["frames"] or int(idx[fmt.Index.NUM_AUDIO_SAMPLES]) != row["audio_samples"]:
        problems.append("index.npy counts differ from the manifest")
    has_v, has_a = fmt.VIDEO_EXT in group, sample.audio is not None
    if bool(idx[fmt.Index.HAS_VIDEO]) != has_v or bool(idx[fmt.Index.HAS_AUDIO]) != has_a:
        problems.append("index.npy modality flags differ from the members present")
    if has_a and sample.audio.size != row["audio_samples"]:
        problems.append(f"audio has {sample.audio.size} samples, manifest {row['audio_samples']}")
    if decode and has_v and sample.frames.shape[0] != row["frames"]:
        problems.append(f"video decodes to {sample.frames.shape[0]} frames, manifest {row['frames']}")
    if sample.meta.get("key") != key:
        problems.append("meta.json key differs")
    if labels is not None:
        problems += _check_labels(sample.meta, row, labels)
    return problems

