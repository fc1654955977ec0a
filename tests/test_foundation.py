"""Foundation models by name: every registry entry builds with its documented embedding, local weights load
(timm files and converted transformers DINOv2 checkpoints), and bad names or missing access are one line."""

from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import BLOOD_TEST, run_cli, run_cli_all
from histoclass.errors import HistoclassError
from histoclass.models.factory import create_backbone
from histoclass.models.foundation import FOUNDATION_MODELS, build_foundation
from histoclass.models.hub import hub_reachable

SMALL = [name for name, spec in FOUNDATION_MODELS.items() if spec.parameters_m < 100]


@pytest.mark.parametrize("name", list(FOUNDATION_MODELS))
def test_every_entry_builds_with_its_documented_embedding(name: str) -> None:
    """ViT-g/H sized entries on the meta device (shapes without memory), the small ones for real."""
    spec = FOUNDATION_MODELS[name]
    device = torch.device("cpu" if name in SMALL else "meta")
    with device:
        backbone = create_backbone(name, pretrained=False)
        images = torch.zeros(2, 3, spec.image_size, spec.image_size)
    with torch.no_grad():
        features = backbone.module.eval()(images)
    assert tuple(features.shape) == (2, spec.dim) == (2, backbone.num_features)
    parameters = sum(p.numel() for p in backbone.module.parameters()) / 1e6
    assert parameters == pytest.approx(spec.parameters_m, rel=0.01)
    assert backbone.mean == spec.mean and backbone.std == spec.std
    named = {n for n, _ in backbone.module.named_parameters()}
    # two-phase training sees every parameter
    assert named == {n for block in backbone.blocks for n in block}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", "folder"])
def test_local_weights_load_into_an_entry(tmp_path, suffix: str) -> None:
    spec = FOUNDATION_MODELS["kaiko-vits16"]
    torch.manual_seed(0)
    source = create_backbone(spec.name, pretrained=False).module.eval()
    state = source.state_dict()
    if suffix == ".pth":
        torch.save(state, tmp_path / "w.pth")
        weights = tmp_path / "w.pth"
    else:
        weights = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
        weights = tmp_path if suffix == "folder" else weights
    loaded = build_foundation(spec, pretrained=False, weights=str(weights)).module.eval()
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(source(images), loaded(images))
        fresh = create_backbone(spec.name, pretrained=False).module.eval()
        assert not torch.allclose(fresh(images), loaded(images))


def test_a_downloaded_folder_builds_as_published(tmp_path) -> None:
    """The folder's timm config.json gives arguments the entry does not pin; a published head is left out."""
    spec = FOUNDATION_MODELS["kaiko-vits16"]
    torch.manual_seed(0)
    source = timm.create_model(spec.architecture, num_classes=3, mlp_ratio=2.0).eval()
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()},
        str(tmp_path / "model.safetensors"),
    )
    config = {"architecture": spec.architecture, "num_classes": 3, "model_args": {"mlp_ratio": 2.0}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = build_foundation(spec, pretrained=False, weights=str(tmp_path)).module.eval()
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(
            source.forward_head(source.forward_features(images), pre_logits=True), loaded(images)
        )


def test_a_transformers_dinov2_checkpoint_converts_exactly(tmp_path) -> None:
    """Hibou-B as published (transformers DINOv2 with 4 registers) gives the same class token through timm."""
    # installed with the tflite extra (make setup)
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=14,
        num_register_tokens=4,
        layerscale_value=1e-5,
    )
    torch.manual_seed(0)
    reference = transformers.Dinov2WithRegistersModel(config).eval()
    # the default init leaves tokens at zero: make every entry count
    for parameter in reference.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()},
        str(tmp_path / "model.safetensors"),
    )
    backbone = build_foundation(
        FOUNDATION_MODELS["hibou-b"], pretrained=False, weights=str(tmp_path)
    )
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(pixel_values=images).last_hidden_state[:, 0]
        assert torch.allclose(backbone.module.eval()(images), expected, atol=1e-4)
    broken = {
        k: v.contiguous()
        for k, v in reference.state_dict().items()
        if k != "embeddings.register_tokens"
    }
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(HistoclassError, match="does not fit hibou-b"):
        build_foundation(FOUNDATION_MODELS["hibou-b"], pretrained=False, weights=str(tmp_path))


def test_a_dinobloom_training_checkpoint_loads_by_name_from_a_folder(tmp_path) -> None:
    """DinoBloom publishes DINOv2 training checkpoints (``teacher`` weights with DINO/iBOT heads) as
    ``DinoBloom-S.pth``: a folder holding one builds ``dinobloom-s`` with exactly those weights."""
    spec = FOUNDATION_MODELS["dinobloom-s"]
    torch.manual_seed(0)
    source = create_backbone(spec.name, pretrained=False).module.eval()
    teacher = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    teacher |= {
        "backbone.mask_token": torch.zeros(1, spec.dim),
        "dino_head.last_layer.weight": torch.rand(8, 4),
    }
    torch.save({"teacher": teacher, "iteration": 1}, tmp_path / "DinoBloom-S.pth")
    loaded = build_foundation(spec, pretrained=False, weights=str(tmp_path)).module.eval()
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(source(images), loaded(images))
    assert spec.domain == "haematology" and spec.files == ("DinoBloom-S.pth",)


def test_models_lists_the_registry(tmp_path) -> None:
    result = run_cli("models", "--out", str(tmp_path / "models.csv"))
    assert result.returncode == 0, result.stderr
    for name in FOUNDATION_MODELS:
        assert name in result.stdout
    with open(tmp_path / "models.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == list(FOUNDATION_MODELS)
    assert {row["gated"] for row in rows} == {"yes", "no"}
    open_only = run_cli("models", "--open-only")
    assert "h-optimus-0" in open_only.stdout and "uni2-h" not in open_only.stdout


def test_unknown_names_and_missing_access_are_one_line(tmp_path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""}  # no stored token either
    data, out = str(BLOOD_TEST), str(tmp_path / "e.npz")
    offline = not hub_reachable()
    calls = [
        ["embed", "uni-2h", data, "--out", out],
        ["train", "--data", data, "--model", "uni2-h", "--probe", "linear"],
        ["train", "--data", data, "--probe", "linear", "--no-pretrained"],
    ]
    hub_call = ["embed", "hf-hub:bioptimus/H-optimus-0", data, "--out", out]
    typo, gated, random, *hub = run_cli_all(calls + [hub_call] * offline, env=env)
    assert (
        typo.returncode == 2
        and "did you mean uni2-h" in typo.stderr
        and "Traceback" not in typo.stderr
    )
    assert gated.returncode == 2 and "Traceback" not in gated.stderr
    for needed in ("HF_TOKEN", "--weights", "https://huggingface.co/MahmoodLab/UNI2-h"):
        assert needed in gated.stderr
    for result in hub:  # without the hub, the download's own error
        assert (
            result.returncode == 2
            and "--weights DIR" in result.stderr
            and "Traceback" not in result.stderr
        )
    assert not (tmp_path / "e.npz").exists()
    assert random.returncode == 2 and "--probe needs a pretrained backbone" in random.stderr
