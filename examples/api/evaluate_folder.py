"""Score folders of saliency maps against ground truth through the Python API, with PR curves.

The API behind ``usod evaluate``: maps and masks are paired by their path relative to each folder without
extension (``<seq>/<frame>`` for video), predictions are resized to their mask, and the scores follow
pysodmetrics 1.6.2. Run from the repository root:

    python examples/api/evaluate_folder.py --gt GT_DIR --pred A2S=maps/a2s --pred RBD=maps/rbd --out runs/eval
    python examples/api/evaluate_folder.py --out runs/example_eval   # demo: synthetic masks, RBD/MR maps

Writes ``OUT/scores.json`` (the structure of ``usod evaluate --json``) and ``OUT/curves.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from usod.data.synth import write_dataset
from usod.evaluation import evaluate_method, format_table, plot_curves
from usod.handcrafted import run_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, default=None, help="ground-truth masks (default: synthetic demo)")
    parser.add_argument("--pred", action="append", default=[], metavar="NAME=DIR", help="maps (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/example_eval"))
    parser.add_argument("--workers", type=int, default=0, help="worker processes for scoring")
    parser.add_argument("--tiny", action="store_true", help="tiny demo data (smoke test)")
    args = parser.parse_args()

    preds = dict(p.split("=", 1) if "=" in p else (Path(p).name, p) for p in args.pred)
    gt = args.gt
    if gt is None:  # demo: synthetic masks and two handcrafted methods' maps
        data = args.out / "data"
        if not (data / "synth.json").is_file():
            write_dataset(data, "rgb", 4 if args.tiny else 60, size=(48, 48) if args.tiny else (128, 128))
        gt = data / "masks"
        for method in ("rbd", "mr"):
            preds.setdefault(method.upper(), str(args.out / "maps" / method))
            run_folder(method, data / "images", args.out / "maps" / method, skip_existing=True)
    if not preds:
        parser.error("give at least one --pred NAME=DIR with --gt")

    results = [evaluate_method(gt, Path(d), name, workers=args.workers) for name, d in preds.items()]
    print(format_table(results))
    for res in results:
        if res.missing or res.extra:
            print(f"{res.name}: {len(res.missing)} masks without a map, {len(res.extra)} maps without a mask")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps({r.name: r.scores for r in results}, indent=2))
    plot_curves(results, args.out / "curves.png")
    print(f"scores: {args.out / 'scores.json'}, curves: {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
