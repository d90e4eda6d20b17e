"""`crisscross bench all` rewrites its table in bench/results.md and keeps the sections after it."""

from __future__ import annotations

from crisscross.tools.bench_all import _kept_sections, to_markdown


def test_rewriting_the_table_keeps_the_hand_written_sections(tmp_path):
    out = tmp_path / "results.md"
    out.write_text("# Benchmarks\n\nold table\n\n## `crisscross bench gpu`\n\nGPU figures\n\n## soak\n\nflat\n")
    result = {"bench": "eval", "ours": 1.0, "baseline": 2.0, "ratio": 0.5, "unit": "s", "device": "cpu",
              "command": "crisscross bench eval"}
    text = to_markdown([result], "test machine") + _kept_sections(out)
    assert "old table" not in text and "| eval | 1 | 2 | 0.5 |" in text
    assert text.endswith("## `crisscross bench gpu`\n\nGPU figures\n\n## soak\n\nflat\n")
    assert _kept_sections(tmp_path / "absent.md") == ""
