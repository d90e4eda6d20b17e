"""crisscross.shards.Dataset: one reader of dataset.json / manifest / errors; rates, labels and
cross-validation groups come from the data, not from options."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crisscross.shards import Dataset, ShardError

# ESC-10 takes of one recording (same src_file) and single takes of others
FILES = ["5-219379-A-11.flac", "5-219379-B-11.flac", "5-216370-A-41.flac", "5-216370-B-41.flac",
         "1-100032-A-0.flac", "1-110389-A-0.flac"]


@pytest.fixture(scope="module")
def esc_shards(shared_data, tmp_path_factory) -> Path:
    from crisscross.preprocess.build import build_shards

    root = tmp_path_factory.mktemp("esc")
    (root / "audio").mkdir()
    with open(shared_data / "esc10/esc10.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["filename"] in FILES]
    with open(root / "esc10.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for name in FILES:
        os.symlink(shared_data / "esc10/audio" / name, root / "audio" / name)
    out = tmp_path_factory.mktemp("esc_shards") / "ds"
    build_shards(root, out, name="esc", adapter="esc50", progress=False, overrides=["sample_rate=16000"])
    return out


def test_dataset_holds_the_rates_labels_and_groups(esc_shards):
    ds = Dataset.open(esc_shards, need_manifest=True)
    assert (ds.fps, ds.sample_rate, ds.audio_format) == (16.0, 16000, "pcm")
    assert len(ds.rows) == len(FILES) and ds.has_manifest and ds.shards and all(p.is_file() for p in ds.shards)
    assert ds.labels == ["chainsaw", "dog", "sea_waves"] == sorted({r["label"] for r in ds.rows})
    groups = {ds.by_key()[k]["source"].rsplit("/", 1)[-1]: g for k, g in ds.groups().items()}
    assert groups["5-219379-A-11.flac"] == groups["5-219379-B-11.flac"] == "esc50:219379"
    assert groups["5-216370-A-41.flac"] == groups["5-216370-B-41.flac"] == "esc50:216370"
    assert len(set(groups.values())) == 4
    assert set(ds.folds().values()) == {1, 5}
    with pytest.raises(ValueError, match="fps 16 but"):
        ds.check_rates(fps=25)
    ds.check_rates(fps=16, sample_rate=16000)


def test_the_evaluator_takes_groups_from_the_manifest(esc_shards):
    from crisscross.evaluate.features import read_manifest

    manifest = read_manifest(esc_shards)
    by_source = {}
    for info in manifest.values():
        by_source.setdefault(info.group, []).append(info.key)
    assert sorted(len(v) for v in by_source.values()) == [1, 1, 2, 2]


def test_a_dataset_without_the_group_column_falls_back_to_sources_with_a_warning(esc_shards, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for path in esc_shards.iterdir():
        os.symlink(path, old / path.name)
    (old / "manifest.parquet").unlink()
    table = pq.read_table(esc_shards / "manifest.parquet")
    pq.write_table(table.drop(["group"]), old / "manifest.parquet")
    ds = Dataset.open(old)
    with pytest.warns(UserWarning, match="no 'group' column"):
        groups = ds.groups()
    assert len(set(groups.values())) == len(FILES)  # every source its own group


def test_format_version_and_damaged_files_are_one_line_errors(esc_shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    info = json.loads((esc_shards / "dataset.json").read_text())
    (bad / "dataset.json").write_text(json.dumps(dict(info, format_version=99)))
    with pytest.raises(ShardError, match="format version 99"):
        Dataset.open(bad)
    (bad / "dataset.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        Dataset.open(bad)
    (bad / "dataset.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"x": [1]}), bad / "errors.parquet")
    (bad / "manifest.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(ShardError, match="manifest.parquet: not a readable parquet file"):
        Dataset.open(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Dataset.open(tmp_path / "missing")


def test_a_hand_made_folder_takes_its_rates_from_the_first_sample(esc_shards, tmp_path):
    folder = tmp_path / "tars"
    folder.mkdir()
    for tar in Dataset.open(esc_shards).shards:
        os.symlink(tar, folder / tar.name)
    ds = Dataset.open(folder)
    assert not ds.info and not ds.has_manifest and (ds.fps, ds.sample_rate) == (16.0, 16000)
    with pytest.raises(FileNotFoundError, match="not a finished dataset"):
        Dataset.open(folder, finished=True)


def test_adapter_groups_from_file_names():
    from crisscross.preprocess.sources import esc50_group, hmdb51_group, ucf101_group

    assert esc50_group("1-100032-A-0.flac") == "esc50:100032" == esc50_group("x.wav", "100032")
    assert ucf101_group("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi") == "ucf101:ApplyEyeMakeup_g08"
    assert ucf101_group("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi") == "ucf101:ApplyEyeMakeup_g08"
    assert hmdb51_group("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi") == \
        hmdb51_group("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi") != \
        hmdb51_group("brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert esc50_group("not-an-esc-name.wav") == ""  # then the builder uses the source itself
