"""Optimiser and learning-rate schedule of a run: parameter groups (head, backbone blocks), warm-up, decay."""

from __future__ import annotations

import math

import torch

from histoclass.config import TrainConfig
from histoclass.models.factory import Classifier

__all__ = ["FUSED", "create_optimizer", "create_scheduler", "parameter_groups"]

#: One kernel for the whole update rather than a Python loop over the parameters: on the 2-core AMD EPYC,
#: AdamW's step over Lite0 took 5-7 ms fused against 15-27 ms (docs/benchmarks.md).
FUSED = {"fused": True}


def parameter_groups(model: Classifier, cfg: TrainConfig) -> list[dict]:
    """The head at ``lr``; the backbone at ``lr * finetune_lr_scale``, or with ``layer_decay`` each block one
    step lower than the block above it (input side slowest).

    Every group exists from the start (frozen parameters get no gradient, so no update), which keeps the
    optimiser and scheduler state identical across phases and therefore resumable.
    """
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr, "name": "head"}]
    backbone_lr = cfg.lr * cfg.finetune_lr_scale
    if cfg.layer_decay is None:
        return [
            *groups,
            {"params": list(model.backbone.parameters()), "lr": backbone_lr, "name": "backbone"},
        ]
    named = dict(model.backbone.named_parameters())
    blocks = [[named[n] for n in block if n in named] for block in model.blocks]
    seen = {id(p) for block in blocks for p in block}
    rest = [p for p in named.values() if id(p) not in seen]
    for depth, params in enumerate(reversed(blocks)):
        groups.append(
            {"params": params, "lr": backbone_lr * cfg.layer_decay**depth, "name": f"block-{depth}"}
        )
    if rest:
        groups.append({"params": rest, "lr": backbone_lr, "name": "backbone-rest"})
    return groups


def create_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    optimizers = {
        "adamw": lambda: torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, **FUSED),
        "adam": lambda: torch.optim.Adam(groups, weight_decay=cfg.weight_decay, **FUSED),
        "sgd": lambda: torch.optim.SGD(
            groups, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay, **FUSED
        ),
    }
    return optimizers[cfg.optimizer]()


def _warmup_cosine(total_steps: int, warmup_steps: int, floor: float):
    """Linear warm-up from 1% to 1, then a cosine down to ``floor`` (a factor on each group's lr)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def create_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> dict | None:
    """Lightning's ``lr_scheduler`` entry for ``cfg.scheduler`` (None for ``none``)."""
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "cosine":
        warmup = round(total_steps * cfg.warmup_epochs / cfg.epochs)
        floor = cfg.min_lr / cfg.lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup_cosine(total_steps, warmup, floor)
        )
        return {"scheduler": schedule, "interval": "step"}
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
    )
    return {"scheduler": plateau, "monitor": "val_loss", "interval": "epoch"}
