"""A2S stage 1 through the Python API: datamodule from the registry, CueExtractor, pseudo labels, scores.

Run from the repository root (a couple of minutes on a CPU; ``--tiny`` for a seconds-long smoke run):

    python examples/api/stage1_pseudo_labels.py --out runs/example_stage1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch

from usod.data.datamodules import get_datamodule
from usod.data.datasets import get_dataset
from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore, PseudoLabelWriter
from usod.metrics import SODMetrics
from usod.models.cue_extractor import CueExtractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example_stage1"))
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight model and data (smoke test)")
    args = parser.parse_args()

    n, size, epochs = (6, 48, 1) if args.tiny else (120, 128, 6)
    backbone = {"name": "resnet18", "weights": "none"} if args.tiny else {"name": "tf_efficientnet_lite0"}
    data_root = args.out / "data"
    if not (data_root / "synth.json").is_file():
        write_dataset(data_root, "rgb", n, size=(size, size))

    # 1. Data: training images only (no masks); resize only, as the feature cache requires.
    dm = get_datamodule("folder", root=data_root, image_size=size, batch_size=8, num_workers=0, augment=False)

    # 2. Stage 1: train the SE heads on the frozen encoder with the ADB loss.
    model = CueExtractor(backbone=backbone, feature_cache=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)

    # 3. Pseudo labels: one PNG per image at original size in a store round (CRF left out for speed).
    store = PseudoLabelStore(args.out / "labels")
    writer = PseudoLabelWriter(store, "stage1-raw", overwrite=True, resume=False)
    pl.Trainer(accelerator="cpu", logger=False, callbacks=[writer]).predict(
        model, datamodule=dm, return_predictions=False
    )

    # 4. Scores of the labels against the synthetic ground truth.
    metric = SODMetrics()
    dataset = get_dataset("folder", root=data_root, with_masks=True)
    for index in range(len(dataset)):
        sample = dataset.load_raw(index)
        label = store.read(sample["id"], "stage1-raw")
        metric.update(torch.from_numpy(label.copy())[None], torch.from_numpy(sample["mask"])[None])
    scores = metric.compute()
    print({k: round(float(v), 4) for k, v in scores.items()})


if __name__ == "__main__":
    main()
