"""A quiet CPU ``pl.Trainer`` for tests: no logger, checkpoints, progress bar or model summary."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def quiet_trainer(max_epochs: int | None = None, **kwargs: Any) -> pl.Trainer:
    """``pl.Trainer`` on one CPU device with nothing written or printed; ``kwargs`` override the defaults."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if max_epochs is not None:
        settings["max_epochs"] = max_epochs
    return pl.Trainer(**{**settings, **kwargs})
