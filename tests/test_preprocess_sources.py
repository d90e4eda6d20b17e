"""Dataset adapters on miniature copies of each layout (real media files linked in)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crisscross.preprocess.build import build_shards
from crisscross.preprocess.sources import load_sources
from crisscross.shards.reader import read_dataset

GRID = ["bbaf2n.mpg", "brbk7n.mpg", "lbax4n.mpg", "lbbc2a.mpg"]


def _link(shared: Path, name: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(shared / "videos" / "grid_lipnet" / name, dst)


def test_folder_labels_come_from_class_folders_and_sidecars_are_skipped(shared_data, tmp_path):
    _link(shared_data, GRID[0], tmp_path / "speak" / "a.mpg")
    _link(shared_data, GRID[1], tmp_path / "talk" / "b.mpg")
    _link(shared_data, GRID[2], tmp_path / "loose.mpg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.mp4").write_text("x")
    items = load_sources(tmp_path)
    assert [(i.source_id, i.label) for i in items] == [("loose.mpg", None), ("speak/a.mpg", "speak"), ("talk/b.mpg", "talk")]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_formats_give_the_same_items(shared_data, tmp_path, kind):
    rows = [{"path": f"v/{n}", "label": f"c{i % 2}", "split": "train" if i < 3 else "test", "fold": i,
             "start": 0.5 if i == 0 else None, "end": 2.0 if i == 0 else None} for i, n in enumerate(GRID)]
    for n in GRID:
        _link(shared_data, n, tmp_path / "v" / n)
    path = tmp_path / f"m.{kind}"
    if kind == "csv":
        lines = ["path,label,split,fold,start,end"] + [
            f"{r['path']},{r['label']},{r['split']},{r['fold']},{r['start'] or ''},{r['end'] or ''}" for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    items = load_sources(path)
    assert [i.label for i in items] == ["c0", "c1", "c0", "c1"]
    assert [i.split for i in items] == ["train", "train", "train", "test"]
    assert [i.fold for i in items] == [0, 1, 2, 3]
    assert (items[0].start, items[0].end) == (0.5, 2.0) and items[1].start is None
    assert all(Path(i.path).exists() for i in items)


def test_kinetics_csv_finds_trimmed_and_full_downloads(shared_data, tmp_path):
    root = tmp_path / "k400"
    _link(shared_data, GRID[0], root / "train" / "talking" / "abcdefghijk_000010_000020.mp4")
    _link(shared_data, GRID[1], root / "full" / "zyxwvutsrqp.mp4")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("label,youtube_id,time_start,time_end,split\n"
                        "talking,abcdefghijk,10,20,train\n"
                        "talking,zyxwvutsrqp,1,2.5,train\n"
                        "singing,missing_vid,0,10,train\n")
    items = {i.source_id: i for i in load_sources(csv_path, video_root=root)}
    trimmed = items["train/talking/abcdefghijk_000010_000020.mp4"]
    assert trimmed.start is None and trimmed.label == "talking"
    full = items["zyxwvutsrqp#1.0-2.5"]
    assert (full.start, full.end) == (1.0, 2.5) and full.path.endswith("zyxwvutsrqp.mp4")
    assert not Path(items["missing_vid#0.0-10.0"].path).exists()  # becomes a 'missing' error row


def test_ucf101_and_hmdb51_official_splits(shared_data, tmp_path):
    ucf = tmp_path / "ucf"
    for cls, name in [("ApplyEyeMakeup", "v_ApplyEyeMakeup_g08_c01.avi"), ("Archery", "v_Archery_g01_c01.avi")]:
        _link(shared_data, GRID[0], ucf / "UCF-101" / cls / name)
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    items = load_sources(ucf)
    assert [(i.label, i.split) for i in items] == [("ApplyEyeMakeup", "train"), ("Archery", "test")]
    assert all(Path(i.path).exists() for i in items)

    hmdb = tmp_path / "hmdb"
    for name in ["a.avi", "b.avi", "c.avi"]:
        _link(shared_data, GRID[1], hmdb / "brush_hair" / name)
    splits = hmdb / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (splits / "brush_hair_test_split2.txt").write_text("a.avi 2 \nb.avi 1 \nc.avi 1 \n")
    assert [(i.source_id, i.split) for i in load_sources(hmdb)] == [("brush_hair/a.avi", "train"),
                                                                     ("brush_hair/b.avi", "test")]
    assert len(load_sources(hmdb, split=2)) == 3


def test_esc_layout_builds_audio_only_shards_with_folds(shared_data, tmp_path):
    root = tmp_path / "esc50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    lines = (shared_data / "esc10" / "esc10.csv").read_text().splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.split(",")[1] in ("1", "2")][::40]  # a few from folds 1, 2
    (root / "meta" / "esc50.csv").write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        name = row.split(",")[0]
        os.symlink(shared_data / "esc10" / "audio" / name, root / "audio" / name)
    out = tmp_path / "ds"
    build_shards(root, out, progress=False)  # auto-detected as ESC-50
    info = read_dataset(out)
    assert len(info.manifest) == len(rows) and not info.errors
    expected = {f"audio/{r.split(',')[0]}": (int(r.split(",")[1]), r.split(",")[3]) for r in rows}
    for row in info.manifest:
        assert row["modalities"] == "a" and row["audio_samples"] == 80000
        assert (row["fold"], row["label"]) == expected[row["source"]]
        assert row["label_index"] == info.dataset["labels"].index(row["label"])


def test_dcase_scene_folders_are_audio_only(shared_data, tmp_path):
    for scene, name in [("park", "1-100032-A-0.flac"), ("metro", "1-110389-A-0.flac")]:
        (tmp_path / scene).mkdir()
        os.symlink(shared_data / "esc10" / "audio" / name, tmp_path / scene / name)
    items = load_sources(tmp_path, "dcase")
    assert [(i.label, i.audio_only) for i in items] == [("metro", True), ("park", True)]
