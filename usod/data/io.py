"""Robust image IO for SOD datasets: images, masks, depth, thermal and atomic PNG writes.

Every reader returns a fixed dtype and shape whatever the file stores (grayscale, RGBA, palette, 16-bit), and
every failure (missing, empty, truncated, corrupt, unsupported) raises :class:`InvalidInputError` naming the
file, never a bare PIL/OpenCV trace. Files are decoded with PIL (which detects truncation when the data is
loaded); OpenCV is only a fallback for files PIL cannot identify (e.g. some 16-bit multi-channel TIFFs), with
its log output silenced.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_RECORD",
    "InvalidInputError",
    "SettingsError",
    "LayoutError",
    "claim_output_folder",
    "file_sha256",
    "read_depth",
    "read_image",
    "read_mask",
    "read_mask_checked",
    "read_thermal",
    "sample_id_problem",
    "write_png_atomic",
]

#: File extensions (lower case) recognised as images, in order of preference when two files share a stem.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class SettingsError(ValueError):
    """A setting out of its range (``batch_size: -2``); the message names the setting and what it takes.

    The command line reports it in one line (exit status 2), also when a class raised it while jsonargparse
    or Lightning built it from a config.
    """


class InvalidInputError(ValueError):
    """A file or folder that cannot be used as input.

    Attributes:
        path: The offending file or folder.
        problem: What is wrong with it, in words.
    """

    def __init__(self, path: str | Path, problem: str | None = None) -> None:
        if problem is None:
            # One argument: unpickling, or the main process re-raising an error of a DataLoader worker as
            # ``InvalidInputError(message)`` (the message ends with the worker's traceback, whose last
            # entry is ``usod.data.io.InvalidInputError: <path>: <problem>``). Recover path and problem.
            message = str(path)
            found = list(re.finditer(r"^[\w.]*(?:InvalidInputError|LayoutError): ", message, re.MULTILINE))
            tail = message[found[-1].end() :] if found else message
            path, _, problem = tail.strip().partition(": ")
            if not problem:
                path, problem = "", tail.strip()
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if str(path) else problem)


class LayoutError(InvalidInputError):
    """A dataset root whose folder tree does not match any layout the dataset accepts."""


class NoMasksError(LayoutError):
    """Ground-truth masks were asked for (``with_masks=True``) but the dataset has no mask folder."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InvalidInputError(path, "file does not exist")
    if not path.is_file():
        raise InvalidInputError(path, "is not a regular file")
    if path.stat().st_size == 0:
        raise InvalidInputError(path, "file is empty (0 bytes)")


def imread_cv2(path: str | Path, flags: int) -> np.ndarray | None:
    """``cv2.imread(path, flags)`` for any file name, None when OpenCV cannot decode it.

    The bytes are read by Python and decoded with ``cv2.imdecode`` (the same decoder, so the same pixels):
    ``cv2.imread`` itself crashes the process on names that are not valid UTF-8.
    """
    import cv2

    data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    return cv2.imdecode(data, flags) if data.size else None


