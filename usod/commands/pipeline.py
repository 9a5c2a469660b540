"""``usod pipeline --config FILE``: the unsupervised A2S pipeline, resumable, in one output folder.

stage 1 (cue extractor) -> pseudo labels (raw + denseCRF/median) -> stage 2 (saliency detector with online
label updates) -> evaluation on the training images' ground truth and on held-out sets -> report. Every
finished step is kept, so rerunning the same command after an interruption continues where it stopped.

The YAML holds the fields of :class:`usod.pipeline.PipelineConfig`; see ``configs/pipeline/*.yaml``::

    out: runs/a2s-duts
    dataset: folder
    root: ../shared/data/duts-tr-499
    image_size: 320
    stage1_epochs: 8
    stage1: {backbone: {name: tf_efficientnet_lite0, weights: bundled}}
    stage2_epochs: 10
    stage2: {label_update: olr}
    eval: [{name: davis, dataset: davis, root: ../shared/data/davis-2016-val-5}]

Relative paths in the file are taken relative to the current directory. ``--out``, ``--root``,
``--accelerator``, ``--devices``, ``--num-nodes`` and ``--strategy`` override the file; with more than one
device (or under ``torchrun``/``srun``) every step runs on all of them (see :mod:`usod.pipeline`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from usod.commands._devices import add_device_arguments
from usod.data.io import InvalidInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="pipeline YAML (PipelineConfig fields)")
    parser.add_argument("--out", type=Path, help="output folder (overrides the file's `out`)")
    parser.add_argument("--root", type=Path, help="training dataset root (overrides the file's `root`)")
    parser.add_argument("--accelerator", help="cpu, gpu or auto (overrides the file)")
    add_device_arguments(parser, from_file=True)


def load_config(path: Path, **overrides: Any) -> Any:
    """Read a :class:`~usod.pipeline.PipelineConfig` from YAML; errors name the file and the problem."""
    import yaml

    from usod.pipeline import PipelineConfig

    if not path.is_file():
        raise FileNotFoundError(f"{path}: pipeline config not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InvalidInputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict):
        raise InvalidInputError(path, "expected a mapping of pipeline settings")
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInputError(path, f"unknown settings {unknown}; known: {sorted(known)}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if "out" not in raw:
        raise InvalidInputError(path, "no `out` folder (set it in the file or pass --out)")
    try:
        return PipelineConfig(**raw)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(path, str(err)) from err


def run(args: argparse.Namespace) -> int:
    from usod.pipeline import format_summary, run_pipeline

    config = load_config(
        args.config,
        out=args.out,
        root=args.root,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
    )
    start = time.perf_counter()
    summary = run_pipeline(config)
    if summary is None:  # a rank other than 0 of a multi-process job: rank 0 reports
        return 0
    print()
    print(format_summary(summary))
    print(f"\nreport: {config.out / 'report'} ({time.perf_counter() - start:.0f} s)")
    return 0
