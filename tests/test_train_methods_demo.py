"""Each method's tiny CPU preset on real demo shards through the DALI loader: trains, resumes
exactly from a mid-run checkpoint (weights and objective state), exports, and the evaluators run on
the export (retrieval through the real eval loader). CMA starts from the AVID run, as its preset
says. Slow: a few CPU minutes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from crisscross.evaluate.config import load_config
from crisscross.evaluate.pipeline import run_retrieval
from crisscross.train.checkpoint import checkpoint_path, load_checkpoint
from crisscross.train.config import resolve_config
from crisscross.train.trainer import train

STEPS, CUT = 6, 3  # 16 clips / batch 8: 2 steps per epoch; the cut is mid-epoch
COMMON = [f"run.max_steps={STEPS}", "run.epochs=4", "run.checkpoint_every=3", "run.keep_checkpoints=5",
          "run.progress=false", "run.tensorboard=false", "run.log_every=1"]
EVAL = ["frames=8", "loader={frame_stride: 2}", "plots=false", "test_pass.clips_per_sample=2"]


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory, demo_shards_builder) -> Path:
    return demo_shards_builder(tmp_path_factory.mktemp("demo"), num_classes=4, clips_per_class=4, seconds=4.0)


@pytest.fixture(scope="module")
def avid_run(tmp_path_factory, demo_shards) -> Path:
    run_dir = tmp_path_factory.mktemp("avid") / "run"
    train(resolve_config("avid_demo", [f"run.dir={run_dir}", f"data.shards={demo_shards}", *COMMON]))
    return run_dir


def _check_resume(config: dict, run_dir: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    checkpoint_path(resumed, CUT).parent.mkdir(parents=True)
    shutil.copy(checkpoint_path(run_dir, CUT), checkpoint_path(resumed, CUT))
    config = json.loads(json.dumps(config))
    config["run"]["dir"] = str(resumed)
    assert train(config, resume="auto")["step"] == STEPS
    want, got = load_checkpoint(checkpoint_path(run_dir, STEPS)), load_checkpoint(checkpoint_path(resumed, STEPS))
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    flat_want, flat_got = _flatten(want["objective"]), _flatten(got["objective"])
    assert flat_want.keys() == flat_got.keys()
    for key, value in flat_want.items():
        assert torch.equal(flat_got[key], value) if isinstance(value, torch.Tensor) else flat_got[key] == value, key


def _flatten(state, prefix: str = "") -> dict:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["avid_demo", "avid_cma_demo", "svaclr_demo", "stica_demo"])
def test_demo_preset_trains_resumes_exports_and_evaluates(tmp_path, demo_shards, avid_run, preset):
    run_dir = tmp_path / "run"
    extra = [f"run.init_from={avid_run}"] if preset == "avid_cma_demo" else []
    config = resolve_config(preset, [f"run.dir={run_dir}", f"data.shards={demo_shards}", *COMMON, *extra])
    summary = train(config)
    assert summary["status"] == "completed" and summary["step"] == STEPS
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in records)
    _check_resume(config, run_dir, tmp_path)
    results = run_retrieval(str(run_dir / "export"), demo_shards, load_config("demo", EVAL), tmp_path / "eval")
    rows = json.loads(Path(results).read_text())["rows"]
    assert rows and all(0.0 <= r["value"] <= 100.0 for r in rows)
