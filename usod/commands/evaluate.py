"""``usod evaluate``: score folders of saliency maps against ground-truth masks.

Usage::

    usod evaluate --gt GT_DIR --pred A2S=preds/a2s --pred preds/spr --json scores.json --plot curves.png

Files are paired by *stem* (the path relative to the folder without extension, searched recursively) and
scored with :class:`usod.metrics.SODMetrics`; how maps are read and resized is described in
:mod:`usod.evaluation`, which does the work. Ground-truth files without a prediction and predictions without a
ground truth are reported (a count and the first names) and left out; ``--strict`` turns missing predictions
into an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from usod.commands import non_negative_int
from usod.data.io import InvalidInputError, atomic_write_bytes
from usod.evaluation import (
    format_table,
    list_maps,
    plot_curves,
    report_unpaired,
    score_pairs,
    worker_pool,
    written_by_usod,
)

__all__ = ["add_arguments", "run"]


def _parse_pred(value: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (name = folder name); an existing folder wins over splitting on '='."""
    if "=" in value and not Path(value).is_dir():
        name, folder = value.split("=", 1)
        if not name or not folder:
            raise argparse.ArgumentTypeError(f"--pred expects NAME=DIR or DIR, got {value!r}")
        return name, Path(folder)
    folder = Path(value)
    return folder.resolve().name, folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``usod evaluate`` options."""
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks (recursive)")
    parser.add_argument(
        "--pred",
        required=True,
        action="append",
        type=_parse_pred,
        metavar="[NAME=]DIR",
        help="folder of saliency maps; repeat for several methods (name defaults to the folder name)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write {method: scores} to this JSON file")
    parser.add_argument(
        "--plot", type=Path, default=None, help="write PR and F-threshold curves to this image"
    )
    parser.add_argument("--workers", type=non_negative_int, default=0, help="worker processes (0 = none)")
    parser.add_argument(
        "--strict", action="store_true", help="fail when a ground-truth file has no prediction"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --json/--plot files that usod evaluate did not write (its own are always replaced)",
    )


def _check_outputs(json_path: Path | None, plot_path: Path | None, overwrite: bool = False) -> None:
    """Refuse output paths that could only fail once every map is scored, and files usod did not write."""
    for path in (json_path, plot_path):
        if path is not None and path.is_dir():
            raise InvalidInputError(path, "is a folder; give a file name")
        if path is not None and path.exists() and not overwrite and not written_by_usod(path):
            raise InvalidInputError(
                path, "exists and was not written by usod evaluate; pass --overwrite to replace it"
            )
    if plot_path is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = sorted(FigureCanvasBase.get_supported_filetypes())
        if plot_path.suffix.lower().lstrip(".") not in formats:
            shown = ", ".join("." + f for f in formats)
            raise InvalidInputError(plot_path, f"unsupported plot format; use one of {shown}")


def run(args: argparse.Namespace) -> int:
    """Run ``usod evaluate``.

    Returns:
        0 on success, 1 when ``--strict`` and predictions are missing, 2 on bad input.
    """
    names = [name for name, _ in args.pred]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        print(
            f"usod evaluate: method names must be unique, repeated: {', '.join(duplicates)}", file=sys.stderr
        )
        return 2
    try:
        _check_outputs(args.json, args.plot, args.overwrite)  # before the scoring, not after it
        gt_maps = list_maps(args.gt)
        if not gt_maps:
            raise InvalidInputError(args.gt, "contains no image files")
        results = []
        workers = max(0, args.workers)
        with worker_pool(workers) as pool:
            for name, folder in args.pred:
                res = score_pairs(gt_maps, folder, name, pool, not args.no_progress)
                report_unpaired(res)
                results.append(res)
    except InvalidInputError as err:
        print(f"usod evaluate: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            args.json, (json.dumps({r.name: r.scores for r in results}, indent=2) + "\n").encode()
        )
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(results, args.plot)
    if args.strict and any(r.missing for r in results):
        print("usod evaluate: --strict and some ground-truth files have no prediction", file=sys.stderr)
        return 1
    return 0
