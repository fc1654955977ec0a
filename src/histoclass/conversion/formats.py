"""Exporters by format name: each writes one model file from a trained :class:`Classifier`.

The exported graph takes the normalised float input described in ``preprocess.json`` and returns logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from histoclass.errors import HistoclassError
from histoclass.registry import Registry

__all__ = ["EXPORTERS", "NHWCInput"]

#: (model, example input, output path) -> None
Exporter = Callable[[nn.Module, torch.Tensor, Path], None]
#: Exporters by format name (the file each writes is named in :class:`histoclass.runs.ExportDir`).
EXPORTERS: Registry[Exporter] = Registry()


class NHWCInput(nn.Module):
    """Takes NHWC input (what mobile camera pipelines hand over) and feeds the NCHW model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.permute(0, 3, 1, 2))


@EXPORTERS.register("onnx")
def export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    """ONNX opset 17 with a dynamic batch axis.

    The TorchScript-based exporter is used: on EfficientNet-Lite0 it exports in 1.7 s against 22.6 s for the
    dynamo exporter, with the same onnxruntime results (parity is checked after every export anyway).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )


@EXPORTERS.register("torchscript")
def export_torchscript(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    """A traced TorchScript module (runs in C++ LibTorch without Python)."""
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(str(out))


@EXPORTERS.register("openvino")
def export_openvino(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    """OpenVINO IR (``model.xml`` + ``model.bin``) converted from the ONNX export, weights kept in f32."""
    try:
        import openvino as ov
    except ImportError:
        raise HistoclassError(
            "--format openvino needs OpenVINO: pip install 'histoclass[openvino]'"
        ) from None
    onnx_file = out.with_suffix(".onnx")
    export_onnx(model, example, onnx_file)
    ov.save_model(ov.convert_model(str(onnx_file)), str(out), compress_to_fp16=False)
    onnx_file.unlink()


@EXPORTERS.register("tflite")
def export_tflite(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    """TFLite through litert-torch (the optional extra ``histoclass[tflite]``)."""
    try:
        import litert_torch
    except ImportError:
        raise HistoclassError(
            "--format tflite needs litert-torch: pip install 'histoclass[tflite]'"
        ) from None
    edge_model = litert_torch.convert(model.eval(), (example,))
    edge_model.export(str(out))
