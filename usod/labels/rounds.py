"""The life of a pseudo-label round: begin, write, complete, make current, and resume with the same settings.

* :func:`write_label_round`: a trained module's predictions (raw maps) and, optionally, their denseCRF +
  median filter post-processing (A2S eq. 6) as rounds of a :class:`~usod.labels.PseudoLabelStore`,
  resumable, each sample written once across DDP ranks; a round is only resumed or reused with the
  settings it was written with (:func:`check_same_settings`: the checkpoint's content, the input, the
  post-processing).
* :class:`LabelRoundWriter`: a Lightning callback that writes a module's label bank (online label updates,
  DeepUSPS moving averages; see :mod:`usod.labels.bank`) as a round, after every label update or once at
  the end of training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from usod.data.io import file_sha256
from usod.distributed import barrier, rank_world
from usod.labels.store import PseudoLabelStore, check_round_settings
from usod.labels.writer import IdSubset, PseudoLabelWriter, dataset_ids
from usod.models.base import load_module
from usod.ops.crf import PostProcessConfig, postprocess_files
from usod.progress import progress_enabled

__all__ = [
    "LabelRoundResult",
    "LabelRoundWriter",
    "check_same_settings",
    "input_identity",
    "portable_path",
    "round_state",
    "write_label_round",
]

log = logging.getLogger(__name__)

#: What a round of network maps must agree on to be resumed: the checkpoint's content and the input.
RAW_KEYS = ("ckpt_sha256", "input")
#: What a post-processed round must agree on: its source round and the post-processing settings.
POST_KEYS = ("from", "postprocess")


@dataclass
class LabelRoundResult:
    """What :func:`write_label_round` did.

    Attributes:
        store_root: The pseudo-label store.
        raw_round: Round holding the raw network maps (equal to ``round`` without post-processing).
        round: The final round, now the store's current round.
        predicted: Samples the network predicted in this call (0 when the raw round was already complete).
        postprocessed: Labels post-processed in this call by this process (finished ones are skipped;
            under DDP each rank counts its share).
    """

    store_root: Path
    raw_round: str
    round: str
    predicted: int
    postprocessed: int


def portable_path(path: str | Path, base: Path, tag: str) -> str:
    """``path`` resolved, or ``<tag>/<relative path>`` when it lies inside ``base`` (so ``base`` can move)."""
    path, base = Path(path).resolve(), base.resolve()
    return f"{tag}/{path.relative_to(base).as_posix()}" if base in path.parents else str(path)


def check_same_settings(
    store: PseudoLabelStore, name: str, meta: dict[str, Any], keys: Sequence[str]
) -> None:
    """Refuse to resume (or reuse) a round written with other settings: its labels would mix two models.

    An early check; :meth:`PseudoLabelStore.begin_round` checks again under the manifest lock
    (``same=keys``), which closes the race between two processes starting on one round.
    """
    check_round_settings(store.root, name, store.round(name), meta, keys)


def input_identity(dataset: Any, base: Path) -> dict[str, Any]:
    """What a label round was predicted from besides the model: dataset root, split and input size.

    A root inside ``base`` (the folder holding the store, e.g. a run folder with its own data) is recorded
    relative to it, so that the folder can move.
    """
    root = getattr(dataset, "root", None)
    size = getattr(getattr(dataset, "transform", None), "image_size", None)
    return {
        "root": portable_path(root, base, "<store>/..") if root is not None else None,
        "split": getattr(dataset, "split", None),
        "image_size": list(size) if size is not None else None,
    }


def round_state(store: Any, name: str, ids: list[str]) -> tuple[bool, list[str]]:
    """``(marked complete, ids without a label file)`` of a round."""
    entry = store.round(name)
    done = store.finished_ids(name)
    return bool(entry and entry.get("complete")), [i for i in ids if i not in done]


def write_label_round(
    dataset: Any,
    ckpt: str | Path,
    store: Any,
    round_name: str,
    postprocess: PostProcessConfig | None = None,
    *,
    raw_round: str | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    postprocess_workers: int = 2,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> LabelRoundResult:
    """Write one round of pseudo labels with a trained usod module; resumable.

    1. The module's raw saliency maps go into ``raw_round`` (default ``<round_name>-raw``) through
       ``Trainer.predict`` and :class:`~usod.labels.PseudoLabelWriter` (each sample once, also under DDP).
       Samples that already have a raw label are not predicted again.
    2. ``postprocess`` (denseCRF + median filter, A2S eq. 6) turns them into ``round_name`` in
       ``postprocess_workers`` processes, skipping labels that exist; the round is completed and becomes the
       store's current round. With ``postprocess=None`` the raw maps are written straight into
       ``round_name`` and there is no second round.

    A round the manifest marks complete is skipped when all its labels are on disk; when some were deleted,
    only those are written again (a complete raw round that lost files is predicted again as a whole, since
    the store does not reopen complete rounds; its old files are moved to ``retired/``). Rounds written with
    another checkpoint or other post-processing settings are refused unless ``overwrite`` is set, in which
    case both rounds start over (old files retired, not deleted).

    Under DDP (``devices``/``num_nodes`` above one, or started by ``torchrun``/``srun``) every rank must
    call this with the same arguments: the prediction is split over the ranks (each sample written once),
    so is the post-processing, and rank 0 writes the manifest.

    Args:
        dataset: The samples to label, with the network's input transform (e.g. a datamodule's
            ``predict_set``): a :class:`~usod.data.datasets.SODDataset`, whose ``files`` give the images
            for the CRF.
        ckpt: Checkpoint of any usod module (see :func:`usod.models.base.load_module`).
        store: A :class:`~usod.labels.PseudoLabelStore` or its root folder.
        round_name: Name of the final round.
        postprocess: Post-processing settings, or ``None`` for raw labels only.
        raw_round: Name of the raw round (default ``<round_name>-raw``).
        batch_size: Prediction batch size.
        num_workers: DataLoader workers.
        postprocess_workers: CRF processes (0: in this process).
        accelerator: Lightning accelerator of the prediction.
        devices: Lightning ``devices`` of the prediction.
        num_nodes: Lightning ``num_nodes`` of the prediction.
        strategy: Lightning ``strategy`` of the prediction.
        overwrite: Start both rounds over even when they exist.
        progress: Show progress bars (on rank zero, on a terminal; see :mod:`usod.progress`).

    Returns:
        A :class:`LabelRoundResult`.

    Raises:
        FileNotFoundError: The checkpoint does not exist.
        FileExistsError: A round exists with other settings and ``overwrite`` is False.
        TypeError: ``dataset`` has no ``files`` (image paths for the CRF).
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found")
    files = getattr(dataset, "files", None)
    if files is None:
        raise TypeError(f"{type(dataset).__name__} has no 'files'; pass a usod SODDataset")
    store = store if isinstance(store, PseudoLabelStore) else PseudoLabelStore(store)
    final_only = postprocess is None
    raw_round = round_name if final_only else (raw_round or f"{round_name}-raw")
    ids = dataset_ids(dataset)
    raw_meta = {
        "ckpt": str(ckpt.resolve()),
        "ckpt_sha256": file_sha256(ckpt),
        "input": input_identity(dataset, store.root.parent),
        "postprocess": None,
    }
    post_meta = None if final_only else {"from": raw_round, "postprocess": postprocess.to_dict()}
    if not overwrite:
        # the checkpoint's content, not its path: a moved run folder resumes, a retrained model does not
        check_same_settings(store, raw_round, raw_meta, RAW_KEYS)
        if post_meta is not None:
            check_same_settings(store, round_name, post_meta, POST_KEYS)

    predicted = 0
    complete, missing = round_state(store, raw_round, ids)
    restart = overwrite or (complete and bool(missing))
    if not (restart or missing or complete):
        # Every label is on disk but the round was never marked complete (a kill between the last label
        # and the manifest update, or a lost manifest): nothing to predict, only the manifest to finish.
        store.begin_round(raw_round, raw_meta, same=() if overwrite else RAW_KEYS)
        store.complete_round(raw_round, ids)
    elif restart or missing or not complete:
        if complete and missing and not overwrite:
            log.warning(
                "round %r is marked complete but %d labels are missing; predicting it again",
                raw_round,
                len(missing),
            )
        index = {sample_id: i for i, sample_id in enumerate(ids)}
        todo = dataset if restart else IdSubset(dataset, [index[i] for i in missing], ids)
        writer = PseudoLabelWriter(
            store,
            raw_round,
            meta=raw_meta,
            overwrite=restart,
            expected_ids=ids,
            same=() if restart else RAW_KEYS,
        )
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            logger=False,
            callbacks=[writer],
            enable_model_summary=False,
            enable_progress_bar=progress_enabled(progress),
        )
        loader = torch.utils.data.DataLoader(todo, batch_size=batch_size, num_workers=num_workers)
        trainer.predict(load_module(ckpt), loader, return_predictions=False)
        predicted = len(todo)
    if final_only:
        if not predicted:
            store.set_current(raw_round)
        return LabelRoundResult(store.root, raw_round, round_name, predicted, 0)

    complete, missing = round_state(store, round_name, ids)
    barrier()  # every rank has read the round's state before rank 0 changes the manifest
    if overwrite or not complete:
        store.begin_round(round_name, post_meta, overwrite=overwrite, same=() if overwrite else POST_KEYS)
        if overwrite:
            missing = ids
    elif missing:
        # Complete rounds are never reopened; the lost labels are recomputed in place, identical to before.
        log.warning("round %r is complete but %d labels are missing; writing them", round_name, len(missing))
    todo_ids = set(missing)
    tasks = [
        (f.image, store.label_path(raw_round, f.id), store.label_path(round_name, f.id))
        for f in files
        if f.id in todo_ids
    ]
    rank, world = rank_world()
    written = postprocess_files(
        tasks[rank::world], postprocess, workers=postprocess_workers, progress=progress, skip_existing=True
    )
    if todo_ids or not complete:  # the same decision on every rank: complete_round synchronises them
        store.complete_round(round_name, ids)
    else:
        store.set_current(round_name)
    return LabelRoundResult(store.root, raw_round, round_name, predicted, len(written))


