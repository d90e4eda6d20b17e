"""Result rows, ``results.json`` / ``results.md`` writing, and the paper-layout report.

Every number an evaluator produces is one row::

    {task, dataset, split, protocol, modality, input, metric, value, checkpoint_sha, pretrain, config, extra}

``split`` names the fold / split the number was measured on ("fold3", "split1", "test") or
"mean" for the average the paper reports. ``protocol`` says how it was obtained; a protocol ending
in ``(comparison only)`` was selected on the test set and is never used by the paper tables.

``collect_report`` reads many ``results.json`` files and lays the honest numbers out like the
CrissCross main paper: Table 4 (linear evaluation, columns = pretraining dataset), Table 6
(full finetuning), Table 7 (retrieval), Table 8 (sound classification).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

RESULTS_FORMAT = "crisscross-results/1"
COMPARISON_ONLY = "(comparison only)"

# Display names of the datasets in the paper tables.
PAPER_NAMES = {
    "hmdb51": "HMDB51",
    "ucf101": "UCF101",
    "kinetics400": "Kinetics400",
    "esc50": "ESC50",
    "dcase": "DCASE",
}


# Dataset layouts (dataset.json build.adapter) whose results belong in the paper tables, and the
# dataset each one is, told apart by its number of classes where one layout serves two datasets.
_LAYOUT_DATASETS = {
    "hmdb51": {None: "hmdb51"},
    "ucf101": {None: "ucf101"},
    "dcase": {None: "dcase"},
    "esc50": {50: "esc50", 10: "esc10", None: "esc50-subset"},
    "esc10": {None: "esc10"},
    "kinetics": {400: "kinetics400", None: "kinetics"},
}


def dataset_from_shards(data_dir: Path) -> str:
    """The dataset a shard folder holds, for result rows and the paper tables: the layout it was
    built from (dataset.json build.adapter; ESC-10 and ESC-50 share a layout and are told apart by
    their 10 or 50 classes), else dataset.json's name, else the folder's name. Never a preset's
    guess: an ESC-10 result must not land in the ESC50 row."""
    info = Path(data_dir) / "dataset.json"
    if info.exists():
        dataset = json.loads(info.read_text(encoding="utf-8"))
        adapter = str((dataset.get("build") or {}).get("adapter") or "")
        by_classes = _LAYOUT_DATASETS.get(adapter)
        if by_classes:
            classes = len(dataset.get("labels") or [])
            return by_classes.get(classes, by_classes[None])
        if dataset.get("name"):
            return str(dataset["name"])
    return Path(data_dir).resolve().name


@dataclass
class ResultRow:
    task: str  # linear | retrieval | finetune | fusion
    dataset: str
    split: str
    protocol: str
    metric: str  # top1 | R@k
    value: float  # a fraction in [0, 1]
    checkpoint_sha: str
    modality: str = ""  # video | audio | audio+video | video->audio ...
    input: str = ""  # e.g. "8x112^2", "audio 2.0s"
    pretrain: str = ""  # what the checkpoint was pretrained on (table column); "random" for none
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def comparison_only(self) -> bool:
        return self.protocol.endswith(COMPARISON_ONLY)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: a reader never sees half a file."""
    from crisscross.shards.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def write_results(out_dir: Path, rows: list[ResultRow], *, timing: dict[str, float], run: dict[str, Any]) -> Path:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns the json path."""
    out_dir = Path(out_dir)
    payload = {
        "format": RESULTS_FORMAT,
        "run": run,
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
        "rows": [asdict(r) for r in rows],
    }
    json_path = out_dir / "results.json"
    atomic_write_text(json_path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out_dir / "results.md", markdown_table(rows) + "\n")
    return json_path


def read_results(path: Path) -> list[ResultRow]:
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    if payload.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not a {RESULTS_FORMAT} file (format={payload.get('format')!r})")
    return [ResultRow(**row) for row in payload["rows"]]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def markdown_table(rows: Iterable[ResultRow]) -> str:
    header = "| task | dataset | split | modality | input | protocol | metric | value (%) | pretrain | checkpoint |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.dataset} | {r.split} | {r.modality} | {r.input} | {r.protocol} | "
            f"{r.metric} | {_pct(r.value)} | {r.pretrain} | {r.checkpoint_sha[:12]} |"
        )
    return "\n".join(lines)


def find_results(paths: Iterable[Path]) -> list[Path]:
    """``results.json`` files given directly or found (recursively) under the given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("results.json")))
        else:
            raise FileNotFoundError(f"no such results file or folder: {p}")
    return found


