"""``usod label --ckpt CKPT --dataset NAME --root DIR --out STORE``: a round of pseudo labels for a dataset.

Any usod module checkpoint works (a trained :class:`~usod.models.cue_extractor.CueExtractor` for the first
round). The network's raw maps go into the round ``<round>-raw`` of the pseudo-label store ``--out``, then
denseCRF + median filter (A2S eq. 6) run in ``--workers`` processes and write the round ``<round>``, which
becomes the store's current round. Labels are 8-bit PNGs at each image's original size,
``STORE/rounds/<round>/<id>.png``.

Rerunning the same command resumes an interrupted run: samples that already have a raw map are not
predicted again and finished labels are not post-processed again (see
:func:`usod.labels.write_label_round`).

The data can come from a LightningCLI-style YAML instead of ``--dataset``/``--root``: its ``data:`` section
(``class_path`` of a usod datamodule and ``init_args``) is used, and flags given on the command line override
its ``init_args``::

    usod label --ckpt runs/stage1.ckpt --config configs/data/duts.yaml --out runs/labels --round stage1

The images labelled are the datamodule's prediction set (the training images, unless ``predict_on: val``).

``--devices N`` (and ``--num-nodes``) share the prediction and the post-processing out over N processes
(Lightning starts them; ``torchrun``/``srun`` launches work too); every label is written once.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from usod.commands import dataset_name, non_negative_int, positive_int, round_name
from usod.commands._devices import add_device_arguments
from usod.data.io import InvalidInputError
from usod.data.transforms import DEFAULT_IMAGE_SIZE

#: ``init_args`` a command-line flag overrides: flag attribute -> datamodule argument.
_OVERRIDES = {
    "dataset": "dataset",
    "root": "root",
    "split": "split",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "workers": "num_workers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint of any usod module")
    parser.add_argument(
        "--dataset", type=dataset_name, help="registered dataset name (see `usod list datasets`)"
    )
    parser.add_argument("--root", type=Path, help="dataset root folder")
    parser.add_argument("--split", default=None, help="dataset split (default: the dataset's training split)")
    parser.add_argument(
        "--config", type=Path, help="YAML with a LightningCLI `data:` section, instead of --dataset/--root"
    )
    parser.add_argument("--out", required=True, type=Path, help="pseudo-label store folder")
    parser.add_argument(
        "--round",
        type=round_name,
        default="stage1",
        help="round to write (default: stage1); raw maps go to <round>-raw",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help=f"network input size (default: the config's, else training's, else {DEFAULT_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="prediction batch size (default 16)"
    )
    parser.add_argument("--no-crf", action="store_true", help="skip the denseCRF (threshold + median only)")
    parser.add_argument("--median", type=int, default=7, help="median filter window, odd (1: none; A2S: 7)")
    parser.add_argument(
        "--workers", type=non_negative_int, default=None, help="data-loading and CRF processes (default 2)"
    )
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    add_device_arguments(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="start both rounds over (old labels are moved to retired/)"
    )


def _load_yaml_data(path: Path) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of the ``data:`` section of a LightningCLI config."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InvalidInputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from err
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("class_path"), str):
        raise InvalidInputError(
            path, "needs a `data:` section with `class_path` (a usod datamodule) and `init_args`"
        )
    init_args = data.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise InvalidInputError(path, "`data.init_args` must be a mapping")
    return data["class_path"], dict(init_args)


def _datamodule_class(class_path: str, source: Path) -> type:
    from usod.data.datamodules import SODDataModule

    # Short names resolve in usod.data.datamodules, as LightningCLI resolves registered subclasses.
    module_name, _, class_name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name or "usod.data.datamodules")
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as err:
        raise InvalidInputError(source, f"cannot import data class_path {class_path!r} ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, SODDataModule)):
        raise InvalidInputError(source, f"data class_path {class_path!r} is not a usod SODDataModule")
    return cls


def build_datamodule(args: argparse.Namespace) -> Any:
    """The datamodule of ``--config`` or ``--dataset``/``--root``, command-line flags taking precedence.

    Training augmentation is always off: labels are predicted on resized images only.
    """
    from usod.data.datamodules import get_datamodule
    from usod.models.base import trained_image_size

    given = {arg: getattr(args, flag) for flag, arg in _OVERRIDES.items() if getattr(args, flag) is not None}
    if args.config is not None:
        class_path, init_args = _load_yaml_data(args.config)
        cls = _datamodule_class(class_path, args.config)
        init_args.update(given)
        if "image_size" not in init_args:
            init_args["image_size"] = trained_image_size(args.ckpt) or DEFAULT_IMAGE_SIZE
        init_args.setdefault("batch_size", 16)
        init_args.setdefault("num_workers", 2)
        init_args["augment"] = False
        try:
            return cls(**init_args)
        except TypeError as err:
            raise InvalidInputError(args.config, f"bad data.init_args for {class_path}: {err}") from err
    if args.dataset is None or args.root is None:
        raise InvalidInputError(
            Path("."), "give the images with --dataset NAME --root DIR, or with --config FILE.yaml"
        )
    given.setdefault("image_size", trained_image_size(args.ckpt) or DEFAULT_IMAGE_SIZE)
    given.setdefault("batch_size", 16)
    given.setdefault("num_workers", 2)
    name = given.pop("dataset")
    return get_datamodule(name, augment=False, **given)


def run(args: argparse.Namespace) -> int:
    from usod.distributed import is_rank_zero
    from usod.labels.rounds import write_label_round
    from usod.ops.crf import PostProcessConfig

    start = time.perf_counter()
    if not args.ckpt.is_file():
        raise FileNotFoundError(f"{args.ckpt}: checkpoint not found")
    if args.median < 0 or (args.median > 1 and args.median % 2 == 0):
        raise SystemExit(f"usod label: error: --median must be 0, 1 or an odd number, got {args.median}")
    datamodule = build_datamodule(args)
    datamodule.setup("predict")
    dataset = datamodule.predict_set
    workers = args.workers if args.workers is not None else datamodule.num_workers
    postprocess = PostProcessConfig(crf=not args.no_crf, median_ksize=args.median)
    result = write_label_round(
        dataset,
        args.ckpt,
        args.out,
        args.round,
        postprocess,
        batch_size=datamodule.batch_size,
        num_workers=datamodule.num_workers,
        postprocess_workers=workers,
        accelerator=args.accelerator,
        devices=args.devices or 1,
        num_nodes=args.num_nodes or 1,
        strategy=args.strategy or "auto",
        overwrite=args.overwrite,
    )
    if not is_rank_zero():
        return 0  # rank 0 reports
    print(
        f"{len(dataset)} samples: {result.predicted} predicted into {result.raw_round!r}, "
        f"{result.postprocessed} post-processed into {result.round!r} (current round)\n"
        f"labels: {result.store_root / 'rounds' / result.round} ({time.perf_counter() - start:.0f} s)"
    )
    return 0
