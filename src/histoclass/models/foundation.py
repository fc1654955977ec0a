"""Pathology foundation models by short name: exactly what each needs, as data (timm's pattern).

Each entry names the hub repository, the timm architecture and constructor arguments that rebuild it offline,
its input size and normalisation, how its embedding is read from the tokens, its licence and whether access
is gated. ``--model uni2-h`` builds one as a backbone like any timm model; ``histoclass models`` lists them.
Checkpoints published in the ``transformers`` DINOv2 layout (Hibou, Phikon-v2) are converted to timm's, so
every entry trains, exports and serves through the same path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import timm
import torch
from timm.layers import SwiGLUPacked
from torch import nn

from histoclass.errors import HistoclassError
from histoclass.models.factory import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, Backbone
from histoclass.models.hub import (
    WEIGHT_FILES,
    download_weights,
    hub_page,
    read_state_dict,
    resolve_weights_path,
    timm_model_args,
)

__all__ = [
    "FOUNDATION_MODELS",
    "ClsMeanPool",
    "FoundationModel",
    "build_foundation",
    "dinov2_teacher_to_timm",
    "dinov2_to_timm",
]

HOPTIMUS_MEAN, HOPTIMUS_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
HIBOU_MEAN, HIBOU_STD = (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class FoundationModel:
    """One registry entry; ``kwargs`` are timm constructor arguments (``swiglu`` stands for SwiGLU + SiLU)."""

    name: str
    repo: str
    architecture: str
    kwargs: dict = field(default_factory=dict)
    embedding: Literal["cls", "cls+mean"] = "cls"
    dim: int = 0
    parameters_m: float = 0.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    licence: str = ""
    gated: bool = True
    checkpoint: Literal["timm", "dinov2-hf", "dinov2-teacher"] = "timm"
    image_size: int = 224
    #: The weight files the hub repository publishes, in order of preference.
    files: tuple[str, ...] = WEIGHT_FILES
    domain: str = "pathology"

    @property
    def page(self) -> str:
        return hub_page(self.repo)

    def timm_kwargs(self, published: dict | None = None) -> dict:
        """Constructor arguments: the published ``model_args`` (when a downloaded folder has them), then this
        entry's (as timm's hub loading lets explicit arguments win), then a headless, any-size model."""
        kwargs = dict(self.kwargs)
        if kwargs.pop("swiglu", False):
            kwargs |= {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
        fixed = {
            "num_classes": 0,
            "global_pool": "token",
            "img_size": self.image_size,
            "dynamic_img_size": True,
        }
        return {**(published or {}), **kwargs, **fixed}


_SWIGLU_G = {"swiglu": True, "mlp_ratio": 2.66667 * 2}
FOUNDATION_MODELS: dict[str, FoundationModel] = {
    spec.name: spec
    for spec in (
        FoundationModel(
            "uni",
            "MahmoodLab/UNI",
            "vit_large_patch16_224",
            {"init_values": 1e-5},
            dim=1024,
            parameters_m=303.4,
            licence="CC-BY-NC-ND-4.0",
        ),
        FoundationModel(
            "uni2-h",
            "MahmoodLab/UNI2-h",
            "vit_giant_patch14_224",
            {
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "embed_dim": 1536,
                "init_values": 1e-5,
                "no_embed_class": True,
                "reg_tokens": 8,
                **_SWIGLU_G,
            },
            dim=1536,
            parameters_m=681.4,
            licence="CC-BY-NC-ND-4.0",
        ),
        FoundationModel(
            "virchow2",
            "paige-ai/Virchow2",
            "vit_huge_patch14_224",
            {"init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4, "swiglu": True},
            embedding="cls+mean",
            dim=2560,
            parameters_m=631.2,
            licence="CC-BY-NC-ND-4.0",
        ),
        FoundationModel(
            "h-optimus-0",
            "bioptimus/H-optimus-0",
            "vit_giant_patch14_reg4_dinov2",
            {"init_values": 1e-5},
            dim=1536,
            parameters_m=1134.8,
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            licence="Apache-2.0",
            gated=False,
        ),
        FoundationModel(
            "h0-mini",
            "bioptimus/H0-mini",
            "vit_base_patch14_reg4_dinov2",
            {"swiglu": True},
            embedding="cls+mean",
            dim=1536,
            parameters_m=71.6,
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            licence="CC-BY-NC-ND-4.0",
        ),
        FoundationModel(
            "prov-gigapath",
            "prov-gigapath/prov-gigapath",
            "vit_giant_patch14_dinov2",
            {"patch_size": 16, "mlp_ratio": 5.33334, "init_values": 1e-5},
            dim=1536,
            parameters_m=1135.0,
            licence="Apache-2.0",
        ),
        FoundationModel(
            "hibou-b",
            "histai/hibou-b",
            "vit_base_patch14_reg4_dinov2",
            {},
            dim=768,
            parameters_m=85.7,
            mean=HIBOU_MEAN,
            std=HIBOU_STD,
            licence="Apache-2.0",
            gated=False,
            checkpoint="dinov2-hf",
        ),
        FoundationModel(
            "hibou-l",
            "histai/hibou-L",
            "vit_large_patch14_reg4_dinov2",
            {},
            dim=1024,
            parameters_m=303.2,
            mean=HIBOU_MEAN,
            std=HIBOU_STD,
            licence="Apache-2.0",
            checkpoint="dinov2-hf",
        ),
        FoundationModel(
            "phikon-v2",
            "owkin/phikon-v2",
            "vit_large_patch16_224",
            {"init_values": 1e-5, "no_embed_class": True},
            dim=1024,
            parameters_m=303.3,
            licence="Owkin non-commercial",
            gated=False,
            checkpoint="dinov2-hf",
        ),
        FoundationModel(
            "kaiko-vits16",
            "1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms",
            "vit_small_patch16_224",
            {},
            dim=384,
            parameters_m=21.7,
            mean=HALF,
            std=HALF,
            licence="other (kaiko.ai)",
            gated=False,
        ),
        # DinoBloom (Koch et al., MICCAI 2024): DINOv2 fine-tuned on 13 blood and bone-marrow cell datasets.
        *(
            FoundationModel(
                f"dinobloom-{size.lower()}",
                "MarrLab/DinoBloom",
                f"vit_{arch}_patch14_dinov2",
                {},
                dim=dim,
                parameters_m=params,
                licence="Apache-2.0",
                gated=False,
                checkpoint="dinov2-teacher",
                files=(f"DinoBloom-{size}.pth",),
                domain="haematology",
            )
            for size, arch, dim, params in (
                ("S", "small", 384, 21.6),
                ("B", "base", 768, 85.7),
                ("L", "large", 1024, 303.2),
                ("G", "giant", 1536, 1134.8),
            )
        ),
        FoundationModel(
            "kaiko-vitb16",
            "1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms",
            "vit_base_patch16_224",
            {},
            dim=768,
            parameters_m=85.8,
            mean=HALF,
            std=HALF,
            licence="other (kaiko.ai)",
            gated=False,
        ),
    )
}


#: transformers DINOv2 block entries -> timm ViT block entries (query/key/value are merged separately).
_DINOV2_BLOCK_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}


#: Query, key and value as transformers 4 and 5 name them.
_DINOV2_QKV = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
)


def _pop_either(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    for key in keys:
        if key in state:
            return state.pop(key)
    raise HistoclassError(f"not a DINOv2 checkpoint: no {keys[0]}")


class ClsMeanPool(nn.Module):
    """The class token concatenated with the mean of the patch tokens (registers left out):
    Virchow's embedding."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.num_features = 2 * vit.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(images)
        return torch.cat([tokens[:, 0], tokens[:, self.vit.num_prefix_tokens :].mean(dim=1)], dim=1)


def dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``transformers`` DINOv2 (with or without registers) state dict in timm ViT names.

    The class token's position embedding is folded into the token, which is what timm's ``no_embed_class``
    layout computes; query, key and value become one ``qkv`` projection.
    """
    state = {_strip_prefix(key): value for key, value in state.items()}
    position = state.pop("embeddings.position_embeddings")
    out = {
        "cls_token": state.pop("embeddings.cls_token") + position[:, :1],
        "pos_embed": position[:, 1:],
        "patch_embed.proj.weight": state.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": state.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": state.pop("layernorm.weight"),
        "norm.bias": state.pop("layernorm.bias"),
    }
    if "embeddings.register_tokens" in state:
        out["reg_token"] = state.pop("embeddings.register_tokens")
    state.pop("embeddings.mask_token", None)
    blocks = sorted({int(key.split(".")[2]) for key in state if key.startswith("encoder.layer.")})
    for i in blocks:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [
                _pop_either(state, [f"{src}{name}.{kind}" for name in names])
                for names in _DINOV2_QKV
            ]
            out[f"{dst}attn.qkv.{kind}"] = torch.cat(qkv)
        for old, new in _DINOV2_BLOCK_NAMES.items():
            for suffix in ("", ".weight", ".bias"):
                if f"{src}{old}{suffix}" in state:
                    out[f"{dst}{new}{suffix}"] = state.pop(f"{src}{old}{suffix}")
    if state:
        raise HistoclassError(
            f"unexpected DINOv2 checkpoint entries: {', '.join(sorted(state)[:5])}"
        )
    return out


def dinov2_teacher_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DINOv2 training checkpoint (``teacher`` weights, as DinoBloom publishes) -> the backbone's
    entries in DINOv2's own names, which timm's checkpoint filter converts (``mask_token`` kept: it
    marks them as DINOv2)."""
    state = state.get("teacher", state)
    heads = ("dino_head.", "ibot_head.")
    return {
        key.removeprefix("backbone."): value
        for key, value in state.items()
        if not key.startswith(heads) and not key.removeprefix("backbone.").startswith(heads)
    }


