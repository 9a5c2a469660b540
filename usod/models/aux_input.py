"""The auxiliary input of multimodal models: depth, thermal or optical flow as a second 3-channel image.

Seed 000 (unified USOD via knowledge transfer) treats every extra modality *modality-agnostically*: depth,
thermal and optical flow are rendered as 3-channel images (depth replicated, thermal as the camera image, flow
with the Middlebury colour wheel, see :mod:`usod.data.flow`) and go through an encoder stream of their own
whose features are fused with those of the RGB stream. usod's modules take it as an opt-in
hyper-parameter ``aux_modality``:

* ``"none"`` (default): RGB only; any ``depth``/``thermal``/``flow`` entry of a batch is ignored, and
  networks, checkpoints and results are exactly those of the RGB model.
* ``"depth"``, ``"thermal"``, ``"flow"``: the batch must carry that key (Bx3xHxW in [0, 1], as the
  transforms of :mod:`usod.data.transforms` produce it).
* ``"auto"``: the batch must carry exactly one of the three keys, whichever it is (one config for RGB-D,
  RGB-T and video data).

Horizontal flips done inside the modules are skipped for flow: a mirrored colour-coded flow image encodes
the wrong direction (the transforms skip it for the same reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUX_KEYS", "AUX_MODALITIES", "batch_aux", "check_aux_modality", "flip_allowed"]

#: Values of the ``aux_modality`` hyper-parameter.
AUX_MODALITIES: tuple[str, ...] = ("none", "auto", "depth", "thermal", "flow")
#: Batch keys that can hold the auxiliary image.
AUX_KEYS: tuple[str, ...] = ("depth", "thermal", "flow")


def check_aux_modality(value: str) -> str:
    """Return ``value`` if it is a valid ``aux_modality``, else raise ``ValueError``."""
    if value not in AUX_MODALITIES:
        raise ValueError(f"unknown aux_modality {value!r}; expected one of {AUX_MODALITIES}")
    return value


def batch_aux(
    batch: Mapping[str, Any], aux_modality: str, images: Tensor
) -> tuple[str | None, Tensor | None]:
    """The auxiliary image of a batch for a module configured with ``aux_modality``.

    Args:
        batch: The batch dict.
        aux_modality: See the module docstring.
        images: The batch's RGB images (Bx3xHxW); the auxiliary image is resized bilinearly to their size
            when it differs.

    Returns:
        ``(key, aux)``: the batch key used and a Bx3xHxW float tensor, or ``(None, None)`` for ``"none"``.

    Raises:
        ValueError: The batch lacks the required key, holds several candidates for ``"auto"``, or the
            tensor does not have the shape Bx3xhxw with the images' batch size.
    """
    check_aux_modality(aux_modality)
    if aux_modality == "none":
        return None, None
    if aux_modality == "auto":
        present = [k for k in AUX_KEYS if isinstance(batch.get(k), Tensor)]
        if len(present) != 1:
            raise ValueError(
                "aux_modality='auto' needs exactly one of batch['depth'], batch['thermal'], batch['flow'], "
                f"found {present or 'none'} (for video, set with_flow=True in the datamodule)"
            )
        key = present[0]
    else:
        key = aux_modality
        if not isinstance(batch.get(key), Tensor):
            hint = " (set with_flow=True in the video datamodule)" if key == "flow" else ""
            raise ValueError(f"aux_modality={key!r} needs batch[{key!r}] (a Bx3xHxW tensor){hint}")
    aux = batch[key]
    if aux.ndim != 4 or aux.shape[1] != 3 or aux.shape[0] != images.shape[0]:
        raise ValueError(
            f"batch[{key!r}] must be a {images.shape[0]}x3xHxW tensor like the images, got {tuple(aux.shape)}"
        )
    aux = aux.to(images.device, images.dtype if images.is_floating_point() else None)
    if aux.shape[-2:] != images.shape[-2:]:
        aux = F.interpolate(aux, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return key, aux


def flip_allowed(key: str | None) -> bool:
    """Whether a module may mirror the inputs horizontally (not with a colour-coded flow image)."""
    return key != "flow"
