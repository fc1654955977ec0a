"""``create_model``: any timm backbone (or a registered torchvision one) + a new head for the
dataset's classes.

Weights come from, in order: ``weights`` (a local file), the local hub cache, a download when the hub is
reachable. Offline with nothing cached is one clear error, not a minute of retries.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from histoclass.errors import HistoclassError
from histoclass.models.heads import create_head
from histoclass.models.hub import (
    HUB_HOST,
    WEIGHT_FILES,
    hub_page,
    hub_reachable,
    read_state_dict,
    resolve_weights_path,
)
from histoclass.registry import Registry

__all__ = [
    "BACKBONES",
    "Backbone",
    "Classifier",
    "check_model_name",
    "create_backbone",
    "create_model",
    "register_backbone",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """Images -> pooled features, with the preprocessing its weights expect and its blocks in order."""

    module: nn.Module
    num_features: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    blocks: list[list[str]]  # parameter names of each block, input side first
    # the size its weights need (fixed position embeddings); None: any size
    input_size: int | None = None


BackboneBuilder = Callable[[bool, str | None], Backbone]
#: Non-timm backbone builders ``(pretrained, weights_file) -> Backbone`` by name; timm covers the rest.
BACKBONES: Registry[BackboneBuilder] = Registry()
register_backbone = BACKBONES.register


def _offline_error(name: str) -> HistoclassError:
    return HistoclassError(
        f"--pretrained: no ImageNet weights for '{name}' in the local cache and the model hub "
        "cannot be reached; "
        "pass --weights FILE (a local .safetensors or .pth) or --no-pretrained"
    )


def _cached_timm_weights(name: str) -> str | None:
    """Path of already-downloaded weights for ``name`` in the Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    for filename in (*WEIGHT_FILES, "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _timm_backbone(
    name: str, pretrained: bool, weights: str | None, drop_path: float = 0.0
) -> Backbone:
    overlay = None
    if weights:
        overlay = {"file": resolve_weights_path(weights)}
    elif pretrained:
        cached = _cached_timm_weights(name)
        if cached:
            overlay = {"file": cached}
        elif not hub_reachable(HUB_HOST):
            raise _offline_error(name)
    try:
        extra = {"drop_path_rate": drop_path} if drop_path else {}
        module = timm.create_model(
            name,
            pretrained=pretrained or bool(weights),
            num_classes=0,
            pretrained_cfg_overlay=overlay,
            **extra,
        )
    except RuntimeError as error:  # timm reports a checkpoint that does not fit as a RuntimeError
        if weights:
            first = str(error).splitlines()[0][:200]
            raise HistoclassError(
                f"--weights: '{weights}' does not fit '{name}' ({first})"
            ) from None
        raise
    return _timm_parts(module)


def _timm_parts(module: nn.Module) -> Backbone:
    """A timm model as a backbone: normalisation from its pretrained config, blocks from its group matcher."""
    cfg = module.pretrained_cfg
    groups = timm.models.group_parameters(module, module.group_matcher(coarse=True))
    fixed = getattr(getattr(module, "patch_embed", None), "strict_img_size", False)
    return Backbone(
        module=module,
        num_features=module.num_features,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        blocks=[list(names) for names in groups.values()],
        input_size=cfg["input_size"][-1] if fixed else None,
    )


@register_backbone("alexnet")
def alexnet_backbone(pretrained: bool, weights: str | None) -> Backbone:
    """torchvision's AlexNet up to its 4096-d penultimate layer (timm has no AlexNet)."""
    from torchvision.models import AlexNet_Weights, alexnet

    model = alexnet(weights=None)
    if weights:
        _load_state_dict_file(model, resolve_weights_path(weights))
    elif pretrained:
        url = AlexNet_Weights.IMAGENET1K_V1.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not cached.is_file() and not hub_reachable("download.pytorch.org"):
            raise _offline_error("alexnet")
        model.load_state_dict(
            torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
        )
    model.classifier = model.classifier[:-1]
    blocks = [[f"features.{i}.{p}" for p in ("weight", "bias")] for i in (0, 3, 6, 8, 10)]
    blocks += [[f"classifier.{i}.{p}" for p in ("weight", "bias")] for i in (1, 4)]
    return Backbone(model, 4096, IMAGENET_MEAN, IMAGENET_STD, blocks)


def _load_state_dict_file(model: nn.Module, path: str) -> None:
    """Load a .safetensors or .pth state dict (never unpickling arbitrary objects)."""
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as error:
        raise HistoclassError(
            f"--weights: '{path}' does not fit this model ({str(error)[:200]})"
        ) from None


def _hub_backbone(name: str, pretrained: bool, weights: str | None) -> Backbone:
    """``hf-hub:ORG/NAME``: any timm model on the hub, its config and weights from there (or a local
    folder)."""
    source, page = name, hub_page(name.removeprefix("hf-hub:"))
    if weights:
        if not Path(weights).is_dir():
            raise HistoclassError(
                f"--weights: for {name} pass the downloaded model folder (with config.json)"
            )
        source = f"local-dir:{weights}"
    elif not hub_reachable(HUB_HOST) and not _hub_config_cached(name):
        raise HistoclassError(
            f"--model {name}: the model hub cannot be reached and nothing is cached; pass "
            "--weights DIR with the "
            f"model folder downloaded from {page} (gated models also need HF_TOKEN when online)"
        )
    try:
        module = timm.create_model(source, pretrained=pretrained or bool(weights), num_classes=0)
    except Exception as error:  # hub errors (gated, missing) come in several types
        raise HistoclassError(
            f"--model {name}: {type(error).__name__}; check access at {page} and HF_TOKEN, or pass "
            "--weights DIR"
        ) from None
    return _timm_parts(module)


def _hub_config_cached(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name.removeprefix("hf-hub:"), "config.json"), str)


def create_backbone(
    name: str, pretrained: bool = True, weights: str | None = None, drop_path: float = 0.0
) -> Backbone:
    """A registered backbone (foundation models by short name), an ``hf-hub:`` name or any timm model name;
    unknown names get suggestions.

    ``drop_path``: stochastic depth for timm models that have it (a regulariser while fine-tuning).
    """
    check_model_name(name)
    if name in BACKBONES:
        return BACKBONES[name](pretrained, weights)
    if name.startswith("hf-hub:"):
        return _hub_backbone(name, pretrained, weights)
    return _timm_backbone(name, pretrained, weights, drop_path)


def check_model_name(name: str) -> None:
    """Fail fast on a name no factory knows, suggesting close ones (before any data is read)."""
    if name in BACKBONES or name.startswith("hf-hub:") or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, list(BACKBONES) + timm.list_models(), n=4, cutoff=0.6)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else "see histoclass models, or timm.list_models()"
    )
    raise HistoclassError(f"--model: unknown model '{name}'; {hint}")


class Classifier(nn.Module):
    """Backbone + head. ``blocks`` lists backbone parameter names block by block, for two-phase training."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.head = head
        self.blocks = backbone.blocks
        self.mean, self.std = backbone.mean, backbone.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def create_model(
    name: str,
    num_classes: int,
    head: str = "linear",
    dropout: float = 0.0,
    pretrained: bool = True,
    weights: str | None = None,
) -> Classifier:
    """Backbone ``name`` with a new ``head`` for ``num_classes`` classes."""
    backbone = create_backbone(name, pretrained=pretrained, weights=weights)
    return Classifier(backbone, create_head(head, backbone.num_features, num_classes, dropout))
