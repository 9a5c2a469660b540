"""Writers of tiny fake SOD datasets in every real on-disk layout (32x24 images made with numpy).

Each ``write_*`` function builds one layout family under ``root`` and returns a :class:`Written` describing
what a dataset built on it should contain. :data:`NATIVE_WRITERS` maps every registered dataset name to a
writer of its native layout, so tests can parametrize over the whole registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 32


@dataclass
class Written:
    """What a fake dataset holds.

    Attributes:
        root: Root to pass to the dataset.
        n: Samples with ``with_masks=False`` (default split).
        n_masked: Samples with ``with_masks=True`` (differs for sparsely annotated video).
        extra: Modality keys beyond image/mask (``depth``, ``thermal``, ``flow``).
        ids: Sample ids in order (default split, ``with_masks=False``).
        split: Split to pass (None = default).
        kwargs: Extra constructor arguments needed (e.g. ``with_flow``).
    """

    root: Path
    n: int
    n_masked: int
    extra: tuple[str, ...] = ()
    ids: list[str] = field(default_factory=list)
    split: str | None = None
    kwargs: dict = field(default_factory=dict)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """HxWx3 uint8 RGB: a smooth gradient plus noise, with a bright rectangle as the 'object'."""
    rng = _rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    y0, x0 = h // 4, w // 4
    img[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.integers(180, 255, size=3, dtype=np.uint8)
    return img


def make_mask(h: int = H, w: int = W) -> np.ndarray:
    """HxW uint8 0/255 with an anti-aliased border value, as real ground truth has."""
    m = np.zeros((h, w), dtype=np.uint8)
    y0, x0 = h // 4, w // 4
    m[y0 : y0 + h // 2, x0 : x0 + w // 2] = 255
    m[y0 - 1, x0 : x0 + w // 2] = 128
    return m


def make_depth(seed: int, h: int = H, w: int = W, bits: int = 8) -> np.ndarray:
    """HxW depth ramp (uint8 or uint16)."""
    ramp = np.linspace(0.0, 1.0, w)[None, :].repeat(h, axis=0) + _rng(seed).random((h, w)) * 0.05
    ramp = ramp / ramp.max()
    return (ramp * 255).astype(np.uint8) if bits == 8 else (ramp * 65535).astype(np.uint16)


def save(path: Path, array: np.ndarray) -> Path:
    """Save with PIL, creating folders; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_paired(
    root: Path,
    image_dir: str,
    mask_dir: str | None,
    n: int = 3,
    depth_dir: str | None = None,
    thermal_dir: str | None = None,
    image_ext: str = ".jpg",
    mask_ext: str = ".png",
    prefix: str = "img",
    depth_bits: int = 8,
) -> list[str]:
    """Write ``n`` paired samples into folders under ``root``; returns their stems."""
    stems = [f"{prefix}_{i:03d}" for i in range(n)]
    for i, stem in enumerate(stems):
        save(root / image_dir / f"{stem}{image_ext}", make_image(i))
        if mask_dir is not None:
            save(root / mask_dir / f"{stem}{mask_ext}", make_mask())
        if depth_dir is not None:
            save(root / depth_dir / f"{stem}.png", make_depth(i, bits=depth_bits))
        if thermal_dir is not None:
            save(root / thermal_dir / f"{stem}.jpg", make_image(100 + i))
    return stems


# -- RGB --


def write_duts(root: Path) -> Written:
    """``DUTS-TR/DUTS-TR-{Image,Mask}`` (3 samples) and ``DUTS-TE/DUTS-TE-{Image,Mask}`` (2 samples)."""
    ids = write_paired(root / "DUTS-TR", "DUTS-TR-Image", "DUTS-TR-Mask", n=3, prefix="tr")
    write_paired(root / "DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask", n=2, prefix="te")
    return Written(root, 3, 3, ids=ids)


def _simple(image_dir: str, mask_dir: str, image_ext: str = ".jpg") -> Callable[[Path], Written]:
    def write(root: Path) -> Written:
        ids = write_paired(root, image_dir, mask_dir, image_ext=image_ext)
        return Written(root, 3, 3, ids=ids)

    write.__doc__ = f"``{image_dir}/`` + ``{mask_dir}/``."
    return write