class LabelRoundWriter(pl.Callback):
    """Write a module's label bank to a pseudo-label store as a round.

    The module provides ``export_labels(original_size=True)`` (``id -> HxW uint8``) and, optionally,
    ``label_round_meta()`` (what the manifest records besides the producer):
    :class:`~usod.models.saliency_detector.SaliencyDetector` and
    :class:`~usod.models.adapter_transfer.AdapterTransfer` (their current labels),
    :class:`~usod.models.deepusps.DeepUSPSRefiner` (its moving averages).

    * ``at="update"``: registers itself as a label listener when fitting starts; after each epoch that
      changed labels the whole bank (every id seen, updated or not) is written as round
      ``round_name.format(epoch=epoch)`` (0-based epoch).
    * ``at="end"``: writes the bank once when training ends (nothing when it is empty, e.g. a DeepUSPS
      fusion network without moving averages).

    Labels are written at each image's original size, each DDP rank writing the ids
    ``sorted(ids)[rank::world_size]`` (the banks are identical on all ranks); the round is then completed and
    becomes the store's current round. A round of that name that already exists is replaced (its old files
    retired).

    Args:
        store: A :class:`~usod.labels.PseudoLabelStore` or its root folder.
        round_name: Round name; with ``at="update"`` a pattern with an ``{epoch}`` field.
        at: ``"update"`` or ``"end"`` (see above).
        meta: Extra manifest metadata.
        expected_ids: Ids that must all be written (``None``: whatever the bank holds).
    """

    def __init__(
        self,
        store: Any,
        round_name: str = "stage2-epoch{epoch}",
        *,
        at: Literal["update", "end"] = "update",
        meta: dict[str, Any] | None = None,
        expected_ids: list[str] | None = None,
    ) -> None:
        if at not in ("update", "end"):
            raise ValueError(f"at must be 'update' or 'end', got {at!r}")
        self.store = store if isinstance(store, PseudoLabelStore) else PseudoLabelStore(Path(store))
        self.round_name = round_name
        self.at = at
        self.meta = dict(meta or {})
        self.expected_ids = None if expected_ids is None else list(expected_ids)
        #: Names of the rounds written, in order.
        self.written: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        has_listeners = isinstance(getattr(pl_module, "label_listeners", None), list)
        if (
            self.at == "update"
            and stage == "fit"
            and has_listeners
            and self.write not in pl_module.label_listeners
        ):
            pl_module.label_listeners.append(self.write)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at == "end" and hasattr(pl_module, "export_labels"):
            self._write_round(pl_module, self.round_name, {})

    def write(self, module: Any, epoch: int, updated_ids: list[str]) -> None:
        """Write the current bank as round ``round_name.format(epoch=epoch)`` (nothing without updates)."""
        if updated_ids:
            self._write_round(module, self.round_name.format(epoch=epoch), {"epoch": epoch})

    def _write_round(self, module: Any, name: str, extra: dict[str, Any]) -> None:
        labels = module.export_labels(original_size=True)
        if not labels:
            return
        rank, world = rank_world()
        ids = sorted(labels)
        meta_of = getattr(module, "label_round_meta", None)
        meta = {"producer": type(module).__name__, **(meta_of() if meta_of else {}), **extra, **self.meta}
        self.store.begin_round(name, meta=meta, overwrite=True)
        for sid in ids[rank::world]:
            self.store.write(name, sid, labels[sid])
        self.store.complete_round(name, expected_ids=self.expected_ids or ids)
        self.written.append(name)
