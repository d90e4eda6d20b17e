"""One configuration system: every command takes ``key=value`` overrides (``--set`` the same) and
refuses a typo, a wrong type or a bad value before any work starts; the strict loader itself."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from crisscross import config as cfglib
from crisscross.tools.cli import main


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------ every command
@pytest.mark.parametrize("syntax", ["positional", "set"])
def test_pretrain_refuses_a_typo_before_work(tmp_path, capsys, syntax):
    words = ["optim.lrr=1e-3"] if syntax == "positional" else ["--set", "optim.lrr=1e-3"]
    assert main(["pretrain", "--config", "debug", f"run.dir={tmp_path / 'run'}", *words]) == 2
    assert "unknown config key 'optim.lrr'" in _error(capsys)
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("evaluator, override, key", [
    ("linear", "svm.cost=[1.0]", "svm.cost"),            # the svm section: before any feature pass
    ("linear", "svm.cv_folds=many", "svm.cv_folds"),     # a wrong type
    ("retrieval", "retrieval.ks=[0]", "retrieval.ks"),  # a bad value
    ("finetune", "finetune.epoch=3", "finetune.epoch"),
    ("fusion", "fc.lr=fast", "fc.lr"),
])
@pytest.mark.parametrize("syntax", ["positional", "set"])
def test_eval_refuses_a_typo_before_work(tmp_path, capsys, evaluator, override, key, syntax):
    words = [override] if syntax == "positional" else ["--set", override]
    out = tmp_path / "out"
    # the dataset does not exist: the config is refused first, so no data was opened
    assert main(["eval", evaluator, "--checkpoint", "random", "--data", str(tmp_path / "none"), "--out", str(out),
                 *words]) == 2
    assert key in _error(capsys)
    assert not out.exists()


def test_eval_positional_and_set_overrides_are_the_same(tmp_path):
    import argparse

    from crisscross.evaluate.config import load_config
    from crisscross.tools.cli import _collect_overrides, build_parser

    parser = build_parser()
    args, extras = parser.parse_known_args(["eval", "linear", "--checkpoint", "random", "--data", str(tmp_path),
                                            "--set", "svm.cv_folds=3", "modality=video"])
    _collect_overrides(parser, args, extras)
    assert isinstance(args, argparse.Namespace) and args.overrides == ["svm.cv_folds=3", "modality=video"]
    cfg = load_config("demo", args.overrides)
    assert cfg.svm.cv_folds == 3 and cfg.modality == "video"


@pytest.mark.parametrize("words, key", [(["short_sde=128"], "short_sde"), (["--set", "fps=fast"], "fps"),
                                        (["clip_seconds=-1"], "clip_seconds")])
def test_shards_build_refuses_a_typo_before_work(tmp_path, capsys, words, key):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    # an override after --out: argparse's single positional pass does not lose it
    assert main(["shards", "build", str(src), "--out", str(out), "--no-progress", *words]) == 2
    assert key in _error(capsys)
    assert not out.exists()


def test_shards_build_overrides_win_over_flags_over_the_preset():
    from crisscross.preprocess.presets import resolve_preset

    resolved = resolve_preset("finetune_256", ["short_side=128"], {"short_side": 192, "fps": 25})
    assert (resolved.short_side, resolved.fps, resolved.require) == (128, 25, "video")


def test_build_shards_python_entry_takes_the_same_presets(tmp_path):
    from crisscross.preprocess.build import build_shards

    with pytest.raises(ValueError, match="short_sde"):
        build_shards(tmp_path, tmp_path / "out", preset="finetune_256", overrides=["short_sde=1"])
    with pytest.raises(ValueError, match="jpeg_qscale"):
        build_shards(tmp_path, tmp_path / "out", jpeg_qscale=99)
    assert not (tmp_path / "out").exists()


def test_bench_train_refuses_a_typo_before_work(capsys):
    assert main(["bench", "train", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in _error(capsys)
    assert main(["bench", "train", "--set", "data.shuffle_buffer=0"]) == 2
    assert "data.shuffle_buffer" in _error(capsys)


def test_a_stray_word_is_still_an_argparse_error():
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", "debug", "--bogus-flag"])


# ------------------------------------------------------------------------------ the strict loader
@dataclass
class Inner:
    rate: float = 1.0
    pair: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"inner.rate must be >= 0, got {self.rate}")


@dataclass
class Outer:
    name: str = "x"
    count: int | None = None
    inner: Inner = field(default_factory=Inner)
    items: list[int] = field(default_factory=lambda: [1])


def test_strict_loader_types_converts_and_refuses():
    out = cfglib.load(Outer, {"inner": {"rate": 2}}, overrides=["count=3", "inner.pair=[1, 2]", "items=[4, 5]"])
    assert out == Outer("x", 3, Inner(2.0, (1.0, 2.0)), [4, 5]) and isinstance(out.inner.rate, float)
    assert cfglib.load(Outer, overrides=["inner.rate=1e-4"]).inner.rate == 1e-4  # YAML reads 1e-4 as a string
    for override, message in [("inner.rat=1", "unknown config key 'inner.rat'; known here: ['pair', 'rate']"),
                              ("count=3.5", "count"), ("items=[1, x]", "items"), ("inner.pair=[1]", "inner.pair"),
                              ("inner.rate=-1", "inner.rate must be >= 0"), ("name", "not of the form")]:
        with pytest.raises(cfglib.ConfigError if "must be" not in message else ValueError, match=message.replace("[", r"\[")):
            cfglib.load(Outer, overrides=[override])


def test_presets_chain_through_base_and_loops_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ninner: {rate: 3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ninner: {pair: [0.5, 0.6]}\n")
    out = cfglib.resolve(Outer, str(tmp_path / "b.yaml"), ["count=1"], preset_dir=tmp_path)
    assert out == Outer("a", 1, Inner(3.0, (0.5, 0.6)))
    assert cfglib.resolve(Outer, "b", [], preset_dir=tmp_path) == Outer("a", None, Inner(3.0, (0.5, 0.6)))
    (tmp_path / "loop.yaml").write_text("base: loop\n")
    with pytest.raises(cfglib.ConfigError, match="loops"):
        cfglib.resolve(Outer, "loop", [], preset_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="presets: \\['a', 'b', 'loop'\\]"):
        cfglib.resolve(Outer, "c", [], preset_dir=tmp_path)


def test_eval_presets_may_name_a_base(tmp_path):
    from crisscross.evaluate.config import load_config

    mine = tmp_path / "mine.yaml"
    mine.write_text("base: ucf101_8f\nsvm: {cv_folds: 3}\n")
    cfg = load_config(str(mine))
    base = load_config("ucf101_8f")
    assert cfg.svm.cv_folds == 3 and cfg.svm.costs == base.svm.costs and cfg.crop == base.crop
    # the saved config reads back to the same config
    assert load_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_train_config_has_a_typed_view_of_a_checkpoint_dict():
    from crisscross.train.config import resolve_config, train_config

    plain = resolve_config("demo", ["run.max_steps=5"])
    typed = train_config(plain)
    assert typed.run.max_steps == 5 and typed.data.augment.video.crop is False and typed.optim.betas == (0.9, 0.999)
    assert cfglib.to_dict(typed) == plain
