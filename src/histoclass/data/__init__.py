"""Data: sources (folder, CSV, .npz, MedMNIST) -> labelled records -> checks, splits, transforms, loaders.

Importing this package imports neither torch nor timm, so the runtime-only predictor can use ``images``.
"""
