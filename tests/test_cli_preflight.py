"""Checks before work: pretrain and eval refuse data that cannot serve them, in one line and before
any DALI pipeline starts; shards built with ``--audio-format flac`` train and evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crisscross.errors import UserError
from crisscross.tools import preflight

# (the same two helpers as test_cli_errors.py: tests import no test module under --import-mode=importlib)


def crisscross(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crisscross.tools.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "CRISSCROSS_DEBUG": ""})


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"crisscross {command}: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]

FAST_EVAL = ["--config", "demo", "--set", "train_pass.clips_per_sample=1", "--set", "test_pass.clips_per_sample=1",
             "--set", "plots=false", "--set", "device=cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data) -> dict[str, Path]:
    """Small datasets: video+audio as PCM and as FLAC (same clips), audio-only (real ESC-10
    recordings, labelled), and video+audio without labels."""
    import csv

    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    root = tmp_path_factory.mktemp("preflight")
    manifest = generate_demo_clips(root / "clips", num_classes=2, clips_per_class=4, seconds=3.0, seed=0)
    out = {}
    for fmt in ("pcm", "flac"):
        out[fmt] = root / fmt
        build_shards(manifest, out[fmt], name=fmt, audio_format=fmt, progress=False)
    rows = [r for r in csv.DictReader((shared_data / "esc10" / "esc10.csv").open()) if r["category"] in ("dog", "rain")]
    with (root / "audio.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for i, r in enumerate(rows[:8]):
            writer.writerow([shared_data / "esc10" / "audio" / r["filename"], r["category"], "test" if i % 4 == 0 else "train"])
    out["audio"] = root / "audio"
    build_shards(root / "audio.csv", out["audio"], name="audio", progress=False)
    flat = root / "flat"  # the clips without their manifest: a plain folder, no labels
    flat.mkdir()
    for clip in sorted((root / "clips").glob("*.mp4")):
        (flat / clip.name).symlink_to(clip)
    out["unlabelled"] = root / "unlabelled"
    build_shards(flat, out["unlabelled"], name="unlabelled", adapter="folder", progress=False)
    for name in ("pcm", "flac", "audio", "unlabelled"):
        assert (out[name] / "dataset.json").exists(), name
    return out


def _no_dali_assert(proc) -> None:
    assert "input samples" not in proc.stderr and "Assert" not in proc.stderr


# --------------------------------------------------------------------------- pretrain


def test_pretrain_refuses_audio_only_shards_before_dali(data, tmp_path):
    proc = crisscross("pretrain", "--config", "demo", f"data.shards={data['audio']}", f"run.dir={tmp_path / 'run'}",
                      cwd=tmp_path)
    line = assert_one_line_error(proc, "pretrain", "audio-only 8", "both video and audio")
    assert "8 samples" in line
    _no_dali_assert(proc)
    assert not (tmp_path / "run").exists()


def test_pretrain_refuses_too_few_samples_per_rank(data, tmp_path):
    proc = crisscross("pretrain", "--config", "demo", f"data.shards={data['pcm']}", "optim.batch_size=16",
                      f"run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(proc, "pretrain", "8 video+audio samples", "batch of 16")


@pytest.mark.parametrize("samples, world, ok", [(7, 1, False), (9, 1, True), (16, 2, True), (7, 2, False)])
def test_pretrain_check_counts_samples_per_rank(monkeypatch, samples, world, ok):
    from crisscross.train.config import resolve_config

    config = resolve_config("demo", ["optim.batch_size=8"])  # 8 / world per rank
    rows = [{"key": f"k{i}", "modalities": "av"} for i in range(samples)] + [{"key": "a", "modalities": "a"}]
    facts = preflight.DatasetFacts(Path("x"), rows=rows, has_manifest=True)
    monkeypatch.setattr(preflight, "read_facts", lambda *a, **k: facts)
    if ok:
        preflight.check_pretrain(config, world_size=world)
    else:
        with pytest.raises(UserError, match=f"{samples // world} per rank over {world} rank"):
            preflight.check_pretrain(config, world_size=world)


def test_pretrain_refuses_an_unfinished_build(data, tmp_path):
    copy = tmp_path / "half"
    shutil.copytree(data["pcm"], copy)
    (copy / "dataset.json").unlink()
    proc = crisscross("pretrain", "--config", "demo", f"data.shards={copy}", f"run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(proc, "pretrain", "unfinished build")


# --------------------------------------------------------------------------- eval


def test_eval_fusion_refuses_audio_only_shards(data, tmp_path):
    proc = crisscross("eval", "fusion", "--checkpoint", "random", "--data", str(data["audio"]), *FAST_EVAL,
                      "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "eval fusion", "audio-only 8", "video+audio")
    _no_dali_assert(proc)
    assert not (tmp_path / "out").exists()


def test_eval_linear_names_the_modality_the_data_has(data, tmp_path):
    proc = crisscross("eval", "linear", "--checkpoint", "random", "--data", str(data["audio"]), *FAST_EVAL,
                      "--set", "modality=video", cwd=tmp_path)
    assert_one_line_error(proc, "eval linear", "needs samples with video", "modality=audio")


def test_eval_linear_without_labels_names_the_missing_labels(data, tmp_path):
    proc = crisscross("eval", "linear", "--checkpoint", "random", "--data", str(data["unlabelled"]), *FAST_EVAL,
                      cwd=tmp_path)
    assert_one_line_error(proc, "eval linear", "has no labels")


def test_eval_refuses_folds_the_data_does_not_have(data, tmp_path):
    proc = crisscross("eval", "linear", "--checkpoint", "random", "--data", str(data["pcm"]), *FAST_EVAL,
                      "--set", "splits=folds", cwd=tmp_path)
    assert_one_line_error(proc, "eval linear", "splits=folds", "8 samples")


def test_eval_finetune_with_zero_steps_is_refused_before_training(data, tmp_path):
    proc = crisscross("eval", "finetune", "--checkpoint", "random", "--data", str(data["pcm"]), *FAST_EVAL,
                      "--set", "finetune.batch_size=64", "--set", "finetune.clips_per_sample=1",
                      "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "eval finetune", "0 optimizer steps", "finetune.batch_size=64")
    assert not (tmp_path / "out").exists()


def test_finetune_pre_check_uses_the_finetuners_step_rule():
    """One pass reads each video once, one clip, in full batches: 7 videos x 10 clips at batch 64 is
    0 steps (the finetuner would stop), 100 videos give 10 passes x 1 full batch."""
    from types import SimpleNamespace

    from crisscross.errors import UserError
    from crisscross.evaluate.config import FinetuneConfig
    from crisscross.evaluate.finetune import steps_per_epoch

    ft = FinetuneConfig(batch_size=64, clips_per_sample=10)
    assert steps_per_epoch(7, ft) == 0 and steps_per_epoch(100, ft) == 10
    for videos, refused in ((7, True), (64, False)):
        part = SimpleNamespace(name="fold1", train_keys=[f"k{i}" for i in range(videos)])
        try:
            preflight.check_finetune_steps(SimpleNamespace(finetune=ft), [part])
        except UserError:
            assert refused, videos
        else:
            assert not refused, videos


def test_eval_refuses_unknown_classifier_options_before_features(data, tmp_path):
    proc = crisscross("eval", "linear", "--checkpoint", "random", "--data", str(data["pcm"]), *FAST_EVAL,
                      "--set", "svm.cost=[1]", cwd=tmp_path)
    assert_one_line_error(proc, "eval linear", "cost")


# --------------------------------------------------------------------------- FLAC shards


def test_flac_shards_decode_to_the_same_audio_as_pcm(data):
    from crisscross.shards.loader import build_eval_loader

    def audio_by_key(path: Path) -> dict[str, np.ndarray]:
        loader = build_eval_loader(path, clips_per_sample=2, modalities=("audio",), batch_size=4, augment="none")
        return {k: a.numpy() for batch in loader for k, a in zip(batch["key"], batch["audio"])}

    assert json.loads((data["flac"] / "dataset.json").read_text())["build"]["audio_format"] == "flac"
    pcm, flac = audio_by_key(data["pcm"]), audio_by_key(data["flac"])
    assert sorted(pcm) == sorted(flac) and len(pcm) == 8
    for key in pcm:  # FLAC is lossless: the log-mel inputs are identical
        np.testing.assert_array_equal(pcm[key], flac[key])
        assert np.abs(pcm[key]).sum() > 0


def test_flac_shards_pretrain_and_evaluate(data, tmp_path):
    run = tmp_path / "run"
    proc = crisscross("pretrain", "--config", "demo", f"data.shards={data['flac']}", f"run.dir={run}",
                      "optim.batch_size=4", "run.max_steps=2", "run.progress=false", "run.tensorboard=false",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["step"] == 2
    assert summary["metrics"]["data/samples"] >= 8
    out = tmp_path / "eval"
    proc = crisscross("eval", "linear", "--checkpoint", str(run / "export"), "--data", str(data["flac"]), *FAST_EVAL,
                      "--set", "modality=audio", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows and rows[0]["dataset"] == "flac" and rows[0]["modality"] == "audio"
    assert 0.0 <= rows[0]["value"] <= 1.0