def _headline(rows: list[ResultRow]) -> list[ResultRow]:
    """Honest rows for the paper tables, one per (task, dataset, modality, input, metric, pretrain):
    the evaluator's "mean" row where there is one; else, when several runs measured different
    splits (UCF101/HMDB51 split1..3, one shard dataset each), their average, as the paper
    reports; else the single row."""
    groups: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        if not r.comparison_only:
            groups.setdefault((r.task, r.dataset, r.modality, r.input, r.metric, r.pretrain), []).append(r)
    chosen: list[ResultRow] = []
    for group in groups.values():
        mean = next((r for r in group if r.split == "mean"), None)
        by_split = {r.split: r for r in group}  # a split measured twice: the later file wins
        if mean is not None or len(by_split) == 1:
            chosen.append(mean or group[-1])
            continue
        splits = sorted(by_split)
        first = by_split[splits[0]]
        chosen.append(replace(first, split="mean", value=sum(r.value for r in by_split.values()) / len(splits),
                              extra={"over": splits, "averaged_by": "eval report"}))
    return chosen


def _grid(title: str, row_names: list[str], col_names: list[str], cell) -> str:
    lines = [f"**{title}**", "", "| | " + " | ".join(col_names) + " |", "|---" * (len(col_names) + 1) + "|"]
    for name in row_names:
        lines.append(f"| {name} | " + " | ".join(cell(name, c) for c in col_names) + " |")
    return "\n".join(lines)


def _lookup(rows: list[ResultRow], **want) -> ResultRow | None:
    for r in rows:
        if all(getattr(r, k) == v for k, v in want.items()):
            return r
    return None


def collect_report(rows: list[ResultRow]) -> str:
    """Markdown in the layout of main-paper Tables 4, 6, 7, 8 (plus every other honest row)."""
    head = _headline(rows)
    pretrains = sorted({r.pretrain for r in head}) or ["-"]
    sections: list[str] = []

    def linear_cell(dataset: str):
        return lambda _n, col: _pct(getattr(_lookup(head, task="linear", dataset=dataset, metric="top1", pretrain=col), "value", None))

    table4 = ["hmdb51", "ucf101", "kinetics400", "esc50", "dcase"]
    sections.append(_grid(
        "Table 4: top-1 accuracy (%) of linear evaluation (columns: pretraining data)",
        [PAPER_NAMES[d] for d in table4], pretrains,
        lambda name, col: linear_cell(next(d for d in table4 if PAPER_NAMES[d] == name))(name, col),
    ))

    ft_inputs = sorted({(r.pretrain, r.input) for r in head if r.task == "finetune"})
    sections.append(_grid(
        "Table 6: top-1 accuracy (%) of full finetuning (last epoch)",
        [f"{p} ({inp})" for p, inp in ft_inputs] or ["-"], ["UCF101", "HMDB51"],
        lambda name, col: _pct(getattr(next((r for r in head if r.task == "finetune" and f"{r.pretrain} ({r.input})" == name
                                             and r.dataset == col.lower() and r.metric == "top1"), None), "value", None)),
    ))

    cols7 = [f"{ds} R@{k}" for ds in ("UCF101", "HMDB51") for k in (1, 5, 20)]
    sections.append(_grid(
        "Table 7: video retrieval recall (%) (test queries the training split)",
        pretrains, cols7,
        lambda p, col: _pct(getattr(_lookup(head, task="retrieval", modality="video->video", pretrain=p,
                                             dataset=col.split()[0].lower(), metric=col.split()[1]), "value", None)),
    ))

    sections.append(_grid(
        "Table 8: sound classification top-1 accuracy (%) (linear)",
        ["ESC50", "DCASE"], pretrains,
        lambda name, col: _pct(getattr(_lookup(head, task="linear", dataset=name.lower(), modality="audio",
                                               metric="top1", pretrain=col), "value", None)),
    ))

    paper = set(table4) | {"ucf101", "hmdb51"}
    others = [r for r in head if r.dataset not in paper]
    if others:
        sections.append("**Other results (datasets outside the paper tables)**\n\n" + markdown_table(others))
    hidden = [r for r in rows if r.comparison_only]
    if hidden:
        sections.append(
            "**Selected on the test set, for comparison with the paper's protocol only**\n\n" + markdown_table(hidden)
        )
    return "\n\n".join(sections) + "\n"
