"""Dataset adapters: turn a folder, a manifest or a known dataset layout into source items.

Every adapter returns ``list[SourceItem]`` in a deterministic order (sorted), so planning is
reproducible. Adapters never open media files: a missing or broken file becomes an
``errors.parquet`` row when the builder reaches it, not an exception here.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

NO_SPLIT = "none"
# sidecar files a video folder typically holds that are not sources
_NOT_MEDIA = {".csv", ".tsv", ".txt", ".json", ".jsonl", ".parquet", ".md", ".idx", ".tar", ".py", ".yaml", ".yml", ".log"}


@dataclass(frozen=True)
class SourceItem:
    path: str  # absolute path of the media file
    source_id: str  # stable, location-independent name (relative path), used for keys and meta
    label: str | None = None
    split: str = NO_SPLIT
    fold: int = -1
    start: float | None = None  # seconds on the source timeline; None = from the beginning
    end: float | None = None  # None = to the end
    audio_only: bool = False  # the dataset has no video (ESC-50, DCASE): don't look for one


def _walk_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() not in _NOT_MEDIA:
                found.append(Path(dirpath) / name)
    return sorted(found)


def from_folder(root: str | Path) -> list[SourceItem]:
    """Every non-hidden file under ``root`` (sidecars like .csv/.txt skipped). A file inside a
    sub-folder is labelled with that first-level folder's name (class-per-folder layout)."""
    root = Path(root)
    items = []
    for path in _walk_files(root):
        rel = path.relative_to(root)
        label = rel.parts[0] if len(rel.parts) > 1 else None
        items.append(SourceItem(str(path), rel.as_posix(), label=label))
    return items


def _read_table(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in {".jsonl", ".ndjson"}:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))


def _opt_float(value) -> float | None:
    return None if value in (None, "") else float(value)


def _opt_str(value) -> str | None:
    return None if value in (None, "") else str(value)


def from_manifest(path: str | Path) -> list[SourceItem]:
    """CSV / TSV / JSONL / Parquet with column ``path`` (relative to the manifest's folder or
    absolute) and optional ``label``, ``split``, ``fold``, ``start``, ``end`` (seconds)."""
    path = Path(path)
    rows = _read_table(path)
    if rows and "path" not in rows[0]:
        raise ValueError(f"{path}: manifest needs a 'path' column, has {sorted(rows[0])}")
    items = []
    for row in rows:
        rel = str(row["path"])
        full = Path(rel) if os.path.isabs(rel) else path.parent / rel
        start, end = _opt_float(row.get("start")), _opt_float(row.get("end"))
        source_id = rel if start is None and end is None else f"{rel}#{start}-{end}"
        items.append(SourceItem(str(full), source_id, label=_opt_str(row.get("label")),
                                split=_opt_str(row.get("split")) or NO_SPLIT,
                                fold=int(row["fold"]) if row.get("fold") not in (None, "") else -1,
                                start=start, end=end))
    return items


def from_kinetics(csv_path: str | Path, video_root: str | Path) -> list[SourceItem]:
    """Kinetics annotation CSV (youtube_id,time_start,time_end,label,split). A video is found as
    a trimmed file ``<id>_<start:06d>_<end:06d>.*`` (the usual downloaders' name; used whole) or
    as the full ``<id>.*`` download (then the annotated span is cut from it)."""
    root = Path(video_root)
    by_stem = {p.stem: p for p in _walk_files(root)}
    items = []
    for row in _read_table(Path(csv_path)):
        yid, t0, t1 = row["youtube_id"], float(row["time_start"]), float(row["time_end"])
        trimmed = f"{yid}_{int(t0):06d}_{int(t1):06d}"
        split = _opt_str(row.get("split")) or NO_SPLIT
        label = _opt_str(row.get("label"))
        if trimmed in by_stem:
            path = by_stem[trimmed]
            items.append(SourceItem(str(path), path.relative_to(root).as_posix(), label, split))
        else:  # full video (or missing: the builder reports it as unreadable)
            path = by_stem.get(yid, root / f"{yid}.mp4")
            items.append(SourceItem(str(path), f"{yid}#{t0}-{t1}", label, split, start=t0, end=t1))
    return sorted(items, key=lambda i: i.source_id)


def _find_dir(root: Path, name: str) -> Path:
    for candidate in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} not found under {root}")


