"""Registry of usod's LightningModules: short names, and the only classes a checkpoint may name.

Checkpoints record the class that wrote them (``usod_class``, and ``hyper_parameters["_class_path"]`` for
LightningCLI). A checkpoint is data: the class it names is looked up in this table, never imported from the
path the file gives, so a crafted file cannot make usod import or call anything else
(:func:`usod.models.base.load_module`, the adapter base of
:class:`~usod.models.adapter_transfer.AdapterTransfer`, ``usod validate|test --ckpt_path``). Classes of
your own (subclasses of ``USODModule``) are added with :func:`register_model` by code you run, never by a
file.

The table holds import paths, resolved when a class is first asked for, so that importing the registry
imports no method (the methods import :mod:`usod.models.base`, which needs the registry to load checkpoints).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from usod.models.base import USODModule

#: Short name -> import path of usod's own module classes.
MODEL_PATHS: dict[str, str] = {
    "adapter_transfer": "usod.models.adapter_transfer.lightning_model.AdapterTransfer",
    "cue_extractor": "usod.models.cue_extractor.lightning_model.CueExtractor",
    "deepusps_refiner": "usod.models.deepusps.lightning_model.DeepUSPSRefiner",
    "saliency_detector": "usod.models.saliency_detector.lightning_model.SaliencyDetector",
    "sdg_caption_guided": "usod.models.sdg.lightning_model.SDGCaptionGuided",
}

_EXTRA: dict[str, type] = {}  # registered at run time by register_model


class UnknownModelError(ValueError):
    """A name or class path that is not a registered usod module."""


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_model(cls: type, name: str | None = None) -> type:
    """Allow checkpoints of ``cls`` (a ``USODModule`` subclass of your own) to be loaded; returns ``cls``.

    Usable as a class decorator. ``name`` defaults to the class's ``method`` attribute, else its class path.
    """
    # by name: usod.models.base imports this module, not the other way round
    bases = {_class_path(c) for c in cls.__mro__} if isinstance(cls, type) else set()
    if "usod.models.base.USODModule" not in bases:
        raise TypeError(f"register_model needs a USODModule subclass, got {cls!r}")
    key = name or _class_path(cls)
    _EXTRA[key] = cls
    _EXTRA[_class_path(cls)] = cls
    return cls


def model_class(name: object, *, source: object = None) -> type[USODModule]:
    """The module class registered as ``name``: a short name (``"cue_extractor"``) or the class path a
    checkpoint records (``"usod.models.cue_extractor.lightning_model.CueExtractor"``).

    Nothing outside the table (and :func:`register_model`) is ever imported.

    Raises:
        UnknownModelError: ``name`` is not a string naming a registered class; ``source`` (e.g. the
            checkpoint path) is named in the message.
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(name, str):
        raise UnknownModelError(f"{where}the model class must be a name, got a {type(name).__name__}")
    if name in _EXTRA:
        return _EXTRA[name]
    path = MODEL_PATHS.get(name)
    if path is None:  # a class path, as checkpoints record it, or its package-level name
        path = next((p for p in MODEL_PATHS.values() if name in (p, p.replace(".lightning_model", ""))), None)
    if path is None:
        known = ", ".join(sorted(MODEL_PATHS))
        raise UnknownModelError(
            f"{where}{name[:200]!r} is not a usod module class (known: {known}; classes of your own need "
            "usod.models.registry.register_model)"
        )
    module_name, _, class_name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def model_classes() -> dict[str, type[USODModule]]:
    """Short name -> class of every usod module (imports them all)."""
    return {name: model_class(name) for name in MODEL_PATHS}


def __getattr__(name: str) -> object:
    if name == "MODELS":  # the old eager table, built on first use
        return model_classes()
    raise AttributeError(name)
