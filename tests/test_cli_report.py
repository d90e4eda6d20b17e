"""``eval report`` names a result by the dataset its shards hold: an ESC-10 build is "esc10" and
never fills the paper's ESC50 row, whatever preset evaluated it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crisscross.evaluate.config import load_config, preset_names
from crisscross.evaluate.report import ResultRow, collect_report, dataset_from_shards


def _dataset(root: Path, name: str, adapter: str | None, classes: int) -> Path:
    root.mkdir(parents=True)
    build = {"adapter": adapter} if adapter else {}
    info = {"name": name, "build": build, "labels": [f"c{i}" for i in range(classes)]}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


@pytest.mark.parametrize("adapter, classes, expected", [
    ("esc50", 10, "esc10"), ("esc50", 50, "esc50"), ("esc50", 20, "esc50-subset"), ("esc10", 10, "esc10"),
    ("ucf101", 101, "ucf101"), ("hmdb51", 51, "hmdb51"), ("kinetics", 400, "kinetics400"),
    ("kinetics", 32, "kinetics"), ("dcase", 10, "dcase"), ("folder", 4, "mydata"), (None, 4, "mydata"),
])
def test_dataset_from_shards(tmp_path, adapter, classes, expected):
    assert dataset_from_shards(_dataset(tmp_path / "d", "mydata", adapter, classes)) == expected


def test_dataset_falls_back_to_the_folder_name(tmp_path):
    (tmp_path / "shards_x").mkdir()
    assert dataset_from_shards(tmp_path / "shards_x") == "shards_x"


def test_no_preset_hard_codes_the_dataset():
    for name in preset_names():
        assert load_config(name).dataset == "", name


def test_an_esc10_result_is_not_reported_as_esc50():
    row = ResultRow(task="linear", dataset="esc10", split="mean", protocol="svm", metric="top1", value=0.8,
                    checkpoint_sha="abc", modality="audio", input="audio 2s", pretrain="ks")
    text = collect_report([row])
    esc50_row = next(line for line in text.splitlines() if line.startswith("| ESC50 |"))
    assert "80.0" not in esc50_row
    other = text.split("Other results", 1)[1]
    assert "esc10" in other and "80.0" in other