write_ecssd = _simple("images", "ground_truth_mask")
write_dut_omron = _simple("DUT-OMRON-image", "pixelwiseGT-new-PNG")
write_hku_is = _simple("imgs", "gt", image_ext=".png")
write_pascal_s = _simple("Imgs", "Masks")
write_sod = _simple("Imgs", "GT")


def write_msra_b(root: Path) -> Written:
    """Images (.jpg) and masks (.png) in one folder with the cvpr2013 split lists (train 2, val 1, test 1)."""
    ids = write_paired(root, ".", ".", n=4)
    (root / "train_cvpr2013.txt").write_text(f"{ids[0]}.jpg\n{ids[1]}.jpg\n")
    (root / "valid_cvpr2013.txt").write_text(f"{ids[2]}.jpg\n")
    (root / "test_cvpr2013.txt").write_text(f"{ids[3]}.jpg\n")
    return Written(root, 4, 4, ids=ids)


def write_folder(root: Path) -> Written:
    """The synthetic generator's RGB layout: ``images/*.jpg``, ``masks/*.png``, ``captions.json``."""
    ids = write_paired(root, "images", "masks")
    (root / "captions.json").write_text(json.dumps({i: "a bright square" for i in ids}))
    return Written(root, 3, 3, ids=ids)


def write_a2s_rgb(root: Path) -> Written:
    """A2S code-family RGB layout ``<root>/{RGB,GT}``."""
    ids = write_paired(root, "RGB", "GT")
    return Written(root, 3, 3, ids=ids)


# -- RGB-D / RGB-T --


def write_rgbd(root: Path, depth_bits: int = 8) -> Written:
    """Common RGB-D release ``<root>/{RGB,depth,GT}`` (the synthetic generator's RGB-D layout)."""
    ids = write_paired(root, "RGB", "GT", depth_dir="depth", depth_bits=depth_bits)
    return Written(root, 3, 3, extra=("depth",), ids=ids)


def write_rgbd_split(root: Path) -> Written:
    """RGB-D release split into ``train/`` (3) and ``test/`` (2), each ``{RGB,depth,GT}``."""
    ids = write_paired(root / "train", "RGB", "GT", depth_dir="depth", depth_bits=16)
    write_paired(root / "test", "RGB", "GT", depth_dir="depth", n=2, prefix="te")
    return Written(root, 3, 3, extra=("depth",), ids=ids, split="train")


def write_rgbt(root: Path) -> Written:
    """``<root>/{RGB,T,GT}`` (VT821/VT1000; the synthetic generator's RGB-T layout)."""
    ids = write_paired(root, "RGB", "GT", thermal_dir="T")
    return Written(root, 3, 3, extra=("thermal",), ids=ids)


def write_vt5000(root: Path) -> Written:
    """``Train/{RGB,T,GT}`` (3 samples) and ``Test/{RGB,T,GT}`` (2 samples)."""
    ids = write_paired(root / "Train", "RGB", "GT", thermal_dir="T")
    write_paired(root / "Test", "RGB", "GT", thermal_dir="T", n=2, prefix="te")
    return Written(root, 3, 3, extra=("thermal",), ids=ids)


# -- video --

SEQUENCES = {"bear": 3, "car-turn": 4}


def write_davis(root: Path, level: str = "480p", with_flow: bool = True) -> Written:
    """DAVIS native layout, 2 sequences (3 and 4 frames) with flow and ImageSets (bear: train, car-turn:
    val)."""
    ids = []
    for seq, n in SEQUENCES.items():
        for f in range(n):
            frame = f"{f:05d}"
            parts = [p for p in (level, seq) if p]
            save(root.joinpath("JPEGImages", *parts, f"{frame}.jpg"), make_image(f))
            save(root.joinpath("Annotations", *parts, f"{frame}.png"), make_mask())
            if with_flow:
                save(root.joinpath("Flow", *parts, f"{frame}.png"), make_image(50 + f))
            ids.append(f"{seq}/{frame}")
    sets = root / "ImageSets" / "480p"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text(
        "".join(f"/JPEGImages/480p/bear/{f:05d}.jpg /Annotations/480p/bear/{f:05d}.png\n" for f in range(3))
    )
    (sets / "val.txt").write_text("car-turn\n")
    return Written(root, 7, 7, ids=ids, extra=("flow",) if with_flow else (), kwargs={"with_flow": with_flow})


