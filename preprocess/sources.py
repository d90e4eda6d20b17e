"""Dataset adapters: turn a folder, a manifest or a known dataset layout into source items.

Every adapter returns ``list[SourceItem]`` in a deterministic order (sorted), so planning is
reproducible. Adapters never open media files: a missing or broken file becomes an
``errors.parquet`` row when the builder reaches it, not an exception here. A row that is wrong
in itself (a span that is not a finite, ordered pair of times; a file name that is not UTF-8)
becomes an item marked ``invalid_reason``, which the builder records as an error row without
opening anything. A manifest that cannot be read at all is a ``ValueError`` naming the file.

Paths are made absolute here (against the manifest's folder or the input folder, never the
working directory), so a plan, and every job-array task using it, does not depend on where the
command runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
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
    invalid_reason: str = ""  # set: the row itself is bad; it becomes an error row, nothing is opened
    invalid_detail: str = ""
    # samples sharing a group (one source recording) stay on one side of evaluation CV splits;
    # "" = the source itself (manifest column ``group``; ESC-50 src_file; UCF101 gNN; HMDB51 video)
    group: str = ""


# a span on a source timeline longer than this is taken as a broken manifest, not a video (a week)
MAX_SPAN_SECONDS = 7 * 24 * 3600.0


def _abs(path: str | Path) -> Path:
    """Absolute without resolving symlinks (a linked file keeps its own name and label)."""
    return Path(os.path.abspath(path))


def bad_name(text: str) -> str | None:
    """None for a name that is valid UTF-8; else the name with its undecodable bytes shown as \\xNN."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def check_span(start: float | None, end: float | None) -> str | None:
    """Why ``[start, end)`` (seconds; None = open) cannot be a span, or None when it can."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            return f"{name}={value} is not a finite number"
        if value is not None and not 0 <= value <= MAX_SPAN_SECONDS:
            return f"{name}={value} is outside [0, {MAX_SPAN_SECONDS:.0f}] s"
    if start is not None and end is not None and end <= start:
        return f"end={end} is not after start={start}"
    return None


def invalid_item(item: SourceItem, reason: str, detail: str) -> SourceItem:
    """The item as an error row to be: times dropped (NaN/inf must not reach a JSON file)."""
    return SourceItem(item.path, item.source_id, item.label, item.split, item.fold, None, None, item.audio_only,
                      reason, detail, item.group)


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
    root = _abs(root)
    items = []
    for path in _walk_files(root):
        rel = path.relative_to(root)
        label = rel.parts[0] if len(rel.parts) > 1 else None
        shown = bad_name(str(path))
        if shown is not None:  # cannot be written to JSON/parquet as is: an error row under a readable name
            item = SourceItem(shown, bad_name(rel.as_posix()) or rel.as_posix(), label=bad_name(label or "") or label)
            items.append(invalid_item(item, "bad_filename", f"file name is not UTF-8: {shown}"))
            continue
        items.append(SourceItem(str(path), rel.as_posix(), label=label))
    return items


def _read_table(path: Path) -> list[dict]:
    """Rows of a CSV/TSV/JSONL/Parquet table; anything unreadable is one ValueError naming the file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise ValueError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    if suffix in {".jsonl", ".ndjson"}:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: line {number} is not a JSON object")
                rows.append(row)
        return rows
    try:
        return list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    except csv.Error as exc:
        raise ValueError(f"{path}: malformed CSV ({exc})") from None


def _opt_float(value) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # reported by check_span as not a finite number


def _fold(value, where: str) -> int:
    if value in (None, ""):
        return -1
    try:
        fold = float(value)
        if fold.is_integer():
            return int(fold)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{where}: fold must be an integer, got {value!r}")


def _opt_str(value) -> str | None:
    return None if value in (None, "") else str(value)


