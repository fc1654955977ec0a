"""Classification heads by name: the backbone's pooled features -> class logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from histoclass.registry import Registry

__all__ = ["HEADS", "KNNHead", "create_head", "register_head"]

HeadBuilder = Callable[[int, int, float], nn.Module]
#: Head builders ``(in_features, num_classes, dropout) -> nn.Module`` by name.
HEADS: Registry[HeadBuilder] = Registry()
register_head = HEADS.register


@register_head("linear")
def linear_head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    """The backbone's own pooling + one linear layer (timm's default classifier)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


@register_head("gap-dense")
def gap_dense_head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    """Keras seeds: GlobalAveragePooling -> Dense(1024, relu) -> Dense(classes)."""
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1024, num_classes),
    )


@register_head("gap-bn-dense")
def gap_bn_dense_head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    """Keras seeds: pooling -> BatchNorm -> Dense -> BatchNorm -> Dropout -> Dense (weight decay:
    optimiser)."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Linear(in_features, 1024),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(1024),
        nn.Dropout(dropout or 0.5),
        nn.Linear(1024, num_classes),
    )


@register_head("mlp")
def mlp_head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    """One hidden layer on frozen embeddings (``--probe mlp``): room for a non-linear boundary,
    little to overfit."""
    return nn.Sequential(
        nn.Linear(in_features, 512), nn.GELU(), nn.Dropout(dropout), nn.Linear(512, num_classes)
    )


class KNNHead(nn.Module):
    """Cosine k-nearest-neighbour vote over stored training embeddings (``--probe knn``; DINO's k=20, T=0.07).

    Outputs the log of each class's similarity-weighted vote share, so temperature scaling, prediction sets
    and exports treat it as any head's logits. The bank is a buffer: it travels in ``model.safetensors``.
    """

    def __init__(
        self, in_features: int, num_classes: int, k: int = 20, temperature: float = 0.07
    ) -> None:
        super().__init__()
        self.k, self.temperature = k, temperature
        self.register_buffer("bank", torch.zeros(0, in_features))
        self.register_buffer("votes", torch.zeros(0, num_classes))
        self.out_features = num_classes

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Store the (normalised) training embeddings and their one-hot labels."""
        self.bank = F.normalize(features.float(), dim=1)
        self.votes = F.one_hot(labels.long(), self.out_features).float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(features.float(), dim=1) @ self.bank.T
        top = similarity.topk(min(self.k, self.bank.shape[0]), dim=1)
        weights = (top.values / self.temperature).softmax(dim=1)
        share = (weights[..., None] * self.votes[top.indices]).sum(dim=1)
        return torch.log(share + 1e-6)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A saved bank has the size of its training set: take its shape before loading it."""
        for name in ("bank", "votes"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_head("knn")
def knn_head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    """An empty k-NN bank, filled by ``--probe knn`` from the training embeddings."""
    return KNNHead(in_features, num_classes)


def create_head(name: str, in_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Build the head registered as ``name``."""
    from histoclass.errors import HistoclassError

    if name not in HEADS:
        raise HistoclassError(f"--head: unknown head '{name}'; choose one of {', '.join(HEADS)}")
    return HEADS[name](in_features, num_classes, dropout)