def _strip_prefix(key: str) -> str:
    """``dinov2.encoder.layer.0...`` -> ``encoder.layer.0...`` (checkpoints saved from task models)."""
    for start in ("embeddings.", "encoder.", "layernorm."):
        if start in key:
            return key[key.index(start) :]
    return key


def _load_weights(vit: nn.Module, spec: FoundationModel, path: str) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    if spec.checkpoint == "dinov2-hf":
        state = dinov2_to_timm(state)
    elif spec.checkpoint == "dinov2-teacher":
        state = dinov2_teacher_to_timm(state)
    # headless here: a published head is unused
    if not any(key.startswith("head.") for key in vit.state_dict()):
        state = {key: value for key, value in state.items() if not key.startswith("head.")}
    state = checkpoint_filter_fn(state, vit)  # resamples position embeddings to the built grid
    try:
        vit.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0][:200]
        raise HistoclassError(
            f"--weights: '{path}' does not fit {spec.name} ({first}); see {spec.page}"
        ) from None


def build_foundation(spec: FoundationModel, pretrained: bool, weights: str | None) -> Backbone:
    """``spec`` as a backbone: random weights, or the hub's (cached or downloaded), or a local file
    or folder."""
    # found (or downloaded) before building: a missing file fails in a second, not after 1B weights
    path = None
    if weights:
        path = resolve_weights_path(weights, tuple(dict.fromkeys((*spec.files, *WEIGHT_FILES))))
    elif pretrained:
        path = download_weights(spec.repo, spec.files, spec.name, spec.gated)
    published = timm_model_args(path) if path and spec.checkpoint == "timm" else {}
    vit = timm.create_model(spec.architecture, pretrained=False, **spec.timm_kwargs(published))
    if path:
        _load_weights(vit, spec, path)
    groups = timm.models.group_parameters(vit, vit.group_matcher(coarse=True))
    prefix = "vit." if spec.embedding == "cls+mean" else ""
    module = ClsMeanPool(vit) if spec.embedding == "cls+mean" else vit
    return Backbone(
        module=module,
        num_features=module.num_features,
        mean=spec.mean,
        std=spec.std,
        blocks=[[prefix + name for name in names] for names in groups.values()],
        input_size=spec.image_size,
    )


def _register(spec: FoundationModel) -> None:
    BACKBONES.register(spec.name)(
        lambda pretrained, weights: build_foundation(spec, pretrained, weights)
    )


for _spec in FOUNDATION_MODELS.values():
    _register(_spec)
