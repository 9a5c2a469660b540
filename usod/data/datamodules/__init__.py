"""LightningDataModules: one shared base, thin named subclasses, and their registry."""

from usod.data.datamodules.base import SODDataModule

__all__ = ["SODDataModule"]
