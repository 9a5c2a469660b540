"""usod: unsupervised salient object detection on PyTorch Lightning."""

__version__ = "0.1.0.dev0"
