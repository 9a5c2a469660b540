"""Pipelines: the papers' multi-step methods as resumable steps in one output folder.

* :mod:`usod.pipelines.a2s`: A2S (stage-1 cues -> pseudo labels -> stage-2 detector -> report),
  :class:`PipelineConfig` / :func:`run_pipeline`;
* :mod:`usod.pipelines.deepusps`: DeepUSPS (handcrafted maps -> per-method refinement rounds -> fusion ->
  report), :class:`DeepUSPSConfig` / :func:`run_deepusps`;
* :mod:`usod.pipelines.steps`: what both share (run settings, step trainers and checkpoints).

``usod pipeline --config FILE`` runs either; the file's ``method`` key (``a2s``, the default, or
``deepusps``) picks the pipeline, see :data:`PIPELINES`.
"""

from __future__ import annotations

from usod.pipelines.a2s import PipelineConfig, format_summary, run_pipeline
from usod.pipelines.deepusps import DeepUSPSConfig, run_deepusps
from usod.pipelines.steps import RunSettings

#: ``method`` key of a pipeline YAML -> (config class, run function).
PIPELINES = {"a2s": (PipelineConfig, run_pipeline), "deepusps": (DeepUSPSConfig, run_deepusps)}

__all__ = [
    "PIPELINES",
    "DeepUSPSConfig",
    "PipelineConfig",
    "RunSettings",
    "format_summary",
    "run_deepusps",
    "run_pipeline",
]
