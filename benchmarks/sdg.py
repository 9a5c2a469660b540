"""SDG-SOD: PVT-SOD with vs without caption guidance, on a generated multi-object set (or real data).

Usage::

    python benchmarks/sdg.py [--n-train 400] [--n-test 100] [--size 96] [--seeds 0 1] [--json OUT.json]
    python benchmarks/sdg.py --data ROOT --captions CAPTIONS.json [--test-data TEST_ROOT]

The generated set: synthetic RGB scenes (:func:`usod.data.synth.make_scene`) with ``--min-objects`` to
``--max-objects`` salient objects each, and their generated captions (every object named by size, colour,
shape and position). Real data: a folder dataset (``images/`` + ``masks/``) and a COCO-captions file whose
image ids or file names match the image stems.

For each seed, the paper's phases are run with ground-truth masks (its supervised setting):

1. ``caption``: the captioner (bundled ImageNet EfficientNet-Lite0 grid encoder, 1-layer decoders) on the
   training captions;
2. ``sod``: PVT-SOD (``pvt_v2_b0``, random init: no PVT weights offline) with F3Net's loss, started from 1;
3. from the same phase-2 checkpoint, the same number of further epochs either
   a. without guidance (phase ``sod`` again): **PVT-SOD**, or
   b. with caption guidance (phase ``fused``, eq. 3 at all four levels): **SDG-SOD**.

Both arms of step 3 see the same images in the same order. The test images are scored with
:class:`usod.metrics.SODMetrics`. Two diagnostics of the captioner are reported as well: the share of the
summed word attention ``sum_j M_j`` that falls on salient pixels (next to the salient area fraction, which
is what a uniform map would get), and the recall/precision of the shape nouns of the generated captions
against the true captions (generated set only).

Prints a table and writes JSON (``--json``). Runs on the CPU by default (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SCORES = ("mae", "max_f", "mean_f", "adp_f", "max_e", "mean_e", "s_measure")


def write_multi_object_set(
    out: Path, n: int, size: int, seed: int, min_objects: int, max_objects: int
) -> Path:
    """Write ``n`` synthetic scenes with at least ``min_objects`` objects as ``images/``, ``masks/`` and
    ``captions.json`` (COCO captions)."""
    from usod.data.synth import SynthConfig, make_scene

    if (out / "captions.json").is_file():
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    config = SynthConfig(size=(size, size), max_objects=max_objects, min_area=0.08, max_area=0.5)
    images, annotations = [], []
    i = 0
    while len(images) < n:
        scene = make_scene(np.random.default_rng([seed, i]), config)
        i += 1
        if len(scene.objects) < min_objects:
            continue
        sid = f"scene_{len(images):05d}"
        cv2.imwrite(str(out / "images" / f"{sid}.jpg"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "masks" / f"{sid}.png"), scene.mask)
        images.append({"id": sid, "file_name": f"images/{sid}.jpg", "height": size, "width": size})
        annotations.append({"id": len(annotations), "image_id": sid, "caption": scene.caption})
    (out / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return out


def _trainer(epochs: int, root: Path) -> Any:
    import pytorch_lightning as pl

    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
    )


def run_phase(
    phase: str, epochs: int, init_from: Path | None, dm: Any, vocab: str, out: Path, args: argparse.Namespace
) -> tuple[Any, float]:
    """Train one phase and save its checkpoint to ``out``; returns the module and the seconds it took."""
    import pytorch_lightning as pl

    from usod.models.sdg import SDGCaptionGuided

    pl.seed_everything(args.seed_now, workers=True, verbose=False)
    module = SDGCaptionGuided(
        phase=phase,
        vocab=vocab,
        backbone={"name": args.pvt, "weights": "none"},
        decoder_dim=args.decoder_dim,
        caption_backbone={
            "name": "tf_efficientnet_lite0",
            "weights": "bundled",
            "out_indices": [args.grid_level],
        },
        caption_image_size=args.caption_size,
        text_dim=args.text_dim,
        text_layers=1,
        text_heads=4,
        supervision="mask",
        init_from=str(init_from) if init_from else None,
        lr=args.caption_lr if phase == "caption" else args.lr,
        encoder_lr_ratio=args.caption_encoder_lr_ratio if phase == "caption" else 1.0,
    )
    start = time.perf_counter()
    trainer = _trainer(epochs, out.parent)
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(out)
    return module, seconds


@torch.no_grad()
def evaluate(module: Any, dm: Any) -> dict[str, float]:
    """SOD metrics of ``module`` on the test images (at the test masks' stored size)."""
    from usod.metrics import SODMetrics

    module.eval()
    metrics = SODMetrics(weighted_f=False)
    for batch in dm.test_dataloader():
        sal = module.predict_saliency(batch["image"])
        metrics.update(sal, batch["mask"])
    return {k: float(v) for k, v in metrics.compute().items() if k in SCORES}


_SHAPE_WORDS = None


def _shape_words(text: str) -> set[str]:
    global _SHAPE_WORDS
    if _SHAPE_WORDS is None:
        from usod.data.synth import SHAPES

        _SHAPE_WORDS = set(SHAPES)
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w in _SHAPE_WORDS}


