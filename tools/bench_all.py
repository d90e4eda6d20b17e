"""Run every benchmark (shards, loader, train, eval) and write one Markdown table of their figures.

Each benchmark runs in its own process (``crisscross bench NAME``), as a user would run it, so
that thread settings and imports of one cannot colour another; its last output line is its
JSON figures. The table names the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHES = ("shards", "loader", "train", "eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench/results.md"), help="Markdown table to write")
    parser.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES), help="benchmarks to run")
    parser.add_argument(
        "--extra", action="append", default=[], metavar="NAME:ARGS",
        help="extra arguments for one benchmark, e.g. --extra 'loader:--batches 20' (split on spaces)",
    )


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or broken driver: report what we know
        pass
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}"


def run_one(name: str, extra: list[str]) -> dict:
    """Run ``crisscross bench NAME`` in a fresh process and parse its JSON last line."""
    cmd = [sys.executable, "-m", "crisscross.tools.cli", "bench", name, *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"bench": name, "error": f"exit {proc.returncode}: " + " | ".join(tail), "wall_s": elapsed}
    try:
        figures = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"bench": name, "error": f"last line is not JSON: {lines[-1][:200]}", "wall_s": elapsed}
    figures.setdefault("bench", name)
    figures["wall_s"] = round(elapsed, 1)
    figures["command"] = "crisscross bench " + " ".join([name, *extra])
    return figures


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def to_markdown(results: list[dict], machine: str) -> str:
    lines = [
        f"# Benchmarks\n\nMachine: {machine}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n",
        "| benchmark | ours | baseline | ratio | unit | device | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['bench']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['bench']} | {_fmt(r['ours'])} | {_fmt(r['baseline'])} | {_fmt(r['ratio'])} | {r['unit']} "
            f"| {r['device']} | `{r['command']}` |"
        )
    lines.append("\nFull figures (each benchmark's JSON):\n")
    lines.extend(f"- `{json.dumps(r, sort_keys=True)}`" for r in results)
    return "\n".join(lines) + "\n"


def _kept_sections(out: Path) -> str:
    """The ``## ...`` sections after the table (bench gpu, bench soak: written by hand from runs
    that ``bench all`` does not make) are kept when the table is rewritten."""
    text = out.read_text() if out.exists() else ""
    start = text.find("\n## ")
    return "" if start < 0 else text[start:]


def run(args: argparse.Namespace) -> dict:
    extras: dict[str, list[str]] = {}
    for item in args.extra:
        name, _, rest = item.partition(":")
        extras.setdefault(name, []).extend(rest.split())
    results = []
    for name in args.only:
        print(f"== bench {name}", flush=True)
        results.append(run_one(name, extras.get(name, [])))
        print(json.dumps(results[-1], sort_keys=True), flush=True)
    machine = machine_description()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(results, machine) + _kept_sections(args.out))
    print(f"wrote {args.out}")
    ok = [r for r in results if "error" not in r]
    # the summary line: how many benchmarks met their own target ratio is for a person to read in
    # the table; here ours/baseline are the counts of benchmarks that ran and that were asked for
    return {
        "ours": len(ok),
        "baseline": len(results),
        "ratio": len(ok) / max(len(results), 1),
        "unit": "benchmarks completed",
        "device": machine,
        "table": str(args.out),
    }
