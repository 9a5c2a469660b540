"""Adapter tuning of a still-image saliency model on DAVIS frames (+ optical flow), without labels.

Usage::

    python benchmarks/transfer_video.py --base OUT/stage2.ckpt \
        --data ../shared/data/davis-2016-val-5 --out OUT2

The base checkpoint (a ``SaliencyDetector`` or ``CueExtractor``, e.g. ``stage2.ckpt`` of ``usod demo`` or of
a DUTS run) is frozen; :class:`~usod.models.adapter_transfer.AdapterTransfer` hooks adapters onto its deep
encoder layers and trains only them on the DAVIS frames (unsupervised: the labels are the base's own
CRF-refined predictions, rectified by SPR after every epoch; ground truth is never read in training). Optical
flow comes from the dataset's ``Flow/`` folder or is computed once with OpenCV DIS and cached in
``OUT2/flow_cache``; it enters the adapters as an auxiliary stream (``--aux none``: frames only).

The base and the adapted model are then scored on the same frames against the DAVIS masks at the original
resolution (the transductive USOD protocol: training images are the test images, labels never seen). Prints
a table, writes ``OUT2/results.json`` and ``OUT2/adapted.ckpt`` (usable by ``usod predict``, which computes
the flow of a frame folder itself).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from usod.data.datasets import get_dataset
from usod.data.transforms import EvalTransform
from usod.metrics import SODMetrics

METRICS = ("mae", "max_f", "mean_f", "adp_f", "max_e", "mean_e", "s_measure")


class FramesWithMasks(Dataset):
    """DAVIS frames (and flow) resized for the network, with the mask kept at its original size."""

    def __init__(self, dataset: Any, image_size: int) -> None:
        self.dataset = dataset
        self.transform = EvalTransform(image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.dataset.load_raw(index)
        mask = raw.pop("mask")
        sample = self.transform(raw)
        sample["mask"] = torch.from_numpy(mask)[None]
        return sample


@torch.no_grad()
def score(model: Any, loader: DataLoader, base: bool) -> dict[str, float]:
    """SOD metrics of the base (adapters idle) or adapted model at the masks' resolution."""
    metrics = SODMetrics(weighted_f=False)
    model.eval()
    for batch in loader:
        images = batch["image"]
        _, aux = model._aux(batch, images)
        sal = model.base_saliency(images, aux) if base else model(images, aux)
        for i in range(images.shape[0]):
            mask = batch["mask"][i : i + 1]
            pred = F.interpolate(sal[i : i + 1], size=mask.shape[-2:], mode="bilinear", align_corners=False)
            metrics.update(pred.clamp(0, 1), mask)
    return {k: float(v) for k, v in metrics.compute().items() if k in METRICS}


def label_quality(model: Any, dataset: Any) -> dict[str, float]:
    """MAE and max F of the module's current target labels against the masks (at the labels' size)."""
    metrics = SODMetrics(weighted_f=False)
    labels = model.export_labels()
    from usod.data import io

    for files in dataset.files:
        label = labels.get(files.id)
        if label is None or files.mask is None:
            continue
        mask = torch.from_numpy(io.read_mask(files.mask))[None, None].float() / 255.0
        mask = F.interpolate(mask, size=label.shape, mode="bilinear", align_corners=False)
        metrics.update(torch.from_numpy(label)[None, None], mask)
    scores = metrics.compute()
    return {"mae": float(scores["mae"]), "max_f": float(scores["max_f"]), "n": len(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", required=True, type=Path, help="base checkpoint (SaliencyDetector/CueExtractor)"
    )
    parser.add_argument("--data", required=True, type=Path, help="DAVIS root (JPEGImages/480p/<seq>/...)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--image-size", type=int, default=128, help="network input size")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--adapt-levels", type=int, default=2)
    parser.add_argument(
        "--aux", choices=("flow", "none"), default="flow", help="auxiliary input of the adapters"
    )
    parser.add_argument("--label-update", choices=("spr", "olr", "none"), default="spr")
    parser.add_argument(
        "--initial-labels", choices=("raw", "crf"), default="raw", help="base prediction, or CRF-refined"
    )
    parser.add_argument(
        "--limit-train-batches", type=float, default=1.0, help="fraction of the frames seen per epoch"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import pytorch_lightning as pl

    from usod.data.datamodules import VideoDataModule
    from usod.models.adapter_transfer import AdapterTransfer

    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    use_flow = args.aux == "flow"
    flow_kw = (
        {"with_flow": True, "flow_source": "auto", "flow_cache": str(args.out / "flow_cache")}
        if use_flow
        else {}
    )

    start = time.perf_counter()
    eval_set = get_dataset("davis", root=args.data, with_masks=True, **flow_kw)
    timings["flow_s"] = time.perf_counter() - start
    eval_loader = DataLoader(
        FramesWithMasks(eval_set, args.image_size), batch_size=args.batch_size, num_workers=args.workers
    )
    dm = VideoDataModule(
        dataset="davis",
        root=str(args.data),
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augment=False,  # the module flips itself (not with flow); label updates need fixed images
        seed=args.seed,
        **flow_kw,
    )
    model = AdapterTransfer(
        base=str(args.base),
        aux_modality=args.aux,
        adapt_levels=args.adapt_levels,
        lr=args.lr,
        label_update=args.label_update,
        initial_labels=args.initial_labels,
    )
    counts = model.parameter_counts()

    start = time.perf_counter()
    base_scores = score(model, eval_loader, base=True)
    timings["eval_base_s"] = time.perf_counter() - start

    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        limit_train_batches=args.limit_train_batches,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    timings["train_s"] = time.perf_counter() - start
    trainer.save_checkpoint(args.out / "adapted.ckpt")

    start = time.perf_counter()
    adapted_scores = score(model, eval_loader, base=False)
    timings["eval_adapted_s"] = time.perf_counter() - start
    labels = label_quality(model, eval_set) if model.is_detector else None

    results = {
        "base": str(args.base),
        "data": str(args.data),
        "frames": len(eval_set),
        "sequences": len(eval_set.sequences),
        "settings": {
            "image_size": args.image_size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "adapt_levels": args.adapt_levels,
            "aux": args.aux,
            "label_update": args.label_update,
            "initial_labels": args.initial_labels,
            "limit_train_batches": args.limit_train_batches,
            "adapted_units": model.adapters.unit_names,
            "threads": args.threads,
        },
        "parameters": {**counts, "trained_fraction": counts["trained"] / counts["total"]},
        "scores": {"base": base_scores, "adapted": adapted_scores},
        "final_labels": labels,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
        f"{args.threads} threads",
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"\nDAVIS ({len(eval_set)} frames, {len(eval_set.sequences)} sequences), {args.image_size}px input:"
    )
    print(f"{'model':<10}" + "".join(f"{m:>10}" for m in METRICS))
    for name, scores in (("base", base_scores), ("adapted", adapted_scores)):
        print(f"{name:<10}" + "".join(f"{scores[m]:>10.4f}" for m in METRICS))
    print(
        f"trained parameters: {counts['trained']:,} of {counts['total']:,} "
        f"({100 * counts['trained'] / counts['total']:.2f} %); times: {results['timings_s']}"
    )
    print(f"wrote {args.out / 'results.json'} and {args.out / 'adapted.ckpt'}")


if __name__ == "__main__":
    main()
