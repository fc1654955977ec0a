"""Temperature scaling (Guo et al. 2017): one number dividing every logit, fitted by minimising the
negative log-likelihood on held-out images. It changes confidences, never the predicted class."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

__all__ = ["calibrated_probabilities", "fit_temperature", "negative_log_likelihood"]


def calibrated_probabilities(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """N x C probabilities from N x V x C logits (V test-time views): the mean over views of
    ``softmax(logits / temperature)``."""
    return softmax(view_logits.astype(np.float64) / temperature, axis=-1).mean(axis=1)


def negative_log_likelihood(
    view_logits: np.ndarray, labels: np.ndarray, temperature: float
) -> float:
    """Mean NLL of the true class under :func:`calibrated_probabilities`."""
    if view_logits.shape[1] == 1:  # one view: log-softmax directly, exact for very confident logits
        scaled = log_softmax(view_logits[:, 0].astype(np.float64) / temperature, axis=1)
        return float(-scaled[np.arange(len(labels)), labels].mean())
    probabilities = calibrated_probabilities(view_logits, temperature)
    return float(
        -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-300, 1.0)).mean()
    )


def fit_temperature(view_logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the NLL of ``labels`` (searched on a log scale)."""
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(view_logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(result.x))
