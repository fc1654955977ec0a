"""Inference: one Predictor over engines (PyTorch, ONNX Runtime, TFLite, TorchScript) and one preprocessing.

Importing it loads no torch and no Lightning: only the PyTorch engine imports torch, when it is used.
"""
