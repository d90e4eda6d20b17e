"""``crisscross weights import``: released checkpoints (CrissCross, AVID-CMA, GDT) -> an export dir.

The export (``video.safetensors``, ``audio.safetensors``, ``backbones.json``) is what ``crisscross
eval ... --checkpoint`` and pretraining's ``run.init_from`` read. docs/weights.md lists the release
files, what each should score and the commands that evaluate them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RELEASE_CHOICES = ("crisscross", "avid-cma", "gdt")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("weights", help="import published pretrained weights into the export format")
    weights_sub = parser.add_subparsers(dest="weights_command", required=True)
    p = weights_sub.add_parser(
        "import", help="map a released checkpoint onto this project's encoders and write an export dir",
        description="Reads the release file(s) (a .pth/.pth.tar, or the .zip that holds one), maps every "
                    "parameter onto this project's encoders with its shape checked, and writes video.safetensors, "
                    "audio.safetensors and backbones.json (architecture and the input the weights expect).")
    p.add_argument("files", nargs="+", type=Path,
                   help="release file(s); CrissCross ships two (vid_*.pth.tar[.zip] and aud_*.pth.tar[.zip]): pass both")
    p.add_argument("--release", required=True, choices=RELEASE_CHOICES, help="which release the file(s) come from")
    p.add_argument("--out", required=True, type=Path, help="export directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load files that need full unpickling (can run code: only for files from a source you trust)")
    p.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from crisscross.train.weights_import import import_release

    if (args.out / "backbones.json").exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already holds an export; pass --overwrite to replace it")
    report = import_release(args.files, args.release, args.out, trust_pickle=args.trust_pickle)
    print(report.summary())
    return 0
