"""Every method trains through the same trainer, resumes exactly (same weights, same objective
state: memory banks, Z, positive sets; same losses) and exports encoders the evaluators load.
CPU, the synthetic loader (the demo-shard runs are in test_train_methods_demo.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from crisscross.train.checkpoint import checkpoint_path, load_checkpoint
from crisscross.train.config import resolve_config
from crisscross.train.export import load_backbones
from crisscross.train.trainer import train

STEPS, CUT = 10, 5  # 32 samples / batch 8 = 4 steps per epoch: the cut is mid-epoch 1
COMMON = ["run.epochs=3", f"run.max_steps={STEPS}", "run.checkpoint_every=5", "run.keep_checkpoints=10",
          "run.tensorboard=false", "optim.warmup_epochs=0"]
GDT = ["model.video_arch=tv_r2plus1d", "model.head=gdt_mlp", "model.head_dims=[64,32]", "optim.name=sgd",
       "optim.lr=0.05", "optim.warmup_start_lr=0.005", "optim.warmup_epochs=1", "optim.schedule=constant"]
METHODS = {
    "avid": ["objective.name=avid", "model.head=avid_mlp", "model.head_dims=[64,64,32]", "model.video_pool=max",
             "model.audio_arch=avid_conv2d", "model.audio_pool=max", "objective.avid.num_negatives=16",
             "optim.schedule=constant"],
    "avid_cma": ["objective.name=avid_cma", "model.head=avid_mlp", "model.head_dims=[64,64,32]",
                 "objective.avid_cma.num_negatives=16", "objective.avid_cma.num_negatives_within=4",
                 "objective.avid_cma.k=3", "objective.avid_cma.resample_every_epochs=1", "optim.schedule=constant"],
    "svaclr": ["objective.name=svaclr", *GDT, "optim.schedule=cosine", "optim.end_lr=0.01"],
    "stica": ["objective.name=stica", *GDT, "model.video_temporal_pool=transformer", "model.transformer_ffn=64",
              "model.crops={spatial_large: [2, 2], spatial_small: [2, 1]}"],
}


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss/total"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())}


def _assert_equal_state(got, want, where: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            _assert_equal_state(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    else:
        assert got == want, where


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_resumes_exactly_and_exports(tmp_path, method):
    run_dir = tmp_path / "run"
    config = resolve_config("debug", [f"run.dir={run_dir}", *COMMON, *METHODS[method]])
    summary = train(config)
    assert summary["status"] == "completed" and summary["step"] == STEPS
    losses = _losses(run_dir)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())

    resumed = tmp_path / "resumed"
    checkpoint_path(resumed, CUT).parent.mkdir(parents=True)
    shutil.copy(checkpoint_path(run_dir, CUT), checkpoint_path(resumed, CUT))
    config["run"]["dir"] = str(resumed)
    assert train(config, resume="auto")["step"] == STEPS
    want, got = load_checkpoint(checkpoint_path(run_dir, STEPS)), load_checkpoint(checkpoint_path(resumed, STEPS))
    _assert_equal_state(got["model"], want["model"], "model")
    _assert_equal_state(got["objective"], want["objective"], "objective")
    resumed_losses = _losses(resumed)
    for step in range(CUT + 1, STEPS + 1):
        assert resumed_losses[step] == losses[step], step
    if method.startswith("avid"):
        start = load_checkpoint(checkpoint_path(run_dir, CUT))["objective"]
        assert not torch.equal(start["memory"]["mem_video"], want["objective"]["memory"]["mem_video"])  # banks move
        assert want["objective"]["nce"]["Z"] > 0
    if method == "avid_cma":
        assert want["objective"]["positives"].shape == (32, 3) and want["objective"]["mined_at_epoch"] == 2

    video, audio, cfg = load_backbones(run_dir / "export")
    assert cfg.head == config["model"]["head"]
    with torch.no_grad():
        assert video(torch.randn(2, 3, 4, 32, 32)).shape == (2, 64)
        assert audio(torch.randn(2, 1, 80, 100)).shape == (2, 64)


def test_cma_starts_from_an_avid_run(tmp_path):
    avid_dir = tmp_path / "avid"
    avid = resolve_config("debug", [f"run.dir={avid_dir}", *COMMON, *METHODS["avid"][:1], *METHODS["avid_cma"][1:3],
                                    "objective.avid.num_negatives=16", "run.export=false"])
    train(avid)
    cma_dir = tmp_path / "cma"
    cma = resolve_config("debug", [f"run.dir={cma_dir}", *COMMON, *METHODS["avid_cma"], f"run.init_from={avid_dir}",
                                   "run.init_objective=true", "run.max_steps=1", "run.checkpoint_every=1",
                                   "optim.lr=0.0", "run.export=false"])
    train(cma)
    source, started = load_checkpoint(checkpoint_path(avid_dir, STEPS)), load_checkpoint(checkpoint_path(cma_dir, 1))
    for name, tensor in source["model"].items():  # lr 0: one step leaves the AVID weights (heads included)
        if not any(stat in name for stat in ("running_", "num_batches")):  # BN statistics do move
            assert torch.equal(started["model"][name], tensor), name
    assert started["objective"]["nce"]["Z"] == source["objective"]["nce"]["Z"]
    # the banks continue from AVID's (one update of the 8 rows of the step)
    same_rows = (started["objective"]["memory"]["mem_video"] == source["objective"]["memory"]["mem_video"]).all(1)
    assert int(same_rows.sum()) >= 32 - 8
    # a checkpoint without objective state (CrissCross's, or older) cannot start CMA
    state = load_checkpoint(checkpoint_path(avid_dir, STEPS))
    state["objective"] = {}
    torch.save(state, tmp_path / "no_objective.pt")
    bad = resolve_config("debug", [f"run.dir={tmp_path / 'bad'}", *COMMON, *METHODS["avid_cma"],
                                   f"run.init_from={tmp_path / 'no_objective.pt'}", "run.init_objective=true"])
    with pytest.raises(ValueError, match="objective state"):
        train(bad)