@torch.no_grad()
def captioner_diagnostics(module: Any, dm: Any, synthetic: bool) -> dict[str, float]:
    """Attention share on salient pixels vs salient area; shape-noun recall/precision of the captions."""
    from usod.models.sdg import guidance_map

    module.eval()
    on_object, area, hits, n_true, n_pred = [], [], 0, 0, 0
    examples = []
    for batch in dm.test_dataloader():
        images, masks = batch["image"], (batch["mask"] > 0.5).float()
        g = module.guidance(images)
        s = guidance_map(g.maps, g.valid, images.shape[-2:], "max")
        on_object += ((s * masks).sum(dim=(1, 2, 3)) / s.sum(dim=(1, 2, 3)).clamp_min(1e-8)).tolist()
        area += masks.mean(dim=(1, 2, 3)).tolist()
        if synthetic:
            for b, truth in enumerate(batch["caption"]):
                words = module.vocab.decode(g.tokens[b].tolist())
                pred, true = _shape_words(" ".join(words)), _shape_words(truth)
                hits += len(pred & true)
                n_true += len(true)
                n_pred += len(pred)
                if len(examples) < 3:
                    examples.append({"true": truth, "generated": " ".join(words)})
    out = {"attention_on_salient": float(np.mean(on_object)), "salient_area": float(np.mean(area))}
    if synthetic:
        out.update(shape_recall=hits / max(n_true, 1), shape_precision=hits / max(n_pred, 1))
        out["examples"] = examples  # type: ignore[assignment]
    return out


