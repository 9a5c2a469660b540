"""Datamodules from the dataset registry: one synthetic set per modality, a batch from each split.

Every registered dataset name (``usod list datasets``) maps to the LightningDataModule of its modality, so the
same call builds the data of any method. Run from the repository root (seconds; ``--tiny`` for the smallest
settings the test suite uses):

    python examples/api/datamodule_from_registry.py --out runs/example_datamodules
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from usod.data.datamodules import DATAMODULES, get_datamodule
from usod.data.datasets import list_datasets
from usod.data.synth import write_dataset

# synthetic modality -> (a registered dataset whose native layout the generator writes, extra datamodule args)
TARGETS = {
    "rgb": ("folder", {}),
    "rgbd": ("nju2k", {}),
    "rgbt": ("vt5000", {}),
    "video": ("davis", {"with_flow": True, "flow_source": "auto"}),
    "rs": ("eorssd", {}),
}


def describe(batch: dict) -> str:
    """``key: shape`` of the tensors of a batch, and the first id."""
    parts = [f"{k} {tuple(v.shape)}" for k, v in batch.items() if isinstance(v, torch.Tensor)]
    return ", ".join(parts) + f"; first id {batch['id'][0]!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example_datamodules"))
    parser.add_argument("--tiny", action="store_true", help="tiny images (smoke test)")
    args = parser.parse_args()
    n, size = (4, 32) if args.tiny else (24, 128)

    print(f"{len(list_datasets())} registered datasets, served by:")
    for name, cls in sorted(DATAMODULES.items()):
        print(f"  {name:<12} {cls.__name__}")

    for modality, (dataset, extra) in TARGETS.items():
        root = args.out / modality
        if not (root / "synth.json").is_file():
            kwargs = {"frames": 3} if modality == "video" else {}
            write_dataset(root, modality, n if modality != "video" else 2, size=(size, size), **kwargs)
        # Training split: images (+ depth/thermal/flow) and never a mask; validation/test: with masks.
        dm = get_datamodule(dataset, root=root, image_size=size, batch_size=2, num_workers=0, **extra)
        dm.setup("fit")
        train = next(iter(dm.train_dataloader()))
        val = next(iter(dm.val_dataloader()))
        assert "mask" not in train and "mask" in val
        print(f"\n{modality} ({dataset}, {type(dm).__name__}): {len(dm.train_set)} training samples")
        print(f"  train: {describe(train)}")
        print(f"  val:   {describe(val)}")


if __name__ == "__main__":
    main()
