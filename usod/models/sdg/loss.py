"""Losses of SDG-SOD: F3Net's structure loss (weighted BCE + weighted IoU) for the saliency maps.

SDG-SOD "adopt[s] the loss term as described in F3Net" (Sec. 4.3). F3Net (Wei et al., AAAI 2020, eq. 9-11)
weights every pixel by how much its label differs from the mean label of its 31x31 neighbourhood,

    w = 1 + 5 * |avgpool_31(G) - G|,

so that pixels near boundaries count up to six times more, and adds the weighted BCE and the weighted IoU:

    L_wbce = sum(w * BCE(P, G)) / sum(w)
    L_wiou = 1 - (sum(w * P * G) + 1) / (sum(w * (P + G)) - sum(w * P * G) + 1)

(per image, then averaged over the batch), with ``P = sigmoid(logits)``: the weighted BCE and IoU of the F3Net
paper, with the smoothing constant 1 and ``count_include_pad`` average pooling of F3Net's released
``structure_loss``. That released function passes ``reduce='none'`` to ``binary_cross_entropy_with_logits``,
which PyTorch's legacy argument handling turns into a *mean*, so its BCE term is in fact unweighted; here the
BCE is weighted per pixel as the paper's formula says.

The captioner's loss is plain token cross-entropy (``CaptioningModel.caption_loss``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from usod.models.precision import float32_autocast_off

__all__ = ["StructureLoss", "structure_weights"]


def structure_weights(target: Tensor, kernel: int = 31, strength: float = 5.0) -> Tensor:
    """F3Net's pixel weights ``1 + strength * |avgpool_kernel(G) - G|`` for Bx1xHxW targets in [0, 1]."""
    if kernel % 2 != 1:
        raise ValueError(f"the pooling kernel must be odd, got {kernel}")
    local = F.avg_pool2d(target, kernel_size=kernel, stride=1, padding=kernel // 2)
    return 1.0 + strength * (local - target).abs()


class StructureLoss(nn.Module):
    """F3Net's structure loss (see the module docstring).

    Args:
        kernel: Side of the neighbourhood of the weights (F3Net: 31 at 352x352 inputs).
        strength: Weight factor (F3Net: 5).
    """

    def __init__(self, kernel: int = 31, strength: float = 5.0) -> None:
        super().__init__()
        self.kernel = kernel
        self.strength = strength

    @float32_autocast_off
    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"wbce": ..., "wiou": ...}`` batch means for Bx1xHxW logits and targets in [0, 1]."""
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        logits, target = logits.float(), target.float()
        w = structure_weights(target, self.kernel, self.strength)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        wbce = (w * bce).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
        p = logits.sigmoid()
        inter = (w * p * target).sum(dim=(2, 3))
        union = (w * (p + target)).sum(dim=(2, 3))
        wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
        return {"wbce": wbce.mean(), "wiou": wiou.mean()}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        terms = self.terms(logits, target)
        return terms["wbce"] + terms["wiou"]
