"""Inference engines by name; importing this package registers every one (their runtimes load lazily)."""

from histoclass.inference.engines import (
    onnx_engine,
    openvino_engine,
    tflite_engine,
    torch_engine,
    torchscript_engine,
)
from histoclass.inference.engines.base import (
    ENGINES,
    Engine,
    NumpyEngine,
    read_export_info,
    register_engine,
)

__all__ = [
    "ENGINES",
    "Engine",
    "NumpyEngine",
    "onnx_engine",
    "openvino_engine",
    "read_export_info",
    "register_engine",
    "tflite_engine",
    "torch_engine",
    "torchscript_engine",
]
