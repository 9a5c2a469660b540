"""``usod data synth``: write the embedded synthetic dataset in any modality's on-disk layout.

Examples::

    usod data synth --out data/synth-rgb --modality rgb --n 200
    usod data synth --out data/synth --modality all --n 50 --seed 1 --size 96 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MODALITY_CHOICES = ("rgb", "rgbd", "rgbt", "video", "rs", "all")
# Images per dataset when --n is not given (sequences for video).
DEFAULT_N = {"rgb": 200, "rgbd": 200, "rgbt": 200, "rs": 200, "video": 12}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, type=Path, help="dataset root (a subfolder per modality for 'all')"
    )
    parser.add_argument("--modality", required=True, choices=MODALITY_CHOICES, help="layout to write")
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples (sequences for video); default 200, 12 sequences for video",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed writes identical files")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"), help="image size"
    )
    parser.add_argument("--frames", type=int, default=8, help="frames per video sequence")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="test split of the rs layout")
    parser.add_argument("--max-objects", type=int, default=3, help="most salient objects per natural scene")
    parser.add_argument(
        "--thermal-colormap", choices=("gray", "inferno", "jet"), default="gray", help="rendering of thermal"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier synthetic dataset in --out"
    )


def run(args: argparse.Namespace) -> int:
    from usod.data.synth import MODALITIES, write_dataset

    modalities = MODALITIES if args.modality == "all" else (args.modality,)
    if args.n is not None and args.n < 1:
        print(f"usod data synth: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    for modality in modalities:
        out = args.out / modality if args.modality == "all" else args.out
        n = args.n if args.n is not None else DEFAULT_N[modality]
        start = time.perf_counter()
        try:
            root = write_dataset(
                out,
                modality,
                n,
                seed=args.seed,
                size=tuple(args.size),
                overwrite=args.overwrite,
                frames=args.frames,
                test_fraction=args.test_fraction,
                max_objects=args.max_objects,
                thermal_colormap=args.thermal_colormap,
            )
        except (ValueError, OSError) as err:
            print(f"usod data synth: {err}", file=sys.stderr)
            return 2
        files = json.loads((root / "synth.json").read_text())["files"]
        unit = "sequences" if modality == "video" else "samples"
        listing = ", ".join(f"{folder}/ {count}" for folder, count in files.items())
        print(
            f"{modality}: {n} {unit} -> {root} ({listing}; captions.json, synth.json) "
            f"in {time.perf_counter() - start:.1f}s"
        )
    return 0
