"""DeepUSPS on real images: raw handcrafted maps, each refinement round, and the fused detector.

Usage::

    python benchmarks/deepusps.py --data ../shared/data/duts-tr-499 --out OUT [--limit N] [--image-size 128]
        [--epochs 4] [--rounds 1] [--fusion-epochs 6] [--methods rbd,mc,dsr,mr] [--workers 2]

``--data`` is a folder with ``images/`` and ``masks/`` (the masks are only read to score, never in training).
The whole pipeline runs through :func:`usod.models.deepusps.run_deepusps` into ``OUT`` (resumable: rerun the
same command after an interruption), then every pseudo-label round is scored against the masks on the
training images themselves (label quality, as in the paper's Fig. 6; there is no held-out split here):

* ``<method> raw``: the handcrafted maps;
* ``<method> r<k> mva``: the CRF'd moving averages of refinement round ``k`` (the refined pseudo labels;
  ``k = 0`` is inter-image consistency, ``k >= 1`` self-supervision);
* ``<method> r<k> net``: the round's network maps;
* ``fused``: the final detector trained on every method's last moving averages.

Prints a table of max F (beta^2 = 0.3) and MAE with the seconds each step took, writes ``OUT/results.json``
and leaves ``OUT/fused.ckpt`` (``usod predict --ckpt OUT/fused.ckpt --input ... --output ...``).
With ``--limit N`` the first N images (sorted by name) are used, through symlinks in ``OUT/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from usod.pipelines import DeepUSPSConfig, run_deepusps
from usod.pipelines.deepusps import FUSED_ROUND, handcrafted_round, mva_round, pred_round

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "duts-tr-499"


def subset(data: Path, out: Path, limit: int | None) -> Path:
    """``data`` itself, or a folder of symlinks to its first ``limit`` images and their masks."""
    if not limit:
        return data
    root = out / "data"
    images = sorted(p for p in (data / "images").iterdir() if not p.name.startswith("."))[:limit]
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image in images:
        mask = data / "masks" / f"{image.stem}.png"
        for src, dst in ((image, root / "images" / image.name), (mask, root / "masks" / mask.name)):
            if src.exists() and not dst.exists():
                os.symlink(src.resolve(), dst)
    return root


def table(config: DeepUSPSConfig, summary: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Rows ``{"name", "round", "max_f", "mae", "seconds"}`` and their text table."""
    metrics, timings = summary["metrics"], summary["timings_s"]
    rows: list[dict[str, Any]] = []

    def add(name: str, round_name: str, seconds: float | None) -> None:
        scores = metrics.get(round_name, {})
        rows.append(
            {
                "name": name,
                "round": round_name,
                "max_f": scores.get("max_f"),
                "mae": scores.get("mae"),
                "seconds": seconds,
            }
        )

    for method in config.methods:
        add(f"{method} raw", handcrafted_round(method), timings.get(handcrafted_round(method)))
        for k in range(config.rounds + 1):
            add(f"{method} r{k} mva", mva_round(method, k), timings.get(f"{method}-r{k}"))
            add(f"{method} r{k} net", pred_round(method, k), timings.get(f"{method}-r{k}-predict"))
    fused_seconds = (timings.get("fusion") or 0.0) + (timings.get("fusion-predict") or 0.0)
    add("fused", FUSED_ROUND, fused_seconds)
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'':<{width}}  {'max F':>7}  {'MAE':>7}  {'time s':>8}"]
    for r in rows:
        f = f"{r['max_f']:.4f}" if r["max_f"] is not None else "-"
        m = f"{r['mae']:.4f}" if r["mae"] is not None else "-"
        s = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        lines.append(f"{r['name']:<{width}}  {f:>7}  {m:>7}  {s:>8}")
    return rows, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with images/ and masks/")
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--methods", default="rbd,mc,dsr,mr", help="comma list of handcrafted methods")
    parser.add_argument("--rounds", type=int, default=1, help="self-supervision rounds after round 0")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per refinement round")
    parser.add_argument("--fusion-epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="decoder learning rate of round 0")
    parser.add_argument("--lr-growth", type=float, default=2.0, help="learning-rate factor per round")
    parser.add_argument("--mva-start", type=int, default=0, help="first epoch that enters the MVA")
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--crf-iters", type=int, default=5, help="mean-field iterations of the MVA CRF")
    parser.add_argument("--workers", type=int, default=2, help="handcrafted-method processes")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm encoder")
    parser.add_argument("--weights", default="bundled", help="encoder weights (bundled, none or a file)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    root = subset(args.data, args.out, args.limit)
    backbone = {"name": args.backbone, "weights": args.weights, "out_indices": [1, 2, 3, 4]}
    config = DeepUSPSConfig(
        out=args.out,
        dataset="folder",
        root=root,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        handcrafted_workers=args.workers,
        rounds=args.rounds,
        epochs=args.epochs,
        fusion_epochs=args.fusion_epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.loader_workers,
        refiner={
            "backbone": backbone,
            "lr": args.lr,
            "crf": {"n_iters": args.crf_iters},
            "mva_start_epoch": args.mva_start,
        },
        lr_growth=args.lr_growth,
        accelerator="cpu",
    )
    start = time.perf_counter()
    summary = run_deepusps(config)
    total = time.perf_counter() - start
    rows, text = table(config, summary)
    print(text)
    print(f"total {total:.0f} s in this call ({len(list((root / 'images').iterdir()))} images)")
    results = {
        "settings": {**vars(args), "data": str(args.data), "out": str(args.out)},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "rows": rows,
        "timings_s": summary["timings_s"],
        "total_s": round(total, 1),
        "metrics": summary["metrics"],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
