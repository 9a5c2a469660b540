"""Scoring saliency maps against ground truth: folders of maps, label rounds, checkpoints; curves, tables.

Everything that scores goes through :class:`usod.metrics.SODMetrics` (the pysodmetrics 1.6.2 conventions),
with predictions resized to each mask's original size:

* :func:`evaluate_method` / :func:`evaluate_folders`: folders of maps paired with a ground-truth folder by
  stem (the relative path without extension, searched recursively, so video layouts ``<seq>/<frame>.png``
  work); each prediction is resized to its ground truth with bilinear interpolation on the 8-bit map
  (``cv2.INTER_LINEAR``). Ground truth is read through :func:`usod.data.io.read_mask` (0/1, palette and
  colour masks), predictions with OpenCV as grayscale (colour maps with the usual luma weights, 16-bit maps
  scaled to 8 bits), as the common SOD evaluation scripts do; inputs those conventions probably misread are
  named in a note on stderr. ``usod evaluate`` is this.
* :func:`score_round`: a round of a :class:`~usod.labels.PseudoLabelStore` against the dataset it labels,
  and :func:`score_labels`: any ``id -> label`` mapping (e.g. a module's label bank while it trains).
* :func:`evaluate_checkpoint`: a usod checkpoint's predictions on a dataset with ground truth.
* :func:`plot_curves` and :func:`format_table` for any of these results.

``score_round`` and ``evaluate_checkpoint`` share their work out over the ranks of a DDP job
(``distributed=True``).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from usod.data.io import (
    IMAGE_EXTENSIONS,
    InvalidInputError,
    atomic_write_bytes,
    read_mask,
    read_mask_checked,
)
from usod.data.transforms import DEFAULT_IMAGE_SIZE, EvalTransform
from usod.distributed import collective_device, local_rank, shard
from usod.labels.store import PseudoLabelStore
from usod.metrics import SCORE_KEYS, SODMetrics
from usod.models.base import load_module, trained_image_size
from usod.progress import progress_bar

__all__ = [
    "MethodResult",
    "TABLE_KEYS",
    "eval_device",
    "evaluate_checkpoint",
    "evaluate_folders",
    "evaluate_method",
    "format_table",
    "list_maps",
    "plot_curves",
    "read_prediction",
    "written_by_usod",
    "report_unpaired",
    "score_labels",
    "score_pairs",
    "score_round",
    "worker_pool",
]

_SHOW = 5  # names listed for missing / extra files
_CHUNK = 16  # images per worker task


@dataclass
class MethodResult:
    """Scores of one prediction folder.

    Attributes:
        name: Method name.
        scores: ``{"mae", "max_f", "mean_f", "adp_f", "max_e", "mean_e", "adp_e", "s_measure",
            "w_f", "n"}`` (floats, ``n`` an int).
        curves: ``{"precision", "recall", "f", "e"}``, 256 floats each, index = threshold.
        missing: Stems with ground truth but no prediction (sorted).
        extra: Stems with a prediction but no ground truth (sorted).
    """

    name: str
    scores: dict[str, float | int]
    curves: dict[str, list[float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def list_maps(root: str | Path) -> dict[str, Path]:
    """Map files under ``root`` (recursively) by stem, the relative path without extension.

    Args:
        root: Folder of masks or saliency maps.

    Returns:
        ``{stem: path}`` with ``/``-separated stems, sorted.

    Raises:
        InvalidInputError: ``root`` is not a folder, or two files share a stem (``a.png``, ``a.jpg``).
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(root, "is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        stem = path.relative_to(root).with_suffix("").as_posix()
        if stem in found:
            raise InvalidInputError(path, f"has the same stem as {found[stem]}; keep only one of them")
        found[stem] = path
    return found


def read_prediction(path: str | Path) -> np.ndarray:
    """Read a saliency map as HxW uint8 grayscale.

    Args:
        path: Image file.

    Returns:
        HxW uint8.

    Raises:
        InvalidInputError: The file is missing, empty or not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "file does not exist")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except PermissionError:
        raise InvalidInputError(path, "cannot be read: permission denied") from None
    if data.size == 0:
        raise InvalidInputError(path, "file is empty (0 bytes)")
    with contextlib.suppress(AttributeError):
        cv2.setLogLevel(0)  # silent: failures are reported through InvalidInputError instead
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if img is None:
        if path.suffix.lower() in (".tif", ".tiff"):  # e.g. float TIFFs, which OpenCV reads only unchanged
            return read_mask(path)
        raise InvalidInputError(path, "not a readable image (unknown format or corrupt)")
    return img


def _png_header(path: Path) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` of a PNG from its IHDR chunk, without decoding it (else ``None``)."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _load_pair(gt_path: Path, pred_path: Path, notes: dict[str, str] | None = None) -> tuple[np.ndarray, ...]:
    """``(pred, gt)`` as HxW uint8, the prediction resized to the mask when their sizes differ.

    Inputs that score, as the reference toolkits read them, differently from what was probably meant are
    noted in ``notes`` (note -> first file): 16-bit or alpha-channel PNG predictions, a prediction whose
    aspect ratio differs from its mask's, colour ground truth.
    """
    gt, fixes = read_mask_checked(gt_path)
    gt = np.require(gt, requirements="W")  # torch wants writable arrays
    pred = read_prediction(pred_path)
    if notes is not None:
        header = _png_header(pred_path)
        if header is not None and header[0] == 16:
            notes.setdefault(
                "16-bit PNG predictions, read as 8 bits by dropping the low byte", str(pred_path)
            )
        if header is not None and header[1] in (4, 6):
            notes.setdefault("predictions with an alpha channel, whose alpha is ignored", str(pred_path))
        (ph, pw), (gh, gw) = pred.shape, gt.shape
        if abs(ph * gw - pw * gh) > 0.02 * max(ph * gw, pw * gh):
            notes.setdefault("predictions with another aspect ratio than their mask, resized", str(pred_path))
        if any(f.startswith("colour mask") for f in fixes):
            notes.setdefault("colour ground-truth files, reduced to their brightest channel", str(gt_path))
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    return pred, gt


def _score_chunk(
    pairs: Sequence[tuple[Path, Path]],
) -> tuple[dict[str, np.ndarray], int, tuple[str, str] | None, dict[str, str]]:
    """Score (gt, pred) files into SODMetrics states; runs in workers too.

    Returns:
        ``(states, count, error, notes)``; ``error`` is ``(path, problem)`` of an unreadable file, passed
        back as plain strings because the exception itself does not survive pickling; ``notes`` as in
        :func:`_load_pair`.
    """
    metric = SODMetrics()
    notes: dict[str, str] = {}
    for gt_path, pred_path in pairs:
        try:
            pred, gt = _load_pair(gt_path, pred_path, notes)
        except InvalidInputError as err:
            return {}, 0, (str(err.path), err.problem), notes
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
    return {name: value.numpy() for name, value in metric.metric_state.items()}, len(pairs), None, notes


def _worker_init() -> None:
    torch.set_num_threads(1)


def _chunks(items: Sequence[tuple[Path, Path]], size: int) -> Iterator[Sequence[tuple[Path, Path]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def worker_pool(workers: int) -> contextlib.AbstractContextManager:
    """A worker pool (terminated on exit) or, for ``workers <= 0``, a context giving ``None``."""
    if workers <= 0:
        return contextlib.nullcontext()
    # spawn: forking a process that already runs torch threads can deadlock
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)


def _score_files(
    pairs: Sequence[tuple[Path, Path]], pool: Pool | None, progress: bool, desc: str
) -> SODMetrics:
    metric = SODMetrics()
    chunks = list(_chunks(pairs, _CHUNK))
    results = map(_score_chunk, chunks) if pool is None else pool.imap_unordered(_score_chunk, chunks)
    with progress_bar(total=len(pairs), desc=desc, unit="img", enabled=progress) as bar:
        # integer fixed-point states: summing them in any order gives identical results
        notes: dict[str, str] = {}
        for states, count, error, chunk_notes in results:
            if error is not None:
                raise InvalidInputError(*error)
            metric.merge_state({name: torch.from_numpy(value) for name, value in states.items()})
            for note, path in chunk_notes.items():
                notes.setdefault(note, path)
            bar.update(count)
    for note, path in sorted(notes.items()):
        print(f"{desc}: note: {note} (e.g. {path})", file=sys.stderr)
    return metric


def score_pairs(
    gt_maps: dict[str, Path],
    pred_dir: Path,
    name: str,
    pool: Pool | None,
    progress: bool,
) -> MethodResult:
    pred_maps = list_maps(pred_dir)
    common = [stem for stem in gt_maps if stem in pred_maps]
    missing = sorted(set(gt_maps) - set(pred_maps))
    extra = sorted(set(pred_maps) - set(gt_maps))
    if not common:
        raise InvalidInputError(
            pred_dir,
            f"no prediction matches a ground-truth file ({len(pred_maps)} predictions, {len(gt_maps)} "
            f"ground truths; first predictions: {', '.join(extra[:_SHOW]) or 'none'})",
        )
    metric = _score_files([(gt_maps[s], pred_maps[s]) for s in common], pool, progress, name)
    with warnings.catch_warnings():
        # states arrive through merge_state, which torchmetrics does not count as an update
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        raw = metric.compute()
        curves = {k: v.tolist() for k, v in metric.curves().items()}
    scores: dict[str, float | int] = {k: float(raw[k]) for k in SCORE_KEYS if k != "n"}
    scores["n"] = int(raw["n"])
    return MethodResult(name=name, scores=scores, curves=curves, missing=missing, extra=extra)


def evaluate_method(
    gt_dir: str | Path,
    pred_dir: str | Path,
    name: str | None = None,
    *,
    workers: int = 0,
    progress: bool = False,
) -> MethodResult:
    """Score one folder of saliency maps against a ground-truth folder.

    Args:
        gt_dir: Ground-truth masks (searched recursively).
        pred_dir: Saliency maps with the same stems.
        name: Method name (defaults to the folder name).
        workers: Worker processes for reading and scoring (0 = in this process).
        progress: Show a tqdm progress bar on stderr.

    Returns:
        The scores, average curves and the missing / extra stems.

    Raises:
        InvalidInputError: A folder is missing, holds no matching file, or a file is unreadable.
    """
    gt_maps = list_maps(gt_dir)
    if not gt_maps:
        raise InvalidInputError(gt_dir, "contains no image files")
    pred_dir = Path(pred_dir)
    with worker_pool(workers) as pool:
        return score_pairs(gt_maps, pred_dir, name or pred_dir.resolve().name, pool, progress)


def evaluate_folders(
    gt_dir: str | Path,
    preds: dict[str, Path],
    *,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, float | int]]:
    """Score several methods' folders against one ground-truth folder.

    Args:
        gt_dir: Ground-truth masks (searched recursively; stems are relative paths).
        preds: ``{method name: prediction folder}``.
        workers: Worker processes for reading and scoring (0 = in this process).
        progress: Show a tqdm progress bar on stderr.

    Returns:
        ``{name: {"mae", "max_f", "mean_f", "adp_f", "max_e", "mean_e", "adp_e", "s_measure", "w_f",
        "n"}}``, the same structure ``usod evaluate --json`` writes.
    """
    gt_maps = list_maps(gt_dir)
    if not gt_maps:
        raise InvalidInputError(gt_dir, "contains no image files")
    with worker_pool(workers) as pool:
        return {name: score_pairs(gt_maps, Path(f), name, pool, progress).scores for name, f in preds.items()}


def plot_curves(results: Sequence[MethodResult] | Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """Plot precision-recall and F-measure-threshold curves, one line per method, to an image file.

    Args:
        results: Evaluated methods: :class:`MethodResult` objects, or ``{name: {"scores", "curves"}}`` as
            :func:`score_round` and :func:`evaluate_checkpoint` return.
        path: Output image (format from the extension, e.g. ``.png``); written atomically.
    """
    rows = (
        [(name, res["curves"], res.get("scores", {})) for name, res in results.items()]
        if isinstance(results, Mapping)
        else [(res.name, res.curves, res.scores) for res in results]
    )
    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)  # Figure + Agg canvas directly: no pyplot, so the caller's backend is left alone
    ax_pr, ax_f = fig.subplots(1, 2)
    thresholds = np.arange(256)
    for name, curves, scores in rows:
        ax_pr.plot(curves["recall"], curves["precision"], label=name)
        label = f"{name} (max {scores['max_f']:.3f})" if "max_f" in scores else name
        ax_f.plot(thresholds, curves["f"], label=label)
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax_f.set(xlabel="threshold", ylabel="F-measure (beta^2 = 0.3)", title="F-measure", xlim=(0, 255))
    ax_f.set_ylim(0, 1.02)
    for ax in (ax_pr, ax_f):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120, metadata=_plot_metadata(fmt))
    atomic_write_bytes(path, buffer.getvalue())


#: Written into every curve plot (where the format has a metadata field), so that a rerun knows the file is
#: its own to replace (:func:`written_by_usod`).
PLOT_TAG = "usod evaluation"


def _plot_metadata(fmt: str) -> dict[str, str] | None:
    if fmt == "png":
        return {"Software": PLOT_TAG}
    if fmt in ("pdf", "svg", "svgz", "ps", "eps"):
        return {"Creator": PLOT_TAG}
    return None


def written_by_usod(path: str | Path) -> bool:
    """Whether ``path`` is a score file or curve plot that usod wrote (a ``{name: scores}`` JSON, or an image
    carrying :data:`PLOT_TAG`), and so may be replaced without ``--overwrite``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if path.suffix.lower() == ".json":
        try:
            scores = json.loads(data)
        except ValueError:
            return False
        return isinstance(scores, dict) and all(
            isinstance(v, dict) and {"mae", "n"} <= set(v) for v in scores.values()
        )
    return PLOT_TAG.encode() in data


#: Columns of the score tables (every score but the count).
TABLE_KEYS: tuple[str, ...] = tuple(k for k in SCORE_KEYS if k != "n")


def format_table(
    results: Sequence[MethodResult] | Mapping[str, Mapping[str, float | int]], header: str = "method"
) -> str:
    """A text table, one row per method (or round, or held-out set) with its count and every score.

    Args:
        results: :class:`MethodResult` objects or ``{name: scores}``.
        header: Title of the name column.
    """
    rows = list(results.items()) if isinstance(results, Mapping) else [(r.name, r.scores) for r in results]
    width = max(6, len(header), *(len(name) for name, _ in rows))
    lines = [f"{header:<{width}}  {'n':>6}  " + "  ".join(f"{k:>9}" for k in TABLE_KEYS)]
    for name, scores in rows:
        cells = "  ".join(f"{scores.get(k, float('nan')):>9.4f}" for k in TABLE_KEYS)
        lines.append(f"{name:<{width}}  {scores.get('n', ''):>6}  {cells}")
    return "\n".join(lines)


def report_unpaired(res: MethodResult) -> None:
    for stems, what in (
        (res.missing, "ground-truth files have no prediction"),
        (res.extra, "predictions have no ground truth"),
    ):
        if stems:
            more = ", ..." if len(stems) > _SHOW else ""
            print(
                f"{res.name}: {len(stems)} {what} (left out): {', '.join(stems[:_SHOW])}{more}",
                file=sys.stderr,
            )


class _RoundLabels(Mapping):
    """The labels of a store round, read when asked for (``id -> HxW uint8``)."""

    def __init__(self, store: PseudoLabelStore, name: str, ids: Sequence[str]) -> None:
        self.store, self.name, self.ids = store, name, list(ids)

    def __getitem__(self, sample_id: str) -> np.ndarray:
        return self.store.read(sample_id, self.name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def score_round(
    store: str | Path | PseudoLabelStore,
    dataset: Any,
    round_name: str,
    *,
    distributed: bool = False,
    progress: bool | None = None,
) -> dict[str, Any] | None:
    """Scores of a pseudo-label round against the ground truth of the images it labels.

    Args:
        store: The pseudo-label store (or its root folder).
        dataset: The labelled images as a :class:`~usod.data.datasets.SODDataset` built with
            ``with_masks=True`` (labels and masks are compared at the mask's size).
        round_name: The round to score.
        distributed: Every rank of a DDP job calls this: each scores its share of the images and the metric
            states are reduced, so every rank returns the scores of the whole round (equal to one process).
        progress: Show a progress bar (``None``: on a terminal, see :mod:`usod.progress`).

    Returns:
        ``{"scores": {...}, "curves": {...}}`` (see :class:`MethodResult`), or ``None`` when some image has no
        ground-truth mask.
    """
    if any(files.mask is None for files in dataset.files):
        return None
    store = store if isinstance(store, PseudoLabelStore) else PseudoLabelStore(store)
    device = collective_device() if distributed else torch.device("cpu")
    metric = SODMetrics(sync_on_compute=distributed).to(device)
    files = dataset.files
    ids = [files[i].id for i in (shard(len(files)) if distributed else range(len(files)))]
    masks = {f.id: f.mask for f in files}
    labels = _RoundLabels(store, round_name, ids)
    score_labels(labels, masks, ids=ids, metric=metric, progress=progress, desc=f"score {round_name}")
    return _result(metric)


def score_labels(
    labels: Mapping[str, np.ndarray],
    masks: Mapping[str, str | Path],
    ids: Sequence[str] | None = None,
    metric: SODMetrics | None = None,
    progress: bool | None = False,
    desc: str = "label quality",
) -> SODMetrics:
    """Accumulate labels (HxW uint8, any resolution) against their ground-truth masks into a metric.

    Labels are resized (bilinear) to their mask's size, as a label written at original size would be.

    Args:
        labels: ``id -> HxW uint8`` labels.
        masks: ``id -> mask file``.
        ids: Ids to score (default: every id with both a label and a mask).
        metric: Metric to update (default: a new :class:`~usod.metrics.SODMetrics`).
        progress: Show a progress bar (``None``: only on a terminal).
        desc: The progress bar's title.

    Returns:
        The updated metric (call ``compute()``: under DDP, on every rank).
    """
    metric = SODMetrics() if metric is None else metric
    todo = sorted(set(labels) & set(masks)) if ids is None else list(ids)
    device = metric.n.device
    for sample_id in progress_bar(todo, desc=desc, unit="img", enabled=progress):
        mask = np.array(read_mask(masks[sample_id]), dtype=np.uint8)  # writable, for torch
        label = np.array(labels[sample_id], dtype=np.uint8)
        if label.shape != mask.shape:
            label = cv2.resize(label, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
        metric.update(torch.from_numpy(label)[None].to(device), torch.from_numpy(mask)[None].to(device))
    return metric


def _result(metric: SODMetrics) -> dict[str, Any]:
    scores = {k: float(v) if k != "n" else int(v) for k, v in metric.compute().items()}
    curves = {k: v.tolist() for k, v in metric.curves().items()}
    return {"scores": scores, "curves": curves}


@torch.no_grad()
def evaluate_checkpoint(
    ckpt: str | Path,
    dataset: Any,
    *,
    image_size: int | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
    distributed: bool = False,
) -> dict[str, Any]:
    """Score a usod checkpoint's predictions on a dataset with ground truth.

    Predictions are resized to each mask's original size and quantised to 8 bits, exactly as
    ``usod predict`` writes them, so the scores equal ``usod evaluate`` on its output.

    Args:
        ckpt: Checkpoint of any usod module.
        dataset: A :class:`~usod.data.datasets.SODDataset` built with ``with_masks=True``; its transform is
            replaced by a plain resize to ``image_size``.
        image_size: Network input size (default: the one the checkpoint was trained with, else
            :data:`~usod.data.transforms.DEFAULT_IMAGE_SIZE`).
        batch_size: Prediction batch size.
        num_workers: DataLoader workers.
        device: Where the network runs.
        progress: Show a progress bar.
        distributed: Every rank of a DDP job calls this and predicts its share of the images (on its own
            ``device``); the metric states are reduced, so every rank returns the scores of the whole set.

    Returns:
        ``{"scores": {...}, "curves": {...}}`` as :func:`score_round`.
    """
    model = load_module(ckpt, map_location=device)
    size = image_size or trained_image_size(ckpt) or DEFAULT_IMAGE_SIZE
    dataset.transform = EvalTransform(size)
    masks = {f.id: f.mask for f in dataset.files}
    subset = torch.utils.data.Subset(dataset, shard(len(dataset))) if distributed else dataset
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    metric_device = collective_device() if distributed else torch.device("cpu")
    metric = SODMetrics(sync_on_compute=distributed).to(metric_device)
    for batch in progress_bar(loader, desc=f"evaluate {Path(ckpt).name}", unit="batch", enabled=progress):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        saliency = model.predict_step(batch, 0)["saliency"].float().cpu()
        for i, sample_id in enumerate(batch["id"]):
            mask = read_mask(masks[sample_id])
            pred = F.interpolate(saliency[i : i + 1], size=mask.shape, mode="bilinear", align_corners=False)
            pred = (pred[0].clamp(0, 1) * 255).round().to(torch.uint8)
            # torch.tensor copies: cached masks are read-only
            metric.update(pred.to(metric_device), torch.tensor(mask, device=metric_device)[None])
    return _result(metric)


def eval_device(accelerator: str, devices: int | str | list[int] = 1) -> str:
    """Where a rank evaluates: the GPU it trained on when the job trains on GPUs (or ``auto`` finds one; with
    ``devices`` a list or ``"2,3"``, the entry of its local rank), else the CPU."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        ids = devices
        if isinstance(ids, str) and "," in ids:
            ids = [int(i) for i in ids.split(",") if i.strip()]
        rank = local_rank()
        return f"cuda:{ids[rank % len(ids)] if isinstance(ids, list) and ids else rank}"
    return "cpu"
