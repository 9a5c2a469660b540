"""Lightning module for the saliency cue extractor (A2S stage 1, optionally with the PCL-SD loss)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from usod.models.aux_input import batch_aux, check_aux_modality, flip_allowed
from usod.models.backbones import build_encoder
from usod.models.base import USODModule
from usod.models.cue_extractor.loss import ADBLoss, PCLSDLoss
from usod.models.cue_extractor.torch_model import SIGN_RULES, CueExtractorModel, CueExtractorOutput, SignRule

LOSSES: tuple[str, ...] = ("adb", "pcl_sd")
TRAIN_FLIPS: tuple[str, ...] = ("both", "random", "none")
CACHE_STORAGES: tuple[str, ...] = ("cpu", "device")
_CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class FeatureCache:
    """In-memory store of frozen-encoder features, keyed by sample id and flip.

    Entries live in ``dtype`` on the CPU (``storage="cpu"``) or where they were computed
    (``storage="device"``: on a GPU a cache hit then costs no host-to-device copy, which at ResNet-50 sizes
    takes longer than the heads' whole step). Each entry also keeps a 4x4 average-pooled thumbnail of the
    image it was computed from; a later lookup with a different thumbnail raises, which catches training
    transforms that are not deterministic (random crops, scales, flips or colour jitter), for which a cache
    would silently reuse stale features.

    Memory: the sum over the cached stages of ``C_i * H_i * W_i`` elements per image and flip. For
    tf_efficientnet_lite0 at 320x320 (stages of 40x40x40, 112x20x20, 320x10x10) that is 140,800 elements,
    0.28 MB in float16, so about 5.9 GB for the 10,553 DUTS-TR images with both flips; for ResNet-50
    (512x40x40, 1024x20x20, 2048x10x10) it is 2.9 MB per image and flip, 61 GB for DUTS-TR (on the device
    only with a GPU that large, e.g. an H200). ``max_bytes`` caps it: once full, new entries are computed
    every step and not stored.

    Args:
        dtype: Storage dtype.
        max_bytes: Optional cap on the stored feature bytes.
        atol: Tolerance of the thumbnail check.
        storage: ``"cpu"`` or ``"device"`` (see above).
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.float16,
        max_bytes: int | None = None,
        atol: float = 1e-4,
        storage: str = "cpu",
    ):
        if storage not in CACHE_STORAGES:
            raise ValueError(f"unknown feature cache storage {storage!r}; expected one of {CACHE_STORAGES}")
        self.storage = storage
        self.dtype = dtype
        self.max_bytes = max_bytes
        self.atol = atol
        self.nbytes = 0
        self._entries: dict[tuple[str, bool], tuple[Tensor, list[Tensor]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self.nbytes = 0

    @staticmethod
    def thumbnail(images: Tensor) -> Tensor:
        """Bx48 float32 CPU fingerprints (4x4 average pool of each image, with its size appended)."""
        pooled = F.adaptive_avg_pool2d(images.float(), 4).flatten(1)
        size = torch.tensor(images.shape[-2:], dtype=torch.float32, device=images.device)
        return torch.cat([pooled, size.expand(images.shape[0], 2)], dim=1).cpu()

    def get(self, key: tuple[str, bool], thumb: Tensor) -> list[Tensor] | None:
        """Return the cached features of ``key`` or ``None``; raise if the image changed since caching."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        cached_thumb, feats = entry
        same = cached_thumb.shape == thumb.shape and bool((cached_thumb - thumb).abs().max() <= self.atol)
        if not same:
            raise RuntimeError(
                f"feature cache: the training image for id {key[0]!r} (flipped={key[1]}) differs from the "
                "one cached earlier; feature_cache=True needs a deterministic training transform (resize "
                "only: no random crop, scale, flip or colour jitter; the module does the horizontal flips)"
            )
        return feats

    def put(self, key: tuple[str, bool], thumb: Tensor, feats: Sequence[Tensor]) -> list[Tensor]:
        """Store one sample's ``feats`` (no batch dim) if there is room; return what later lookups give."""
        stored = [f.detach().to("cpu" if self.storage == "cpu" else f.device, self.dtype) for f in feats]
        size = sum(f.numel() * f.element_size() for f in stored)
        if self.max_bytes is not None and self.nbytes + size > self.max_bytes:
            return [f.detach() for f in feats]
        self._entries[key] = (thumb.clone(), stored)
        self.nbytes += size
        return stored


class CueExtractor(USODModule):
    """A2S stage 1: train SE heads on a frozen encoder so that activation maps become saliency cues.

    Training needs only images: the loss (ADB of A2S, or PCL-SD of seed 000) acts on the decision values of
    the three per-stage maps and the fused map. Prediction returns ``sigmoid(sign * theta)`` of the fused map;
    CRF and median filtering (A2S eq. 6) are left to the pseudo-label writer.

    Batches are dicts with ``image`` (Bx3xHxW float in [0, 1]), ``id`` (list[str]), ``size`` (Bx2 original
    H, W) and, in validation only, optionally ``mask`` (Bx1xHxW in [0, 1]) to log ``val_mae`` and the SOD
    metrics (``val_max_f``, ``val_mean_f``, ... ``val_s_measure``). With
    ``aux_modality`` other than ``"none"`` every batch also carries the auxiliary image (``depth``,
    ``thermal`` or ``flow``, Bx3xHxW; see :mod:`usod.models.aux_input`).

    Args:
        backbone: :class:`usod.models.backbones.BackboneConfig` fields for ``build_encoder``; ``None`` gives
            the default encoder. The encoder is always built frozen.
        head_channels: Channels of the SE heads.
        norm_groups: GroupNorm groups in the heads.
        fuse_stride: Stride of the fused map (``None``: the encoder's smallest stride).
        loss: ``"adb"`` (A2S eq. 4) or ``"pcl_sd"`` (seed 000).
        alpha: Weight of the L1 term of the ADB loss.
        drop_ratio: Fraction of pixels dropped at random in the loss each step (A2S: 0.5). Also applied to
            PCL-SD, for which seed 000 specifies nothing.
        pcl_p0: Initial hard-pixel threshold of PCL-SD.
        pcl_ramp: Fraction of the epochs after which the PCL-SD threshold reaches 0.
        sign_rule: Foreground sign rule: ``"area"`` (A2S eq. 5), ``"corner"`` or ``"border"``.
        train_flip: ``"both"`` trains on every image and its horizontal flip in the same step, ``"random"``
            flips each image with probability 0.5, ``"none"`` disables flipping.
        predict_flip: Average the prediction with the un-flipped prediction of the flipped image.
        lr: SGD learning rate. A2S uses 1.0, the authors' later code (A2S-v3) 0.1; 0.1 gave the better raw MAE
            in our run with the bundled EfficientNet-Lite0 (see the README).
        momentum: SGD momentum (Nesterov), as in the reference code.
        weight_decay: SGD weight decay, as in the reference code.
        lr_milestones: Epoch fractions at which the learning rate is multiplied by ``lr_gamma`` (A2S decays
            at epochs 10 and 16 of 20).
        lr_gamma: Decay factor.
        feature_cache: Compute encoder features once per image id and flip and reuse them every epoch. Only
            valid when the training transform is deterministic (resize only); see :class:`FeatureCache`.
            Under DDP each rank then trains on a fixed shard of the images (``fixed_train_shards``), so it
            caches only its share.
        feature_cache_dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        feature_cache_max_gb: Optional cap on the cache size in GB (1e9 bytes).
        feature_cache_storage: ``"cpu"`` (host memory) or ``"device"`` (the memory of the device the encoder
            runs on, e.g. the GPU: no host-to-device copy per step; needs the memory, see
            :class:`FeatureCache`).
        aux_modality: ``"none"`` (RGB, default), ``"depth"``, ``"thermal"``, ``"flow"`` or ``"auto"``: a
            second stream for the auxiliary image through the same frozen encoder, fused by concatenation
            before each stage head (see :class:`CueExtractorModel`, ``aux_input``). No horizontal flips are
            made with flow.
        encoder: An already built encoder to use instead of ``backbone`` (not saved in the hyperparameters:
            pass it again when loading a checkpoint).
    """

    method = "cue_extractor"

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        head_channels: int = 64,
        norm_groups: int = 1,
        fuse_stride: int | None = None,
        loss: Literal["adb", "pcl_sd"] = "adb",
        alpha: float = 0.1,
        drop_ratio: float = 0.5,
        pcl_p0: float = 0.2,
        pcl_ramp: float = 1.0 / 3.0,
        sign_rule: SignRule = "area",
        train_flip: Literal["both", "random", "none"] = "both",
        predict_flip: bool = False,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: Sequence[float] = (0.5, 0.8),
        lr_gamma: float = 0.1,
        feature_cache: bool = False,
        feature_cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16",
        feature_cache_max_gb: float | None = None,
        feature_cache_storage: Literal["cpu", "device"] = "cpu",
        aux_modality: Literal["none", "auto", "depth", "thermal", "flow"] = "none",
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        check_aux_modality(aux_modality)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        if sign_rule not in SIGN_RULES:
            raise ValueError(f"unknown sign_rule {sign_rule!r}; expected one of {SIGN_RULES}")
        if train_flip not in TRAIN_FLIPS:
            raise ValueError(f"unknown train_flip {train_flip!r}; expected one of {TRAIN_FLIPS}")
        if feature_cache_dtype not in _CACHE_DTYPES:
            raise ValueError(
                f"unknown feature_cache_dtype {feature_cache_dtype!r}; expected one of {tuple(_CACHE_DTYPES)}"
            )
        if any(not 0.0 < m <= 1.0 for m in lr_milestones):
            raise ValueError(f"lr_milestones must be epoch fractions in (0, 1], got {list(lr_milestones)}")
        if encoder is None:
            encoder = build_encoder(backbone, frozen=True)
        self.model = CueExtractorModel(
            encoder,
            head_channels=head_channels,
            norm_groups=norm_groups,
            fuse_stride=fuse_stride,
            sign_rule=sign_rule,
            aux_input=aux_modality != "none",
        )
        self.loss_fn: ADBLoss | PCLSDLoss
        if loss == "adb":
            self.loss_fn = ADBLoss(alpha=alpha, drop_ratio=drop_ratio)
        else:
            self.loss_fn = PCLSDLoss(p0=pcl_p0, ramp=pcl_ramp, drop_ratio=drop_ratio)
        max_bytes = None if feature_cache_max_gb is None else int(feature_cache_max_gb * 1e9)
        self.feature_cache: FeatureCache | None = (
            FeatureCache(_CACHE_DTYPES[feature_cache_dtype], max_bytes, storage=feature_cache_storage)
            if feature_cache
            else None
        )
        # a metric, not ``self.log(..., sync_dist=True)``: its sum and count states are reduced over DDP
        # ranks, which stays exact when ranks score different numbers of images
        self.val_loss = MeanMetric()

    @property
    def needs_fixed_training_images(self) -> bool:
        """With the feature cache (its entries must match the images)."""
        return self.feature_cache is not None

    @property
    def fixed_train_shards(self) -> bool:
        """With the feature cache, each DDP rank trains on a fixed shard: it caches ``1/R`` of the images
        and hits from the second epoch on (see :class:`~usod.data.datamodules.base.FixedShardSampler`)."""
        return self.feature_cache is not None

    # ------------------------------------------------------------------ helpers
    def forward(self, images: Tensor, aux: Tensor | None = None) -> CueExtractorOutput:
        """Run the network on Bx3xHxW images in [0, 1] (and the auxiliary image of a two-stream model)."""
        return self.model(images, aux)

    def compile_targets(self) -> list[nn.Module]:
        """The encoder and every head: training calls them one by one (the feature cache sits between)."""
        return [self.model.encoder, *self.model.stage_heads, self.model.fusion_head]

    def _aux(self, batch: dict[str, Any], images: Tensor) -> tuple[str | None, Tensor | None]:
        return batch_aux(batch, self.hparams.aux_modality, images)

    def _training_views(
        self, images: Tensor, aux: Tensor | None = None, allow_flip: bool = True
    ) -> tuple[Tensor, Tensor | None, list[bool]]:
        b = images.shape[0]
        mode = self.hparams.train_flip if allow_flip else "none"
        if mode == "both":
            aux_views = None if aux is None else torch.cat([aux, aux.flip(-1)])
            return torch.cat([images, images.flip(-1)]), aux_views, [False] * b + [True] * b
        if mode == "random":
            flips = (torch.rand(b) < 0.5).tolist()
            mask = torch.tensor(flips, device=images.device).view(-1, 1, 1, 1)
            aux_views = None if aux is None else torch.where(mask, aux.flip(-1), aux)
            return torch.where(mask, images.flip(-1), images), aux_views, flips
        return images, aux, [False] * b

    def _features(
        self,
        views: Tensor,
        ids: Sequence[str] | None,
        flips: Sequence[bool],
        aux_views: Tensor | None = None,
    ) -> list[Tensor]:
        cache = self.feature_cache
        if cache is None:
            return self.model.encode(views, aux_views)
        if ids is None:
            raise ValueError("feature_cache=True needs batch['id'] (a list of sample ids)")
        keys = [(str(i), bool(f)) for i, f in zip(ids, flips, strict=True)]
        # the auxiliary image is part of the fingerprint: a changed depth/flow map must not reuse features
        thumbs = FeatureCache.thumbnail(views if aux_views is None else torch.cat([views, aux_views], dim=1))
        per_sample: list[list[Tensor] | None] = [cache.get(k, t) for k, t in zip(keys, thumbs, strict=True)]
        missing = [i for i, f in enumerate(per_sample) if f is None]
        if missing:
            fresh = self.model.encode(views[missing], None if aux_views is None else aux_views[missing])
            for j, i in enumerate(missing):
                per_sample[i] = cache.put(keys[i], thumbs[i], [f[j] for f in fresh])
        n_stages = self.model.num_stages
        return [
            torch.stack([s[k] for s in per_sample]).to(views.device, torch.float32)  # type: ignore[index]
            for k in range(n_stages)
        ]

    def _loss(self, out: CueExtractorOutput) -> Tensor:
        if isinstance(self.loss_fn, PCLSDLoss):
            return self.loss_fn(out.all_thetas, progress=self.training_progress())
        return self.loss_fn(out.all_thetas)

    def compute_training_loss(self, batch: dict[str, Any]) -> Tensor:
        """The stage-1 loss of a training batch (image and flip views, cached features if enabled)."""
        images = self._images(batch)
        key, aux = self._aux(batch, images)
        ids = batch.get("id")
        views, aux_views, flips = self._training_views(images, aux, allow_flip=flip_allowed(key))
        if ids is not None and len(flips) != len(ids):  # "both": the flipped copies follow the originals
            ids = [*ids, *ids]
        feats = self._features(views, ids, flips, aux_views)
        out = self.model.decode(feats, views.shape[-2:])
        return self._loss(out)

    # ------------------------------------------------------------------ lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Unsupervised stage-1 step: no label is read."""
        loss = self.compute_training_loss(batch)
        bs = batch["image"].shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=bs)
        if isinstance(self.loss_fn, PCLSDLoss):
            self.log("pcl_threshold", self.loss_fn.threshold(self.training_progress()), batch_size=bs)
        if self.feature_cache is not None:
            self.log("feature_cache_gb", self.feature_cache.nbytes / 1e9, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Log the loss (no pixel drop) and, when ``mask`` is present, the MAE and SOD metrics."""
        images = self._images(batch)
        out = self.model(images, self._aux(batch, images)[1])
        bs = images.shape[0]
        self.val_loss.update(self._loss(out).detach(), weight=bs)
        self.log("val_loss", self.val_loss, batch_size=bs)
        self.score_validation(batch, batch_idx, out.saliency, images)

    def predict_saliency(self, images: Tensor, aux: Tensor | None = None, allow_flip: bool = True) -> Tensor:
        """Bx1xHxW saliency in [0, 1] at the input size, flip-averaged if ``predict_flip`` (and allowed)."""
        sal = self.model(images, aux).saliency
        if self.hparams.predict_flip and allow_flip:
            aux_flipped = None if aux is None else aux.flip(-1)
            sal = 0.5 * (sal + self.model(images.flip(-1), aux_flipped).saliency.flip(-1))
        return sal.float()  # float32 under autocast too, for numpy, CRF and PNGs

    def batch_saliency(self, batch: dict[str, Any]) -> Tensor:
        """The raw saliency of a batch (with its auxiliary image, if used; no CRF here)."""
        images = self._images(batch)
        key, aux = self._aux(batch, images)
        return self.predict_saliency(images, aux, allow_flip=flip_allowed(key))

    def configure_optimizers(self) -> Any:
        """SGD (Nesterov) on the heads only, with step decay at fractions of the epochs."""
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.model.head_parameters(),
            lr=hp.lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            nesterov=hp.momentum > 0,
        )
        return self.step_decay(optimizer, hp.lr_milestones, hp.lr_gamma)
