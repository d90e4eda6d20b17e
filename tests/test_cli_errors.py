"""One rule for every command: a user error prints ``crisscross <cmd>: error: <message>`` (one
line, no traceback) and exits with code 2; ``--debug`` shows the traceback; a bug keeps its
traceback; Ctrl-C exits with 130. Each command is run as the user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crisscross.tools import cli


def crisscross(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "crisscross.tools.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CRISSCROSS_DEBUG": "", **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str, *fragments: str) -> str:
    """Exit code 2 and exactly one stderr line, ``crisscross <command>: error: ...``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"crisscross {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- every command


def test_shards_build_missing_input(tmp_path):
    proc = crisscross("shards", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(proc, "shards build", str(tmp_path / "nope"))


@pytest.mark.parametrize("sub", ["inspect", "verify", "merge"])
def test_shards_readers_on_a_missing_dataset(tmp_path, sub):
    proc = crisscross("shards", sub, str(tmp_path / "nope"), cwd=tmp_path)
    assert_one_line_error(proc, f"shards {sub}", str(tmp_path / "nope"))


def test_shards_inspect_unknown_key(tmp_path):
    from crisscross.preprocess.build import build_shards
    from crisscross.tools.demo_data import generate_demo_clips

    manifest = generate_demo_clips(tmp_path / "clips", num_classes=2, clips_per_class=1, seconds=2.0)
    build_shards(manifest, tmp_path / "shards", name="d", progress=False)
    proc = crisscross("shards", "inspect", str(tmp_path / "shards"), "--key", "nope", cwd=tmp_path)
    assert_one_line_error(proc, "shards inspect", "no sample 'nope'")


def test_pretrain_unknown_preset(tmp_path):
    proc = crisscross("pretrain", "--config", "kinetics_sund", cwd=tmp_path)
    assert_one_line_error(proc, "pretrain", "kinetics_sund", "kinetics_sound")


@pytest.mark.parametrize("print_config", [False, True])
def test_pretrain_bad_value_is_refused_with_and_without_print_config(tmp_path, print_config):
    args = ["pretrain", "--config", "demo", "run.max_steps=abc", f"run.dir={tmp_path / 'run'}"]
    proc = crisscross(*args, *(["--print-config"] if print_config else []), cwd=tmp_path)
    assert_one_line_error(proc, "pretrain", "run.max_steps", "abc")
    assert not (tmp_path / "run").exists()


def test_pretrain_typo_inside_data_is_refused_by_print_config(tmp_path):
    proc = crisscross("pretrain", "--config", "demo", "data.frame=4", "--print-config", cwd=tmp_path)
    assert_one_line_error(proc, "pretrain", "'data.frame'")


def test_pretrain_missing_shards(tmp_path):
    proc = crisscross("pretrain", "--config", "demo", f"data.shards={tmp_path / 'nope'}", f"run.dir={tmp_path / 'run'}",
                      cwd=tmp_path)
    assert_one_line_error(proc, "pretrain", "does not exist")


def test_eval_missing_checkpoint(tmp_path):
    proc = crisscross("eval", "linear", "--checkpoint", str(tmp_path / "runs/x/export"), "--data", str(tmp_path),
                      cwd=tmp_path)
    assert_one_line_error(proc, "eval linear", "checkpoint not found")


def test_eval_unknown_preset(tmp_path):
    proc = crisscross("eval", "fusion", "--checkpoint", "random", "--data", str(tmp_path), "--config", "fusion_k",
                      cwd=tmp_path)
    assert_one_line_error(proc, "eval fusion", "fusion_k", "fusion_ks")


def test_eval_retrieval_key_typo_is_refused(tmp_path):
    proc = crisscross("eval", "retrieval", "--checkpoint", "random", "--data", str(tmp_path), "--config", "retrieval",
                      "--set", "retrieval.k=[1]", cwd=tmp_path)
    assert_one_line_error(proc, "eval retrieval", "'retrieval.k'", "ks")


def test_eval_unknown_pass_key_is_refused(tmp_path):
    proc = crisscross("eval", "linear", "--checkpoint", "random", "--data", str(tmp_path),
                      "--set", "train_pass.clips=3", cwd=tmp_path)
    assert_one_line_error(proc, "eval linear", "'train_pass.clips'", "clips_per_sample")


def test_eval_report_without_results(tmp_path):
    proc = crisscross("eval", "report", str(tmp_path), cwd=tmp_path)
    assert_one_line_error(proc, "eval report", "no results.json")


def test_bench_on_a_missing_dataset(tmp_path):
    proc = crisscross("bench", "train", "--shards", str(tmp_path / "nope"), cwd=tmp_path)
    assert_one_line_error(proc, "bench train", str(tmp_path / "nope"))


def test_demo_data_bad_class_count(tmp_path):
    proc = crisscross("demo-data", str(tmp_path / "clips"), "--classes", "99", cwd=tmp_path)
    assert_one_line_error(proc, "demo-data")


def test_demo_bad_class_count_is_refused_before_any_work(tmp_path):
    proc = crisscross("demo", "--out", str(tmp_path / "demo"), "--classes", "9", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("crisscross demo: error: argument --classes")
    assert not (tmp_path / "demo").exists()


# --------------------------------------------------------------------------- --debug, bugs, Ctrl-C


def test_debug_shows_the_traceback(tmp_path):
    proc = crisscross("--debug", "pretrain", "--config", "nope", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


@pytest.mark.parametrize("where", ["after", "env"])
def test_debug_after_the_command_or_from_the_environment_raises(monkeypatch, tmp_path, where):
    from crisscross.errors import UserError

    _patched_demo_data(monkeypatch, UserError("bad input"))
    if where == "env":
        monkeypatch.setenv("CRISSCROSS_DEBUG", "1")
    with pytest.raises(UserError):
        cli.main(["demo-data", str(tmp_path), *(["--debug"] if where == "after" else [])])


def _patched_demo_data(monkeypatch, exc: BaseException) -> None:
    from crisscross.tools import demo_data

    def boom(args):
        raise exc

    monkeypatch.setattr(demo_data, "_main", boom)


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch, tmp_path):
    _patched_demo_data(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["demo-data", str(tmp_path)])


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path, capsys):
    _patched_demo_data(monkeypatch, KeyboardInterrupt())
    assert cli.main(["demo-data", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "crisscross demo-data: interrupted"


def test_user_error_in_process_is_one_line(monkeypatch, tmp_path, capsys):
    from crisscross.errors import UserError

    _patched_demo_data(monkeypatch, UserError("the input\nis wrong"))
    assert cli.main(["demo-data", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "crisscross demo-data: error: the input is wrong\n"
