"""Scores of an inpainting cell (Sohl-Dickstein et al. 2015 §2.5, the factor `guidance.Known`): does the completion
keep the source's class, and how far are its sampled pixels from the source's.

Both read what the stage has anyway: the evaluator's logits of the completions (`features.Extractor`, (N, G, K):
G digits per image over K classes) and the completions and sources in model space.
"""

from __future__ import annotations

import numpy as np
import torch


def evaluator_labels(logits: torch.Tensor) -> np.ndarray:
    """The label the evaluator reads in each image, (N,) int64: the argmax of each of the G digits' logits, read as
    the digits of a base-K number, channel 0 first (G = 1: argmax of logits[:, 0]; StackedMNIST: 100 d0 + 10 d1 + d2,
    components/data/digits.py)."""
    digits = torch.as_tensor(logits).argmax(-1).cpu().numpy().astype(np.int64)  # (N, G)
    K = logits.shape[-1]
    return digits @ (K ** np.arange(digits.shape[1] - 1, -1, -1, dtype=np.int64))


def label_accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    """Share of images whose evaluator label (`evaluator_labels`) is y (N,): for completions, their source's label."""
    return float(np.mean(evaluator_labels(logits) == np.asarray(y)))


def masked_mse(x: np.ndarray, source: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared error of x against source (N, C, H, W) over the pixels where mask (C, H, W) is True only (the
    sampled ones), in the arrays' units."""
    diff = (np.asarray(x, dtype=np.float64) - np.asarray(source, dtype=np.float64))[:, np.asarray(mask, dtype=bool)]
    return float(np.mean(diff**2))
