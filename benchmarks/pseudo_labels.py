"""Stage-1 pseudo-label quality on real images (A2S cue extraction, issue #5).

Trains the :class:`~usod.models.cue_extractor.CueExtractor` on the images of ``--data`` only (its masks are
never read for training), writes the post-processed pseudo labels to ``OUT/labels/<id>.png`` and scores them
against the masks, next to baselines that need no training:

- ``centre prior``: an isotropic Gaussian at the image centre (sigma = 1/4 of each side);
- ``activation``: the mean activation of the frozen encoder's deepest stage with the same weights, normalised
  per image (the "activation" that A2S turns into saliency, before any training);
- ``stage1-raw`` / ``stage1``: the trained cue extractor's maps, before and after denseCRF + median filter.

Usage::

    python benchmarks/pseudo_labels.py --data ../shared/data/duts-tr-499 --out /tmp/bench-labels

Prints a table and writes ``OUT/results.json`` (scores, step times, settings, machine). The pipeline's own
folder (checkpoint, label store with every round, report plots) is ``OUT/run``; rerunning resumes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def centre_prior(height: int, width: int) -> np.ndarray:
    """Gaussian centre prior in [0, 1], sigma a quarter of each side."""
    ys = (np.arange(height) - (height - 1) / 2) / (height / 4)
    xs = (np.arange(width) - (width - 1) / 2) / (width / 4)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)


@torch.no_grad()
def score_baselines(dataset, backbone: dict, image_size: int, batch_size: int = 16) -> dict[str, dict]:
    """Max F / MAE... of the centre prior and of the untrained activation map."""
    from usod.data.transforms import EvalTransform
    from usod.metrics import SODMetrics
    from usod.models.backbones import BackboneConfig, build_encoder

    encoder = build_encoder(BackboneConfig(**backbone)).eval()
    transform = EvalTransform(image_size)
    metrics = {"centre prior": SODMetrics(), "activation": SODMetrics()}
    for start in range(0, len(dataset), batch_size):
        samples = [dataset.load_raw(i) for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([transform({"image": s["image"]})["image"] for s in samples])
        deepest = encoder(images)[-1].mean(1, keepdim=True)
        for sample, act in zip(samples, deepest, strict=True):
            mask = torch.tensor(sample["mask"])[None]  # a copy: the decoded array is read-only
            h, w = sample["mask"].shape
            act = F.interpolate(act[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            act = (act - act.min()) / (act.max() - act.min()).clamp_min(1e-8)
            metrics["activation"].update(act, mask)
            metrics["centre prior"].update(torch.from_numpy(centre_prior(h, w))[None], mask)
    return {name: {k: float(v) for k, v in m.compute().items() if k != "n"} for name, m in metrics.items()}


def export_labels(store_root: Path, round_name: str, out: Path) -> int:
    """Copy a round's labels to ``out/<id>.png`` (the benchmark's deliverable); return how many."""
    from usod.labels import PseudoLabelStore

    store = PseudoLabelStore(store_root)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(store.finished_ids(round_name))
    for sample_id in ids:
        shutil.copyfile(store.label_path(round_name, sample_id), out / f"{sample_id}.png")
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="image folder with masks (images/, masks/)")
    parser.add_argument("--dataset", default="folder", help="registry name of the dataset layout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=4, help="stage-1 epochs (the first fills the cache)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--loss", choices=("adb", "pcl_sd"), default="adb")
    parser.add_argument("--fuse-stride", type=int, default=4)
    parser.add_argument("--sign-rule", default="area")
    parser.add_argument("--workers", type=int, default=2, help="data and CRF processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from usod.data.datasets import get_dataset
    from usod.evaluation import format_table
    from usod.pipelines.a2s import LABEL_ROUND, RAW_ROUND, PipelineConfig, run_pipeline

    backbone = {"name": "tf_efficientnet_lite0", "weights": "bundled"}
    config = PipelineConfig(
        out=args.out / "run",
        dataset=args.dataset,
        root=args.data,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        postprocess_workers=args.workers,
        stage1_epochs=args.epochs,
        stage1={
            "backbone": backbone,
            "fuse_stride": args.fuse_stride,
            "loss": args.loss,
            "lr": args.lr,
            "sign_rule": args.sign_rule,
        },
        accelerator="cpu",
        seed=args.seed,
    )
    start = time.perf_counter()
    summary = run_pipeline(config)
    total = time.perf_counter() - start
    timings = dict(summary["timings_s"])
    n_labels = export_labels(config.out / "labels", LABEL_ROUND, args.out / "labels")

    start = time.perf_counter()
    dataset = get_dataset(args.dataset, root=args.data, with_masks=True)
    baselines = score_baselines(dataset, backbone, args.image_size)
    timings["baselines"] = time.perf_counter() - start

    metrics = {**baselines, **{k: summary["metrics"][k] for k in (RAW_ROUND, LABEL_ROUND)}}
    print()
    print(format_table(metrics))
    print("\nstep times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"pipeline total: {total:.0f} s ({total / 60:.1f} min) for {len(dataset)} images")
    result = {
        "data": str(args.data),
        "n_images": len(dataset),
        "labels": str(args.out / "labels"),
        "n_labels": n_labels,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "metrics": metrics,
        "timings_s": timings,
        "pipeline_total_s": total,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
        },
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
