"""Video salient object detection datasets: DAVIS (2016), DAVSOD, SegTrack-v2, FBMS.

Samples are single frames with ids ``"<sequence>/<frame>"`` (frame = file stem) and carry ``sequence`` and
``frame`` keys. :attr:`VideoDataset.sequences` maps each sequence to its sample ids in temporal (natural-sort)
order for methods that use neighbouring frames. With ``with_flow=True`` a ``flow`` key holds the optical flow
of each frame rendered as a colour-wheel image (HxWx3 uint8), read from the dataset's flow folder; a frame
without a flow file is a missing counterpart (error, or skipped with ``skip_invalid``) - note that
forward-flow releases often lack flow for the last frame of each sequence. With ``flow_source="auto"`` a
sequence whose flow folder is missing or incomplete gets flow computed once with OpenCV between consecutive
frames (DIS or Farneback), rendered with the same colour wheel and cached (see
:func:`usod.data.flow.cached_flow_images`); ``"compute"`` always uses computed flow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from usod.data.datasets.base import SampleFiles, SODDataset, index_folder, list_entries, natural_key
from usod.data.flow import FLOW_METHODS, cached_flow_images, default_flow_cache
from usod.data.io import LayoutError, NoMasksError

__all__ = ["DAVIS", "DAVSOD", "FBMS", "FLOW_SOURCES", "SegTrackV2", "VideoDataset"]

#: Where ``with_flow=True`` takes flow images from.
FLOW_SOURCES: tuple[str, ...] = ("files", "auto", "compute")


class VideoDataset(SODDataset):
    """Base of the video datasets; adds ``with_flow`` and :attr:`sequences`.

    Args:
        root: Dataset root folder.
        split: One of :attr:`splits` or None.
        with_masks: Pair and load ground-truth masks. Leave False for training.
        pseudo_dir: Folder of pseudo labels ``<pseudo_dir>/<sequence>/<frame>.png``.
        transform: Callable applied to each sample dict.
        skip_invalid: Leave out samples with a missing or undecodable file instead of raising (see
            :class:`~usod.data.datasets.SODDataset`).
        validate: Decode every file once up front (``None``: when ``skip_invalid`` is set).
        with_flow: Add the ``flow`` key.
        flow_source: ``"files"`` (default): the dataset's flow images, whose folder must exist;
            ``"auto"``: those files where a sequence has one for every frame, flow computed once and cached
            otherwise; ``"compute"``: always computed and cached.
        flow_cache: Cache folder of computed flow (default: :func:`usod.data.flow.default_flow_cache`, i.e.
            ``<root>/.usod_flow`` when the root is writable). Sequences are cached under
            ``<flow_cache>/<method>/<their frame folder relative to the root>/``.
        flow_method: ``"dis"`` or ``"farneback"`` for computed flow.

    Attributes:
        sequences: Sequence name -> ordered sample ids of that sequence (only samples in the dataset).
    """

    modality: ClassVar[str] = "video"
    #: With masks, only frames that have a mask are samples (sparsely annotated sets such as FBMS).
    sparse_annotations: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        with_masks: bool = False,
        pseudo_dir: str | Path | None = None,
        transform: Callable[[dict], dict] | None = None,
        skip_invalid: bool = False,
        validate: bool | None = None,
        with_flow: bool = False,
        flow_source: Literal["files", "auto", "compute"] = "files",
        flow_cache: str | Path | None = None,
        flow_method: Literal["dis", "farneback"] = "dis",
    ) -> None:

        if flow_source not in FLOW_SOURCES:
            raise ValueError(f"unknown flow_source {flow_source!r}; expected one of {FLOW_SOURCES}")
        if flow_method not in FLOW_METHODS:
            raise ValueError(f"unknown flow_method {flow_method!r}; expected one of {FLOW_METHODS}")
        self.with_flow = with_flow
        self.flow_source = flow_source
        self.flow_cache = Path(flow_cache).expanduser() if flow_cache is not None else None
        self.flow_method = flow_method
        super().__init__(root, split, with_masks, pseudo_dir, transform, skip_invalid, validate)
        # built after validation, which may drop samples
        self.sequences: dict[str, list[str]] = {}
        for f in self.files:
            self.sequences.setdefault(f.sequence or "", []).append(f.id)

    def _sequence_samples(
        self, seq: str, image_dir: Path, mask_dir: Path | None, flow_dir: Path | None
    ) -> list[SampleFiles]:
        """Pair the frames of one sequence by stem."""
        images, dups = index_folder(image_dir)
        self.warnings.extend(dups)
        masks: dict[str, Path] = {}
        flows: dict[str, Path] = {}
        if self.with_masks:
            if mask_dir is None or not mask_dir.is_dir():
                self._missing(image_dir, f"no mask folder for sequence {seq!r} (expected {mask_dir})")
                return []
            masks, dups = index_folder(mask_dir)
            self.warnings.extend(dups)
        if self.with_flow:
            if self.flow_source != "compute" and flow_dir is not None and flow_dir.is_dir():
                flows, dups = index_folder(flow_dir)
                self.warnings.extend(dups)
            if self.flow_source != "files" and (self.flow_source == "compute" or set(images) - set(flows)):
                flows = self._computed_flows(image_dir, images)
            elif flow_dir is None or not flow_dir.is_dir():
                self._missing(image_dir, f"no flow folder for sequence {seq!r} (expected {flow_dir})")
                return []
        out = []
        for stem in sorted(images, key=natural_key):
            mask = masks.get(stem)
            if self.with_masks and mask is None:
                if not self.sparse_annotations:
                    self._missing(
                        images[stem], f"no mask file for this frame in {mask_dir} (looked for {stem}.*)"
                    )
                continue
            flow = flows.get(stem)
            if self.with_flow and flow is None:
                self._missing(
                    images[stem], f"no flow file for this frame in {flow_dir} (looked for {stem}.*)"
                )
                continue
            out.append(
                SampleFiles(f"{seq}/{stem}", images[stem], mask=mask, flow=flow, sequence=seq, frame=stem)
            )
        return out

    def _computed_flows(self, image_dir: Path, images: dict[str, Path]) -> dict[str, Path]:
        """Stem -> cached flow image for every frame of one sequence folder (computed on first use)."""
        stems = sorted(images, key=natural_key)
        if len(stems) < 2:
            self._missing(image_dir, "cannot compute optical flow for a sequence of fewer than 2 frames")
            return {}
        cache = self.flow_cache if self.flow_cache is not None else default_flow_cache(self.root)
        try:
            rel = image_dir.resolve().relative_to(self.root.resolve())
        except ValueError:
            rel = Path(image_dir.name)
        folder = cache / self.flow_method / rel
        paths = cached_flow_images([images[s] for s in stems], folder, self.flow_method)
        return dict(zip(stems, paths, strict=True))


class DAVIS(VideoDataset):
    """DAVIS 2016 (Perazzi et al., CVPR 2016): 50 sequences (30 train, 20 val), every frame annotated.

    Dataset format (native)::

        <root>/
            JPEGImages/480p/<seq>/<frame>.jpg
            Annotations/480p/<seq>/<frame>.png
            Flow/480p/<seq>/<frame>.png          # optional, for with_flow=True
            ImageSets/480p/{train,val}.txt       # optional, for split="train"/"val"

    The resolution level may be ``480p`` (preferred), ``1080p`` or ``Full-Resolution``, or absent
    (``JPEGImages/<seq>/``). Split files may also be ``ImageSets/2016/<split>.txt`` or
    ``ImageSets/<split>.txt``; their lines are either sequence names (DAVIS 2017 style) or
    ``/JPEGImages/480p/<seq>/<frame>.jpg ...`` pairs (DAVIS 2016 style), from which the sequence names are
    taken. Without a split all sequences are used.
    """

    name = "davis"
    splits = ("train", "val")
    layout = "JPEGImages/480p/<seq>/, Annotations/480p/<seq>/, [Flow/480p/<seq>/]"
    levels: ClassVar[tuple[str, ...]] = ("480p", "1080p", "Full-Resolution")

    def _level(self) -> str:
        base = self.root / "JPEGImages"
        for level in self.levels:
            if (base / level).is_dir():
                return level
        return ""

    def _split_sequences(self) -> set[str] | None:
        if self.split is None:
            return None
        candidates = [self.root / "ImageSets" / d / f"{self.split}.txt" for d in ("480p", "2016", "")]
        for path in candidates:
            if path.is_file():
                names = set()
                for line in path.read_text().splitlines():
                    tok = line.split()
                    if not tok:
                        continue
                    parts = Path(tok[0].strip("/")).parts
                    # "JPEGImages/480p/<seq>/<frame>.jpg" -> seq; a bare name is the sequence itself
                    names.add(parts[-2] if len(parts) >= 2 else parts[0])
                return names
        raise LayoutError(
            self.root,
            f"split {self.split!r} needs a split list; expected one of: " + ", ".join(map(str, candidates)),
        )

    def _discover(self) -> list[SampleFiles]:
        images_root = self.root / "JPEGImages"
        if not images_root.is_dir():
            raise self._layout_error(
                ["JPEGImages/480p/<seq>/*.jpg + Annotations/480p/<seq>/*.png [+ Flow/480p/<seq>/*.png]"]
            )
        level = self._level()
        image_base = images_root / level if level else images_root
        seqs = sorted((p.name for p in image_base.iterdir() if p.is_dir()), key=natural_key)
        if not seqs:
            raise self._layout_error(
                [f"{image_base.relative_to(self.root)}/<seq>/*.jpg"],
                what=f"no sequence folders in {image_base}",
            )
        wanted = self._split_sequences()
        if wanted is not None:
            for name in sorted(wanted - set(seqs)):
                self._missing(image_base / name, "sequence listed in the split file but not found")
            seqs = [s for s in seqs if s in wanted]
        mask_base = self.root / "Annotations" / level if level else self.root / "Annotations"
        flow_base = self.root / "Flow" / level if level else self.root / "Flow"
        if self.with_masks and not mask_base.is_dir():
            raise NoMasksError(
                mask_base,
                f"with_masks=True but the annotation folder is missing (found: {list_entries(self.root)})",
            )
        if self.with_flow and self.flow_source == "files" and not flow_base.is_dir():
            raise LayoutError(
                flow_base, f"with_flow=True but the flow folder is missing (found: {list_entries(self.root)})"
            )
        files: list[SampleFiles] = []
        for seq in seqs:
            files.extend(self._sequence_samples(seq, image_base / seq, mask_base / seq, flow_base / seq))
        return files


class _PerSequenceFolders(VideoDataset):
    """DAVSOD-release layout: one folder per sequence holding ``Imgs/``, a ground-truth folder and
    ``Flow/``."""

    image_names: ClassVar[tuple[str, ...]] = ("Imgs", "imgs", "Frame", "frames")
    mask_names: ClassVar[tuple[str, ...]] = ("GT_object_level", "GT", "gt", "ground-truth")
    flow_names: ClassVar[tuple[str, ...]] = ("Flow", "flow", "optical_flow")
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {}
    layout: ClassVar[str] = "<seq>/Imgs/, <seq>/GT_object_level/, [<seq>/Flow/]"

    @staticmethod
    def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
        for n in names:
            if (folder / n).is_dir():
                return folder / n
        return None

    def _discover(self) -> list[SampleFiles]:
        base = self.root
        if self.split is not None:
            for d in self.split_dirs[self.split]:
                if (self.root / d).is_dir():
                    base = self.root / d
                    break
            else:
                raise self._layout_error(
                    [f"{d}/<seq>/Imgs/" for d in self.split_dirs[self.split]],
                    what=f"no folder for split {self.split!r}",
                )
        seqs = sorted(
            (p for p in base.iterdir() if p.is_dir() and self._first(p, self.image_names) is not None),
            key=lambda p: natural_key(p.name),
        )
        if not seqs:
            raise self._layout_error(
                ["<seq>/Imgs/*.jpg + <seq>/GT_object_level/*.png [+ <seq>/Flow/*.png]"]
                + [f"{d}/<seq>/Imgs/ ..." for dirs in self.split_dirs.values() for d in dirs[:1]]
            )
        files: list[SampleFiles] = []
        for seq in seqs:
            image_dir = self._first(seq, self.image_names)
            assert image_dir is not None
            mask_dir = self._first(seq, self.mask_names) or seq / self.mask_names[0]
            flow_dir = self._first(seq, self.flow_names) or seq / self.flow_names[0]
            files.extend(self._sequence_samples(seq.name, image_dir, mask_dir, flow_dir))
        return files


_PER_SEQ_TREE = """

    Dataset format (DAVSOD release style)::

        <root>/
            <seq>/
                Imgs/<frame>.jpg
                GT_object_level/<frame>.png
                Flow/<frame>.png              # optional, for with_flow=True

    Also accepted: ``GT/`` or ``gt/`` for the masks, ``flow/`` for the flow, ``imgs/`` or ``Frame/`` for
    frames.
    """


class DAVSOD(_PerSequenceFolders):
    __doc__ = (
        "DAVSOD (Fan et al., CVPR 2019): 226 sequences with saliency-shift annotations. Splits "
        "``train``, ``val`` and ``test`` select ``Training Set/``, ``Validation Set/`` and ``Test Set/`` "
        "(or ``train/``, ``val/``, ``test/``) under the root; without a split the root holds the sequences."
        + _PER_SEQ_TREE
    )
    name = "davsod"
    splits = ("train", "val", "test")
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("Training Set", "train"),
        "val": ("Validation Set", "val"),
        "test": ("Test Set", "test"),
    }


class SegTrackV2(_PerSequenceFolders):
    __doc__ = "SegTrack-v2 (Li et al., ICCV 2013): 14 sequences, every frame annotated." + _PER_SEQ_TREE
    name = "segtrack-v2"


class FBMS(_PerSequenceFolders):
    __doc__ = (
        "FBMS-59 (Ochs et al., TPAMI 2014): 59 sequences with masks on a subset of frames (every 20th or "
        "so). With ``with_masks=True`` only annotated frames are samples; frames without a mask are silently "
        "left out, which is the evaluation protocol. Splits ``train``/``test`` select "
        "``Trainingset/``/``Testset/`` (or ``train/``/``test/``)." + _PER_SEQ_TREE
    )
    name = "fbms"
    sparse_annotations = True
    splits = ("train", "test")
    split_dirs: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("Trainingset", "train"),
        "test": ("Testset", "test"),
    }
