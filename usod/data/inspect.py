"""Check a dataset on disk: layout, missing counterparts, unreadable files, size mismatches, odd masks."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from usod.data import io
from usod.data.datasets import SampleFiles, SODDataset, VideoDataset, get_dataset_class
from usod.data.io import InvalidInputError, LayoutError
from usod.progress import progress_bar

__all__ = ["InspectReport", "inspect_dataset"]

#: Runs with more samples than this show a progress bar.
PROGRESS_THRESHOLD = 200


@dataclass
class InspectReport:
    """What :func:`inspect_dataset` found.

    Attributes:
        name: Registered dataset name.
        root: Dataset root.
        split: Split inspected (None when the root is the set itself).
        n_samples: Samples discovered, including those with problems.
        n_valid: Samples whose every file was read without error.
        modalities: Keys the samples carry (``image``, ``mask``, ``depth``, ``thermal``, ``flow``).
        n_sequences: Number of sequences (video datasets), else None.
        problems: One line per problem, ``"<path>: <problem>"``.
        fixed: Storage quirks the readers fix on the fly (e.g. 0/1 masks), counted by kind.
        image_sizes: ``"HxW" -> count`` of image sizes (the most common first).
        notes: Information that is not a problem (e.g. no masks present).
    """

    name: str
    root: str
    split: str | None
    n_samples: int = 0
    n_valid: int = 0
    modalities: list[str] = field(default_factory=list)
    n_sequences: int | None = None
    problems: list[str] = field(default_factory=list)
    fixed: dict[str, int] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2)

    def summary(self, max_problems: int = 30) -> str:
        """A short human-readable report."""
        split = f" (split {self.split})" if self.split else ""
        lines = [f"{self.name}{split} at {self.root}"]
        seqs = f" in {self.n_sequences} sequences" if self.n_sequences is not None else ""
        lines.append(f"  samples: {self.n_samples}{seqs}, {self.n_valid} fully readable")
        lines.append(f"  modalities: {', '.join(self.modalities)}")
        if self.image_sizes:
            top = list(self.image_sizes.items())[:5]
            more = f", ... ({len(self.image_sizes) - 5} more sizes)" if len(self.image_sizes) > 5 else ""
            lines.append("  image sizes: " + ", ".join(f"{s} x{n}" for s, n in top) + more)
        for note in self.notes:
            lines.append(f"  note: {note}")
        for kind, n in self.fixed.items():
            lines.append(f"  fixed on read: {kind} ({n} files)")
        if self.problems:
            lines.append(f"  problems: {len(self.problems)}")
            lines.extend(f"    {p}" for p in self.problems[:max_problems])
            if len(self.problems) > max_problems:
                lines.append(f"    ... and {len(self.problems) - max_problems} more (see --json)")
        else:
            lines.append("  no problems found")
        return "\n".join(lines)


def _open(cls: type[SODDataset], root: Path, split: str | None, notes: list[str]) -> SODDataset:
    """Open with every optional modality that is present, falling back when masks or flow are absent."""
    # validate=False: the files are decoded below, with a report of every problem
    kwargs: dict[str, Any] = {"root": root, "split": split, "skip_invalid": True, "validate": False}
    flows = [True, False] if issubclass(cls, VideoDataset) else [None]
    last: LayoutError | None = None
    for with_masks in (True, False):
        for with_flow in flows:
            extra = {} if with_flow is None else {"with_flow": with_flow}
            try:
                ds = cls(with_masks=with_masks, **kwargs, **extra)
            except LayoutError as exc:
                last = exc
                continue
            if not with_masks:
                notes.append("no ground-truth masks found (fine for training-only data)")
            return ds
    assert last is not None
    raise last


def _check_sample(
    files: SampleFiles, with_masks: bool
) -> tuple[tuple[int, int] | None, list[str], list[str]]:
    """Read every file of one sample; returns (image size, problems, fixes)."""
    problems: list[str] = []
    fixes: list[str] = []
    size: tuple[int, int] | None = None
    sizes: dict[str, tuple[int, int]] = {}
    for role, path in files.paths().items():
        if role == "mask" and not with_masks:
            continue
        try:
            if role == "mask":
                arr, notes = io.read_mask_checked(path)
                fixes.extend(notes)
            elif role == "depth":
                arr = io.read_depth(path)
            else:
                arr = io.read_image(path)
        except InvalidInputError as exc:
            problems.append(str(exc))
            continue
        sizes[role] = (int(arr.shape[0]), int(arr.shape[1]))
    size = sizes.get("image")
    if size is not None:
        for role, other in sizes.items():
            if other != size:
                problems.append(
                    f"{files.paths()[role]}: {role} is {other[0]}x{other[1]} "
                    f"but the image is {size[0]}x{size[1]}"
                )
    return size, problems, fixes


def inspect_dataset(
    name: str, root: str | Path, split: str | None = None, workers: int = 8, progress: bool | None = None
) -> InspectReport:
    """Read every file of a dataset once and report what is wrong with it.

    The dataset is opened with ``skip_invalid=True`` and every modality present (masks and, for video, flow),
    so missing counterparts are collected rather than raised. Then each sample's files are decoded in a thread
    pool (the work is IO- and decoder-bound, and PIL releases the GIL while decoding).

    Args:
        name: Registered dataset name or alias.
        root: Dataset root.
        split: Split to inspect (None: the dataset's default).
        workers: Reader threads.
        progress: Show a progress bar; None shows one for datasets over :data:`PROGRESS_THRESHOLD` samples.

    Returns:
        The report; ``report.ok`` is False when problems were found.

    Raises:
        LayoutError: The root does not match the dataset's layout at all.
        KeyError: Unknown dataset name.
    """
    cls = get_dataset_class(name)
    report = InspectReport(name=cls.name, root=str(root), split=split)
    ds = _open(cls, Path(root), split, report.notes)
    report.split = ds.split
    report.problems.extend(f"{p}: {msg}" for p, msg in ds.skipped)
    report.problems.extend(f"{p}: {msg}" for p, msg in ds.warnings)
    report.n_samples = len(ds) + len(ds.skipped)
    roles = Counter(role for f in ds.files for role in f.paths())
    report.modalities = [r for r in ("image", "depth", "thermal", "flow", "mask") if roles[r]]
    if isinstance(ds, VideoDataset):
        report.n_sequences = len(ds.sequences)

    show = len(ds) > PROGRESS_THRESHOLD if progress is None else progress
    sizes: Counter[str] = Counter()
    fixed: Counter[str] = Counter()
    n_valid = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda f: _check_sample(f, ds.with_masks), ds.files)
        for size, problems, fixes in progress_bar(
            results, total=len(ds), desc=f"inspect {cls.name}", enabled=show
        ):
            if size is not None:
                sizes[f"{size[0]}x{size[1]}"] += 1
            report.problems.extend(problems)
            fixed.update(fixes)
            n_valid += not problems
    report.n_valid = n_valid
    report.image_sizes = dict(sizes.most_common())
    report.fixed = dict(fixed.most_common())
    return report
