"""Build a shard dataset: plan (plan.py), write each shard resumably, merge the dataset files.

Flow (every step deterministic given the inputs and the build parameters):

1. ``plan`` (plan.py): adapter items -> sample specs (one per item, or one per ``--clip-seconds`` clip,
   which needs each source's duration from a header probe) -> shuffled with ``seed`` ->
   consecutive groups of ``samples_per_shard``: shard j is task j. Saved as ``_plan.json``.
2. ``write_shard(j)``, run by an engine (engines.py: a process pool or Ray; ``shard_job`` is the
   build as a job of numbered tasks): decodes its samples (samples.py: per-source try/except and a
   time limit, optionally a child process per source (processes.py): a bad file becomes an error
   row, never a dead worker), writes ``{name}-{j:06d}.tar`` + ``.idx`` under
   temporary names, renames them, then writes ``_parts/{j:06d}.json`` (its manifest and error
   rows) last: that file marks the shard complete. A rerun skips complete shards and redoes the
   rest from scratch, so a SIGKILL at any moment followed by a rerun gives identical bytes.
3. ``merge``: the parts -> ``manifest.parquet``, ``errors.parquet``, ``dataset.json``.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from crisscross.preprocess import engines, media, samples
from crisscross.preprocess.plan import (  # noqa: F401 (re-exported)
    PLAN_FILE,
    REQUIRE_CHOICES,
    BuildConfig,
    BuildPlan,
    SampleSpec,
    load_or_make_plan,
    read_plan,
    write_json_atomic,
)
from crisscross.shards import format as fmt
from crisscross.shards.atomic import atomic_open, temp_prefix
from crisscross.shards.writer import ShardWriter, idx_path_for, sample_digest

PARTS_DIR = "_parts"


@dataclass
class BuildStats:
    out_dir: Path
    samples: int = 0
    errors: int = 0
    sources: int = 0  # inputs of the plan (set by merge: the whole build)
    shards: int = 0
    shards_skipped: int = 0  # already complete (resume)
    seconds: float = 0.0  # total sample duration
    bytes: int = 0
    wall_s: float = 0.0
    error_reasons: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        rate = self.samples / self.wall_s if self.wall_s else float("nan")
        per_sec = self.bytes / self.seconds if self.seconds else float("nan")
        return (f"{self.samples} samples ({self.modalities}) in {self.shards} shards "
                f"({self.shards_skipped} already complete), {self.errors} errors {self.error_reasons}; "
                f"{self.seconds:.1f} s of media, {self.bytes / 1e6:.1f} MB ({per_sec / 1e3:.1f} kB per clip-second); "
                f"{self.wall_s:.1f} s wall, {rate:.2f} clips/s -> {self.out_dir}")


# ---------------------------------------------------------------- one shard

def part_path(out_dir: Path, shard: int) -> Path:
    return out_dir / PARTS_DIR / f"{shard:06d}.json"


def shard_is_complete(out_dir: Path, shard: int) -> bool:
    part = part_path(out_dir, shard)
    if not part.exists():
        return False
    tar_name = json.loads(part.read_text())["tar"]
    return tar_name is None or ((out_dir / tar_name).exists() and idx_path_for(out_dir / tar_name).exists())


def remove_leftovers(out_dir: Path, name: str, shard: int) -> None:
    """A killed run may have left this shard half-written; only this shard's task writes these."""
    tar_path = out_dir / fmt.shard_name(name, shard)
    idx = idx_path_for(tar_path)
    part = part_path(out_dir, shard)
    stale = [tar_path, idx, *out_dir.glob(temp_prefix(tar_path) + "*"), *out_dir.glob(temp_prefix(idx) + "*"),
             *part.parent.glob(temp_prefix(part) + "*")]
    for path in stale:
        path.unlink(missing_ok=True)


def _remove_temp_files(out_dir: Path) -> None:
    """At merge every task is done: any temp file left is from a killed process."""
    for path in [*out_dir.glob(".*.tmp-*"), *(out_dir / PARTS_DIR).glob(".*.tmp-*")]:
        path.unlink(missing_ok=True)


