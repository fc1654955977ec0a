"""Several classifiers answering as one (``train --folds K``): the mean of their probabilities.

The output is the log of that mean, so softmax of it is the mean probability, and temperature
scaling, test-time views, every engine and every export treat an ensemble like any classifier: one
graph, one parity check.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """Members with the same input size and preprocessing; ``forward`` returns log mean probabilities."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mean, self.std = members[0].mean, members[0].std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probabilities = torch.stack(
            [member(images).log_softmax(dim=1) for member in self.members]
        )
        # logsumexp spelled out: OpenVINO reads ONNX's ReduceLogSumExp over the members' axis as a scalar
        peak = log_probabilities.amax(dim=0)
        return peak + torch.log(torch.exp(log_probabilities - peak).mean(dim=0))
