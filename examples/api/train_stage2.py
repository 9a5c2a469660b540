"""A2S stage 2 through the Python API: a SaliencyDetector trained on pseudo labels with a plain Trainer.

The pseudo labels are a folder of ``<id>.png`` maps: pass ``--labels`` (e.g. the ``stage1-raw`` round
written by ``stage1_pseudo_labels.py``), or leave it out to start from handcrafted RBD maps. Online label
rectification (OLR) updates the labels every epoch after a warm-up; each epoch's labels are written to a
pseudo-label store round, and every round and the detector are scored against the synthetic ground truth.

Run from the repository root (a few minutes on a CPU; ``--tiny`` for a seconds-long smoke run):

    python examples/api/train_stage2.py --out runs/example_stage2
    python examples/api/train_stage2.py --out runs/example_stage2 \
        --data runs/example_stage1/data --labels runs/example_stage1/labels/rounds/stage1-raw
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl

from usod.data.datamodules import get_datamodule
from usod.data.datasets import get_dataset
from usod.data.synth import write_dataset
from usod.evaluation import evaluate_checkpoint, format_table, score_round
from usod.handcrafted import run_folder
from usod.labels import LabelRoundWriter, PseudoLabelStore
from usod.models.saliency_detector import SaliencyDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example_stage2"))
    parser.add_argument("--data", type=Path, default=None, help="training images (default: synthetic in OUT)")
    parser.add_argument("--labels", type=Path, default=None, help="pseudo-label folder (default: RBD maps)")
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight model and data (smoke test)")
    args = parser.parse_args()

    n, size, epochs = (6, 32, 2) if args.tiny else (120, 128, 6)
    backbone = {"name": "test_resnet", "weights": "none"} if args.tiny else {"name": "tf_efficientnet_lite0"}
    data_root = args.data or args.out / "data"
    if args.data is None and not (data_root / "synth.json").is_file():
        write_dataset(data_root, "rgb", n, size=(size, size))
    test_root = args.out / "test"
    if not (test_root / "synth.json").is_file():
        write_dataset(test_root, "rgb", max(n // 3, 2), seed=1, size=(size, size))

    # 1. Initial pseudo labels: given, or handcrafted RBD maps written as a store round.
    store = PseudoLabelStore(args.out / "labels")
    labels = args.labels
    if labels is None:
        store.begin_round("rbd", {"method": "rbd"}, overwrite=True)
        run_folder("rbd", data_root / "images", store.round_dir("rbd"), workers=0 if args.tiny else 2)
        store.complete_round("rbd")
        labels = store.round_dir("rbd")

    # 2. Data: training images with the labels as `pseudo` (never ground truth). Resize only: the module
    # flips by itself so that it can map its predictions back onto the labels it rectifies.
    dm = get_datamodule(
        "folder",
        root=data_root,
        pseudo_dir=labels,
        image_size=size,
        batch_size=8,
        num_workers=0,
        augment=False,
    )

    # 3. Stage 2 with online label rectification; each epoch's labels become a round `stage2-epoch<j>`.
    model = SaliencyDetector(
        backbone=backbone, label_update="olr", olr_warmup_epochs=1, **({"channels": 8} if args.tiny else {})
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[LabelRoundWriter(store)],
    )
    trainer.fit(model, datamodule=dm)
    ckpt = args.out / "stage2.ckpt"
    trainer.save_checkpoint(ckpt)

    # 4. Label quality over rounds (training images) and the detector on held-out images.
    rounds = [r["name"] for r in store.rounds() if r["complete"] and r["name"].startswith("stage2-epoch")]
    if args.labels is None:
        rounds.insert(0, "rbd")
    train_set = get_dataset("folder", root=data_root, with_masks=True)
    print(format_table({r: score_round(store, train_set, r)["scores"] for r in rounds}))
    held_out = get_dataset("folder", root=test_root, with_masks=True)
    result = evaluate_checkpoint(ckpt, held_out, image_size=size, num_workers=0, progress=False)
    print(format_table({"stage2 (held-out)": result["scores"]}))
    print(f"checkpoint: {ckpt}")


if __name__ == "__main__":
    main()