@contextlib.contextmanager
def cv2_path(path: str | Path) -> Iterator[str]:
    """A name of ``path`` that OpenCV can open (``cv2.VideoCapture``): the path itself, or, when it is not
    valid UTF-8 (which crashes OpenCV), a symbolic link with a plain name in a temporary folder."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="usod-") as folder:
            link = Path(folder) / f"input{Path(path).suffix.encode('ascii', 'ignore').decode()}"
            os.symlink(os.path.abspath(path), link)
            yield str(link)
        return
    yield text


def _read_with_cv2(path: Path) -> np.ndarray | None:
    """Decode with OpenCV as a fallback; returns None when OpenCV cannot read the file either."""
    import cv2

    # silent: failures are reported through InvalidInputError instead
    with contextlib.suppress(AttributeError):
        cv2.setLogLevel(0)
    arr = imread_cv2(path, cv2.IMREAD_UNCHANGED)
    if arr is None:
        return None
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


#: The fewest pixels an image usod reads may have: the SOD metrics are undefined below 2 pixels.
MIN_IMAGE_PIXELS = 2


def _read_raw(path: str | Path) -> tuple[np.ndarray, str]:
    """Decode a file into a numpy array close to what it stores.

    Returns:
        ``(array, mode)``: array is HxW or HxWxC (C in 3, 4) of dtype bool, uint8, uint16, int32 or float32;
        mode is the PIL mode (or ``"cv2"`` when decoded by OpenCV). Palette images come back as their index
        array with mode ``"P"``; use :func:`_palette` to map them.

    Raises:
        InvalidInputError: The file is missing, unreadable (permissions), not an image, truncated, corrupt,
            larger than PIL's decompression-bomb limit, or smaller than :data:`MIN_IMAGE_PIXELS`.
    """
    path = Path(path)
    arr, mode = _decode(path)
    if arr.ndim >= 2 and arr.shape[0] * arr.shape[1] < MIN_IMAGE_PIXELS:
        raise InvalidInputError(
            path, f"is {arr.shape[0]}x{arr.shape[1]} pixels; images need at least {MIN_IMAGE_PIXELS} pixels "
            "(the SOD metrics are undefined below)"
        )  # fmt: skip
    return arr, mode


def _decode(path: Path) -> tuple[np.ndarray, str]:
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's DecompressionBombWarning, EXIF warnings
            with Image.open(path) as img:
                img.load()  # truncation and most corruption only surface here
                mode = img.mode
                if mode in ("P", "PA"):
                    arr = np.asarray(img.convert("P") if mode == "PA" else img)
                    return arr, "P:" + ",".join(map(str, img.getpalette() or []))
                if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    img = img.convert("RGB")
                elif mode == "LA":
                    img = img.convert("L")
                elif mode.startswith("I;16"):
                    # 16-bit grey is I;16(B/L): the cast gives native uint16 whatever the endianness
                    return np.asarray(img).astype(np.uint16), "I;16"
                return np.asarray(img), img.mode
    except InvalidInputError:
        raise
    except Image.UnidentifiedImageError:
        arr = _read_with_cv2(path)
        if arr is None:
            raise InvalidInputError(path, "not a readable image (unknown format or corrupt header)") from None
        return arr, "cv2"
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(path, f"image too large to decode safely ({exc})") from None
    except PermissionError:
        raise InvalidInputError(path, "cannot be read: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc)
        problem = "truncated image file" if "truncated" in msg.lower() else f"corrupt image file ({msg})"
        raise InvalidInputError(path, problem) from None


def _palette(indices: np.ndarray, mode: str) -> np.ndarray:
    """Map a palette index array to HxWx3 uint8 through the palette stored in ``mode`` ("P:r,g,b,...")."""
    values = [int(v) for v in mode[2:].split(",") if v]
    pal = np.zeros((256, 3), dtype=np.uint8)
    if values:
        table = np.asarray(values[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
        pal[: len(table)] = table
    else:  # no palette stored: indices are grey levels
        pal[:] = np.arange(256, dtype=np.uint8)[:, None]
    return pal[indices]


def _to_uint8(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Convert any decoded dtype to uint8, returning whether the data was more than 8 bits deep."""
    if arr.dtype == np.uint8:
        return arr, False
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255, False
    if np.issubdtype(arr.dtype, np.floating):
        # float TIFFs: [0,1] data is scaled, anything else min-max normalised
        a = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.round(a * 255.0).astype(np.uint8), True
        scale = hi - lo if hi > lo else 1.0
        return np.round((a - lo) / scale * 255.0).astype(np.uint8), True
    # 16-bit (uint16, or PIL's int32 "I" mode for 16-bit PNGs): full 16-bit range mapped onto 8 bits
    a = np.clip(arr.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8), True


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB.

    Grayscale is replicated to three channels, alpha is dropped, palette images are mapped through their
    palette, and 16-bit data is scaled to 8 bits (``v * 255 / 65535``).

    Args:
        path: JPEG, PNG, BMP or TIFF file.

    Returns:
        HxWx3 uint8 array in RGB order.

    Raises:
        InvalidInputError: The file is missing, empty, truncated, corrupt or not an image.
    """
    arr, mode = _read_raw(path)
    if mode.startswith("P:"):
        arr = _palette(arr, mode)
    arr, _ = _to_uint8(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha from OpenCV
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(path, f"unsupported image shape {arr.shape}")
    return np.ascontiguousarray(arr)


#: Images stored as thermal maps are read exactly like RGB images (HxWx3 uint8).
read_thermal = read_image


def read_mask_checked(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read a mask as HxW uint8 in 0..255 and say which storage quirks were fixed on the way.

    Conventions: colour masks are reduced to one channel by the maximum over the colour channels (alpha
    ignored), so any non-black pixel counts as foreground; palette masks with a grey palette keep their grey
    levels, palette *label* maps (e.g. DAVIS-2017 style) become 255 wherever the label is non-zero; 16-bit
    masks are scaled to 8 bits; masks stored as 0/1 are rescaled to 0/255. Intermediate values (anti-aliased
    object borders, as real ground truth has) are kept unchanged.

    Args:
        path: Mask file.

    Returns:
        ``(mask, fixes)`` where ``fixes`` lists human-readable notes such as ``"mask stored as 0/1, rescaled
        to 0/255"`` (empty for a clean 8-bit grayscale mask).

    Raises:
        InvalidInputError: The file is missing, empty, truncated, corrupt or not an image.
    """
    arr, mode = _read_raw(path)
    fixes: list[str] = []
    if mode.startswith("P:"):
        rgb = _palette(arr, mode)
        used = rgb.reshape(-1, 3)
        if np.all(used[:, 0] == used[:, 1]) and np.all(used[:, 1] == used[:, 2]):
            arr = rgb[:, :, 0]
        else:
            arr = np.where(arr > 0, 255, 0).astype(np.uint8)
            fixes.append("palette label mask: non-zero labels set to 255")
    arr, deep = _to_uint8(arr)
    if deep:
        fixes.append("mask deeper than 8 bits, scaled to 8-bit")
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4):
            colour = arr[:, :, :3]
            if not (
                np.array_equal(colour[:, :, 0], colour[:, :, 1])
                and np.array_equal(colour[:, :, 1], colour[:, :, 2])
            ):
                fixes.append("colour mask reduced to one channel (max over channels)")
            else:
                fixes.append("mask stored with 3 identical channels, reduced to one")
            arr = colour.max(axis=2)
        elif arr.shape[2] == 2:
            arr = arr[:, :, 0]
        else:
            raise InvalidInputError(path, f"unsupported mask shape {arr.shape}")
    if arr.ndim != 2:
        raise InvalidInputError(path, f"unsupported mask shape {arr.shape}")
    if arr.max(initial=0) == 1:
        arr = arr * np.uint8(255)
        fixes.append("mask stored as 0/1, rescaled to 0/255")
    return np.ascontiguousarray(arr), fixes


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as HxW uint8 in 0..255 (see :func:`read_mask_checked` for the conventions).

    Args:
        path: Mask file.

    Returns:
        HxW uint8 array.

    Raises:
        InvalidInputError: The file is missing, empty, truncated, corrupt or not an image.
    """
    return read_mask_checked(path)[0]


def read_depth(path: str | Path) -> np.ndarray:
    """Read a depth map as HxW float32 in [0, 1].

    Convention: the stored polarity is kept (releases differ on whether near is bright); 8- and 16-bit data
    are min-max normalised per image so that every map spans [0, 1]. A constant map cannot be min-max
    normalised and is instead divided by its dtype's maximum (255 or 65535), so it stays constant rather than
    becoming NaN. Three-channel depth images (grey saved as RGB) use the first channel; colour-mapped depth,
    whose colours cannot be inverted without the colour map, is averaged over channels as the best available
    approximation.

    Args:
        path: PNG, JPEG, BMP or TIFF depth file.

    Returns:
        HxW float32 array in [0, 1].

    Raises:
        InvalidInputError: The file is missing, empty, truncated, corrupt or not an image.
    """
    arr, mode = _read_raw(path)
    if mode.startswith("P:"):
        arr = _palette(arr, mode)
    if arr.ndim == 3:
        colour = arr[:, :, :3] if arr.shape[2] >= 3 else arr[:, :, :1]
        same = colour.shape[2] == 1 or (
            np.array_equal(colour[:, :, 0], colour[:, :, 1])
            and np.array_equal(colour[:, :, 1], colour[:, :, 2])
        )
        arr = colour[:, :, 0] if same else colour.astype(np.float64).mean(axis=2)
    if arr.dtype == bool:
        full = 1.0
    elif arr.dtype == np.uint8:
        full = 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        full = 1.0
    else:
        full = 65535.0
    d = np.nan_to_num(arr.astype(np.float64))
    lo, hi = float(d.min()), float(d.max())
    out = (d - lo) / (hi - lo) if hi > lo else np.clip(d / full, 0.0, 1.0)
    return out.astype(np.float32)


#: Prefix of temporary files; readers skip files that start with it.
TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    Args:
        path: Final file path; parent directories are created.
        data: File content.

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=path.suffix + ".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # mkstemp creates 0600 files; give the result the mode a plain open() would (0666 minus umask)
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def write_png_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Write an array as a PNG so that readers never see a half-written file.

    The data is written to a temporary file in the destination folder, flushed to disk, then moved over
    ``path`` with :func:`os.replace` (atomic on POSIX and Windows within one file system). Parent folders are
    created.

    Args:
        path: Destination ``.png`` path.
        array: HxW or HxWx3 (RGB) / HxWx4 (RGBA) uint8; HxW uint16 (16-bit PNG); bool (written as 0/255); or
            float in [0, 1] (scaled to 0..255 and rounded, for convenience when saving probability maps).

    Raises:
        InvalidInputError: The array has an unsupported shape, dtype or value range.
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
            raise InvalidInputError(path, "float array to write must be finite and in [0, 1]")
        arr = np.round(arr * 255.0).astype(np.uint8)
    if arr.dtype not in (np.uint8, np.uint16):
        raise InvalidInputError(
            path, f"cannot write dtype {arr.dtype} as PNG (use uint8, uint16, bool or float)"
        )
    if arr.dtype == np.uint16 and arr.ndim != 2:
        raise InvalidInputError(path, "16-bit PNGs must be single-channel (HxW)")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InvalidInputError(
            path, f"cannot write array of shape {arr.shape} as PNG (need HxW, HxWx3 or HxWx4)"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def images_under(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively, in path order), hidden files and folders excluded.

    Raises:
        InvalidInputError: ``root`` cannot be listed (permission denied), instead of looking empty.
    """
    root = Path(root)
    try:
        with os.scandir(root):
            pass
    except PermissionError:
        raise InvalidInputError(root, "cannot be read: permission denied") from None
    except NotADirectoryError:
        raise InvalidInputError(root, "is not a folder") from None
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def sample_id_problem(sample_id: object) -> str | None:
    """Why ``sample_id`` cannot name a sample's files (a label ``<id>.png``, a map), or ``None`` when it can.

    Ids are relative paths with ``/`` between folders: no absolute path, no ``.`` or ``..`` component, no
    backslash (a separator on Windows, so ``a\\b`` would name another file there), no component starting
    with :data:`TMP_PREFIX` (the writers' temporary files).
    """
    if not isinstance(sample_id, str) or not sample_id:
        return f"sample id must be a non-empty string, got {sample_id!r}"
    parts = sample_id.split("/")
    if "\\" in sample_id or sample_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return f"invalid sample id {sample_id!r}: must be a relative path without '.', '..' or '\\'"
    if any(p.startswith(TMP_PREFIX) for p in parts):
        return f"invalid sample id {sample_id!r}: components may not start with {TMP_PREFIX!r}"
    return None


