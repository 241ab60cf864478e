"""Feature extractors for the image-level metrics: the identity for points, a trained digit classifier for digits,
torch-fidelity's Inception for CIFAR-10.

An `Extractor` maps samples in data units to (features (N, F), logits (N, G, K) or None): FID, KID and
precision/recall compare the features, the classifier score reads the logits. It is built by name through
components/scoring/registry.py's FEATURE_EXTRACTORS from its weights (a state dict: none for the identity) and their
config, which stage `reference` saves beside the reference split's statistics, so every row is scored by exactly
the same network. Its `name` carries a short hash of the weights: numbers from different extractors are never
compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

BATCH = 500  # images per extractor call
# components.scoring.evaluator is imported inside the image extractors below (and metrics.sample_metrics's logits branch): it
# loads torch-fidelity and torchvision, about as long again as torch itself, which the point data sets never need.


@dataclass(frozen=True)
class Extractor:
    """What scores samples: its name (and weights' hash) and x (N, ...) in data units -> (features, logits | None)."""

    name: str
    embed: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor | None]]


def identity_features(x: np.ndarray) -> torch.Tensor:
    """Points are their own features: (N, ...) -> (N, D) float64."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(len(x), -1))


def to_uint8(x: np.ndarray) -> torch.Tensor:
    """Images in data units (floats in [0, 255] or uint8) as the uint8 pixels an image file would hold."""
    x = np.asarray(x)
    return torch.from_numpy(x if x.dtype == np.uint8 else np.clip(np.rint(x), 0, 255).astype(np.uint8))


def identity_extractor(weights: Mapping[str, torch.Tensor] | None = None, config: Mapping | None = None,
                       device: torch.device | None = None) -> Extractor:
    """Points as their own features, no logits."""
    return Extractor("identity", lambda x: (identity_features(x), None))


def lenet_extractor(weights: Mapping[str, torch.Tensor], config: Mapping, device: torch.device | None = None
                    ) -> Extractor:
    """The digit classifier trained by stage evaluator (components/scoring/evaluator.py), applied to each channel."""
    from components.scoring.evaluator import digit_extractor, extract  # here: torch-fidelity (see BATCH)

    net = digit_extractor(weights, config).to(device or "cpu")
    return Extractor(net.name, lambda x: extract(net, to_uint8(x), BATCH))


def inception_extractor(weights: Mapping[str, torch.Tensor], config: Mapping | None = None,
                        device: torch.device | None = None) -> Extractor:
    """torch-fidelity's InceptionV3 (FID's network, Heusel et al. 2017) with these weights: 2048 pool features."""
    from components.scoring.evaluator import extract, inception_from_state, weights_digest  # here: torch-fidelity (see BATCH)

    net = inception_from_state(weights).to(device or "cpu")
    return Extractor(f"inception-{weights_digest(weights)[:8]}", lambda x: extract(net, to_uint8(x), BATCH))
