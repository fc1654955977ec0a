"""Export: ONNX, TorchScript and TFLite models that are checked against the trained PyTorch model."""