def from_manifest(path: str | Path) -> list[SourceItem]:
    """CSV / TSV / JSONL / Parquet with column ``path`` (relative to the manifest's folder or
    absolute) and optional ``label``, ``split``, ``fold``, ``start``, ``end`` (seconds), ``group``
    (samples of one group stay on one side of evaluation CV splits)."""
    path = _abs(path)
    rows = _read_table(path)
    if rows and "path" not in rows[0]:
        raise ValueError(f"{path}: manifest needs a 'path' column, has {sorted(rows[0])}")
    items = []
    for number, row in enumerate(rows, 1):
        rel = str(row.get("path") or "")
        if not rel:
            raise ValueError(f"{path}: row {number} has no path")
        full = _abs(rel if os.path.isabs(rel) else path.parent / rel)  # never the working directory
        start, end = _opt_float(row.get("start")), _opt_float(row.get("end"))
        source_id = rel if start is None and end is None else f"{rel}#{start}-{end}"
        item = SourceItem(str(full), source_id, label=_opt_str(row.get("label")),
                          split=_opt_str(row.get("split")) or NO_SPLIT,
                          fold=_fold(row.get("fold"), f"{path}: row {number}"), start=start, end=end,
                          group=_opt_str(row.get("group")) or "")
        problem = check_span(start, end)
        items.append(item if problem is None else invalid_item(item, "bad_span", problem))
    return items


