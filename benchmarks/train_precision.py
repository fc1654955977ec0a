"""Training steps on the CPU in fp32 and bf16 autocast: what ``precision: auto`` follows on CPUs.

    python -m benchmarks.train_precision [--model tf_efficientnet_lite0] [--sizes 96,128,160] [--steps 8]

For each size and each phase (head only with the backbone frozen, the last 3 blocks, every block), the same
model takes ``--steps`` optimiser steps on a batch of 32 already in memory, after two warm-up steps; prints
images/s for both precisions and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from histoclass.models.factory import create_model


def _trainable(model, phase: str) -> None:
    blocks = model.blocks
    chosen = {"head": [], "last3": blocks[-3:], "all": blocks}[phase]
    names = {n for block in chosen for n in block}
    for parameter in model.head.parameters():
        parameter.requires_grad = True
    for name, parameter in model.backbone.named_parameters():
        parameter.requires_grad = name in names


def _speed(model, inputs: torch.Tensor, labels: torch.Tensor, bf16: bool, steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for step in range(steps + 2):
        if step == 2:
            started = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * len(inputs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--sizes", default="96,128,160")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    print(
        f"{args.model}, batch 32, {torch.get_num_threads()} threads, native bf16: "
        f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    )
    print("| size | trained | fp32 img/s | bf16 img/s | bf16 / fp32 |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        inputs = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 4, (32,))
        for phase in ("head", "last3", "all"):
            model = (
                create_model(args.model, 4, pretrained=False)
                .to(memory_format=torch.channels_last)
                .train()
            )
            _trainable(model, phase)
            fp32, bf16 = (_speed(model, inputs, labels, flag, args.steps) for flag in (False, True))
            print(
                f"| {size} | {phase} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}x |", flush=True
            )


if __name__ == "__main__":
    main()