def write_per_sequence(root: Path, sparse: bool = False, mask_dir: str = "GT_object_level") -> Written:
    """DAVSOD-release layout ``<seq>/{Imgs,GT_object_level,Flow}``; with ``sparse`` only frame 0 is
    annotated."""
    ids, n_masked = [], 0
    for seq, n in SEQUENCES.items():
        for f in range(n):
            frame = f"{seq}_{f}"
            save(root / seq / "Imgs" / f"{frame}.jpg", make_image(f))
            save(root / seq / "Flow" / f"{frame}.png", make_image(50 + f))
            if not sparse or f == 0:
                save(root / seq / mask_dir / f"{frame}.png", make_mask())
                n_masked += 1
            ids.append(f"{seq}/{frame}")
    return Written(root, 7, n_masked, ids=ids, extra=("flow",), kwargs={"with_flow": True})


def write_fbms(root: Path) -> Written:
    """FBMS in the DAVSOD-release layout, masks on frame 0 of each sequence only."""
    return write_per_sequence(root, sparse=True)


# -- remote sensing --


def write_orssd(root: Path) -> Written:
    """ORSSD/EORSSD ``{train,test}-{images,labels}/`` (3 train, 2 test); the generator's RS layout."""
    ids = write_paired(root, "train-images", "train-labels")
    write_paired(root, "test-images", "test-labels", n=2, prefix="te")
    return Written(root, 3, 3, ids=ids)


def write_ors4199(root: Path) -> Written:
    """ORSI-4199 ``{train,test}/{images,gt}/`` (3 train, 2 test)."""
    ids = write_paired(root / "train", "images", "gt")
    write_paired(root / "test", "images", "gt", n=2, prefix="te")
    return Written(root, 3, 3, ids=ids)


#: Registered dataset name -> writer of its native layout.
NATIVE_WRITERS: dict[str, Callable[[Path], Written]] = {
    "duts": write_duts,
    "ecssd": write_ecssd,
    "dut-omron": write_dut_omron,
    "hku-is": write_hku_is,
    "pascal-s": write_pascal_s,
    "msra-b": write_msra_b,
    "sod": write_sod,
    "folder": write_folder,
    "nju2k": write_rgbd,
    "nlpr": write_rgbd_split,
    "sip": lambda root: write_rgbd(root, depth_bits=16),
    "stere": write_rgbd,
    "des": write_rgbd,
    "vt821": write_rgbt,
    "vt1000": write_rgbt,
    "vt5000": write_vt5000,
    "davis": write_davis,
    "davsod": write_per_sequence,
    "segtrack-v2": lambda root: write_per_sequence(root, mask_dir="GT"),
    "fbms": write_fbms,
    "orssd": write_orssd,
    "eorssd": write_orssd,
    "ors-4199": write_ors4199,
}


def write_a2s(root: Path, modality: str) -> Written:
    """The A2S code-family layout ``<root>/{RGB,GT,depth|T}`` for an rgb, rgbd or rgbt dataset."""
    if modality == "rgbd":
        return write_rgbd(root)
    if modality == "rgbt":
        return write_rgbt(root)
    return write_a2s_rgb(root)


def on_generated_data(config: dict, folder: Path) -> dict:
    """A pipeline config (a parsed YAML) whose dataset roots are replaced by tiny generated datasets of the
    layouts it names, under ``folder``, and whose weights files are replaced by random weights: a config that
    names data or weights outside the repository is checked for its structure, not for their presence."""
    config = json.loads(json.dumps(config))
    roots: dict[str, Path] = {}
    for entry in [config, *config.get("eval", [])]:
        name, root = entry.get("dataset", "folder"), entry["root"]
        if root not in roots:
            target = folder / f"data{len(roots)}"
            (write_msra_b if name == "msra-b" else NATIVE_WRITERS[name])(target)
            roots[root] = target
        entry["root"] = str(roots[root])
    for stage in ("stage1", "stage2", "refiner", "fusion"):
        backbone = (config.get(stage) or {}).get("backbone")
        if backbone and str(backbone.get("weights", "")).endswith((".pth", ".tar", ".safetensors")):
            backbone["weights"] = "none"
    config["out"] = str(folder / "run")
    return config
