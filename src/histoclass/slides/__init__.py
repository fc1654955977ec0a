"""Whole slides: reading, tissue detection, tiling at the training resolution, and the maps."""
