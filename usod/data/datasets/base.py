"""Shared machinery of the SOD datasets: sample records, layout discovery and lazy loading."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from usod.data import io
from usod.data.io import IMAGE_EXTENSIONS, InvalidInputError, LayoutError, NoMasksError
from usod.distributed import is_rank_zero

log = logging.getLogger(__name__)

#: ``(path, mtime_ns, size) -> problem or None`` of files decoded by :meth:`SODDataset._validate`: a pipeline
#: opens its training set several times, and each file is decoded once per process.
_DECODED: dict[tuple[str, int, int], tuple[Path, str] | None] = {}

__all__ = [
    "FolderLayout",
    "PairedFolderDataset",
    "SODDataset",
    "SampleFiles",
    "index_folder",
    "natural_key",
]

MODALITIES = ("rgb", "rgbd", "rgbt", "video", "rs")


@dataclass(frozen=True)
class SampleFiles:
    """The files of one sample; optional modalities are None when absent or not requested."""

    id: str
    image: Path
    mask: Path | None = None
    depth: Path | None = None
    thermal: Path | None = None
    flow: Path | None = None
    sequence: str | None = None
    frame: str | None = None

    def paths(self) -> dict[str, Path]:
        """Role -> path for every file of the sample."""
        roles = ("image", "mask", "depth", "thermal", "flow")
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}


@dataclass(frozen=True)
class FolderLayout:
    """One accepted folder layout of a paired (image + counterparts) dataset, relative to the dataset root.

    Attributes:
        image: Folder of images.
        mask: Candidate mask folders, first existing wins.
        depth: Candidate depth folders (RGB-D), first existing wins; empty when the modality has no depth.
        thermal: Candidate thermal folders (RGB-T).
        image_exts: Extensions that count as images in ``image`` (to separate images from masks sharing a
            folder).
        mask_exts: Extensions that count as masks.
    """

    image: str
    mask: tuple[str, ...] = ()
    depth: tuple[str, ...] = ()
    thermal: tuple[str, ...] = ()
    image_exts: tuple[str, ...] = IMAGE_EXTENSIONS
    mask_exts: tuple[str, ...] = IMAGE_EXTENSIONS

    def under(self, prefix: str) -> FolderLayout:
        """The same layout below the sub-folder ``prefix`` ("" = the root itself)."""
        if not prefix:
            return self

        def join(p: str) -> str:
            return f"{prefix}/{p}" if p not in ("", ".") else prefix

        return FolderLayout(
            image=join(self.image),
            mask=tuple(join(p) for p in self.mask),
            depth=tuple(join(p) for p in self.depth),
            thermal=tuple(join(p) for p in self.thermal),
            image_exts=self.image_exts,
            mask_exts=self.mask_exts,
        )

    def describe(self) -> str:
        """A one-line tree such as ``RGB/ + depth|Depth/ + GT|gt/``."""
        parts = [f"{self.image}/"]
        for alts in (self.depth, self.thermal, self.mask):
            if alts:
                parts.append("|".join(alts) + "/")
        return " + ".join(parts)


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def index_folder(
    folder: Path, exts: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[dict[str, Path], list[tuple[Path, str]]]:
    """Map file stem -> path for the image files directly inside ``folder``.

    Hidden files are ignored. When two files share a stem, the extension earlier in ``exts`` wins and the
    other is reported as a duplicate; a symbolic link to nothing (or to itself, a loop) is reported too.

    Returns:
        ``(index, problems)`` where problems are ``(path, problem)`` pairs.
    """
    rank = {e: i for i, e in enumerate(exts)}
    index: dict[str, Path] = {}
    duplicates: list[tuple[Path, str]] = []
    try:
        with os.scandir(folder) as it:
            visible = [e for e in it if not e.name.startswith(".")]
    except PermissionError:
        raise InvalidInputError(folder, "cannot be read: permission denied") from None
    files = []
    for entry in visible:
        try:
            is_file = entry.is_file()
            broken = entry.is_symlink() and not is_file and not entry.is_dir()
        except OSError as exc:  # e.g. ELOOP: a symbolic link that points at itself
            is_file, broken = False, False
            duplicates.append((Path(entry.path), f"cannot be followed ({exc.strerror or exc}), left out"))
        if broken and Path(entry.name).suffix.lower() in rank:
            duplicates.append((Path(entry.path), "broken symbolic link (no such target), left out"))
        if is_file:
            files.append(entry)
    entries = sorted(files, key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        ext = path.suffix.lower()
        if ext not in rank:
            continue
        stem = path.stem
        other = index.get(stem)
        if other is None:
            index[stem] = path
            continue
        keep, drop = (path, other) if rank[ext] < rank[other.suffix.lower()] else (other, path)
        index[stem] = keep
        duplicates.append((drop, f"another file has the same stem, using {keep.name}"))
    return index, duplicates


def list_entries(root: Path, limit: int = 20) -> str:
    """Comma-separated top-level entries of ``root`` (folders marked with a slash) for error messages."""
    if not root.is_dir():
        return "(root does not exist)" if not root.exists() else "(root is a file)"
    names = sorted((e.name + ("/" if Path(e.path).is_dir() else "")) for e in os.scandir(root))
    if not names:
        return "(empty folder)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class SODDataset(Dataset):
    """Base class of all SOD datasets: discovers sample files once, loads them lazily.

    Subclasses set the class attributes and implement :meth:`_discover`, returning one :class:`SampleFiles`
    per sample and calling :meth:`_missing` for files that lack a counterpart.

    Ground truth is only touched when ``with_masks=True``: otherwise the mask folder is neither required nor
    listed and no mask file is opened, so a training set cannot leak labels.

    Args:
        root: Dataset root folder.
        split: One of :attr:`splits`, or None for :attr:`default_split` (see each dataset for what None
            means).
        with_masks: Pair and load ground-truth masks (``mask`` key). Leave False for training.
        pseudo_dir: Folder of pseudo labels ``<pseudo_dir>/<id>.png``; adds a lazily read ``pseudo`` key.
        transform: Callable applied to each sample dict.
        skip_invalid: Leave out samples with a missing counterpart file or a file that cannot be decoded
            (recorded in :attr:`skipped`) instead of raising. Finding the undecodable ones means decoding
            every file once up front (``validate``), in 8 threads.
        validate: Decode every file once up front; ``None`` (default): when ``skip_invalid`` is set. ``usod
            data inspect`` opens datasets with ``validate=False`` and decodes them itself, reporting more.

    Attributes:
        files: One :class:`SampleFiles` per sample, in order.
        skipped: ``(path, problem)`` for every skipped sample.
        warnings: ``(path, problem)`` for oddities that did not drop a sample (e.g. duplicate stems).
        split: The split actually loaded (None when the root is the set itself).

    Raises:
        LayoutError: The root does not match any accepted layout.
        InvalidInputError: A counterpart file is missing (without ``skip_invalid``).
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    #: Allowed split names; None is always allowed and means :attr:`default_split`.
    splits: ClassVar[tuple[str, ...]] = ()
    default_split: ClassVar[str | None] = None
    #: Short folder tree shown by ``usod list datasets``.
    layout: ClassVar[str] = ""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        with_masks: bool = False,
        pseudo_dir: str | Path | None = None,
        transform: Callable[[dict], dict] | None = None,
        skip_invalid: bool = False,
        validate: bool | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise LayoutError(self.root, f"{self.name} root is not an existing folder")
        if split is not None and split not in self.splits:
            allowed = ", ".join(self.splits) if self.splits else "none (leave split unset)"
            raise ValueError(f"{self.name}: unknown split {split!r}; allowed: {allowed}")
        self.split = split if split is not None else self.default_split
        self.with_masks = with_masks
        self.pseudo_dir = Path(pseudo_dir) if pseudo_dir is not None else None
        self.transform = transform
        self.skip_invalid = skip_invalid
        self.skipped: list[tuple[Path, str]] = []
        self.warnings: list[tuple[Path, str]] = []
        self.files: list[SampleFiles] = self._usable_ids(self._discover())
        if not self.files:
            raise LayoutError(
                self.root, f"{self.name}: no usable samples found (found: {list_entries(self.root)})"
            )
        if validate or (validate is None and skip_invalid):
            self._validate()
        if self.skipped and is_rank_zero():
            shown = "; ".join(f"{path}: {problem}" for path, problem in self.skipped[:3])
            more = f" (and {len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            log.warning("%s: left out %d sample(s): %s%s", self.root, len(self.skipped), shown, more)

    def _usable_ids(self, files: list[SampleFiles]) -> list[SampleFiles]:
        """The samples whose id can name their label and map files (a backslash in a file name cannot)."""
        kept = []
        for sample in files:
            problem = io.sample_id_problem(sample.id)
            if problem is None:
                kept.append(sample)
            else:
                self._missing(sample.image, f"{problem}; rename the file")
        return kept

    # -- subclass API --
    def _discover(self) -> list[SampleFiles]:
        raise NotImplementedError

    def _missing(self, path: Path, problem: str) -> None:
        """Record a sample that cannot be built, or raise when ``skip_invalid`` is off."""
        if not self.skip_invalid:
            raise InvalidInputError(
                path,
                problem
                + " (skip_invalid=True leaves such samples out: `--data.init_args.skip_invalid true`, "
                "`skip_invalid: true` in a pipeline config)",
            )
        self.skipped.append((path, problem))

    def _layout_error(
        self, expected: Iterable[str], what: str = "", kind: type[LayoutError] = LayoutError
    ) -> LayoutError:
        trees = "\n".join(f"  {e}" for e in expected)
        split = f" split {self.split!r}" if self.split else ""
        lead = what or f"does not look like a {self.name}{split} dataset"
        return kind(self.root, f"{lead}; expected one of:\n{trees}\nfound: {list_entries(self.root)}")

    # -- loading --
    def __len__(self) -> int:
        return len(self.files)

    @property
    def ids(self) -> list[str]:
        """Sample ids in order."""
        return [f.id for f in self.files]

    def pseudo_path(self, sample_id: str) -> Path:
        """Where the pseudo label of ``sample_id`` lives (requires ``pseudo_dir``)."""
        if self.pseudo_dir is None:
            raise ValueError(f"{self.name}: no pseudo_dir attached")
        return self.pseudo_dir / f"{sample_id}.png"

    def load_raw(self, index: int) -> dict[str, Any]:
        """The sample dict before transform (see the shared data contract)."""
        files = self.files[index]
        image = io.read_image(files.image)
        sample: dict[str, Any] = {
            "image": image,
            "id": files.id,
            "size": (int(image.shape[0]), int(image.shape[1])),
        }
        size = sample["size"]
        # Auxiliary inputs of another size (some RGB-D sets store depth at another resolution) are resized
        # to the image, as the loaders of RGB-D/RGB-T SOD code do; masks and labels must match it.
        if files.depth is not None:
            sample["depth"] = _resized(io.read_depth(files.depth), size)
        if files.thermal is not None:
            sample["thermal"] = _resized(io.read_thermal(files.thermal), size)
        if files.flow is not None:
            sample["flow"] = _resized(io.read_image(files.flow), size)
        if self.with_masks and files.mask is not None:
            sample["mask"] = _same_size(io.read_mask(files.mask), size, files.mask, files.image)
        if self.pseudo_dir is not None:
            path = self.pseudo_path(files.id)
            if not path.is_file():
                raise InvalidInputError(path, f"pseudo label missing for sample {files.id!r}")
            sample["pseudo"] = _same_size(io.read_mask(path), size, path, files.image)
        if files.sequence is not None:
            sample["sequence"] = files.sequence
            sample["frame"] = files.frame
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load_raw(index)
        return self.transform(sample) if self.transform is not None else sample

    def _validate(self, workers: int = 8) -> None:
        def decode(role: str, path: Path) -> tuple[Path, str] | None:
            try:
                stat = path.stat()
                key = (str(path), stat.st_mtime_ns, stat.st_size)
            except OSError as exc:
                return path, f"cannot be read ({exc.strerror or exc})"
            if key not in _DECODED:
                try:
                    (io.read_mask if role == "mask" else io.read_image)(path)
                    _DECODED[key] = None
                except InvalidInputError as exc:
                    _DECODED[key] = (exc.path, exc.problem)
            return _DECODED[key]

        def check(files: SampleFiles) -> tuple[Path, str] | None:
            for role, path in files.paths().items():
                if role == "mask" and not self.with_masks:
                    continue
                bad = decode(role, path)
                if bad is not None:
                    return bad
            return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(check, self.files))
        kept = []
        for files, bad in zip(self.files, results, strict=True):
            if bad is None:
                kept.append(files)
            elif self.skip_invalid:
                self.skipped.append(bad)
            else:
                raise InvalidInputError(*bad)
        self.files = kept

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        cls = type(self).__name__
        return f"{cls}(root={str(self.root)!r}{split}, n={len(self)}, with_masks={self.with_masks})"


