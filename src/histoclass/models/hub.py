"""Weights from the Hugging Face hub or from local files, with one clear line instead of a stack of retries.

Gated models read ``HF_TOKEN`` (or the token ``huggingface-cli login`` stored); offline machines pass
``--weights`` with a downloaded file or folder. Checkpoints are read as tensors only (safetensors, or
``torch.load(weights_only=True)``), never unpickled objects.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Sequence
from pathlib import Path

import torch

from histoclass.errors import HistoclassError

__all__ = [
    "WEIGHT_FILES",
    "download_weights",
    "hub_page",
    "hub_reachable",
    "read_state_dict",
    "resolve_weights_path",
    "timm_model_args",
]

#: The file names model repositories keep their weights under, most preferred first.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_HOST = "huggingface.co"


def hub_page(repo: str) -> str:
    """The model page users request access on and download from."""
    return f"https://{HUB_HOST}/{repo}"


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on 443 within ``timeout`` seconds: checked once, before any download
    retries."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_weights_path(weights: str, filenames: Sequence[str] = WEIGHT_FILES) -> str:
    """``--weights``: a checkpoint file, or a downloaded model folder holding one of ``filenames``."""
    path = Path(weights)
    if path.is_dir():
        for name in filenames:
            if (path / name).is_file():
                return str(path / name)
        raise HistoclassError(f"--weights: folder '{weights}' holds none of {', '.join(filenames)}")
    if not path.is_file():
        raise HistoclassError(
            f"--weights: no such file '{weights}'; pass a .safetensors or .pth checkpoint"
        )
    return str(path)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.bin checkpoint (a ``state_dict``/``model`` entry is unwrapped)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickles with objects, damaged files: many exception types
        raise HistoclassError(
            f"--weights: cannot read '{path}' as tensors ({type(error).__name__})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def timm_model_args(weights_path: str) -> dict:
    """``model_args`` of the timm ``config.json`` beside a checkpoint (empty when there is none, or it is not
    timm's): what the hub itself passes to the architecture, so a downloaded folder builds as published."""
    config = Path(weights_path).parent / "config.json"
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    args = (
        values.get("model_args") if isinstance(values, dict) and "architecture" in values else None
    )
    return dict(args) if isinstance(args, dict) else {}


def _cached(repo: str, filenames: Sequence[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def download_weights(repo: str, filenames: Sequence[str], name: str, gated: bool) -> str:
    """Local path of ``repo``'s weights: from the hub cache, else downloaded (with ``HF_TOKEN`` when
    gated)."""
    from huggingface_hub import get_token, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    cached = _cached(repo, filenames)
    if cached:
        return cached
    page = hub_page(repo)
    offline = f"pass --weights DIR_OR_FILE with weights downloaded from {page}"
    if gated and not get_token():  # no download can succeed, online or not
        raise HistoclassError(
            f"--model {name} is gated: request access at {page}, then set HF_TOKEN (or "
            "huggingface-cli login); "
            f"or {offline}"
        )
    if not hub_reachable():
        raise HistoclassError(
            f"--model {name}: the model hub cannot be reached and nothing is cached; {offline}"
        )
    for filename in filenames:
        try:
            path = hf_hub_download(repo, filename)
            # the architecture's arguments, where the repo has them
            with contextlib.suppress(EntryNotFoundError):
                hf_hub_download(repo, "config.json")
            return path
        except EntryNotFoundError:
            continue
        except GatedRepoError:
            raise HistoclassError(
                f"--model {name}: HF_TOKEN has no access to {page}; request access there, or {offline}"
            ) from None
        except RepositoryNotFoundError:
            raise HistoclassError(
                f"--model {name}: {page} does not exist or HF_TOKEN cannot see it"
            ) from None
    raise HistoclassError(f"--model {name}: {page} has none of {', '.join(filenames)}")
