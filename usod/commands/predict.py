"""``usod predict --ckpt CKPT --input IMAGE_DIR|VIDEO_FILE --output DIR``: saliency maps for any images.

Works with every usod module checkpoint (their ``predict_step`` returns ``{"id", "size", "saliency"}``).
Maps are written as 8-bit PNGs at each image's original size, with the image's relative path and stem
(video frames as ``frame_00000.png``...); ``--overlay`` also writes the map blended over the image. An
image (or auxiliary image) that cannot be decoded is skipped: the other maps are written, the skipped files
are listed with their problem at the end and the command exits with status 1.

``--captions`` (models that caption images, e.g. ``SDGCaptionGuided``) also writes the generated caption as
``<id>.txt`` and one word attention map per generated word as ``<id>_attn/<j>_<word>.png`` (``j`` from 01,
the map resized to the image and scaled so that its peak is 255); other models stop with an error.

Multimodal checkpoints (``aux_modality`` other than ``"none"``): a model that takes optical flow gets it
computed with OpenCV between consecutive images of each folder of the input (each folder is one sequence,
frames in name order), rendered with the colour wheel and cached in ``--flow-cache`` (default
``OUTPUT/.usod_flow``); a depth or thermal model reads its auxiliary images from ``--aux-dir``, a folder
mirroring the input (same relative paths and stems, any image extension).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from usod.commands import non_negative_int, positive_int
from usod.data.io import (
    IMAGE_EXTENSIONS,
    InvalidInputError,
    atomic_write_bytes,
    claim_output_folder,
    cv2_path,
    file_sha256,
    images_under,
    map_outputs,
    read_depth,
    read_image,
    read_thermal,
    write_png_atomic,
)
from usod.data.transforms import DEFAULT_IMAGE_SIZE, EvalTransform

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class ImagePaths(Dataset):
    """Every image under a folder (recursively), id = relative path without extension.

    ``aux`` (optional): ``(key, {id: path})``, the auxiliary image of every sample (``depth``, ``thermal``
    or ``flow``), read like the datasets read them. ``paths``: the images, when already listed
    (:func:`usod.data.io.images_under`).
    """

    def __init__(
        self,
        root: Path,
        transform: EvalTransform,
        aux: tuple[str, dict[str, Path]] | None = None,
        paths: list[Path] | None = None,
    ) -> None:
        self.root = root
        self.paths = images_under(root) if paths is None else paths
        if not self.paths:
            raise InvalidInputError(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        self.transform = transform
        self.aux = aux

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The transformed sample, or ``{"id", "unreadable"}`` for a file that cannot be decoded."""
        path = self.paths[index]
        sample_id = path.relative_to(self.root).with_suffix("").as_posix()
        try:
            image = read_image(path)
            sample = {"image": image, "id": sample_id, "size": image.shape[:2]}
            if self.aux is not None:
                key, files = self.aux
                read = {"depth": read_depth, "thermal": read_thermal}.get(key, read_image)
                sample[key] = read(files[sample_id])
        except InvalidInputError as err:
            return {"id": sample_id, "unreadable": str(err)}
        return self.transform(sample)


