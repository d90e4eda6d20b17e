"""``Dataset``: a shard dataset opened once — dataset.json, manifest.parquet, errors.parquet.

Every stage that reads a shard dataset takes its facts from here rather than from options: the
frame rate and audio rate the builder resampled to, the audio format, the shard files, the
labels, splits, folds and cross-validation groups of the samples. ``Dataset.open(dir)`` checks
``dataset.json``'s format version (shards/SPEC.md) and that the files parse, each problem one
line naming the file (``ShardError``, a ``UserError``).

A hand-made folder of ``*.tar`` shards without ``dataset.json`` opens too (``finished=False``
then): its rates are read from the first sample's index, and it has no manifest.

Groups: samples sharing a ``group`` (one source recording: an ESC-50 ``src_file``, a UCF101
``gNN`` group, an HMDB51 source video) stay on one side of every cross-validation split. The
builder writes the ``group`` column (preprocess/sources.py); a dataset built before it has none,
and then each source file is its own group (clips cut from one video still stay together) with
a warning that says to rebuild for the dataset's own grouping.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crisscross.errors import UserError
from crisscross.shards import format as fmt

DATASET_JSON = "dataset.json"
MANIFEST = "manifest.parquet"
ERRORS = "errors.parquet"
PLAN_FILE = "_plan.json"  # preprocess/plan.py: present while a build is unfinished
MODALITY_LETTERS = {"video": "v", "audio": "a"}


class ShardError(UserError, RuntimeError):
    """A shard dataset or one of its files cannot be read (missing, truncated, corrupt); the
    message names it. A UserError: the command line reports it in one line (exit code 2)."""


def _read_parquet(path: Path) -> list[dict[str, Any]] | None:
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise ShardError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: not valid JSON ({exc}); rerun `crisscross shards merge`") from None
    if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
        raise ShardError(f"{path}: not a dataset.json (no list of shards)")
    if info.get("format_version") != fmt.FORMAT_VERSION:
        raise ShardError(f"{path.parent}: shard format version {info.get('format_version')}, this version of "
                         f"crisscross reads {fmt.FORMAT_VERSION}: rebuild the shards")
    return info


def _rates_of_first_sample(tar: Path) -> tuple[float, int]:
    """(fps, sample rate) from the indexes of the first samples that have each (a hand-made dataset)."""
    import tarfile

    fps, rate = 0.0, 0
    try:
        with tarfile.open(tar, "r") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith("." + fmt.INDEX_EXT):
                    index = fmt.decode_index(archive.extractfile(member).read())
                    fps = fps or float(index[fmt.Index.FPS])
                    rate = rate or int(index[fmt.Index.SAMPLE_RATE])
                if fps and rate:
                    break
    except Exception as exc:  # noqa: BLE001 - tarfile / numpy errors of a damaged shard
        raise ShardError(f"shard {tar}: cannot read its first sample's index ({type(exc).__name__}: {exc})") from None
    return fps or float(fmt.DEFAULT_FPS), rate or fmt.DEFAULT_SAMPLE_RATE


@dataclass
class Dataset:
    """A shard dataset's facts. Build with :meth:`open`."""

    root: Path
    info: dict[str, Any] = field(default_factory=dict)  # dataset.json ({} for a hand-made folder)
    shards: tuple[Path, ...] = ()  # tar files, in shard order
    rows: list[dict[str, Any]] = field(default_factory=list)  # manifest rows ([] without a manifest)
    errors: list[dict[str, Any]] = field(default_factory=list)  # errors.parquet rows
    has_manifest: bool = False
    fps: float = float(fmt.DEFAULT_FPS)  # frames per second of every sample's video
    sample_rate: int = fmt.DEFAULT_SAMPLE_RATE  # Hz of every sample's audio (mono)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | Path, *, need_manifest: bool = False, finished: bool = False) -> Dataset:
        """Open ``root``; ``need_manifest``: refuse a dataset without manifest.parquet; ``finished``:
        refuse one without dataset.json (a hand-made folder of tars)."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"shard dataset {root} does not exist (build one with "
                                    f"`crisscross shards build INPUT --out {root}`)")
        meta = root / DATASET_JSON
        if not meta.exists():
            if (root / PLAN_FILE).exists():
                raise ShardError(f"{root} is an unfinished build (no dataset.json): rerun the same `crisscross shards "
                                 "build` command to complete it, or `crisscross shards merge` after a job array")
            if finished:
                raise FileNotFoundError(f"{meta} missing: not a finished dataset (run `crisscross shards merge`?)")
        info = _read_dataset_json(meta) if meta.exists() else {}
        shards = tuple(root / name for name in info["shards"]) if info else tuple(sorted(root.glob("*.tar")))
        rows = _read_parquet(root / MANIFEST)
        if rows is None and need_manifest:
            raise FileNotFoundError(f"{root / MANIFEST} missing: is {root} a shard dataset built by "
                                    "`crisscross shards build`?")
        dataset = cls(root, info, shards, rows or [], _read_parquet(root / ERRORS) or [], rows is not None)
        build = dataset.build
        if "fps" in build and "sample_rate" in build:
            dataset.fps, dataset.sample_rate = float(build["fps"]), int(build["sample_rate"])
        elif shards and shards[0].is_file():
            dataset.fps, dataset.sample_rate = _rates_of_first_sample(shards[0])
        return dataset

    # ------------------------------------------------------------------ dataset.json facts
    @property
    def build(self) -> dict[str, Any]:
        """The build parameters (dataset.json "build"; {} for a hand-made folder)."""
        return dict(self.info.get("build") or {})

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.root.name)

    @property
    def audio_format(self) -> str:
        """pcm or flac (``--audio-format`` of the build)."""
        return str(self.build.get("audio_format", "pcm"))

    @property
    def labels(self) -> list[str]:
        """Class names in label_index order (dataset.json "labels", else the manifest's)."""
        if self.info.get("labels"):
            return [str(x) for x in self.info["labels"]]
        return sorted({str(r.get("label")) for r in self.rows} - {"", "None"})

    def check_rates(self, *, fps: float | None = None, sample_rate: int | None = None, what: str = "") -> None:
        """A rate stated elsewhere (e.g. an encoder's training input) must be the shards' own."""
        for name, stated, actual in (("fps", fps, self.fps), ("sample_rate", sample_rate, self.sample_rate)):
            if stated is not None and float(stated) != float(actual):
                raise ValueError(f"{self.root} holds {name} {actual:g} but {what or 'the config'} states {stated:g}: "
                                 f"rebuild the shards at {stated:g} or drop the stated value")

    # ------------------------------------------------------------------ manifest facts
    def by_key(self) -> dict[str, dict[str, Any]]:
        return {str(r["key"]): r for r in self.rows}

    @property
    def keys(self) -> list[str]:
        return [str(r["key"]) for r in self.rows]

    def splits(self) -> dict[str, str]:
        return {str(r["key"]): str(r.get("split")) for r in self.rows}

    def folds(self) -> dict[str, int]:
        return {str(r["key"]): int(r.get("fold", -1) if r.get("fold") is not None else -1) for r in self.rows}

    @property
    def has_groups(self) -> bool:
        return bool(self.rows) and "group" in self.rows[0]

    def groups(self) -> dict[str, str]:
        """Cross-validation group per sample key (see the module doc for datasets without one)."""
        if not self.has_groups and self.rows:
            warnings.warn(f"{self.root}: the manifest has no 'group' column (built before it existed); each source "
                          "file is its own cross-validation group. Rebuild the shards to group ESC-50 takes of one "
                          "recording and UCF101/HMDB51 clips of one video", UserWarning, stacklevel=2)
        return {str(r["key"]): str(r.get("group") or r.get("source") or r["key"]) for r in self.rows}

    def modality_counts(self) -> Counter:
        return Counter(str(r.get("modalities") or "av") for r in self.rows)

    def count_with(self, needs: tuple[str, ...]) -> int:
        """Samples holding every modality in ``needs``."""
        return sum(all(MODALITY_LETTERS[m] in str(r.get("modalities") or "av") for m in needs) for r in self.rows)

    def describe(self) -> str:
        """e.g. "120 samples (av 100, audio-only 20); 10 labels; splits none; folds 1-5"."""
        names = {"av": "video+audio", "v": "video-only", "a": "audio-only"}
        mods = ", ".join(f"{names.get(k, k)} {n}" for k, n in sorted(self.modality_counts().items()))
        labels = {str(r.get("label") or "") for r in self.rows} - {"", "None"}
        splits = sorted({str(r.get("split")) for r in self.rows})
        folds = sorted(set(self.folds().values()) - {-1})
        text = f"{len(self.rows)} samples ({mods or 'none'}); {len(labels)} labels; splits {'/'.join(splits) or '-'}"
        return text + (f"; folds {folds}" if folds else "")
