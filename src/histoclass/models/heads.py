"""Classification heads by name: the backbone's pooled features -> class logits."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from histoclass.registry import Registry

__all__ = ["HEADS", "create_head", "register_head"]

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
        nn.Linear(in_features, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(1024, num_classes)
    )


@register_head("gap-bn-dense")
def gap_bn_dense_head(in_features: int, num_classes: int, dropout: float) -> nn.Module:
    """Keras seeds: pooling -> BatchNorm -> Dense -> BatchNorm -> Dropout -> Dense (weight decay: optimiser)."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Linear(in_features, 1024),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(1024),
        nn.Dropout(dropout or 0.5),
        nn.Linear(1024, num_classes),
    )


def create_head(name: str, in_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Build the head registered as ``name``."""
    from histoclass.errors import HistoclassError

    if name not in HEADS:
        raise HistoclassError(f"--head: unknown head '{name}'; choose one of {', '.join(HEADS)}")
    return HEADS[name](in_features, num_classes, dropout)
