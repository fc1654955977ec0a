"""Inference: one Predictor interface over run directories (torch), ONNX and TFLite models.

``from histoclass.inference.predictor import load`` imports no torch; only the torch backend does, when used.
"""