def write_shard(out_dir: Path, plan: BuildPlan, shard: int, progress=None, isolate: bool = False) -> dict:
    """Build shard ``shard`` of ``plan`` from scratch (idempotent: same bytes every time): the task
    the engines run. ``isolate``: decode each source in its own child process
    (samples.decode_group_isolated).
    """
    cfg = plan.config
    specs = plan.specs(shard)
    label_index = plan.label_index()
    tar_path = out_dir / fmt.shard_name(cfg.name, shard)
    remove_leftovers(out_dir, cfg.name, shard)
    by_source: dict[str, list[SampleSpec]] = {}
    for spec in specs:
        by_source.setdefault(spec.item.source_id, []).append(spec)
    remaining = Counter(spec.item.source_id for spec in specs)
    decoded: dict[str, tuple | media.MediaError] = {}  # freed once a source's last clip is written
    writer = ShardWriter(tar_path)
    rows, errors = [], []
    try:
        for spec in specs:
            sid = spec.item.source_id
            if sid not in decoded:
                decode = samples.decode_group_isolated if isolate else samples.decode_group
                decoded[sid] = decode(spec.item, by_source[sid], cfg)
            result = decoded[sid]
            problem = result if isinstance(result, media.MediaError) else None
            if problem is None:
                info, clips = result
                clip = clips[by_source[sid].index(spec)]
                problem = samples.check_policy(spec, clip, info, cfg)
            if problem is not None:
                errors.append(samples.error_row(spec, problem))
            else:
                comps, row = samples.components(spec, clip, info, cfg, label_index.get(spec.item.label, -1))
                row["bytes"] = writer.add(spec.key, comps)
                row["sha256"] = sample_digest(comps)
                row["shard"] = tar_path.name
                rows.append(row)
            remaining[sid] -= 1
            if remaining[sid] == 0:
                del decoded[sid]
            if progress is not None:
                progress(1)
        if rows:
            tar_bytes = writer.finish()
        else:
            tar_bytes = None
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    part = {"shard": shard, "tar": tar_path.name if rows else None, "tar_bytes": tar_bytes,
            "samples": rows, "errors": errors}
    (out_dir / PARTS_DIR).mkdir(exist_ok=True)
    write_json_atomic(part_path(out_dir, shard), part)  # last: marks the shard complete
    return part


def remove_unfinished(out_dir: Path, plan: BuildPlan, shards: list[int]) -> None:
    """What killed tasks left of their shards (temporaries, a tar renamed before its part file):
    nothing a rerun would take for whole remains; complete shards are kept."""
    for j in shards:
        if not shard_is_complete(out_dir, j):
            remove_leftovers(out_dir, plan.config.name, j)


def shard_job(out_dir: Path, plan: BuildPlan) -> engines.Job:
    """The build as the engines see it: task j writes shard j; its size is its sample count."""
    return engines.Job(task=functools.partial(write_shard, out_dir, plan),
                       sizes=[plan.shard_size(j) for j in range(plan.num_shards)],
                       tidy=functools.partial(remove_unfinished, out_dir, plan))


# ---------------------------------------------------------------- merge

def _library_versions() -> dict:
    import av

    import crisscross

    return {"crisscross": crisscross.__version__, "python": sys.version.split()[0], "av": av.__version__,
            "ffmpeg": str(getattr(av, "ffmpeg_version_info", "")), "numpy": np.__version__}


def merge(out_dir: str | Path) -> BuildStats:
    """Write manifest.parquet, errors.parquet and dataset.json from the completed shards."""
    import pyarrow as pa

    from crisscross.errors import UserError

    out_dir = Path(out_dir)
    if not (out_dir / PLAN_FILE).is_file():
        raise UserError(f"{out_dir} holds no shard build ({PLAN_FILE} missing)")
    plan = read_plan(out_dir)
    cfg = plan.config
    missing = [j for j in range(plan.num_shards) if not shard_is_complete(out_dir, j)]
    if missing:
        raise UserError(f"{len(missing)} shard(s) not complete yet (e.g. {missing[:5]}); run the missing tasks first")
    _remove_temp_files(out_dir)
    parts = [json.loads(part_path(out_dir, j).read_text()) for j in range(plan.num_shards)]
    rows = [row for p in parts for row in p["samples"]]
    errors = [e for p in parts for e in p["errors"]]
    _write_parquet(out_dir / "manifest.parquet", rows, _MANIFEST_SCHEMA(pa))
    _write_parquet(out_dir / "errors.parquet", errors, _ERRORS_SCHEMA(pa))
    stats = _stats_of(out_dir, parts)
    dataset = {
        "format_version": fmt.FORMAT_VERSION, "name": cfg.name, "input": plan.input,
        "build": asdict(cfg), "labels": plan.labels,
        "shards": [p["tar"] for p in parts if p["tar"] is not None],
        "counts": {"sources": plan.sources, "samples": stats.samples, "errors": stats.errors,
                   "shards": stats.shards, "seconds": round(stats.seconds, 6), "sample_bytes": stats.bytes,
                   "shard_bytes": int(sum(p["tar_bytes"] or 0 for p in parts)),
                   "modalities": stats.modalities, "error_reasons": stats.error_reasons,
                   "by_split": dict(sorted(Counter(r["split"] for r in rows).items()))},
        "versions": _library_versions(),
    }
    write_json_atomic(out_dir / "dataset.json", dataset)
    stats.sources = int(plan.sources)
    return stats


