"""``usod handcrafted --method NAME --input DIR --output DIR``: handcrafted saliency maps for a folder.

Methods (:data:`usod.handcrafted.HANDCRAFTED`): ``rbd``, ``mc``, ``dsr``, ``mr``; ``--method all`` runs every
method into ``OUTPUT/<method>/``. Maps are 8-bit PNGs at the image's size with the image's relative path and
stem, computed in ``--workers`` processes and written atomically; ``--resume`` keeps maps that exist.
An output folder that holds other files (or another method's maps) is refused unless ``--overwrite``.
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that holds other files or another method's maps (replacing them)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from usod.data.io import claim_output_folder, images_under, map_outputs
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
        if not args.input.is_dir():
            raise FileNotFoundError(f"{args.input}: input folder not found")
        map_outputs(images_under(args.input), args.input, out)  # never over the inputs, before the claim
        settings = {"method": name, "input": str(args.input.resolve())}
        claim_output_folder(out, "handcrafted", settings, overwrite=args.overwrite)
        start = time.perf_counter()
        written = run_folder(
            name, args.input, out, workers=args.workers, skip_existing=args.resume, progress=True
        )
        seconds = time.perf_counter() - start
        per = f", {seconds / len(written):.3f} s/image" if written else ""
        print(f"{name}: wrote {len(written)} maps to {out} in {seconds:.1f} s{per}")
    return 0
