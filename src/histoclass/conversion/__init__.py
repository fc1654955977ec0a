"""Conversion: a PyTorch model as ONNX, OpenVINO, TFLite or TorchScript, and its parity with the original."""