def _resized(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``array`` (HxW or HxWxC) bilinearly resized to ``size`` (height, width) when it differs."""
    if tuple(array.shape[:2]) == tuple(size):
        return array
    import cv2

    return cv2.resize(array, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def _same_size(array: np.ndarray, size: tuple[int, int], path: Path, image: Path) -> np.ndarray:
    if tuple(array.shape[:2]) != tuple(size):
        h, w = array.shape[:2]
        raise InvalidInputError(
            path, f"is {h}x{w} (height x width) but its image {image} is {size[0]}x{size[1]}"
        )  # fmt: skip
    return array


@dataclass
class _Resolved:
    image: Path
    mask: Path | None
    depth: Path | None
    thermal: Path | None
    layout: FolderLayout = field(repr=False)


class PairedFolderDataset(SODDataset):
    """A dataset of images with counterparts (mask, depth, thermal) in parallel folders, paired by file stem.

    Subclasses list accepted layouts in :attr:`variants` (relative to a split folder) and where each split
    lives in :attr:`split_dirs` (``""`` = the root itself). With ``split=None`` the root itself is tried
    first, then the default split's folders. Override :meth:`candidate_layouts` for anything more specific.
    """

    variants: ClassVar[tuple[FolderLayout, ...]] = ()
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Which counterpart folders must exist ("depth", "thermal").
    requires: ClassVar[tuple[str, ...]] = ()
    #: Whether the root may be a split folder itself for any split (else only for the default split).
    root_may_be_split: ClassVar[bool] = False

    def candidate_layouts(self, split: str | None) -> list[FolderLayout]:
        """Layouts to try, in order, for ``split``."""
        prefixes: list[str] = []
        if split is None or split == self.default_split:
            prefixes.append("")
        if split is not None:
            prefixes.extend(p for p in self.split_dirs.get(split, ()) if p not in prefixes)
        if self.root_may_be_split and "" not in prefixes:
            prefixes.append("")
        return [v.under(p) for p in prefixes for v in self.variants]

    def _resolve(self) -> _Resolved:
        def first(alts: tuple[str, ...]) -> Path | None:
            for rel in alts:
                p = self.root / rel
                if p.is_dir():
                    return p
            return None

        candidates = self.candidate_layouts(self.split)
        # split=None with no default split: the root itself (prefix "") was the only choice above
        for layout in candidates:
            image = self.root / layout.image
            if not image.is_dir() or not any(index_folder(image, layout.image_exts)[0]):
                continue
            depth = first(layout.depth)
            thermal = first(layout.thermal)
            if ("depth" in self.requires and depth is None) or (
                "thermal" in self.requires and thermal is None
            ):
                continue
            mask = None
            if self.with_masks:
                mask = first(layout.mask)
                if mask is None:
                    raise self._layout_error(
                        [layout.describe()],
                        what=f"with_masks=True but no mask folder ({' or '.join(layout.mask)}) "
                        f"next to {image}",
                        kind=NoMasksError,
                    )
            return _Resolved(image, mask, depth, thermal, layout)
        raise self._layout_error(c.describe() for c in candidates)

    def _discover(self) -> list[SampleFiles]:
        res = self._resolve()
        images, dups = index_folder(res.image, res.layout.image_exts)
        self.warnings.extend(dups)
        others: dict[str, tuple[Path, dict[str, Path]]] = {}
        for role, folder in (("mask", res.mask), ("depth", res.depth), ("thermal", res.thermal)):
            if folder is not None:
                exts = res.layout.mask_exts if role == "mask" else IMAGE_EXTENSIONS
                index, dups = index_folder(folder, exts)
                self.warnings.extend(dups)
                others[role] = (folder, index)
        keep = self._select_stems(sorted(images, key=natural_key))
        files = []
        for stem in keep:
            found: dict[str, Path] = {}
            for role, (folder, index) in others.items():
                path = index.get(stem)
                if path is None:
                    self._missing(
                        images[stem], f"no {role} file for this image in {folder} (looked for {stem}.*)"
                    )
                    break
                found[role] = path
            else:
                files.append(SampleFiles(id=stem, image=images[stem], **found))
        return files

    def _select_stems(self, stems: list[str]) -> list[str]:
        """Hook to restrict the samples (e.g. to a split list file); default keeps all."""
        return stems
