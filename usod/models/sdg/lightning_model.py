"""Lightning module of SDG-SOD (seed 003): caption-guided salient object detection, trained in phases.

Phases (the ``phase`` hyper-parameter; run one ``usod fit`` per phase, each starting from the last one's
checkpoint through ``init_from``):

1. ``"caption"``: train the captioner (grid encoder + forward/backward textual decoders) on caption data,
   token cross-entropy. The SOD branch is not trained.
2. ``"sod"``: train PVT-SOD (PVT-v2 encoder + all-MLP decoder) alone with F3Net's structure loss.
3. ``"fused"``: caption every training image with the frozen captioner, fuse its word attention maps into
   every PVT level (eq. 3) and fine-tune PVT-SOD and the fusion layers with the structure loss.

Every phase builds the whole network, so checkpoints of every phase have the same weights. A checkpoint
records which branches it holds trained (``sdg_branches``: its phase's, plus those it was started from), and
``init_from`` loads only those: a ``"sod"`` checkpoint started from a ``"caption"`` one carries both
branches (chain the phases), while one started from scratch gives PVT-SOD only (train the two branches in
parallel and pass both checkpoints: ``init_from: [caption.ckpt, sod.ckpt]``).

Supervision of the saliency phases: ``supervision="pseudo"`` (default, usod's unsupervised setting) reads
``pseudo`` from the batch (a pseudo-label round attached with the datamodule's ``pseudo_dir``);
``supervision="mask"`` reads ``mask``, the paper's supervised setting
(``CaptionDataModule(supervised=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from usod.data.io import InvalidInputError
from usod.models.backbones import build_encoder
from usod.models.base import USODModule
from usod.models.files import load_torch_file
from usod.models.sdg.loss import StructureLoss
from usod.models.sdg.text import Vocabulary
from usod.models.sdg.torch_model import (
    NORMALIZATIONS,
    PVTSOD,
    CaptioningModel,
    GridEncoder,
    Guidance,
    SDGSODModel,
)

__all__ = ["PHASES", "SUPERVISIONS", "SDGCaptionGuided"]

PHASES: tuple[str, ...] = ("caption", "sod", "fused")
SUPERVISIONS: tuple[str, ...] = ("pseudo", "mask")
#: Checkpoint key listing the branches a checkpoint holds trained.
BRANCHES_KEY = "sdg_branches"
_BRANCH_PREFIXES = {"captioner": "model.captioner.", "sod": "model.sod.", "fusion": "model.fusion."}
#: Branches each phase trains.
_PHASE_BRANCHES = {"caption": ("captioner",), "sod": ("sod",), "fused": ("sod", "fusion")}

DEFAULT_BACKBONE: dict[str, Any] = {"name": "pvt_v2_b0", "weights": "none"}
DEFAULT_CAPTION_BACKBONE: dict[str, Any] = {
    "name": "tf_efficientnet_lite0",
    "weights": "bundled",
    "out_indices": [4],
}


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    ckpt = load_torch_file(path, "init_from checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise InvalidInputError(path, "not a Lightning checkpoint (no 'state_dict')")
    return ckpt


class SDGCaptionGuided(USODModule):
    """SDG-SOD: PVT-SOD guided by the word attention maps of an image captioner (see the module docstring).

    Batches: ``image`` (Bx3xHxW in [0, 1]); ``caption`` (B strings) in the caption phase; ``pseudo`` or
    ``mask`` (Bx1xHxW) in the saliency phases, as ``supervision`` says. Validation batches with ``mask`` log
    ``val_mae`` and the SOD metrics (saliency phases); batches with captions log ``val_caption_loss``
    (caption phase). ``predict_step`` returns ``{"id", "size", "saliency"}`` (guided in the fused phase);
    :meth:`describe` returns the generated captions and their word attention maps.

    Args:
        phase: ``"caption"``, ``"sod"`` or ``"fused"``.
        vocab: The captioner's vocabulary: a COCO-captions ``.json`` (built from its captions), a ``.txt``
            (one token a line) or a token list. ``None`` takes it from the first ``init_from`` checkpoint.
            Checkpoints store the token list, so they load without the file.
        vocab_min_count: Words seen fewer times are ``[UNK]`` (when building from a ``.json``).
        backbone: :class:`~usod.models.backbones.BackboneConfig` fields of the PVT-SOD encoder (default
            ``pvt_v2_b0`` with random weights; pass ``weights: <file>`` for a local checkpoint).
        decoder_dim: Width of the all-MLP decoder.
        decoder_dropout: Dropout of the all-MLP decoder.
        caption_backbone: Encoder fields of the captioner's grid encoder (its last level is the grid; default
            the bundled ImageNet EfficientNet-Lite0, stride 32).
        caption_image_size: Input side of the captioner (224 gives the paper's 7x7 grid at stride 32).
        positions: Add 2-D sine position codes to the grid tokens.
        text_dim: Token width of the textual decoders.
        text_layers: Layers per textual decoder.
        text_heads: Attention heads.
        text_ffn_dim: Feed-forward width (default ``4 * text_dim``).
        text_dropout: Dropout of the textual decoders.
        max_caption_length: Longest caption in tokens, ``[SOS]``/``[EOS]`` included (longer ones are cut).
        bidirectional: Train a backward decoder too (VirTex).
        attention_layer: Decoder layer whose cross-attention gives the word maps (``-1``: last).
        guidance_levels: PVT levels fused with the word maps (0 = stride 4; the paper: all).
        guidance_norm: ``"max"`` or ``"minmax"`` normalisation of the summed word maps.
        supervision: ``"pseudo"`` or ``"mask"`` (saliency phases).
        loss_kernel: Neighbourhood of F3Net's pixel weights.
        init_from: Checkpoint(s) of earlier phases to start from (read before the first use: fitting,
            ``forward``, ``describe``; not when the module is restored from its own checkpoint).
        lr: AdamW learning rate of the trained parameters.
        encoder_lr_ratio: Learning rate of the pretrained-able encoders relative to ``lr``.
        weight_decay: AdamW weight decay.
    """

    method = "sdg_caption_guided"

    def __init__(
        self,
        phase: Literal["caption", "sod", "fused"] = "sod",
        vocab: str | list[str] | None = None,
        vocab_min_count: int = 1,
        backbone: dict[str, Any] | None = None,
        decoder_dim: int = 256,
        decoder_dropout: float = 0.1,
        caption_backbone: dict[str, Any] | None = None,
        caption_image_size: int = 224,
        positions: bool = True,
        text_dim: int = 256,
        text_layers: int = 2,
        text_heads: int = 4,
        text_ffn_dim: int | None = None,
        text_dropout: float = 0.1,
        max_caption_length: int = 40,
        bidirectional: bool = True,
        attention_layer: int = -1,
        guidance_levels: Sequence[int] = (0, 1, 2, 3),
        guidance_norm: Literal["max", "minmax"] = "max",
        supervision: Literal["pseudo", "mask"] = "pseudo",
        loss_kernel: int = 31,
        init_from: str | list[str] | None = None,
        lr: float = 1e-4,
        encoder_lr_ratio: float = 1.0,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("phase", phase, PHASES),
            ("supervision", supervision, SUPERVISIONS),
            ("guidance_norm", guidance_norm, NORMALIZATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
        self.save_hyperparameters()
        init_paths = [init_from] if isinstance(init_from, (str, Path)) else list(init_from or [])
        if vocab is None:
            if not init_paths:
                raise ValueError(
                    "SDGCaptionGuided needs a vocabulary: vocab=<captions.json | vocab.txt | token list> "
                    "(or init_from=<checkpoint of an earlier phase>)"
                )
            vocab = _read_checkpoint(init_paths[0]).get("hyper_parameters", {}).get("vocab")
            if not vocab:
                raise InvalidInputError(init_paths[0], "checkpoint holds no vocabulary")
        self.vocab = Vocabulary.from_source(vocab, min_count=vocab_min_count)
        self.hparams["vocab"] = list(self.vocab.tokens)  # checkpoints carry the tokens, not the file

        encoder = build_encoder(backbone if backbone is not None else DEFAULT_BACKBONE)
        sod = PVTSOD(encoder, dim=decoder_dim, dropout=decoder_dropout)
        grid = GridEncoder(
            build_encoder(caption_backbone if caption_backbone is not None else DEFAULT_CAPTION_BACKBONE),
            d_model=text_dim,
            image_size=caption_image_size,
            positions=positions,
        )
        captioner = CaptioningModel(
            grid,
            vocab_size=len(self.vocab),
            layers=text_layers,
            heads=text_heads,
            ffn_dim=text_ffn_dim,
            dropout=text_dropout,
            max_length=max_caption_length,
            bidirectional=bidirectional,
            attention_layer=attention_layer,
            pad_id=self.vocab.pad_id,
            sos_id=self.vocab.sos_id,
            eos_id=self.vocab.eos_id,
        )
        self.model = SDGSODModel(sod, captioner, levels=guidance_levels, mode=guidance_norm)
        self.loss_fn = StructureLoss(kernel=loss_kernel)
        self._set_trainable()
        #: Branches holding trained weights: the phase's own and those loaded by ``init_from``.
        self.trained_branches: set[str] = set(_PHASE_BRANCHES[phase])
        self._init_done = False
        self.val_caption_loss = MeanMetric()
        self._fix_untrained_modes()

    # ------------------------------------------------------------------ phases
    @property
    def phase(self) -> str:
        return str(self.hparams.phase)

    @property
    def guided(self) -> bool:
        """Whether saliency is predicted with caption guidance (the fused phase)."""
        return self.phase == "fused"

    def _set_trainable(self) -> None:
        """Gradients only for what the phase trains (unused parameters would also upset DDP)."""
        trained = {
            "caption": (self.model.captioner,),
            "sod": (self.model.sod,),
            "fused": (self.model.sod, self.model.fusion),
        }[self.phase]
        for p in self.model.parameters():
            p.requires_grad_(False)
        for module in trained:
            for p in module.parameters():
                p.requires_grad_(True)
        for module in (self.model.sod.encoder, self.model.captioner.visual.encoder):
            if getattr(module, "frozen", False):  # a backbone config asked for a frozen encoder
                module.freeze()  # type: ignore[operator]

    def _fix_untrained_modes(self) -> None:
        """Keep the branch the phase does not train in eval mode (no dropout, fixed BatchNorm statistics)."""
        if self.phase == "caption":
            self.model.sod.eval()
            self.model.fusion.eval()
        else:
            self.model.captioner.eval()

    def train(self, mode: bool = True) -> SDGCaptionGuided:
        """Set train/eval mode; the branch the phase does not train stays in eval mode."""
        super().train(mode)
        self._fix_untrained_modes()
        return self

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        # Lightning keeps the modules' modes as they were when fitting started, so enforce them here too
        self._fix_untrained_modes()

    def load_init_checkpoints(self, paths: Sequence[str | Path]) -> dict[str, list[str]]:
        """Load the trained branches of earlier phases' checkpoints (see the module docstring).

        A checkpoint lists the branches it holds trained (``sdg_branches``: those its phase trained plus those
        it was itself initialised with); only those are loaded, later checkpoints over earlier ones.

        Returns:
            ``path -> branches loaded``.

        Raises:
            FileNotFoundError: A checkpoint does not exist.
            InvalidInputError: A checkpoint of another model, vocabulary or architecture.
        """
        own = self.state_dict()
        loaded = {}
        for path in paths:
            ckpt = _read_checkpoint(path)
            hparams = ckpt.get("hyper_parameters", {})
            phase = hparams.get("phase")
            if phase not in PHASES:
                raise InvalidInputError(path, "not an SDGCaptionGuided checkpoint (no phase)")
            branches = [b for b in ckpt.get(BRANCHES_KEY, _PHASE_BRANCHES[phase]) if b in _BRANCH_PREFIXES]
            if "captioner" in branches and list(hparams.get("vocab") or []) != self.vocab.tokens:
                raise InvalidInputError(path, "its captioner was trained with another vocabulary")
            prefixes = tuple(_BRANCH_PREFIXES[b] for b in branches)
            state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(prefixes)}
            bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
            if bad or not state:
                problem = f"weights do not fit this model ({len(bad)} keys, e.g. {bad[:3]})"
                raise InvalidInputError(path, problem if bad else "holds no trained branch")
            self.load_state_dict(state, strict=False)
            self.trained_branches.update(branches)
            loaded[str(path)] = branches
        return loaded

    def _ensure_init(self) -> None:
        """Load ``init_from`` once, before the first use (fit, forward, ``describe``), unless the weights came
        from a checkpoint of this model (which holds them already)."""
        if self._init_done or not self.hparams.init_from:
            return
        self._init_done = True
        init = self.hparams.init_from
        self.load_init_checkpoints([init] if isinstance(init, (str, Path)) else list(init))

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._ensure_init()
        if stage == "fit" and self.guided and "captioner" not in self.trained_branches:
            rank_zero_warn(
                "SDGCaptionGuided phase 'fused' runs with an untrained captioner: set init_from to a "
                "checkpoint of the caption phase (or of a later phase started from one)"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[BRANCHES_KEY] = sorted(self.trained_branches)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_branches.update(checkpoint.get(BRANCHES_KEY, ()))
        self._init_done = True  # the checkpoint's weights, not those of the checkpoints it started from

    # ------------------------------------------------------------------ helpers
    def tokens(self, captions: Sequence[str], device: torch.device | None = None) -> Tensor:
        """BxL token ids of ``captions`` (cut at ``max_caption_length``)."""
        ids = self.vocab.encode_batch(list(captions), self.hparams.max_caption_length)
        return ids.to(device) if device is not None else ids

    def _captions(self, batch: dict[str, Any]) -> list[str] | None:
        captions = batch.get("caption")
        if captions is None:
            return None
        if isinstance(captions, str):
            captions = [captions]
        return [str(c) for c in captions]

    def _target(self, batch: dict[str, Any], images: Tensor) -> Tensor:
        key = "mask" if self.hparams.supervision == "mask" else "pseudo"
        target = batch.get(key)
        if not isinstance(target, Tensor):
            hint = (
                "use a datamodule with supervised=True (CaptionDataModule) for ground-truth masks"
                if key == "mask"
                else "attach a pseudo-label round to the datamodule (pseudo_dir=...), or set "
                "supervision='mask' with a supervised datamodule for the paper's supervised setting"
            )
            raise ValueError(f"training batches need '{key}' (supervision={key!r}): {hint}")
        target = target.float()
        if target.shape[-2:] != images.shape[-2:]:
            target = F.interpolate(target, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return target

    def compile_targets(self) -> list[torch.nn.Module]:
        """The two encoders: caption generation has data-dependent lengths, so the rest stays eager."""
        return [self.model.sod.encoder, self.model.captioner.visual.encoder]

    def guidance(self, images: Tensor) -> Guidance:
        """Captions and word attention maps of ``images`` (no gradients: the captioner is fixed here)."""
        return self.model.captioner.describe(images)

    def forward(self, images: Tensor, guided: bool | None = None) -> Tensor:
        """Saliency logits Bx1xHxW; guided by captions in the fused phase (or when ``guided=True``)."""
        self._ensure_init()
        use = self.guided if guided is None else guided
        return self.model(images, self.guidance(images) if use else None)

    def predict_saliency(self, images: Tensor) -> Tensor:
        """Bx1xHxW float32 saliency in [0, 1] (also under autocast)."""
        return torch.sigmoid(self(images).float())

    @torch.no_grad()
    def describe(self, images: Tensor) -> list[dict[str, Any]]:
        """Generated caption and word attention maps of each image.

        Returns:
            One dict per image: ``words`` (the generated words), ``caption`` (them joined by spaces) and
            ``maps`` (T x gh x gw float numpy array, ``maps[j - 1] = M_j``, each summing to 1).
        """
        self._ensure_init()
        g = self.guidance(images)
        out = []
        for b in range(images.shape[0]):
            n = int(g.lengths[b])
            words = self.vocab.decode(g.tokens[b, 1 : n + 1].tolist())
            words += ["[UNK]"] * (n - len(words))  # decode stops at [EOS], which is never inside a caption
            maps = g.maps[b, :n].float().cpu().numpy()
            out.append({"words": words, "caption": " ".join(words), "maps": maps})
        return out

    # ------------------------------------------------------------------ lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = self._images(batch)
        b = images.shape[0]
        if self.phase == "caption":
            captions = self._captions(batch)
            if not captions or not all(c.strip() for c in captions):
                raise ValueError(
                    "the caption phase needs a non-empty 'caption' for every training image "
                    "(use usod.data.datamodules.captions.CaptionDataModule with a captions file)"
                )
            terms = self.model.captioner.caption_loss(images, self.tokens(captions, images.device))
            loss = sum(terms.values())
            self.log("train_caption_loss", loss, prog_bar=True, batch_size=b)
            for name, value in terms.items():
                self.log(f"train_caption_{name}", value, batch_size=b)
            return loss
        target = self._target(batch, images)
        logits = self(images)
        terms = self.loss_fn.terms(logits, target)
        loss = terms["wbce"] + terms["wiou"]
        self.log("train_loss", loss, prog_bar=True, batch_size=b)
        for name, value in terms.items():
            self.log(f"train_{name}", value, batch_size=b)
        if self.wants_panels(batch_idx):
            pred_v = logits.detach().sigmoid()
            self.log_panels("train", batch_idx, batch, image=images, pseudo=target, prediction=pred_v)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = self._images(batch)
        b = images.shape[0]
        if self.phase == "caption":
            captions = self._captions(batch)
            if captions and all(c.strip() for c in captions):
                terms = self.model.captioner.caption_loss(images, self.tokens(captions, images.device))
                self.val_caption_loss.update(sum(terms.values()))
                self.log("val_caption_loss", self.val_caption_loss, prog_bar=True, batch_size=b)
            return
        if batch.get("mask") is not None:
            self.score_validation(batch, batch_idx, self.predict_saliency(images), images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the parameters the phase trains; encoders at ``encoder_lr_ratio * lr``."""
        hp = self.hparams
        encoder_modules = (self.model.sod.encoder, self.model.captioner.visual.encoder)
        encoders = {id(p) for m in encoder_modules for p in m.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if id(p) in encoders], "lr": hp.lr * hp.encoder_lr_ratio},
            {"params": [p for p in trainable if id(p) not in encoders], "lr": hp.lr},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, weight_decay=hp.weight_decay)
