"""The one atomic-write helper: exclusive, unique temporaries that never follow a planted link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crisscross.shards.atomic import AtomicFile, atomic_open, atomic_path, atomic_write


def _plant_links(folder: Path, names: list[str], victim: Path) -> None:
    for name in names:
        os.symlink(victim, folder / name)


def test_fixed_temporary_names_of_old_are_not_followed(tmp_path):
    """The names the hand-written writers used (config.yaml.tmp, backbones.json.tmp, ...) as
    symlinks to a victim file: every writer leaves the victim untouched."""
    import torch
    from torch import nn

    from crisscross.train.checkpoint import save_checkpoint
    from crisscross.train.config import save_config
    from crisscross.train.export import save_backbones

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _plant_links(run, ["config.yaml.tmp", ".config.yaml.tmp"], victim)
    _plant_links(run / "checkpoints", [f".step-000000001.pt.{os.getpid()}.tmp"], victim)
    save_config({"a": 1}, run / "config.yaml")
    save_checkpoint(run, 1, {"w": torch.zeros(2)})

    class Enc(nn.Linear):
        out_dim = 2

    export = tmp_path / "export"
    export.mkdir()
    _plant_links(export, ["backbones.json.tmp", "video.safetensors.tmp", "audio.safetensors.tmp"], victim)
    try:
        save_backbones(export, Enc(2, 2), Enc(2, 2), {})
    except (TypeError, ValueError, KeyError):
        pass  # a model config this minimal may be refused after the tensors are written
    assert victim.read_text() == "precious\n"
    assert (run / "config.yaml").read_text().strip() == "a: 1"
    assert (run / "checkpoints" / "step-000000001.pt").is_file()
    assert (export / "video.safetensors").is_file() and not (export / "video.safetensors").is_symlink()


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "data.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]  # the temporary is gone
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's private 0600


def test_two_writers_get_distinct_temporaries(tmp_path):
    a, b = AtomicFile(tmp_path / "x"), AtomicFile(tmp_path / "x")
    assert a.tmp != b.tmp and a.tmp.name.startswith(".x.tmp-")
    a.file.write(b"a")
    b.file.write(b"b")
    a.commit()
    b.abort()
    assert (tmp_path / "x").read_bytes() == b"a" and not b.tmp.exists()


def test_atomic_path_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "clip.mp4") as tmp:
        assert tmp.suffix == ".mp4" and tmp.exists()
        tmp.write_bytes(b"x")
    assert (tmp_path / "clip.mp4").read_bytes() == b"x" and not tmp.exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