def map_outputs(images: list[Path], input_dir: str | Path, output_dir: str | Path) -> list[Path]:
    """``output_dir/<relative path of each image>.png``: where per-image maps of ``images`` go.

    Checked before anything is written, so that a command never overwrites its inputs.

    Raises:
        InvalidInputError: ``output_dir`` is ``input_dir`` or inside it (the maps would replace images or be
            read as images by the next run), or two images map to the same file (``a.jpg`` and ``a.png``).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        raise InvalidInputError(
            output_dir, f"the output folder is the input folder {input_dir} or inside it; choose one outside"
        )
    outputs = [output_dir / p.relative_to(input_dir).with_suffix(".png") for p in images]
    seen: dict[Path, Path] = {}
    for image, out in zip(images, outputs, strict=True):
        if out in seen:
            raise InvalidInputError(
                image, f"has the same name as {seen[out]}: both maps would be written to {out}; rename one"
            )
        seen[out] = image
    return outputs


#: The record a command leaves in an output folder it writes per-image maps into (``usod predict``,
#: ``usod handcrafted``): which command, with which settings. Its presence is what lets a rerun resume or
#: replace those maps; a folder of files without it is never written over unless ``overwrite``.
OUTPUT_RECORD = ".usod-output.json"


def claim_output_folder(
    folder: str | Path, command: str, settings: dict[str, Any], *, overwrite: bool = False
) -> bool:
    """Claim ``folder`` for a command's maps; returns whether maps already there may be kept (resume).

    * A missing or empty folder (hidden files aside) is created and claimed.
    * A folder this command claimed with the same ``settings`` is resumed: ``True``.
    * Otherwise (files that no usod command wrote, e.g. a dataset's ground truth, or maps made by another
      command or with other settings) it is refused, unless ``overwrite``: then it is claimed anew and every
      map is written again (``False``).

    Raises:
        InvalidInputError: The folder is refused (the message says why and names ``--overwrite``), or is a
            file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(folder, "is a file, not a folder")
    record_path = folder / OUTPUT_RECORD
    wanted = {"command": command, "settings": settings}
    resume = False
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if record == json.loads(json.dumps(wanted)):
            resume = True
        elif not overwrite:
            made = record.get("command") if isinstance(record, dict) else None
            why = (
                f"holds maps of `usod {made}` made with other settings"
                if made == command
                else f"holds the output of `usod {made}`"
                if made
                else f"has an unreadable {OUTPUT_RECORD}"
            )
            raise InvalidInputError(
                folder, f"{why}; pass --overwrite to replace them, or choose another folder"
            )
    elif folder.is_dir() and not overwrite:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if entries:
            raise InvalidInputError(
                folder,
                f"holds {len(entries)} file(s) that no usod command wrote (e.g. {entries[0].name}); refusing "
                "to write over them: pass --overwrite, or choose an empty or new folder",
            )
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_bytes(record_path, (json.dumps(wanted, indent=2) + "\n").encode())
    return resume


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content (a checkpoint's identity, whatever its path or time stamps)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
