"""DeepUSPS through the Python API: handcrafted maps -> per-method refinement rounds -> fusion -> scores.

Run from the repository root (a few minutes on a CPU; ``--tiny`` for a seconds-long smoke run):

    python examples/api/deepusps_refine.py --out runs/example_deepusps
    python examples/api/deepusps_refine.py --out runs/deepusps-duts --dataset duts --root /data/DUTS --full

Every round lands in the pseudo-label store ``OUT/labels`` (``hc-<method>``, ``<method>-r<k>-mva``,
``<method>-r<k>-pred``, ``fused-pred``); ``OUT/fused.ckpt`` predicts like any usod checkpoint
(``usod predict --ckpt OUT/fused.ckpt --input DIR --output MAPS``). Rerunning resumes finished rounds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from usod.data.synth import write_dataset
from usod.evaluation import format_table
from usod.pipelines import DeepUSPSConfig, run_deepusps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example_deepusps"))
    parser.add_argument("--dataset", default="folder", help="registered dataset (default: synthetic folder)")
    parser.add_argument("--root", type=Path, default=None, help="dataset root (default: synthetic in OUT)")
    parser.add_argument("--full", action="store_true", help="the paper's schedule (2 rounds, 25/200 epochs)")
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight model and data (smoke test)")
    args = parser.parse_args()

    root = args.root
    if root is None:
        root = args.out / "data"
        if not (root / "synth.json").is_file():
            write_dataset(root, "rgb", 6 if args.tiny else 48, size=(48, 48) if args.tiny else (128, 128))
    if args.tiny:
        schedule = {"methods": ("rbd", "mr"), "rounds": 1, "epochs": 1, "fusion_epochs": 1, "image_size": 32}
        tiny = {"name": "test_resnet", "weights": "none"}
        refiner = {"backbone": tiny, "channels": 16, "crf": {"n_iters": 2}}
    elif args.full:
        schedule = {"rounds": 2, "epochs": 25, "fusion_epochs": 200, "image_size": 224}
        refiner = {"backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled"}}
    else:
        schedule = {"rounds": 1, "epochs": 4, "fusion_epochs": 6, "image_size": 128}
        refiner = {"backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled"}}

    config = DeepUSPSConfig(
        out=args.out,
        dataset=args.dataset,
        root=root,
        handcrafted_workers=0 if args.tiny else 2,
        batch_size=4 if args.tiny else 16,
        num_workers=0 if args.tiny else 2,
        refiner=refiner,
        accelerator="cpu" if args.tiny else "auto",
        **schedule,
    )
    summary = run_deepusps(config)
    if summary["metrics"]:  # only with ground truth beside the images
        print(format_table(summary["metrics"]))
    print("step times (s):", summary["timings_s"])
    print(f"fused detector: {config.fused_ckpt}")


if __name__ == "__main__":
    main()
