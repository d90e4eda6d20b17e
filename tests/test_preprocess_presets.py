"""Build presets (YAML) under command-line overrides; the resolved values are saved with the build."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from crisscross.preprocess.presets import load_preset, preset_names
from crisscross.tools.cli import main


def test_builtin_presets_load_and_typos_are_refused(tmp_path):
    assert {"default", "pretrain_av", "finetune_256", "audio_only"} <= set(preset_names())
    for name in preset_names():
        load_preset(name)
    bad = tmp_path / "bad.yaml"
    bad.write_text("short_sde: 128\n")
    with pytest.raises(ValueError, match="short_sde"):
        load_preset(bad)


def test_cli_preset_then_flags_and_the_result_is_saved(shared_data, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(shared_data / "videos/grid_lipnet/bbaf2n.mpg", src / "talk.mpg")
    os.symlink(shared_data / "esc10/audio/1-100032-A-0.flac", src / "dog.flac")
    out = tmp_path / "ds"
    assert main(["shards", "build", str(src), "--out", str(out), "--preset", "finetune_256",
                 "--short-side", "128", "--no-progress"]) == 0
    assert "1 samples" in capsys.readouterr().out
    build = json.loads((out / "dataset.json").read_text())["build"]
    assert build["short_side"] == 128  # the flag beat the preset's 256
    assert build["require"] == "video"  # from the preset: the audio-only file is rejected
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [(e["source"], e["reason"]) for e in errors] == [("dog.flac", "no_video")]