def from_kinetics(csv_path: str | Path, video_root: str | Path) -> list[SourceItem]:
    """Kinetics annotation CSV (youtube_id,time_start,time_end,label,split). A video is found as
    a trimmed file ``<id>_<start:06d>_<end:06d>.*`` (the usual downloaders' name; used whole) or
    as the full ``<id>.*`` download (then the annotated span is cut from it)."""
    root = _abs(video_root)
    by_stem = {p.stem: p for p in _walk_files(root)}
    items = []
    rows = _read_table(_abs(csv_path))
    missing = {"youtube_id", "time_start", "time_end"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{csv_path}: a Kinetics CSV needs youtube_id, time_start, time_end; missing {sorted(missing)}")
    for row in rows:
        yid, t0, t1 = row["youtube_id"], _opt_float(row["time_start"]), _opt_float(row["time_end"])
        split = _opt_str(row.get("split")) or NO_SPLIT
        label = _opt_str(row.get("label"))
        problem = check_span(t0, t1) if t0 is not None and t1 is not None else "time_start/time_end missing"
        if problem is not None:
            items.append(invalid_item(SourceItem(str(root / f"{yid}.mp4"), f"{yid}#{t0}-{t1}", label, split),
                                  "bad_span", problem))
            continue
        trimmed = f"{yid}_{int(t0):06d}_{int(t1):06d}"
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
    root = _abs(root)
    lists = _find_dir(root, "ucfTrainTestlist")
    video_root = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    items = []
    for split_name, list_name in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        for line in (lists / list_name).read_text().split():
            if not line.endswith(".avi"):
                continue  # the class number column of trainlist
            rel = line.strip()
            items.append(SourceItem(str(video_root / rel), rel, rel.split("/")[0], split_name, group=ucf101_group(rel)))
    return sorted(items, key=lambda i: i.source_id)


def from_hmdb51(root: str | Path, split: int = 1) -> list[SourceItem]:
    """HMDB51: ``testTrainMulti_7030_splits/<class>_test_split<N>.txt`` (1 = train, 2 = test,
    0 = unused, skipped) and the videos as ``<class>/<file>.avi``."""
    root = _abs(root)
    lists = _find_dir(root, "testTrainMulti_7030_splits")
    items = []
    for list_file in sorted(lists.glob(f"*_test_split{split}.txt")):
        label = list_file.name[: -len(f"_test_split{split}.txt")]
        for line in list_file.read_text().splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[1] == "0":
                continue
            rel = f"{label}/{parts[0]}"
            items.append(SourceItem(str(root / rel), rel, label, "train" if parts[1] == "1" else "test",
                                    group=hmdb51_group(rel)))
    return sorted(items, key=lambda i: i.source_id)


ESC_META = ("meta/esc50.csv", "meta/esc10.csv", "esc50.csv", "esc10.csv")


def from_esc50(root: str | Path, meta_csv: str | Path | None = None) -> list[SourceItem]:
    """ESC-50 or ESC-10: a meta CSV (``meta/esc50.csv``, or ``esc10.csv`` next to ``audio/``;
    columns filename,fold,target,category,...) and ``audio/<filename>``. Audio-only; the label is
    the category and the fold is kept (5-fold CV)."""
    root = _abs(root)
    if meta_csv is None:
        candidates = [*(root / name for name in ESC_META), *sorted(root.glob("*.csv"))]
        meta_csv = next((c for c in candidates if c.exists()), None)
        if meta_csv is None:
            raise FileNotFoundError(f"no meta/esc50.csv, esc10.csv or *.csv under {root}")
    meta_csv = _abs(meta_csv)
    rows = _read_table(meta_csv)
    missing = {"filename", "fold", "category"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{meta_csv}: an ESC meta file needs columns filename, fold, category; missing {sorted(missing)}")
    items = []
    for number, row in enumerate(rows, 1):
        rel = f"audio/{row['filename']}"
        items.append(SourceItem(str(root / rel), rel, row["category"], NO_SPLIT,
                                _fold(row["fold"], f"{meta_csv}: row {number}"), audio_only=True,
                                group=esc50_group(row["filename"], row.get("src_file"))))
    return sorted(items, key=lambda i: i.source_id)


# ESC-50 file names are {fold}-{src_file}-{take}-{target}: the takes of one recording share src_file
_ESC50_NAME = re.compile(r"^\d+-(?P<src>[0-9A-Za-z]+)-[A-Za-z]+-\d+\.[A-Za-z0-9]+$")
# UCF101 names are v_{Class}_g{group}_c{clip}: the clips of one group come from one long video
_UCF101_NAME = re.compile(r"^v_(?P<cls>[A-Za-z]+)_g(?P<grp>\d+)_c\d+\.[A-Za-z0-9]+$")
# HMDB51 names are {video title}_{action}_{tags}_{clip number}: the clips of one video share the rest
_HMDB51_CLIP = re.compile(r"_\d+$")


def esc50_group(filename: str, src_file: str | None = None) -> str:
    """The recording an ESC-50 clip was cut from (the meta CSV's src_file, else the file name's)."""
    if src_file:
        return f"esc50:{src_file}"
    m = _ESC50_NAME.match(filename.rsplit("/", 1)[-1])
    return f"esc50:{m['src']}" if m else ""


def ucf101_group(rel: str) -> str:
    """UCF101's group (clips of one long video): ``ucf101:{Class}_g{NN}``."""
    m = _UCF101_NAME.match(rel.rsplit("/", 1)[-1])
    return f"ucf101:{m['cls']}_g{m['grp']}" if m else ""


def hmdb51_group(rel: str) -> str:
    """The HMDB51 source video of a clip: its name without the trailing clip number."""
    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"hmdb51:{_HMDB51_CLIP.sub('', stem)}"


def from_dcase(root: str | Path) -> list[SourceItem]:
    """DCASE-style acoustic scenes: ``<scene>/<file>.wav`` folders; audio-only, label = scene."""
    return [SourceItem(i.path, i.source_id, i.label, i.split, i.fold, audio_only=True)
            for i in from_folder(root) if i.label is not None]


ADAPTERS = ("auto", "folder", "manifest", "kinetics", "ucf101", "hmdb51", "esc50", "dcase")


def load_sources(input_path: str | Path, adapter: str = "auto", *, video_root: str | Path | None = None,
                 split: int = 1) -> list[SourceItem]:
    """Dispatch to an adapter; ``auto`` picks one from the input's layout."""
    path = _abs(input_path)
    if not path.exists():
        raise FileNotFoundError(f"input {input_path} does not exist")
    if adapter == "auto":
        adapter = _detect(path)
    if adapter == "folder":
        return from_folder(path)
    if adapter == "manifest":
        return from_manifest(path)
    if adapter == "kinetics":
        return from_kinetics(path, _abs(video_root) if video_root else path.parent)
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
            with open(path, newline="", encoding="utf-8", errors="replace") as f:  # _read_table reports bad bytes
                header = next(csv.reader(f), [])
            if "youtube_id" in header:
                return "kinetics"
        return "manifest"
    if (path / "ucfTrainTestlist").is_dir() or any(path.glob("*/ucfTrainTestlist")):
        return "ucf101"
    if (path / "testTrainMulti_7030_splits").is_dir() or any(path.glob("*/testTrainMulti_7030_splits")):
        return "hmdb51"
    if (path / "audio").is_dir() and any((path / name).is_file() for name in ESC_META):
        return "esc50"  # ESC-50 (meta/esc50.csv) and ESC-10 (esc10.csv next to audio/)
    return "folder"
