"""``usod demo --out DIR``: the whole unsupervised pipeline on the embedded synthetic data.

Writes the synthetic RGB set (if missing), trains stage 1 with the bundled EfficientNet-Lite0 weights,
writes the pseudo labels, scores them against the synthetic ground truth and leaves a report folder.
Needs no download and runs in a few minutes on 2 CPU cores; rerunning resumes finished steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--n", type=int, default=240, help="synthetic training images")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10, help="stage-1 epochs")
    parser.add_argument("--stage2-epochs", type=int, default=6, help="stage-2 epochs (0: stage 1 only)")
    parser.add_argument("--workers", type=int, default=2, help="data and CRF worker processes")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from usod.data.synth import write_dataset
    from usod.pipeline import PipelineConfig, format_summary, run_pipeline

    start = time.perf_counter()
    data = args.out / "data" / "rgb"
    if not (data / "synth.json").is_file():
        write_dataset(data, "rgb", args.n, seed=args.seed, size=(args.image_size, args.image_size))
    config = PipelineConfig(
        out=args.out,
        dataset="folder",
        root=data,
        image_size=args.image_size,
        batch_size=16,
        num_workers=args.workers,
        postprocess_workers=args.workers,
        stage1_epochs=args.epochs,
        stage2_epochs=args.stage2_epochs,
        stage1={"backbone": {"name": "tf_efficientnet_lite0", "weights": "bundled"}, "fuse_stride": 4},
        accelerator="cpu",
        seed=args.seed,
    )
    summary = run_pipeline(config)
    print()
    print(format_summary(summary))
    print(f"\nreport: {args.out / 'report'} ({time.perf_counter() - start:.0f} s)")
    return 0
