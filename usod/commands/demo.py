"""``usod demo --out DIR``: the whole unsupervised pipeline on the embedded synthetic data.

Writes the synthetic RGB set (if missing), trains stage 1 with the bundled EfficientNet-Lite0 weights,
writes the pseudo labels, scores them against the synthetic ground truth and leaves a report folder.
Needs no download and runs in a few minutes on 2 CPU cores; rerunning resumes finished steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from usod.commands import non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--n", type=positive_int, default=240, help="synthetic training images")
    parser.add_argument("--image-size", type=positive_int, default=128)
    parser.add_argument("--epochs", type=positive_int, default=10, help="stage-1 epochs")
    parser.add_argument(
        "--stage2-epochs", type=non_negative_int, default=6, help="stage-2 epochs (0: stage 1 only)"
    )
    parser.add_argument("--workers", type=non_negative_int, default=2, help="data and CRF worker processes")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from usod.data.io import InvalidInputError
    from usod.data.synth import write_dataset
    from usod.pipelines import a2s

    start = time.perf_counter()
    data = args.out / "data" / "rgb"
    size = (args.image_size, args.image_size)
    record = data / "synth.json"
    meta = json.loads(record.read_text()) if record.is_file() else None
    if meta is None or not meta.get("complete"):  # none yet, or interrupted while writing: (re)write it
        write_dataset(data, "rgb", args.n, seed=args.seed, size=size, overwrite=meta is not None)
    else:
        made = meta.get("config", {})
        wanted = {"n_images": args.n, "seed": args.seed, "size": list(size)}
        if any(made.get(k) != v for k, v in wanted.items()):
            shown = {k: made.get(k) for k in wanted}
            raise InvalidInputError(
                args.out, f"holds a demo made with other data settings {shown}; use another --out"
            )
    config = a2s.PipelineConfig(
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
    summary = a2s.run_pipeline(config)
    print()
    print(a2s.format_summary(summary))
    print(f"\nreport: {args.out / 'report'} ({time.perf_counter() - start:.0f} s)")
    return 0