def run_seed(args: argparse.Namespace, seed: int, work: Path, train: Path, test: Path, vocab: str) -> dict:
    from usod.data.datamodules.captions import CaptionDataModule

    args.seed_now = seed
    dm = CaptionDataModule(
        dataset="folder",
        root=train,
        captions=str(Path(args.captions).resolve()) if args.captions else "captions.json",
        val_root=test,
        val_captions=str(Path(args.test_captions).resolve()) if args.test_captions else None,
        supervised=True,
        image_size=args.size,
        batch_size=args.batch_size,
        num_workers=0,
        crop_scale=(0.8, 1.0),
        seed=seed,
    )
    dm.setup("fit")
    dm.setup("test")
    run = work / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"seed": seed, "seconds": {}}
    cap, result["seconds"]["caption"] = run_phase(
        "caption", args.caption_epochs, None, dm, vocab, run / "caption.ckpt", args
    )
    result["captioner"] = captioner_diagnostics(cap, dm, synthetic=args.data is None)
    sod, result["seconds"]["sod"] = run_phase(
        "sod", args.sod_epochs, run / "caption.ckpt", dm, vocab, run / "sod.ckpt", args
    )
    result["pvt_sod_phase2"] = evaluate(sod, dm)
    base, result["seconds"]["sod_more"] = run_phase(
        "sod", args.fused_epochs, run / "sod.ckpt", dm, vocab, run / "sod_more.ckpt", args
    )
    result["pvt_sod"] = evaluate(base, dm)
    fused, result["seconds"]["fused"] = run_phase(
        "fused", args.fused_epochs, run / "sod.ckpt", dm, vocab, run / "fused.ckpt", args
    )
    result["sdg_sod"] = evaluate(fused, dm)
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def summarize(results: list[dict]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for arm in ("pvt_sod_phase2", "pvt_sod", "sdg_sod"):
        summary[arm] = {k: _mean_std([r[arm][k] for r in results]) for k in SCORES}
    summary["delta_sdg_minus_pvt"] = {
        k: _mean_std([r["sdg_sod"][k] - r["pvt_sod"][k] for r in results]) for k in SCORES
    }
    return summary


def print_table(summary: dict[str, Any], n_seeds: int) -> None:
    names = {
        "pvt_sod_phase2": "PVT-SOD after phase 2",
        "pvt_sod": "PVT-SOD (no guidance)",
        "sdg_sod": "SDG-SOD (caption-guided)",
        "delta_sdg_minus_pvt": "SDG - PVT",
    }
    head = f"{'model':<26}" + "".join(f"{k:>12}" for k in SCORES)
    print(head)
    print("-" * len(head))
    for key, label in names.items():
        cells = []
        for k in SCORES:
            mean, std = summary[key][k]
            cells.append(f"{mean:>+12.4f}" if key.startswith("delta") else f"{mean:>12.4f}")
            if n_seeds > 1 and not math.isnan(std):
                cells[-1] = f"{mean:+.3f}±{std:.3f}".rjust(12) if key.startswith("delta") else cells[-1]
        print(f"{label:<26}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "benchmarks" / "sdg", help="scratch dir")
    parser.add_argument("--data", type=Path, default=None, help="real training data (images/ + masks/)")
    parser.add_argument("--test-data", type=Path, default=None, help="real test data (default: --data)")
    parser.add_argument("--captions", default=None, help="COCO captions of --data")
    parser.add_argument("--test-captions", default=None, help="COCO captions of --test-data")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--min-objects", type=int, default=2)
    parser.add_argument("--max-objects", type=int, default=4)
    parser.add_argument("--size", type=int, default=96, help="SOD input side")
    parser.add_argument("--caption-size", type=int, default=128, help="captioner input side")
    parser.add_argument("--grid-level", type=int, default=3, help="Lite0 level of the grid (3: stride 16)")
    parser.add_argument(
        "--caption-encoder-lr-ratio",
        type=float,
        default=0.1,
        help="learning rate of the captioner's ImageNet encoder relative to --caption-lr (0: unchanged)",
    )
    parser.add_argument("--pvt", default="pvt_v2_b0")
    parser.add_argument("--decoder-dim", type=int, default=128)
    parser.add_argument("--text-dim", type=int, default=128)
    parser.add_argument("--caption-epochs", type=int, default=8)
    parser.add_argument("--sod-epochs", type=int, default=8)
    parser.add_argument("--fused-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--caption-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*in eval mode at the start of training.*")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        train = write_multi_object_set(
            args.work / "data" / "train", args.n_train, args.size, 1000, args.min_objects, args.max_objects
        )
        test = write_multi_object_set(
            args.work / "data" / "test", args.n_test, args.size, 2000, args.min_objects, args.max_objects
        )
        vocab = str(train / "captions.json")
        source = (
            f"generated: {args.n_train} train / {args.n_test} test scenes, {args.size}px, "
            f"{args.min_objects}-{args.max_objects} objects each"
        )
    else:
        if not args.captions:
            parser.error("--data needs --captions (a COCO-captions file of its images)")
        train, test = args.data, args.test_data or args.data
        vocab = str(Path(args.captions).resolve())
        source = f"real: train {train}, test {test}, captions {args.captions}"
    print(source)
    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        r = run_seed(args, seed, args.work, train, test, vocab)
        print(f"seed {seed}: phases {r['seconds']} s; captioner {r['captioner']}")
        results.append(r)
    summary = summarize(results)
    print()
    print_table(summary, len(results))
    total = time.perf_counter() - started
    print(
        f"\n{len(results)} seed(s), {total / 60:.1f} min on {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, {os.cpu_count()} CPUs visible"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(
            json.dumps(
                {
                    "source": source,
                    "settings": settings,
                    "results": results,
                    "summary": summary,
                    "minutes": total / 60,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