def from_ucf101(root: str | Path, split: int = 1) -> list[SourceItem]:
    """UCF101: ``ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt`` and the videos as
    ``<Class>/v_*.avi`` under ``root`` or ``root/UCF-101``. Files in no list are skipped."""
    root = Path(root)
    lists = _find_dir(root, "ucfTrainTestlist")
    video_root = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    items = []
    for split_name, list_name in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        for line in (lists / list_name).read_text().split():
            if not line.endswith(".avi"):
                continue  # the class number column of trainlist
            rel = line.strip()
            items.append(SourceItem(str(video_root / rel), rel, rel.split("/")[0], split_name))
    return sorted(items, key=lambda i: i.source_id)


def from_hmdb51(root: str | Path, split: int = 1) -> list[SourceItem]:
    """HMDB51: ``testTrainMulti_7030_splits/<class>_test_split<N>.txt`` (1 = train, 2 = test,
    0 = unused, skipped) and the videos as ``<class>/<file>.avi``."""
    root = Path(root)
    lists = _find_dir(root, "testTrainMulti_7030_splits")
    items = []
    for list_file in sorted(lists.glob(f"*_test_split{split}.txt")):
        label = list_file.name[: -len(f"_test_split{split}.txt")]
        for line in list_file.read_text().splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[1] == "0":
                continue
            rel = f"{label}/{parts[0]}"
            items.append(SourceItem(str(root / rel), rel, label, "train" if parts[1] == "1" else "test"))
    return sorted(items, key=lambda i: i.source_id)


def from_esc50(root: str | Path, meta_csv: str | Path | None = None) -> list[SourceItem]:
    """ESC-50 (or ESC-10): ``meta/esc50.csv`` (filename,fold,target,category,...) and
    ``audio/<filename>``. Audio-only; the label is the category and the fold is kept (5-fold CV)."""
    root = Path(root)
    if meta_csv is None:
        candidates = [root / "meta" / "esc50.csv", *sorted(root.glob("*.csv"))]
        meta_csv = next((c for c in candidates if c.exists()), None)
        if meta_csv is None:
            raise FileNotFoundError(f"no meta/esc50.csv or *.csv under {root}")
    items = []
    for row in _read_table(Path(meta_csv)):
        rel = f"audio/{row['filename']}"
        items.append(SourceItem(str(root / rel), rel, row["category"], NO_SPLIT, int(row["fold"]), audio_only=True))
    return sorted(items, key=lambda i: i.source_id)


def from_dcase(root: str | Path) -> list[SourceItem]:
    """DCASE-style acoustic scenes: ``<scene>/<file>.wav`` folders; audio-only, label = scene."""
    return [SourceItem(i.path, i.source_id, i.label, i.split, i.fold, audio_only=True)
            for i in from_folder(root) if i.label is not None]


ADAPTERS = ("auto", "folder", "manifest", "kinetics", "ucf101", "hmdb51", "esc50", "dcase")


def load_sources(input_path: str | Path, adapter: str = "auto", *, video_root: str | Path | None = None,
                 split: int = 1) -> list[SourceItem]:
    """Dispatch to an adapter; ``auto`` picks one from the input's layout."""
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if adapter == "auto":
        adapter = _detect(path)
    if adapter == "folder":
        return from_folder(path)
    if adapter == "manifest":
        return from_manifest(path)
    if adapter == "kinetics":
        return from_kinetics(path, video_root or path.parent)
    if adapter == "ucf101":
        return from_ucf101(path, split)
    if adapter == "hmdb51":
        return from_hmdb51(path, split)
    if adapter == "esc50":
        return from_esc50(path)
    if adapter == "dcase":
        return from_dcase(path)
    raise ValueError(f"unknown adapter {adapter!r}; choose from {ADAPTERS}")


def _detect(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if "youtube_id" in header:
                return "kinetics"
        return "manifest"
    if (path / "ucfTrainTestlist").is_dir() or any(path.glob("*/ucfTrainTestlist")):
        return "ucf101"
    if (path / "testTrainMulti_7030_splits").is_dir() or any(path.glob("*/testTrainMulti_7030_splits")):
        return "hmdb51"
    if (path / "meta" / "esc50.csv").exists():
        return "esc50"
    return "folder"
