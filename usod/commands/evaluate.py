"""``usod evaluate``: score folders of saliency maps against ground-truth masks.

Usage::

    usod evaluate --gt GT_DIR --pred A2S=preds/a2s --pred preds/spr --json scores.json --plot curves.png

Files are paired by *stem*, the path relative to the folder without extension, searched recursively,
so video layouts (``<seq>/<frame>.png``) work. Each prediction is resized to its ground truth with
bilinear interpolation on the 8-bit map (``cv2.INTER_LINEAR``), and scored with
:class:`usod.metrics.SODMetrics` (the pysodmetrics 1.6.2 conventions). Ground-truth files without a
prediction and predictions without a ground truth are reported (a count and the first names) and
left out; ``--strict`` turns missing predictions into an error.

Reading: ground truth through :func:`usod.data.io.read_mask` (handles 0/1, palette and colour masks);
predictions with OpenCV as grayscale (colour maps are converted with the usual luma weights, 16-bit
maps scaled to 8 bits), as the common SOD evaluation scripts do. Inputs those conventions probably misread
are named in a note on stderr: 16-bit or alpha-channel PNG predictions, predictions with another aspect
ratio than their mask, colour ground truth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import cv2
import numpy as np
import torch

from usod.commands import non_negative_int
from usod.data.io import IMAGE_EXTENSIONS, InvalidInputError, read_mask_checked
from usod.metrics import SCORE_KEYS, SODMetrics
from usod.progress import progress_bar

__all__ = [
    "MethodResult",
    "add_arguments",
    "evaluate_folders",
    "evaluate_method",
    "list_maps",
    "plot_curves",
    "read_prediction",
    "run",
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
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise InvalidInputError(path, "file is empty (0 bytes)")
    with contextlib.suppress(AttributeError):
        cv2.setLogLevel(0)  # silent: failures are reported through InvalidInputError instead
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if img is None:
        if path.suffix.lower() in (".tif", ".tiff"):  # e.g. float TIFFs, which OpenCV reads only unchanged
            from usod.data.io import read_mask

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


def _pool(workers: int) -> contextlib.AbstractContextManager:
    """A worker pool (terminated on exit) or, for ``workers <= 0``, a context giving ``None``."""
    if workers <= 0:
        return contextlib.nullcontext()
    # spawn: forking a process that already runs torch threads can deadlock
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)


def _score_pairs(
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


def _evaluate(
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
    metric = _score_pairs([(gt_maps[s], pred_maps[s]) for s in common], pool, progress, name)
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
    with _pool(workers) as pool:
        return _evaluate(gt_maps, pred_dir, name or pred_dir.resolve().name, pool, progress)


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
    with _pool(workers) as pool:
        return {name: _evaluate(gt_maps, Path(f), name, pool, progress).scores for name, f in preds.items()}


def plot_curves(results: Sequence[MethodResult], path: str | Path) -> None:
    """Plot precision-recall and F-measure-threshold curves, one line per method, to an image file.

    Args:
        results: Evaluated methods.
        path: Output image (format from the extension, e.g. ``.png``).
    """
    # Figure + Agg canvas directly: no pyplot, so the caller's matplotlib backend is left alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    ax_pr, ax_f = fig.subplots(1, 2)
    thresholds = np.arange(256)
    for res in results:
        ax_pr.plot(res.curves["recall"], res.curves["precision"], label=res.name)
        ax_f.plot(thresholds, res.curves["f"], label=f"{res.name} (max {res.scores['max_f']:.3f})")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax_f.set(xlabel="threshold", ylabel="F-measure (beta^2 = 0.3)", title="F-measure", xlim=(0, 255))
    ax_f.set_ylim(0, 1.02)
    for ax in (ax_pr, ax_f):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)


def format_table(results: Sequence[MethodResult]) -> str:
    """One row per method with every score."""
    keys = [k for k in SCORE_KEYS if k != "n"]
    width = max(6, *(len(r.name) for r in results))
    lines = [f"{'method':<{width}}  {'n':>6}  " + "  ".join(f"{k:>9}" for k in keys)]
    for res in results:
        cells = "  ".join(f"{res.scores[k]:>9.4f}" for k in keys)
        lines.append(f"{res.name:<{width}}  {res.scores['n']:>6}  {cells}")
    return "\n".join(lines)


def _parse_pred(value: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (name = folder name); an existing folder wins over splitting on '='."""
    if "=" in value and not Path(value).is_dir():
        name, folder = value.split("=", 1)
        if not name or not folder:
            raise argparse.ArgumentTypeError(f"--pred expects NAME=DIR or DIR, got {value!r}")
        return name, Path(folder)
    folder = Path(value)
    return folder.resolve().name, folder


def _report_unpaired(res: MethodResult) -> None:
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``usod evaluate`` options."""
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks (recursive)")
    parser.add_argument(
        "--pred",
        required=True,
        action="append",
        type=_parse_pred,
        metavar="[NAME=]DIR",
        help="folder of saliency maps; repeat for several methods (name defaults to the folder name)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write {method: scores} to this JSON file")
    parser.add_argument(
        "--plot", type=Path, default=None, help="write PR and F-threshold curves to this image"
    )
    parser.add_argument("--workers", type=non_negative_int, default=0, help="worker processes (0 = none)")
    parser.add_argument(
        "--strict", action="store_true", help="fail when a ground-truth file has no prediction"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _check_outputs(json_path: Path | None, plot_path: Path | None) -> None:
    """Refuse output paths that could only fail once every map is scored."""
    for path in (json_path, plot_path):
        if path is not None and path.is_dir():
            raise InvalidInputError(path, "is a folder; give a file name")
    if plot_path is not None:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = sorted(FigureCanvasBase.get_supported_filetypes())
        if plot_path.suffix.lower().lstrip(".") not in formats:
            shown = ", ".join("." + f for f in formats)
            raise InvalidInputError(plot_path, f"unsupported plot format; use one of {shown}")


def run(args: argparse.Namespace) -> int:
    """Run ``usod evaluate``.

    Returns:
        0 on success, 1 when ``--strict`` and predictions are missing, 2 on bad input.
    """
    names = [name for name, _ in args.pred]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        print(
            f"usod evaluate: method names must be unique, repeated: {', '.join(duplicates)}", file=sys.stderr
        )
        return 2
    try:
        _check_outputs(args.json, args.plot)  # before the scoring, not after it
        gt_maps = list_maps(args.gt)
        if not gt_maps:
            raise InvalidInputError(args.gt, "contains no image files")
        results = []
        workers = max(0, args.workers)
        with _pool(workers) as pool:
            for name, folder in args.pred:
                res = _evaluate(gt_maps, folder, name, pool, not args.no_progress)
                _report_unpaired(res)
                results.append(res)
    except InvalidInputError as err:
        print(f"usod evaluate: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({r.name: r.scores for r in results}, indent=2) + "\n")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(results, args.plot)
    if args.strict and any(r.missing for r in results):
        print("usod evaluate: --strict and some ground-truth files have no prediction", file=sys.stderr)
        return 1
    return 0