def _stats_of(out_dir: Path, parts: list[dict]) -> BuildStats:
    rows = [row for p in parts for row in p["samples"]]
    errors = [e for p in parts for e in p["errors"]]
    return BuildStats(out_dir=out_dir, samples=len(rows), errors=len(errors),
                      shards=sum(p["tar"] is not None for p in parts),
                      seconds=float(sum(r["duration"] for r in rows)), bytes=int(sum(r["bytes"] for r in rows)),
                      error_reasons=dict(sorted(Counter(e["reason"] for e in errors).items())),
                      modalities=dict(sorted(Counter(r["modalities"] for r in rows).items())))


def _MANIFEST_SCHEMA(pa):  # noqa: N802 - a schema constant built lazily (pyarrow import)
    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("label", pa.string()),
                      ("label_index", pa.int64()), ("split", pa.string()), ("fold", pa.int64()),
                      ("modalities", pa.string()), ("duration", pa.float64()), ("frames", pa.int64()),
                      ("audio_samples", pa.int64()), ("bytes", pa.int64()), ("source", pa.string()),
                      ("group", pa.string()), ("clip_index", pa.int64()), ("t0", pa.float64()), ("sha256", pa.string())])


def _ERRORS_SCHEMA(pa):  # noqa: N802
    return pa.schema([("source", pa.string()), ("path", pa.string()), ("key", pa.string()),
                      ("clip_index", pa.int64()), ("reason", pa.string()), ("detail", pa.string())])


def _write_parquet(path: Path, rows: list[dict], schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_open(path) as handle:
        pq.write_table(table, handle)

# ---------------------------------------------------------------- entry point

def build_shards(input: str | Path, out_dir: str | Path, *, preset: str | Path | None = "default",
                 overrides: Sequence[str] = (), num_tasks: int = 1, task_index: int = 0, progress: bool = True,
                 **options) -> BuildStats:
    """Build (or resume) a shard dataset from ``input`` into ``out_dir``; see the module doc.

    The build options (``preprocess.presets.BuildPreset``: BuildConfig fields + engine) resolve as
    ``crisscross shards build`` resolves them: the ``preset`` (a name or YAML path; ``None``: the
    built-in defaults), then ``options`` given as keyword arguments (``fps=25``), then ``key=value``
    ``overrides``; a typo, a bad type or value is refused before any source is opened.
    ``engine``: ``local`` (process pool of ``workers``), ``ray`` (``address`` of a cluster, or a
    local instance). With ``num_tasks > 1`` only shards ``j % num_tasks == task_index`` are built
    and the dataset files are left to ``merge(out_dir)``.
    """
    from crisscross.preprocess.presets import resolve_preset

    t_start = time.monotonic()
    out_dir = Path(out_dir)
    if options.get("name") is None:
        options.pop("name", None)
    resolved = resolve_preset(preset, overrides, options)
    cfg = resolved.build_config()
    engine_options = resolved.engine_options()
    plan = load_or_make_plan(input, out_dir, cfg)
    if len(plan.labels) == 1:
        print(f"crisscross shards build: warning: every source has the same label {plan.labels[0]!r}; "
              "is --format right for this input?", file=sys.stderr)
    mine = [j for j in range(plan.num_shards) if j % num_tasks == task_index]
    todo = [j for j in mine if not shard_is_complete(out_dir, j)]
    engines.run_tasks(shard_job(out_dir, plan), todo, progress=progress, **engine_options)
    if num_tasks > 1:  # a job-array task: its own shards' figures; `merge` writes the dataset files
        stats = _stats_of(out_dir, [json.loads(part_path(out_dir, j).read_text()) for j in mine])
    else:
        stats = merge(out_dir)
    stats.shards_skipped = len(mine) - len(todo)
    stats.wall_s = time.monotonic() - t_start
    return stats
