"""Base class of usod's LightningModules and the checkpoint loader shared by every command."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from usod.data.io import InvalidInputError

#: Checkpoint key holding the import path of the module class that wrote it.
CLASS_KEY = "usod_class"


class USODModule(pl.LightningModule):
    """A LightningModule whose checkpoints say which class wrote them.

    ``predict_step`` of every usod module returns ``{"id", "size", "saliency"}`` (saliency Bx1xhxw in
    [0, 1]), which :class:`~usod.labels.PseudoLabelWriter` and ``usod predict`` consume.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    def compile_targets(self) -> list[torch.nn.Module]:
        """The sub-modules :class:`~usod.callbacks.PerformanceOptions` compiles with ``torch.compile``.

        The default is the plain network ``self.model``; modules that call parts of it through methods other
        than ``forward`` (which ``nn.Module.compile`` does not reach) name those parts instead.
        """
        model = getattr(self, "model", None)
        return [model] if isinstance(model, torch.nn.Module) else []


def _without_weight_files(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters with backbone weight files switched off: the checkpoint holds every weight already,
    and the original file may not exist on the machine that loads it."""
    # LightningCLI adds private entries such as ``_class_path``; they are not constructor arguments.
    out = {k: v for k, v in hparams.items() if not k.startswith("_")}
    for key, value in out.items():
        if key.endswith("backbone") and isinstance(value, dict) and "weights" in value:
            out[key] = {**value, "weights": "none"}
    return out


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> USODModule:
    """Rebuild a usod LightningModule from its checkpoint (``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: No file at ``path``.
        InvalidInputError: The file is not a usod checkpoint or does not match its class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        raise InvalidInputError(path, f"not a readable checkpoint ({str(err).splitlines()[0]})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise InvalidInputError(path, "not a Lightning checkpoint (no 'state_dict')")
    class_path = ckpt.get(CLASS_KEY)
    if not class_path:
        raise InvalidInputError(path, f"not written by a usod module (no '{CLASS_KEY}' entry)")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    model = cls(**_without_weight_files(ckpt.get("hyper_parameters", {})))
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise InvalidInputError(
            path,
            f"weights do not match {class_name}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})",
        )
    model.eval()
    return model


def trained_image_size(path: str | Path) -> int | list[int] | None:
    """The ``image_size`` of the datamodule a checkpoint was trained with, if it recorded one."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    for key in ("datamodule_hyper_parameters", "hyper_parameters"):
        size = (ckpt.get(key) or {}).get("image_size")
        if size is not None:
            return size
    return None