def collate_readable(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate the readable samples; the others' errors go to ``batch["unreadable"]`` (a list of str)."""
    from torch.utils.data import default_collate

    good = [s for s in samples if "unreadable" not in s]
    batch: dict[str, Any] = default_collate(good) if good else {"id": []}
    batch["unreadable"] = [s["unreadable"] for s in samples if "unreadable" in s]
    return batch


def aux_inputs(
    model: Any, root: Path, aux_dir: Path | None, flow_cache: Path
) -> tuple[str, dict[str, Path]] | None:
    """The auxiliary image of every image under ``root`` for a multimodal ``model`` (``None`` for RGB).

    Raises:
        InvalidInputError: The model needs ``--aux-dir`` and it is missing or lacks an image.
    """
    modality = str(getattr(model, "hparams", {}).get("aux_modality", "none"))
    if modality == "none":
        return None
    ids = {p.relative_to(root).with_suffix("").as_posix(): p for p in images_under(root)}
    if modality == "flow" and aux_dir is None:
        from usod.data.flow import cached_flow_images

        out: dict[str, Path] = {}
        by_folder: dict[Path, list[str]] = {}
        for sample_id, path in ids.items():
            by_folder.setdefault(path.parent, []).append(sample_id)
        for folder, members in sorted(by_folder.items()):
            members.sort(key=lambda i: ids[i].name)
            if len(members) < 2:
                raise InvalidInputError(folder, "optical flow needs at least 2 frames per folder")
            rel = folder.relative_to(root)
            flows = cached_flow_images([ids[i] for i in members], flow_cache / "dis" / rel)
            out.update(zip(members, flows, strict=True))
        return "flow", out
    if aux_dir is None:
        raise InvalidInputError(
            root, f"the model takes a {modality} image beside each RGB image: pass --aux-dir (a folder "
            "mirroring the input)"
        )  # fmt: skip
    found = {p.relative_to(aux_dir).with_suffix("").as_posix(): p for p in images_under(aux_dir)}
    missing = sorted(set(ids) - set(found))
    if missing:
        raise InvalidInputError(
            aux_dir, f"no auxiliary image for {len(missing)} input(s), e.g. {missing[0]!r}"
        )
    key = "depth" if modality == "auto" else modality
    return key, {i: found[i] for i in ids}


class VideoFrames(IterableDataset):
    """The frames of a video file, decoded in order, id = ``frame_<index>``."""

    def __init__(self, path: Path, transform: EvalTransform) -> None:
        import cv2

        with cv2_path(path) as name:
            capture = cv2.VideoCapture(name)
        if not capture.isOpened():
            raise InvalidInputError(path, "cannot open the video (unsupported codec or not a video)")
        self.count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if self.count <= 0:  # not in the container's header: count the frames
            self.count = 0
            while capture.grab():
                self.count += 1
        capture.release()
        if self.count == 0:
            raise InvalidInputError(path, "no decodable video frame (not a video, or an empty one)")
        self.path = path
        self.transform = transform

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import cv2

        with cv2_path(self.path) as name:
            capture = cv2.VideoCapture(name)  # opened: the temporary link may go
        index = 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield self.transform({"image": rgb, "id": f"frame_{index:05d}", "size": rgb.shape[:2]})
                index += 1
        finally:
            capture.release()


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a uint8 saliency map over an RGB image in red."""
    weight = (saliency.astype(np.float32) / 255.0)[..., None] * alpha
    red = np.zeros_like(image, dtype=np.float32)
    red[..., 0] = 255.0
    return (image.astype(np.float32) * (1 - weight) + red * weight).round().astype(np.uint8)


def attention_png(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An attention map as an HxW uint8 image at ``size`` (bilinear, scaled so that its peak is 255)."""
    import cv2

    a = cv2.resize(
        np.asarray(attention, np.float32), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR
    )
    peak = float(a.max())
    return np.clip(np.rint(a / peak * 255 if peak > 0 else a), 0, 255).astype(np.uint8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint of any usod module")
    parser.add_argument("--input", required=True, type=Path, help="folder of images or a video file")
    parser.add_argument("--output", required=True, type=Path, help="folder for the PNG maps")
    parser.add_argument(
        "--image-size", type=positive_int, default=None, help="network input size (default: training's)"
    )
    parser.add_argument(
        "--aux-dir",
        type=Path,
        default=None,
        help="depth/thermal (or flow) images mirroring --input, for multimodal checkpoints",
    )
    parser.add_argument(
        "--flow-cache", type=Path, default=None, help="cache of computed flow (default OUTPUT/.usod_flow)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--num-workers", type=non_negative_int, default=2, help="image-decoding workers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--crf", action="store_true", help="denseCRF + median filter (A2S eq. 6) on each map")
    parser.add_argument("--overlay", action="store_true", help="also write OUTPUT/overlay/<id>.jpg")
    parser.add_argument(
        "--captions",
        action="store_true",
        help="captioning models only: also write <id>.txt and <id>_attn/<j>_<word>.png word attention maps",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an output folder that holds other files, or maps of another model or settings "
        "(they are replaced); without it such a folder is refused, and a folder of this command's own maps "
        "is resumed (maps already written are kept)",
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    from usod.models.base import load_module, trained_image_size
    from usod.progress import progress_bar

    if not args.input.exists():
        raise FileNotFoundError(f"{args.input}: input not found")
    model = load_module(args.ckpt)
    if args.captions and not callable(getattr(model, "describe", None)):
        raise InvalidInputError(
            args.ckpt, f"--captions needs a model that captions images; {type(model).__name__} does not"
        )
    device = _device(args.device)
    model.to(device)
    size = args.image_size or trained_image_size(args.ckpt) or DEFAULT_IMAGE_SIZE
    transform = EvalTransform(size)
    settings = {
        "ckpt_sha256": file_sha256(args.ckpt),
        "input": str(args.input.resolve()),
        "image_size": size,
        "crf": args.crf,
        "overlay": args.overlay,
        "captions": args.captions,
        "aux_dir": None if args.aux_dir is None else str(args.aux_dir.resolve()),
    }
    kept = 0
    if args.input.is_dir():
        paths = images_under(args.input)
        outputs = map_outputs(paths, args.input, args.output)  # never over the inputs
        resume = claim_output_folder(args.output, "predict", settings, overwrite=args.overwrite)
        flow_cache = args.flow_cache or args.output / ".usod_flow"
        aux = aux_inputs(model, args.input, args.aux_dir, flow_cache)
        if resume:  # maps are written atomically and last: one that exists is complete
            todo = [p for p, out in zip(paths, outputs, strict=True) if not out.is_file()]
            kept, paths = len(paths) - len(todo), todo
        if paths or not kept:
            dataset: Dataset = ImagePaths(args.input, transform, aux, paths)
        else:
            print(f"wrote 0 saliency maps to {args.output} ({kept} already there)")
            return 0
        image_path = {p.relative_to(args.input).with_suffix("").as_posix(): p for p in dataset.paths}
        loader = DataLoader(
            dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_readable
        )
    elif args.input.suffix.lower() in VIDEO_EXTENSIONS:
        if str(getattr(model, "hparams", {}).get("aux_modality", "none")) != "none":
            raise InvalidInputError(
                args.input, "multimodal checkpoints need a folder of frames (video files are RGB only)"
            )
        dataset = VideoFrames(args.input, transform)
        resume = claim_output_folder(args.output, "predict", settings, overwrite=args.overwrite)
        image_path = {}
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=0)
    else:
        raise InvalidInputError(args.input, f"not a folder nor a video file ({', '.join(VIDEO_EXTENSIONS)})")
    post = None
    if args.crf:
        from usod.ops import PostProcessConfig, postprocess

        post = (postprocess, PostProcessConfig())
    args.output.mkdir(parents=True, exist_ok=True)
    written = 0
    unreadable: list[str] = []
    with torch.inference_mode():
        for batch in progress_bar(loader, desc="predict", unit="batch", total=len(loader)):
            unreadable += batch.pop("unreadable", [])
            if resume and isinstance(dataset, VideoFrames):  # frames whose map exists are done
                keep = [i for i, s in enumerate(batch["id"]) if not (args.output / f"{s}.png").is_file()]
                kept += len(batch["id"]) - len(keep)
                batch = _select(batch, keep)
            if not batch["id"]:
                continue
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            saliency = model.predict_step(batch, 0)["saliency"].float()
            described = model.describe(batch["image"]) if args.captions else None
            for i, sample_id in enumerate(batch["id"]):
                h, w = (int(s) for s in batch["size"][i])
                prob = F.interpolate(saliency[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)
                prob_np = prob[0, 0].clamp(0, 1).cpu().numpy()
                image = None
                if post is not None or args.overlay:
                    image = (
                        read_image(image_path[sample_id])
                        if sample_id in image_path
                        else _to_uint8(batch, i, h, w)
                    )
                label = (
                    post[0](image, prob_np, post[1])
                    if post is not None
                    else np.rint(prob_np * 255).astype(np.uint8)
                )
                if args.overlay:
                    buffer = io.BytesIO()
                    Image.fromarray(overlay(image, label)).save(buffer, format="JPEG", quality=90)
                    atomic_write_bytes(args.output / "overlay" / f"{sample_id}.jpg", buffer.getvalue())
                if described is not None:
                    _write_caption(args.output, sample_id, described[i], (h, w))
                # the map last: an interrupted run resumes at the first sample without one
                write_png_atomic(args.output / f"{sample_id}.png", label)
                written += 1
    print(f"wrote {written} saliency maps to {args.output}" + (f" ({kept} already there)" if kept else ""))
    if isinstance(dataset, VideoFrames) and written + kept < len(dataset):
        unreadable.append(
            f"{args.input}: {written} of its {len(dataset)} frames decoded (a truncated or damaged video)"
        )
    if unreadable:
        # The other maps are written; report every skipped file and fail so that scripts notice.
        print(f"usod predict: skipped {len(unreadable)} unreadable input(s):", file=sys.stderr)
        for problem in unreadable:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


def _select(batch: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """The samples ``keep`` of a collated batch (tensors and lists indexed alike)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[keep]
        elif isinstance(value, (list, tuple)) and len(value) == len(batch["id"]):
            out[key] = [value[i] for i in keep]
        else:
            out[key] = value
    return out


def _write_caption(output: Path, sample_id: str, described: dict[str, Any], size: tuple[int, int]) -> None:
    """``<id>.txt`` with the caption and ``<id>_attn/<j>_<word>.png`` per generated word."""
    import re

    atomic_write_bytes(output / f"{sample_id}.txt", (described["caption"] + "\n").encode("utf-8"))
    folder = output / f"{sample_id}_attn"
    for j, (word, attention) in enumerate(zip(described["words"], described["maps"], strict=True), start=1):
        name = re.sub(r"[^A-Za-z0-9]+", "_", word).strip("_") or "token"
        write_png_atomic(folder / f"{j:02d}_{name}.png", attention_png(attention, size))


def _to_uint8(batch: dict[str, Any], index: int, height: int, width: int) -> np.ndarray:
    image = F.interpolate(batch["image"][index : index + 1].float(), size=(height, width), mode="bilinear")
    return (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
