"""What the shift score compares: the run's own backbone's feature statistics, through the batched path.

Fine-tuned penultimate features answer "which class", and place images of another lab or another kind among
the classes: on blood cells they told another lab's cells from unseen same-lab cells with an AUROC of 0.74.
The mean and spread of each channel of the early stages (colour, stain, texture, scale) and the mean of every
stage told them apart at 1.00, and BreastMNIST ultrasound at 1.00 (docs/benchmarks.md, the shift score).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from histoclass.data.records import ImageRecords
from histoclass.inference.embedder import Embedder
from histoclass.inference.engines.torch_engine import TorchEngine
from histoclass.models.ensemble import Ensemble
from histoclass.models.serialization import load_model

__all__ = [
    "STYLE_STAGES",
    "FeatureStatistics",
    "embed_sample",
    "feature_embedder",
    "statistics_module",
]


#: Early stages whose channel spread is kept beside their mean (the texture and stain statistics).
STYLE_STAGES = 3


class FeatureStatistics(nn.Module):
    """Backbone -> per-channel mean of every stage and spread of the first :data:`STYLE_STAGES`; a backbone
    without timm's ``forward_intermediates`` (AlexNet, hub models) gives its pooled features."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.backbone, "forward_intermediates"):
            return self.backbone(images)
        stages = self.backbone.forward_intermediates(images, intermediates_only=True)
        means = [stage.float().mean(dim=(2, 3)) for stage in stages]
        spreads = [stage.float().std(dim=(2, 3)) for stage in stages[:STYLE_STAGES]]
        return torch.cat(means + spreads, dim=1)


def statistics_module(model: nn.Module) -> FeatureStatistics:
    """The feature statistics of a classifier's backbone (an ensemble's first member: the members saw
    the same data)."""
    classifier = model.members[0] if isinstance(model, Ensemble) else model
    return FeatureStatistics(classifier.backbone).eval()


def feature_embedder(run_root: str | Path) -> Embedder:
    """An embedder of the run's backbone statistics through PyTorch."""
    model, info = load_model(run_root)
    return Embedder(TorchEngine(statistics_module(model), info, Path(run_root)))


def embed_sample(
    embedder: Embedder, records: ImageRecords, limit: int, seed: int = 0
) -> np.ndarray:
    """Features (M x D) of at most ``limit`` of ``records``, drawn at random with ``seed``;
    unreadable ones left out."""
    if len(records) > limit:
        chosen = np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
        records = records.subset(chosen)
    batches = [batch.features[:, 0] for batch in embedder.embed_records(records) if batch.indices]
    return np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)
