"""``usod handcrafted --method NAME --input DIR --output DIR``: handcrafted saliency maps for a folder.

Methods (:data:`usod.handcrafted.HANDCRAFTED`): ``rbd``, ``mc``, ``dsr``, ``mr``; ``--method all`` runs every
method into ``OUTPUT/<method>/``. Maps are 8-bit PNGs at the image's size with the image's relative path and
stem, computed in ``--workers`` processes and written atomically; ``--resume`` keeps maps that exist.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from usod.commands import non_negative_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from usod.handcrafted import HANDCRAFTED

    parser.add_argument(
        "--method", required=True, help=f"one of {', '.join(sorted(HANDCRAFTED))}, a comma list, or all"
    )
    parser.add_argument("--input", required=True, type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the PNG maps")
    parser.add_argument(
        "--workers", type=non_negative_int, default=2, help="worker processes (0: this process)"
    )
    parser.add_argument("--resume", action="store_true", help="skip images whose map already exists")


def run(args: argparse.Namespace) -> int:
    import sys

    from usod.handcrafted import HANDCRAFTED, run_folder

    names = (
        sorted(HANDCRAFTED) if args.method == "all" else [m.strip().lower() for m in args.method.split(",")]
    )
    unknown = [n for n in names if n not in HANDCRAFTED]
    if unknown:  # before any work
        print(
            f"usod: error: unknown method(s) {unknown}; choose from {sorted(HANDCRAFTED)} or all",
            file=sys.stderr,
        )
        return 2
    for name in names:
        out = args.output / name if len(names) > 1 else args.output
        start = time.perf_counter()
        written = run_folder(
            name, args.input, out, workers=args.workers, skip_existing=args.resume, progress=True
        )
        seconds = time.perf_counter() - start
        per = f", {seconds / len(written):.3f} s/image" if written else ""
        print(f"{name}: wrote {len(written)} maps to {out} in {seconds:.1f} s{per}")
    return 0
