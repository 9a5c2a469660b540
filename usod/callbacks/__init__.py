"""Lightning callbacks of usod that work with every module."""

from usod.callbacks.performance import PerformanceOptions

__all__ = ["PerformanceOptions"]
