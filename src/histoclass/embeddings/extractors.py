"""Feature extractors: a backbone, from a model name (and weights) or a run directory, as a feature module.

``pooled``: the backbone's own pooled output (what a linear head sees). ``multiscale``: the last two feature
maps, each GeM-pooled and concatenated, which keep more of what makes an image *this* image rather than its
class: the descriptor near-duplicate search uses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from histoclass.console import console
from histoclass.data.images import RESIZE_METHOD
from histoclass.data.inputs import file_identity
from histoclass.errors import HistoclassError
from histoclass.inference.engines import Engine
from histoclass.inference.engines.torch_engine import TorchEngine, native_bf16
from histoclass.models.factory import Backbone, create_backbone
from histoclass.runs import ModelInfo, RunDir

__all__ = [
    "OPENVINO_FROM",
    "Extractor",
    "FeatureKind",
    "MultiScaleGeM",
    "backbone_extractor",
    "create_extractor",
    "weights_fingerprint",
]

FeatureKind = Literal["pooled", "multiscale"]
#: Image passes (images x views) from which a CPU computes features with OpenVINO: converting the
#: module takes about 3 s, clearly repaid from this many (20 s of PyTorch for Lite0 at 96 px;
#: OpenVINO is 3.8x faster there).
OPENVINO_FROM = 5000
#: Changes whenever a descriptor's definition changes, so stale cached features are never reused.
_DESCRIPTOR_VERSION = 1


class MultiScaleGeM(nn.Module):
    """GeM (p=3) over each of the backbone's last ``stages`` feature maps, concatenated."""

    def __init__(self, backbone: nn.Module, stages: int = 2, p: float = 3.0) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_intermediates"):
            raise HistoclassError(
                "this backbone has no intermediate feature maps; pick a timm model"
            )
        self.backbone, self.stages, self.p = backbone, stages, p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.backbone.forward_intermediates(
            images, indices=self.stages, intermediates_only=True
        )
        pooled = [
            m.float().clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1 / self.p) for m in maps
        ]
        return torch.cat(pooled, dim=1)


@dataclass
class Extractor:
    """A feature module with its preprocessing, and the key of everything its features depend on."""

    module: nn.Module
    info: ModelInfo
    key: str
    cacheable: bool = True  # random weights give other features each time

    def engine(self, device: str | None = None, passes: int = 0) -> Engine:
        """OpenVINO on a CPU for ``passes`` (images x views) >= OPENVINO_FROM where it is installed
        and converts the module; else PyTorch, in bf16 wherever the device computes it natively
        (features need no more precision, and it is ~2x faster)."""
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if (
            chosen.type == "cpu"
            and passes >= OPENVINO_FROM
            and (converted := self._openvino()) is not None
        ):
            return converted
        engine = TorchEngine(self.module, self.info, Path(self.info.name), device)
        engine.bf16 = native_bf16(engine.device)
        return engine

    def _openvino(self) -> Engine | None:
        try:
            from histoclass.inference.engines.openvino_engine import OpenVinoEngine

            return OpenVinoEngine.from_module(self.module, self.info)
        except ImportError:
            return None
        except Exception as error:
            # a module OpenVINO cannot trace: PyTorch computes the same features
            console.print(
                f"[dim]features with PyTorch: OpenVINO cannot convert {self.info.name} ({error!s:.120})[/]"
            )
            return None


def _backbone(
    model: str, weights: str | None, pretrained: bool
) -> tuple[nn.Module, tuple, tuple, str, str]:
    """(module, mean, std, architecture, weights identity) for a model name or a run directory."""
    run = RunDir(Path(model))
    if run.is_trained():
        from histoclass.models.serialization import load_model

        classifier, info = load_model(run.root)
        if info.members > 1:
            raise HistoclassError(
                f"'{model}' is an ensemble of {info.members} folds; embed with one of them, e.g. "
                f"{run.fold(1).root}"
            )
        return (
            classifier.backbone,
            tuple(info.mean),
            tuple(info.std),
            info.architecture,
            file_identity(run.weights),
        )
    backbone = create_backbone(model, pretrained=pretrained, weights=weights)
    identity = file_identity(weights) if weights else ("imagenet" if pretrained else "random")
    return backbone.module, backbone.mean, backbone.std, model, identity


def weights_fingerprint(module: nn.Module) -> str:
    """A digest of every tensor's name, shape and leading values: another checkpoint changes it, and it needs
    no pass over a billion weights (what keys cached features to the weights they came from)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


def _extractor(
    features: nn.Module,
    mean: tuple,
    std: tuple,
    architecture: str,
    identity: str,
    image_size: int,
    kind: str,
    name: str,
) -> Extractor:
    info = ModelInfo(
        architecture=architecture,
        labels=[],
        image_size=image_size,
        mean=list(mean),
        std=list(std),
        resize=RESIZE_METHOD,
        name=name,
    )
    key = hashlib.sha256(
        f"{architecture}|{identity}|{image_size}|{kind}|{_DESCRIPTOR_VERSION}".encode()
    ).hexdigest()
    return Extractor(features.eval(), info, key[:24], cacheable=identity != "random")


def create_extractor(
    model: str, weights: str | None, image_size: int, kind: FeatureKind, pretrained: bool = True
) -> Extractor:
    """The ``kind`` features of ``model`` (a timm name or a run directory) at ``image_size``, in eval mode."""
    module, mean, std, architecture, identity = _backbone(model, weights, pretrained)
    features = MultiScaleGeM(module) if kind == "multiscale" else module
    return _extractor(features, mean, std, architecture, identity, image_size, kind, model)


def backbone_extractor(backbone: Backbone, architecture: str, image_size: int) -> Extractor:
    """The pooled features of an already built backbone (a probe's), keyed by its weights' fingerprint."""
    identity = weights_fingerprint(backbone.module)
    return _extractor(
        backbone.module,
        backbone.mean,
        backbone.std,
        architecture,
        identity,
        image_size,
        "pooled",
        architecture,
    )
