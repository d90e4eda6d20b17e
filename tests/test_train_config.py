"""Presets (Table S10), overrides, validation and the saved resolved config."""

from __future__ import annotations

import pytest
import yaml

from crisscross.train.config import parse_override, preset_names, resolve_config, save_config

# Table S10: bs, es, ep, lr start/end, predictor lr, LARC
TABLE_S10 = {
    "kinetics_sound": (512, 220_000, 100, 2e-4, 0.0, 2e-3, False),
    "kinetics400": (2048, 1_000_000, 100, 2e-4, 1e-4, 2e-3, True),
    "audioset": (2048, 3_500_000, 100, 1e-4, 0.0, 1e-3, True),
}


@pytest.mark.parametrize("name", sorted(TABLE_S10))
def test_paper_presets_match_table_s10(name):
    cfg = resolve_config(name)
    bs, es, ep, lr, end, pred, larc = TABLE_S10[name]
    o = cfg["optim"]
    assert (o["batch_size"], cfg["run"]["epoch_size"], cfg["run"]["epochs"]) == (bs, es, ep)
    assert (o["lr"], o["end_lr"], o["pred_lr"], o["larc"]) == (lr, end, pred, larc)
    assert o["pred_lr"] == pytest.approx(10 * o["lr"])
    assert (o["weight_decay"], o["betas"], o["larc_trust"], o["larc_clip"]) == (1e-4, [0.9, 0.999], 1e-3, True)
    assert cfg["model"]["width"] == 64 and cfg["model"]["norm"] == "batch" and cfg["run"]["precision"] == "bf16"
    assert cfg["objective"]["terms"] == ["intra", "sync", "async"]


def test_all_presets_resolve():
    assert {"kinetics_sound", "kinetics400", "audioset", "debug", "demo"} <= set(preset_names())
    for name in preset_names():
        resolve_config(name)


def test_overrides_are_typed_and_validated():
    cfg = resolve_config("debug", ["optim.lr=1e-4", "objective.terms=[sync, intra]", "run.max_steps=3",
                                   "model.norm=group", "data.frames=4"])
    assert cfg["optim"]["lr"] == 1e-4 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["objective"]["terms"] == ["sync", "intra"] and cfg["run"]["max_steps"] == 3
    assert cfg["data"]["frames"] == 4  # the loader's section is typed and checked here too
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ValueError, match="unknown config key 'optim.learning_rate'"):
        resolve_config("debug", ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="optim.lr: .*could not be converted to Float"):
        resolve_config("debug", ["optim.lr=fast"])
    with pytest.raises(ValueError, match="unknown config key 'data.frams'"):  # the data section, before any loader
        resolve_config("debug", ["data.frams=4"])
    with pytest.raises(ValueError, match="data.augment.video.crop_area"):  # a tuple of the wrong length
        resolve_config("debug", ["data.augment.video.crop_area=[0.5]"])
    with pytest.raises(ValueError, match="run.precision"):
        resolve_config("debug", ["run.precision=fp8"])
    with pytest.raises(ValueError, match="unknown objective terms"):
        resolve_config("debug", ["objective.terms=[intra, bogus]"])
    with pytest.raises(ValueError, match="not of the form"):
        resolve_config("debug", ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="presets"):
        resolve_config("no_such_preset")


def test_yaml_file_with_base_and_saved_config_round_trip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: kinetics400\noptim:\n  batch_size: 4096\n")
    cfg = resolve_config(str(path))
    assert cfg["optim"]["batch_size"] == 4096 and cfg["optim"]["larc"] is True and cfg["optim"]["end_lr"] == 1e-4
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert resolve_config(str(tmp_path / "run" / "config.yaml")) == cfg
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == cfg


def test_cli_prints_the_resolved_config_and_rejects_bad_keys(capsys):
    from crisscross.tools.cli import main

    assert main(["pretrain", "--config", "debug", "--print-config", "optim.lr=2e-3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == resolve_config("debug", ["optim.lr=2e-3"])
    assert main(["pretrain", "--config", "debug", "optim.lr=fast"]) == 2
    assert "optim.lr: Value 'fast' of type 'str' could not be converted to Float" in capsys.readouterr().err


# Supplement G.1 "Ablation Parameters": (terms, base LR, predictor LR) of the uni-modal rows
ABLATIONS = {"ablation_v1v2": (["v1v2"], 1e-4, 1e-3), "ablation_a1a2": (["a1a2"], 1e-5, 1e-4)}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_unimodal_ablation_presets_use_the_papers_learning_rates(name):
    cfg = resolve_config(name)
    terms, lr, pred_lr = ABLATIONS[name]
    assert cfg["objective"]["terms"] == terms
    assert (cfg["optim"]["lr"], cfg["optim"]["pred_lr"]) == (lr, pred_lr)
    # everything else is the Kinetics-Sound recipe (Table S10), so the rows stay comparable
    base = resolve_config("kinetics_sound")
    for section in ("model", "data"):
        assert cfg[section] == base[section]
    assert {k: v for k, v in cfg["optim"].items() if k not in ("lr", "pred_lr")} == \
        {k: v for k, v in base["optim"].items() if k not in ("lr", "pred_lr")}
    assert cfg["run"]["dir"] == f"runs/{name}" and cfg["run"]["epochs"] == base["run"]["epochs"]
