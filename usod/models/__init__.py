"""Models: shared encoders (:mod:`usod.models.backbones`) and one sub-package per method.

Kept free of imports so that ``import usod.models`` stays cheap; import the sub-modules you need.
"""
