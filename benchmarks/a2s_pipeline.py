"""The two-stage A2S pipeline on real images, with a label-update ablation (issue #6).

Trains stage 1 (CueExtractor, frozen bundled EfficientNet-Lite0) and stage 2 (SaliencyDetector) on the images
of ``--data`` without their masks, then scores on the training images (pseudo labels and predictions vs the
masks) and on the held-out ``--eval`` set (frames never trained on)::

    python benchmarks/a2s_pipeline.py --data ../shared/data/duts-tr-499 \\
        --eval ../shared/data/davis-2016-val-5 --out /tmp/bench-a2s

Stage 2 runs once per label update in ``--ablation`` (default: none, olr, spr), each on the same stage-1
labels. The first listed update is the main run: ``OUT/stage1.ckpt`` and ``OUT/stage2.ckpt`` (both usable by
``usod predict``), its label store and report are in ``OUT/``; the others are in ``OUT/ablation/<update>/``.
Prints tables and writes ``OUT/results.json``. Rerunning resumes every finished step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch


def _seed_ablation(main_out: Path, out: Path) -> None:
    """Give an ablation folder the main run's stage-1 checkpoint and labels, so only stage 2 is trained."""
    if (out / "stage1.ckpt").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    src = main_out / "labels"
    dst = out / "labels"
    shutil.rmtree(dst, ignore_errors=True)
    manifest = json.loads((src / "manifest.json").read_text())
    keep = [r for r in manifest["rounds"] if r["name"] in ("stage1-raw", "stage1")]
    for entry in keep:
        shutil.copytree(src / "rounds" / entry["name"], dst / "rounds" / entry["name"])
    for entry in keep:  # the rounds came from the same weights, copied next to them
        if (entry.get("meta") or {}).get("ckpt"):
            entry["meta"]["ckpt"] = str((out / "stage1.ckpt").resolve())
    manifest.update(rounds=keep, current="stage1")
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.copyfile(main_out / "stage1.ckpt", out / ".stage1.ckpt.tmp")
    os.replace(out / ".stage1.ckpt.tmp", out / "stage1.ckpt")


def _newer(a: Path, b: Path) -> bool:
    return a.stat().st_mtime_ns > b.stat().st_mtime_ns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="training images (with masks for scoring)")
    parser.add_argument("--dataset", default="folder", help="registry name of the training layout")
    parser.add_argument("--eval", type=Path, required=True, help="held-out set with ground truth")
    parser.add_argument("--eval-dataset", default="davis", help="registry name of the held-out layout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--stage1-epochs", type=int, default=4)
    parser.add_argument("--stage2-epochs", type=int, default=3)
    parser.add_argument("--stage2-image-size", type=int, default=160)
    parser.add_argument("--stage2-lr", type=float, default=0.005)
    parser.add_argument(
        "--ablation", nargs="+", default=["olr", "none", "spr"], choices=("none", "olr", "spr")
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from usod.evaluation import format_table
    from usod.pipelines import PipelineConfig, run_pipeline

    backbone = {"name": "tf_efficientnet_lite0", "weights": "bundled"}
    base = PipelineConfig(
        out=args.out,
        dataset=args.dataset,
        root=args.data,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        postprocess_workers=args.workers,
        stage1_epochs=args.stage1_epochs,
        stage1={"backbone": backbone, "fuse_stride": 4},
        stage2_epochs=args.stage2_epochs,
        stage2_image_size=args.stage2_image_size,
        stage2={"backbone": backbone, "lr": args.stage2_lr, "label_update": args.ablation[0]},
        eval=[{"name": "eval", "dataset": args.eval_dataset, "root": str(args.eval)}],
        accelerator="cpu",
        seed=args.seed,
    )
    runs: dict[str, dict] = {}
    wall = time.perf_counter()
    for index, update in enumerate(args.ablation):
        out = args.out if index == 0 else args.out / "ablation" / update
        if index:
            _seed_ablation(args.out, out)
        config = dataclasses.replace(base, out=out, stage2={**base.stage2, "label_update": update})
        start = time.perf_counter()
        report = out / "report" / "metrics.json"
        if (out / "stage2.ckpt").is_file() and report.is_file() and _newer(report, out / "stage2.ckpt"):
            runs[update] = json.loads(report.read_text())  # finished earlier: reuse its report
        else:
            runs[update] = run_pipeline(config)
        runs[update]["wall_s"] = time.perf_counter() - start
    wall = time.perf_counter() - wall

    main_run = runs[args.ablation[0]]
    train = {k: main_run["metrics"][k] for k in ("stage1-raw", "stage1")}
    heldout = {"stage1": main_run["eval"]["eval/stage1"]}
    for update, summary in runs.items():
        train[f"stage2 ({update})"] = summary["metrics"]["stage2-pred"]
        heldout[f"stage2 ({update})"] = summary["eval"]["eval/stage2"]
    print("\ntraining images (pseudo labels / predictions vs masks):")
    print(format_table(train))
    print(f"\nheld-out {args.eval_dataset} frames (never trained on):")
    print(format_table(heldout))
    print("\nstep times (s):")
    for update, summary in runs.items():
        steps = ", ".join(f"{k} {v:.0f}" for k, v in summary["timings_s"].items())
        print(f"  {update}: {steps} (wall {summary['wall_s']:.0f})")
    print(f"total: {wall:.0f} s ({wall / 60:.1f} min)")
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train": train,
        "heldout": heldout,
        "timings_s": {u: s["timings_s"] for u, s in runs.items()},
        "total_s": wall,
        "checkpoints": {"stage1": str(args.out / "stage1.ckpt"), "stage2": str(args.out / "stage2.ckpt")},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
