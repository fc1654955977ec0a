"""Deployment: the one way to open a predictor for a run directory or an export, on the engine that suits.

Below every verb that predicts (predict, evaluate, calibrate, serve, slide, export, bench) and above
:mod:`histoclass.inference` (the engines) and :mod:`histoclass.conversion` (what a run is converted to).
"""

from histoclass.deploy.engines import open_predictor

__all__ = ["open_predictor"]
